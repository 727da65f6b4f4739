"""`attnlab translate`: English -> Spanish with a translator trained by `attnlab train translate`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from attnlab.commands.common import (
    UsageError,
    add_checkpoint_argument,
    add_force_argument,
    check_output,
    non_negative_float,
    positive_int,
    prepare_png_dir,
    read_lines,
    standard_input,
)

ALIGNMENT_PNG = "alignment.png"


def _input_lines(text: str | None) -> list[str]:
    """The sentences to translate: ``text``, or stdin's non-blank lines when it is None or ``-``."""
    if text is None or text == "-":
        stdin = standard_input("give the English text as an argument, or pipe sentences in")
        lines = [line.strip() for line in read_lines(stdin)]
        lines = [line for line in lines if line]
        if not lines:
            raise UsageError("no text to translate on standard input")
        return lines
    if not text.strip():
        raise UsageError(f"TEXT must not be empty, got {text!r}")
    return [text.strip()]


def run_translate(args: argparse.Namespace) -> None:
    from attnlab.train.runs import load_translator
    from attnlab.train.translate_task import translate

    sentences = _input_lines(args.text)
    # Where the pictures go is checked before the model loads, so a refusal costs nothing.
    if args.show_attention:
        check_output(args.show_attention, "--show-attention", force=args.force, suffix=".html")
    if args.png:
        prepare_png_dir(Path(args.png))
        check_output(Path(args.png) / ALIGNMENT_PNG, "--png", force=args.force)
    loaded = load_translator(args.checkpoint)
    outputs = translate(loaded.model, loaded.tokenizer, sentences, beam=args.beam,
                        length_penalty=args.length_penalty, greedy=args.greedy)
    if args.json:
        print(json.dumps({"checkpoint": str(loaded.folder), "decoding": "greedy" if args.greedy else
                          f"beam {args.beam}, length penalty {args.length_penalty}",
                          "translations": [{"en": en, "es": es} for en, es in zip(sentences, outputs,
                                                                                   strict=True)]},
                         indent=2, ensure_ascii=False))
    else:
        print("\n".join(outputs))
    if args.show_attention or args.png:
        _write_alignment(args, loaded, sentences[0], outputs[0])


def _write_alignment(args: argparse.Namespace, loaded, sentence: str, translation: str) -> None:
    """Write the alignment page and/or PNG of the first sentence and print their paths (to stderr
    under --json, so stdout stays one JSON document)."""
    from attnlab.explain.alignment import alignment_data, write_alignment_page, write_alignment_png

    # The translation is re-encoded: its attention is what the model gives those tokens when
    # reading them back, teacher-forced, which is what the heatmap labels show.
    data = alignment_data(loaded.model, loaded.tokenizer, sentence, loaded.tokenizer.encode(translation))
    out = sys.stderr if args.json else sys.stdout
    try:
        if args.show_attention:
            page = write_alignment_page(data, args.show_attention, force=args.force)
            print(f"attention page: {page}", file=out)
        if args.png:
            png = write_alignment_png(data, Path(args.png) / ALIGNMENT_PNG, force=args.force)
            print(f"attention PNG: {png}", file=out)
    except OSError as error:
        raise UsageError(str(error)) from None


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "translate",
        help="translate English into Spanish with a trained translator",
        description="Translate English sentences into Spanish with a checkpoint of "
        "`attnlab train translate`: beam search (GNMT length penalty) or greedy decoding. "
        "One translation per line, in the order of the input.",
    )
    parser.add_argument("text", nargs="?", default=None, metavar="TEXT",
                        help="the English text; read one sentence per line from stdin when left "
                        "out or '-'")
    add_checkpoint_argument(parser)
    parser.add_argument("--beam", type=positive_int, default=4, metavar="N",
                        help="beams in beam search (default: 4)")
    parser.add_argument("--length-penalty", type=non_negative_float, default=1.0, metavar="A",
                        help="GNMT length penalty alpha; 0 ranks by raw log-probability (default: 1.0)")
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of beam search")
    parser.add_argument("--json", action="store_true", help="print sentences and translations as JSON")
    parser.add_argument("--show-attention", metavar="PAGE.html", default=None,
                        help="also write an HTML heatmap of where each Spanish token looked in the "
                        "English sentence (the first sentence when several)")
    parser.add_argument("--png", metavar="DIR", default=None,
                        help=f"also write that heatmap as DIR/{ALIGNMENT_PNG}")
    add_force_argument(parser, "the --show-attention page and the --png picture")
    parser.set_defaults(run=run_translate)
