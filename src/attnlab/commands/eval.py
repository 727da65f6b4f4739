"""`attnlab eval gpt|translate`: a trained GPT's loss on the held-out Shakespeare works, a
translator's BLEU and chrF on the held-out Bible books."""

from __future__ import annotations

import argparse
import json
import math
import time

from attnlab.commands.common import UsageError, positive_int
from attnlab.data.shakespeare import VALIDATION_WORKS


def load_gpt_checkpoint(path: str):
    """The :class:`attnlab.train.checkpoint.LoadedCheckpoint` of a GPT training run.

    ``path`` is a checkpoint folder or a run's ``--out`` folder (then its latest complete
    checkpoint). Anything else (no such folder, a damaged checkpoint, another kind of model, a
    saved model that is not a training checkpoint) is a UsageError saying which.
    """
    from attnlab.models.gpt import GPT
    from attnlab.train.checkpoint import CheckpointError, load_checkpoint

    try:
        loaded = load_checkpoint(path, model_class=GPT)
    except (CheckpointError, OSError, ValueError) as err:
        raise UsageError(str(err)) from None
    if loaded.tokenizer is None:
        raise UsageError(f"{loaded.folder} has no tokenizer beside its GPT")
    return loaded


def evaluate(loaded, max_tokens: int | None = None) -> dict:
    """Loss of a loaded GPT checkpoint on the held-out works: all of them, or windows holding
    about ``max_tokens`` tokens spread evenly over them."""
    from attnlab.data.lm import encode_corpus
    from attnlab.data.shakespeare import load_works, split_works
    from attnlab.models.pretrained import MissingPackageError
    from attnlab.train.lm_task import bits_per_char, spread_windows, text_loss

    try:
        _, val_text = split_works(load_works())
    except MissingPackageError as err:
        raise UsageError(str(err)) from None
    tokens = encode_corpus(loaded.tokenizer, val_text)
    block = min(loaded.train_config.block_size, loaded.model.config.max_positions)
    start = time.perf_counter()
    total, predicted = text_loss(loaded.model, spread_windows(tokens, block, max_tokens))
    nats = total / predicted
    return {
        "checkpoint": str(loaded.folder),
        "step": loaded.step,
        "preset": loaded.meta.get("preset"),
        "validation_works": list(VALIDATION_WORKS),
        "characters": len(val_text),
        "tokens": tokens.numel(),
        "tokens_scored": predicted,
        "val_loss_nats_per_token": nats,
        "perplexity": math.exp(nats),
        # From the mean over the tokens scored and the whole text's characters per token.
        "bits_per_char": bits_per_char(nats, tokens.numel(), len(val_text)),
        "seconds": time.perf_counter() - start,
    }


def _print_result(result: dict) -> None:
    print(f"checkpoint  {result['checkpoint']} (step {result['step']}, preset {result['preset']})")
    print(f"held out    {', '.join(result['validation_works'])}: "
          f"{result['characters']:,} characters, {result['tokens']:,} tokens "
          f"({result['tokens_scored']:,} scored)")
    print(f"val loss    {result['val_loss_nats_per_token']:.4f} nats/token")
    print(f"perplexity  {result['perplexity']:.3f} (per token)")
    print(f"bits/char   {result['bits_per_char']:.4f}")
    print(f"time        {result['seconds']:.1f} s")


def run_eval_gpt(args: argparse.Namespace) -> None:
    result = evaluate(load_gpt_checkpoint(args.checkpoint), args.max_tokens)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_result(result)


def evaluate_translation(loaded, max_sentences: int | None, beam: int, batch_size: int = 16) -> dict:
    """sacreBLEU corpus BLEU and chrF of a loaded translator on the held-out test books (all their
    verses, or ``max_sentences`` spread evenly over them), with a progress bar on stderr."""
    from rich.progress import track
    from sacrebleu.metrics import BLEU, CHRF

    from attnlab.data.bible import HELD_OUT_BOOKS, BibleDataError, split_pairs, verse_pairs
    from attnlab.train.translate_task import spread, translate

    try:
        pairs = spread(split_pairs(verse_pairs())[2], max_sentences)
    except BibleDataError as err:
        raise UsageError(str(err)) from None
    start = time.perf_counter()
    hypotheses: list[str] = []
    for first in track(range(0, len(pairs), batch_size), description="translating",
                       console=_stderr_console(), transient=True):
        group = pairs[first:first + batch_size]
        hypotheses += translate(loaded.model, loaded.tokenizer, [pair.en for pair in group], beam=beam)
    references = [pair.es for pair in pairs]
    bleu, chrf = BLEU(), CHRF()
    bleu_score = bleu.corpus_score(hypotheses, [references])
    chrf_score = chrf.corpus_score(hypotheses, [references])
    return {
        "checkpoint": str(loaded.folder),
        "step": loaded.step,
        "preset": loaded.meta.get("preset"),
        "arch": loaded.meta.get("arch"),
        "test_books": list(HELD_OUT_BOOKS),
        "sentences": len(pairs),
        "beam": beam,
        "bleu": bleu_score.score,
        "chrf": chrf_score.score,
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "examples": [{"en": p.en, "reference": p.es, "hypothesis": h}
                     for p, h in zip(pairs[:3], hypotheses, strict=False)],
        "seconds": time.perf_counter() - start,
    }


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def run_eval_translate(args: argparse.Namespace) -> None:
    from attnlab.commands.translate import load_translator

    result = evaluate_translation(load_translator(args.checkpoint), args.max_sentences, args.beam)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return
    print(f"checkpoint  {result['checkpoint']} (step {result['step']}, preset {result['preset']}, "
          f"{result['arch']})")
    print(f"test books  {', '.join(result['test_books'])}: {result['sentences']} verses, "
          f"beam {result['beam']}")
    print(f"BLEU        {result['bleu']:.2f}  ({result['bleu_signature']})")
    print(f"chrF        {result['chrf']:.2f}  ({result['chrf_signature']})")
    print(f"time        {result['seconds']:.1f} s")


def register(sub: argparse._SubParsersAction) -> None:
    evaluate_ = sub.add_parser(
        "eval",
        help="score a trained model on held-out data",
        description="Score a trained model on data it never saw in training.",
    )
    kinds = evaluate_.add_subparsers(dest="kind", metavar="MODEL", required=True)
    gpt = kinds.add_parser(
        "gpt",
        help="a GPT on the held-out works of Shakespeare",
        description=f"Score a GPT checkpoint on all of the held-out works ({', '.join(VALIDATION_WORKS)}): "
        "the text is cut into consecutive windows of the "
        "training block size and every token but the first is predicted once. Prints the loss in "
        "nats per token, the perplexity per token and bits per character (total nats / characters "
        "/ ln 2, comparable between character and BPE tokenizers).",
    )
    gpt.add_argument("--checkpoint", metavar="DIR", required=True,
                     help="a checkpoint folder, or a training --out folder (its latest checkpoint)")
    gpt.add_argument("--max-tokens", type=positive_int, metavar="N", default=None,
                     help="score about N tokens in windows spread evenly over the held-out works, "
                     "always the same ones (default: all)")
    gpt.add_argument("--json", action="store_true", help="print the results as JSON")
    gpt.set_defaults(run=run_eval_gpt)
    translate = kinds.add_parser(
        "translate",
        help="a translator's BLEU and chrF on the held-out Bible books",
        description="Translate the verses of the held-out test books with beam search and score "
        "them against the Reina-Valera 1909 with sacreBLEU's corpus BLEU and chrF (signatures "
        "printed).",
    )
    translate.add_argument("--checkpoint", metavar="DIR", required=True,
                           help="a checkpoint folder, or a training --out folder (its latest checkpoint)")
    translate.add_argument("--max-sentences", type=positive_int, metavar="N", default=None,
                           help="score N verses spread evenly over the test books (default: all)")
    translate.add_argument("--beam", type=positive_int, metavar="N", default=4,
                           help="beams in beam search (default: 4)")
    translate.add_argument("--json", action="store_true", help="print the results as JSON")
    translate.set_defaults(run=run_eval_translate)
