"""`attnlab explain TEXT`: what a real model's attention does with your sentence.

Runs a pretrained model once on the text, recording every attention weight, then writes a
self-contained interactive page, prints a plain-language summary of one informative head and,
on request, PNG heatmaps.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from attnlab.commands.common import (
    UsageError,
    add_force_argument,
    check_output,
    model_label,
    model_name_or_folder,
    non_negative_int,
    positive_int,
    prepare_png_dir,
)
from attnlab.explain.i18n import DEFAULT_LANGUAGE, LANGUAGES, check_language

MODELS = ("minilm", "smollm2")
EXAMPLE = "The animal didn't cross the street because it was too tired."


def _check_out(out: Path, force: bool) -> None:
    """Fail before the model loads when the page could not be written, or (without ``force``)
    would replace a file that attnlab did not write."""
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a file name such as {out / 'attention.html'}")
    folder = out.parent
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {out}: {folder} is a file, not a folder")
    if not folder.is_dir():
        raise UsageError(f"--out {out}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise UsageError(f"--out {out}: no permission to write there")
    check_output(out, "--out", force=force, suffix=".html")


def _check_head_choice(args: argparse.Namespace, layers: int, heads: int) -> None:
    if args.layer is not None and args.layer >= layers:
        raise UsageError(f"--layer {args.layer} is out of range: {args.model} has layers 0 to {layers - 1}")
    if args.head is not None and args.head >= heads:
        raise UsageError(f"--head {args.head} is out of range: {args.model} has heads 0 to {heads - 1}")


def run(args: argparse.Namespace) -> None:
    try:
        check_language(args.lang)
    except ValueError as err:
        raise UsageError(f"--lang {args.lang}: {err}") from None
    if not args.text.strip():
        raise UsageError(f'TEXT is empty; give a sentence to explain, e.g. attnlab explain "{EXAMPLE}"')
    if args.head is not None and args.layer is None:
        raise UsageError(f"--head {args.head} needs --layer too (which layer's head {args.head}?)")
    out = Path(args.out)
    _check_out(out, args.force)
    if args.png is not None:
        prepare_png_dir(Path(args.png))

    # Heavy imports (torch, matplotlib) only once the arguments are known to be usable.
    from rich.console import Console

    from attnlab.explain.collect import build_explanation
    from attnlab.explain.page import write_page
    from attnlab.explain.plots import heatmap_paths, write_heatmaps
    from attnlab.explain.summary import print_summary, summary_json
    from attnlab.models.pretrained import MissingPackageError, load_pretrained

    status = Console(stderr=True)
    name = model_label(args.model)
    with status.status(f"Loading {name}..."):
        try:
            model, tokenizer = load_pretrained(args.model)
        except MissingPackageError as err:
            raise UsageError(str(err)) from None
    _check_head_choice(args, model.config.num_layers, model.config.num_heads)
    with status.status("Running the model once, recording every attention weight..."):
        try:
            data = build_explanation(model, tokenizer, args.text, model_name=name,
                                     layer=args.layer, head=args.head, max_tokens=args.max_tokens)
        except ValueError as err:
            raise UsageError(str(err)) from None
    selected = data["selected"]
    if args.png is not None:  # the pictures' names are known now: check them before writing anything
        for path in heatmap_paths(data, args.png, selected["layer"], selected["head"]):
            check_output(path, "--png", force=args.force, suffix=".png")
    with status.status("Writing the page and pictures..."):
        try:
            page = write_page(data, out, force=args.force, lang=args.lang).resolve()
        except OSError as err:
            raise UsageError(str(err)) from None
        pngs = []
        if args.png is not None:
            try:
                pngs = write_heatmaps(data, args.png, selected["layer"], selected["head"], force=args.force)
            except OSError as err:
                raise UsageError(f"--png {args.png}: {err}") from None
    png_names = [str(p.resolve()) for p in pngs]
    if args.json:
        print(json.dumps(summary_json(data, str(page), png_names), indent=2, ensure_ascii=False))
    else:
        print_summary(data, str(page), png_names, Console())


def register(sub: argparse._SubParsersAction) -> None:
    explain = sub.add_parser(
        "explain",
        help="show what a pretrained model's attention does with your text",
        description="Run a pretrained model once on TEXT, record every attention weight, and "
        "explain it: a summary here (for each word, the words it looks at most in one "
        "informative head), an interactive page to open in a browser (every layer and head, "
        "and the query/key/value arithmetic step by step) and, with --png, heatmap pictures. "
        "Layers and heads are numbered from 0.",
        epilog=f'example:\n  attnlab explain "{EXAMPLE}"\n'
        f'  attnlab explain "{EXAMPLE}" --model smollm2 --layer 3 --head 7 --png pictures/',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    explain.add_argument("text", metavar="TEXT", help="the text to explain (quote it)")
    explain.add_argument(
        "--model", type=model_name_or_folder(MODELS), default="minilm", metavar="NAME|FOLDER",
        help="minilm: all-MiniLM-L6-v2, a sentence encoder where every word sees every word; "
        "smollm2: SmolLM2-135M-Instruct, a chat model where each token sees only earlier "
        "tokens; or the path of a local Hugging Face model folder (bert, llama, qwen2, mistral, "
        "gpt2: config.json, *.safetensors, tokenizer.json) (default: minilm)",
    )
    explain.add_argument("--layer", type=non_negative_int, default=None,
                         help="summarise this layer (default: the most informative head's layer)")
    explain.add_argument("--head", type=non_negative_int, default=None,
                         help="summarise this head of --layer (default: the layer's most "
                         "informative head)")
    explain.add_argument("--out", default="attention.html",
                         help="where to write the interactive page (default: attention.html)")
    explain.add_argument("--png", metavar="DIR", default=None,
                         help="also write heatmap PNGs of the head and its layer into DIR")
    explain.add_argument(
        "--max-tokens", type=positive_int, default=None,
        help="refuse texts longer than this many tokens; the page holds every weight of every "
        "head, layers x heads x tokens² numbers (default: 117 for minilm, 60 for smollm2)",
    )
    explain.add_argument("--lang", default=DEFAULT_LANGUAGE, metavar="LANG",
                         help=f"the language of the page: {' or '.join(LANGUAGES)} (Simplified Chinese); "
                         "the reader can switch it in the page. The summary printed here stays in "
                         f"English (default: {DEFAULT_LANGUAGE})")
    explain.add_argument("--json", action="store_true",
                         help="print a machine-readable summary instead of the text")
    add_force_argument(explain, "the --out page and the --png pictures")
    explain.set_defaults(run=run)
