"""`attnlab eval gpt|translate|vit`: a trained GPT's loss on the held-out Shakespeare works, a
translator's BLEU and chrF on the held-out Bible books, a ViT's accuracy on the test pictures.

The scores are computed by :mod:`attnlab.train.evaluate`; this module parses and prints."""

from __future__ import annotations

import argparse
import json

from attnlab.commands.common import (
    UsageError,
    add_checkpoint_argument,
    add_force_argument,
    check_output,
    non_negative_float,
    positive_int,
)
from attnlab.data.shakespeare import VALIDATION_WORKS

CONFUSION_PNG = "confusion-matrix.png"


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
    from attnlab.train.evaluate import evaluate_lm
    from attnlab.train.runs import load_gpt_run

    result = evaluate_lm(load_gpt_run(args.checkpoint), args.max_tokens)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_result(result)


def _progress_on_stderr(iterable, description: str):
    """A progress bar on stderr (gone when done), so that stdout holds only the results."""
    from rich.console import Console
    from rich.progress import track

    return track(iterable, description=description, console=Console(stderr=True), transient=True)


def run_eval_translate(args: argparse.Namespace) -> None:
    from attnlab.files import write_json
    from attnlab.train.evaluate import evaluate_translation
    from attnlab.train.runs import load_translator

    if args.translations:  # before the long translation, so that a refusal costs nothing
        check_output(args.translations, "--translations", force=args.force, suffix=".json")
    result = evaluate_translation(load_translator(args.checkpoint), args.max_sentences, args.beam,
                                  progress=_progress_on_stderr, split=args.split,
                                  length_penalty=args.length_penalty)
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
    label = "test books" if result["split"] == "test" else "validation"
    print(f"{label:<11} {', '.join(result['books'])}: {result['sentences']} verses, "
          f"beam {result['beam']}, length penalty {result['length_penalty']:g}")
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


def run_eval_vit(args: argparse.Namespace) -> None:
    from pathlib import Path

    from attnlab.commands.common import prepare_png_dir
    from attnlab.explain.vision import write_confusion_png
    from attnlab.train.evaluate import evaluate_classifier
    from attnlab.train.runs import load_classifier

    if args.png:
        prepare_png_dir(Path(args.png))
        check_output(Path(args.png) / CONFUSION_PNG, "--png", force=args.force)
    loaded, dataset, classes, normalization = load_classifier(args.checkpoint)
    result = evaluate_classifier(loaded, dataset, classes, normalization, tta=args.tta, split=args.split,
                                 progress=_progress_on_stderr)
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
        description="Translate the verses of the held-out test books (or, with --split validation, "
        "the validation books) with beam search and score "
        "them against the Reina-Valera 1909 with sacreBLEU's corpus BLEU and chrF (signatures "
        "printed), overall and by source length in English words; shows the best and worst "
        "verses by sentence chrF.",
    )
    add_checkpoint_argument(translate)
    translate.add_argument("--max-sentences", type=positive_int, metavar="N", default=None,
                           help="score N verses spread evenly over the test books (default: all)")
    translate.add_argument("--beam", type=positive_int, metavar="N", default=4,
                           help="beams in beam search (default: 4)")
    translate.add_argument("--length-penalty", type=non_negative_float, metavar="A", default=1.0,
                           help="GNMT length penalty of beam search: hypotheses are ranked by "
                           "log-probability / ((5 + length) / 6) ** A; 0 ranks by log-probability "
                           "alone (default: 1.0)")
    translate.add_argument("--split", choices=("test", "validation"), default="test",
                           help="the verses to score: the held-out test books (default), or the "
                           "validation books (to choose --beam and --length-penalty without "
                           "looking at the test books)")
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
