"""`attnlab eval gpt|translate|vit`: a trained GPT's loss on the held-out Shakespeare works, a
translator's BLEU and chrF on the held-out Bible books, a ViT's accuracy on the test pictures."""

from __future__ import annotations

import argparse
import json
import math
import time

from attnlab.commands.common import (
    UsageError,
    add_checkpoint_argument,
    add_force_argument,
    check_output,
    positive_int,
)
from attnlab.data.shakespeare import VALIDATION_WORKS

CONFUSION_PNG = "confusion-matrix.png"


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


#: Upper ends (English words, inclusive) of the source-length buckets BLEU is also reported by.
LENGTH_BUCKETS = (15, 25, 35, 50)


def bucket_label(words: int, edges=LENGTH_BUCKETS) -> str:
    """The bucket of a ``words``-long source: ``"1-15"``, ``"16-25"``, ..., ``"51+"``."""
    low = 1
    for high in edges:
        if words <= high:
            return f"{low}-{high}"
        low = high + 1
    return f"{low}+"


def scores_by_length(sources, hypotheses, references, edges=LENGTH_BUCKETS) -> list[dict]:
    """Corpus BLEU and chrF of the verses in each source-length bucket (English words), shortest
    first: ``[{"bucket", "sentences", "bleu", "chrf"}, ...]`` (empty buckets left out)."""
    from sacrebleu.metrics import BLEU, CHRF

    groups: dict[str, list[int]] = {}
    for index, source in enumerate(sources):
        groups.setdefault(bucket_label(len(source.split()), edges), []).append(index)
    order = [bucket_label(edge, edges) for edge in edges] + [bucket_label(edges[-1] + 1, edges)]
    rows = []
    for label in order:
        members = groups.get(label, [])
        if members:
            hyps, refs = [hypotheses[i] for i in members], [[references[i] for i in members]]
            rows.append({"bucket": label, "sentences": len(members),
                         "bleu": BLEU().corpus_score(hyps, refs).score,
                         "chrf": CHRF().corpus_score(hyps, refs).score})
    return rows


def verse_ref(pair) -> str:
    """``"Mark 4:3"``."""
    return f"{pair.book} {pair.chapter}:{pair.verse}"


def best_and_worst(pairs, hypotheses, count: int = 3, min_words: int = 8) -> dict[str, list[dict]]:
    """The ``count`` best and worst translations by sentence-level chrF among sources of at least
    ``min_words`` English words (short verses score erratically): samples of what works and not."""
    from sacrebleu.metrics import CHRF

    chrf = CHRF()
    scored = sorted(
        ((chrf.sentence_score(hyp, [pair.es]).score, pair, hyp)
         for pair, hyp in zip(pairs, hypotheses, strict=True) if len(pair.en.split()) >= min_words),
        key=lambda item: item[0])

    def rows(items):
        return [{"ref": verse_ref(pair), "chrf": score, "en": pair.en, "reference": pair.es,
                 "hypothesis": hyp} for score, pair, hyp in items]

    return {"best": rows(scored[::-1][:count]), "worst": rows(scored[:count])}


def evaluate_translation(loaded, max_sentences: int | None, beam: int, batch_size: int = 16) -> dict:
    """sacreBLEU corpus BLEU and chrF of a loaded translator on the held-out test books (all their
    verses, or ``max_sentences`` spread evenly over them), with a progress bar on stderr; also by
    source length (:func:`scores_by_length`), the best and worst verses, and every translation."""
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
    seconds = time.perf_counter() - start
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
        "by_source_length": scores_by_length([p.en for p in pairs], hypotheses, references),
        **best_and_worst(pairs, hypotheses),
        "seconds": seconds,
        "translations": [{"ref": verse_ref(p), "en": p.en, "reference": p.es, "hypothesis": h}
                         for p, h in zip(pairs, hypotheses, strict=True)],
    }


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def run_eval_translate(args: argparse.Namespace) -> None:
    from attnlab.commands.translate import load_translator
    from attnlab.files import write_json

    if args.translations:  # before the long translation, so that a refusal costs nothing
        check_output(args.translations, "--translations", force=args.force, suffix=".json")
    result = evaluate_translation(load_translator(args.checkpoint), args.max_sentences, args.beam)
    if args.translations:
        try:
            write_json(args.translations, result, force=args.force, what="the translations")
        except OSError as err:
            raise UsageError(str(err)) from None
    result = {key: value for key, value in result.items() if key != "translations"}
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return
    print(f"checkpoint  {result['checkpoint']} (step {result['step']}, preset {result['preset']}, "
          f"{result['arch']})")
    print(f"test books  {', '.join(result['test_books'])}: {result['sentences']} verses, "
          f"beam {result['beam']}")
    print(f"BLEU        {result['bleu']:.2f}  ({result['bleu_signature']})")
    print(f"chrF        {result['chrf']:.2f}  ({result['chrf_signature']})")
    print("by source length (English words):")
    for row in result["by_source_length"]:
        print(f"  {row['bucket']:>6} words  {row['sentences']:5d} verses  BLEU {row['bleu']:6.2f}  "
              f"chrF {row['chrf']:6.2f}")
    for kind in ("best", "worst"):
        for row in result[kind][:1]:
            print(f"{kind} ({row['ref']}, chrF {row['chrf']:.1f}):")
            print(f"  en   {row['en']}")
            print(f"  ref  {row['reference']}")
            print(f"  out  {row['hypothesis']}")
    print(f"time        {result['seconds']:.1f} s")
    if args.translations:
        print(f"saved       {args.translations} (every verse: source, reference, translation)")


def predict_classes(model, pictures, normalization, views=((0, 0),)):
    """The class ``model`` gives each of ``pictures`` ``(batch, C, H, W)`` (uint8), ``(batch,)``:
    the highest mean log-probability over ``views``, shifts ``(dy, dx)`` of each picture (see
    :func:`attnlab.data.images.shift`; the default is the picture alone)."""
    from attnlab.data.images import shift

    scores = sum(model(normalization(shift(pictures, dy, dx))).log_softmax(dim=-1) for dy, dx in views)
    return scores.argmax(dim=-1)


def _classifier_split(loaded, dataset: str, split: str):
    """The pictures :func:`evaluate_classifier` scores: the test split, or the validation split
    the run held out (drawn again from its preset's ``val_fraction`` and its seed)."""
    from attnlab.data.images import dataset_splits, load_test_split
    from attnlab.train.vit_task import VIT_TRAIN_PRESETS

    if split == "test":
        return load_test_split(dataset)
    preset = VIT_TRAIN_PRESETS.get(loaded.meta.get("preset"))
    if preset is None:
        raise ValueError(f"{loaded.folder}: trained with preset {loaded.meta.get('preset')!r}, not one of "
                         f"{', '.join(VIT_TRAIN_PRESETS)}, so its validation split is unknown")
    return dataset_splits(dataset, preset.val_fraction, seed=loaded.train_config.seed)[1]


def evaluate_classifier(loaded, dataset: str, classes, normalization, batch_size: int = 500,
                        tta: bool = False, split: str = "test") -> dict:
    """Accuracy, per-class accuracy and the confusion matrix of a loaded ViT on ``dataset``'s test
    split (Fashion-MNIST: the official 10,000; MNIST-5k: its fixed held-out 1,000), or with
    ``split="validation"`` on the validation pictures the run held out, with a progress bar on
    stderr; also inference pictures/s (batches of ``batch_size``). ``tta`` classifies each
    picture by its average with its four one-pixel shifts
    (:data:`attnlab.data.images.ONE_PIXEL_SHIFTS`; five times the inference work)."""
    import torch
    from rich.progress import track

    from attnlab.data.images import ONE_PIXEL_SHIFTS, ImageDataError

    try:
        held_out = _classifier_split(loaded, dataset, split)
    except (ImageDataError, ValueError) as err:
        raise UsageError(str(err)) from None
    model = loaded.model.eval()
    views = ONE_PIXEL_SHIFTS if tta else ((0, 0),)
    predictions = []
    start = time.perf_counter()
    with torch.inference_mode():
        for first in track(range(0, len(held_out), batch_size), description="classifying",
                           console=_stderr_console(), transient=True):
            pictures = held_out.images[first:first + batch_size]
            predictions.append(predict_classes(model, pictures, normalization, views))
    seconds = time.perf_counter() - start
    predicted = torch.cat(predictions)
    size = len(classes)
    confusion = torch.zeros(size, size, dtype=torch.long)
    confusion.index_put_((held_out.labels, predicted), torch.ones_like(predicted), accumulate=True)
    per_class = (confusion.diag().double() / confusion.sum(dim=1).clamp(min=1)).tolist()
    return {
        "checkpoint": str(loaded.folder),
        "step": loaded.step,
        "preset": loaded.meta.get("preset"),
        "dataset": dataset,
        "split": split,
        "pictures": len(held_out),
        "views": len(views),
        "accuracy": float((predicted == held_out.labels).double().mean()),
        "per_class_accuracy": dict(zip(classes, per_class, strict=True)),
        "confusion_matrix": confusion.tolist(),
        "images_per_s": len(held_out) / seconds,
        "seconds": seconds,
    }


def run_eval_vit(args: argparse.Namespace) -> None:
    from pathlib import Path

    from attnlab.commands.classify import load_classifier
    from attnlab.commands.common import prepare_png_dir
    from attnlab.explain.vision import write_confusion_png

    if args.png:
        prepare_png_dir(Path(args.png))
        check_output(Path(args.png) / CONFUSION_PNG, "--png", force=args.force)
    loaded, dataset, classes, normalization = load_classifier(args.checkpoint)
    result = evaluate_classifier(loaded, dataset, classes, normalization, tta=args.tta, split=args.split)
    if args.png:
        import torch

        title = (f"{dataset} {args.split} set: {100 * result['accuracy']:.2f}% correct "
                 f"(step {result['step']}{', shifts averaged' if args.tta else ''})")
        try:
            result["confusion_png"] = str(write_confusion_png(
                torch.tensor(result["confusion_matrix"]), classes, Path(args.png) / CONFUSION_PNG,
                title=title, force=args.force))
        except OSError as error:
            raise UsageError(str(error)) from None
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"checkpoint  {result['checkpoint']} (step {result['step']}, preset {result['preset']})")
    print(f"{args.split + ' set':<11} {dataset}: {result['pictures']:,} pictures")
    averaged = " (each picture averaged with its 4 one-pixel shifts: --tta)" if args.tta else ""
    print(f"accuracy    {100 * result['accuracy']:.2f}%{averaged}")
    print("per class:")
    width = max(len(name) for name in classes)
    for name, accuracy in result["per_class_accuracy"].items():
        print(f"  {name:<{width}}  {100 * accuracy:6.2f}%")
    print(f"speed       {result['images_per_s']:,.0f} pictures/s")
    if "confusion_png" in result:
        print(f"confusion   {result['confusion_png']}")


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
    add_checkpoint_argument(gpt)
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
        "printed), overall and by source length in English words; shows the best and worst "
        "verses by sentence chrF.",
    )
    add_checkpoint_argument(translate)
    translate.add_argument("--max-sentences", type=positive_int, metavar="N", default=None,
                           help="score N verses spread evenly over the test books (default: all)")
    translate.add_argument("--beam", type=positive_int, metavar="N", default=4,
                           help="beams in beam search (default: 4)")
    translate.add_argument("--translations", metavar="FILE", default=None,
                           help="also write the results with every verse's source, reference and "
                           "translation to FILE (JSON)")
    translate.add_argument("--json", action="store_true", help="print the results as JSON")
    add_force_argument(translate, "the --translations file")
    translate.set_defaults(run=run_eval_translate)
    vit = kinds.add_parser(
        "vit",
        help="a Vision Transformer's accuracy on the test pictures",
        description="Classify the test split the ViT never saw (Fashion-MNIST: the official "
        "10,000 test pictures; MNIST-5k: its fixed held-out 1,000), or with --split validation the "
        "pictures the run held out for validation, and print the accuracy, the "
        "accuracy per class and the speed; --png also draws the confusion matrix.",
    )
    add_checkpoint_argument(vit)
    vit.add_argument("--png", metavar="DIR", default=None,
                     help=f"also write the confusion matrix as DIR/{CONFUSION_PNG}")
    vit.add_argument("--split", choices=("test", "validation"), default="test",
                     help="the pictures to score: the test set (default), or the validation pictures "
                     "the run held out (to choose settings such as --tta without looking at the test set)")
    vit.add_argument("--tta", action="store_true",
                     help="test-time augmentation: classify each picture by its class probabilities "
                     "averaged (geometric mean) with those of its four one-pixel shifts; five times "
                     "the inference work, no change to the model")
    vit.add_argument("--json", action="store_true", help="print the results as JSON")
    add_force_argument(vit, "the --png picture")
    vit.set_defaults(run=run_eval_vit)
