"""`attnlab eval gpt`: a trained GPT's loss on all of the held-out Shakespeare works."""

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
