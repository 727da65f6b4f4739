"""`attnlab classify`: name what is in a picture with a trained Vision Transformer, and show where
it looked."""

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
    positive_int,
    prepare_png_dir,
)


def _png_path(folder: str, image_path: str) -> Path:
    """Where ``--png`` puts the overlays of the picture ``image_path``: FOLDER/<stem>-attention.png."""
    return Path(folder) / f"{Path(image_path).stem}-attention.png"


def run_classify(args: argparse.Namespace) -> None:
    import torch

    from attnlab.data.images import load_image
    from attnlab.explain.vision import vision_data, write_vision_page, write_vision_png
    from attnlab.train.runs import load_classifier

    # A bad folder or a file of the user's in the way fails before the model loads.
    if args.show_attention:
        check_output(args.show_attention, "--show-attention", force=args.force, suffix=".html")
    if args.png:
        prepare_png_dir(Path(args.png))
        for image_path in args.images:
            check_output(_png_path(args.png, image_path), "--png", force=args.force)
    loaded, dataset, classes, normalization = load_classifier(args.checkpoint)
    config = loaded.model.config
    results = []
    for index, image_path in enumerate(args.images):
        pixels, original = load_image(image_path, size=config.image_size, channels=config.in_channels,
                                      invert=args.invert)
        with torch.no_grad():
            data = vision_data(loaded.model, pixels, normalization, classes, original=original,
                               source=str(image_path), top=min(args.top, len(classes)))
        results.append({"image": str(image_path), "predictions": data["predictions"]})
        if not args.json:
            print(f"{image_path}:")
            for rank, guess in enumerate(data["predictions"], start=1):
                print(f"  {rank}. {guess['class']:<14} {100 * guess['probability']:6.2f}%")
        out = sys.stderr if args.json else sys.stdout
        try:
            if args.show_attention and index == 0:
                page = write_vision_page(data, args.show_attention, force=args.force)
                print(f"attention page: {page}", file=out)
            if args.png:
                png = write_vision_png(data, pixels, _png_path(args.png, image_path), original,
                                       force=args.force)
                print(f"attention PNG: {png}", file=out)
        except OSError as error:
            raise UsageError(str(error)) from None
    if args.json:
        print(json.dumps({"checkpoint": str(loaded.folder), "dataset": dataset, "results": results},
                         indent=2, ensure_ascii=False))


def _invert(text: str) -> bool | None:
    choices = {"auto": None, "yes": True, "no": False}
    if text not in choices:
        raise argparse.ArgumentTypeError(f"expected auto, yes or no, got {text!r}")
    return choices[text]


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "classify",
        help="classify pictures with a trained Vision Transformer",
        description="Classify pictures with a checkpoint of `attnlab train vit`. Any size and "
        "colour: each picture is converted to grey, padded to a square, resized to the model's "
        "28 x 28 and, since the training pictures show a light object on black, inverted when its "
        "border is light. Prints the top classes with their probabilities.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="picture files (PNG, JPEG, ...)")
    add_checkpoint_argument(parser)
    parser.add_argument("--top", type=positive_int, default=3, metavar="K",
                        help="how many classes to list (default: 3)")
    parser.add_argument("--invert", type=_invert, default=None, metavar="auto|yes|no",
                        help="invert the picture's grey levels: auto (default) when its border is light")
    parser.add_argument("--json", action="store_true", help="print the predictions as JSON")
    parser.add_argument("--show-attention", metavar="PAGE.html", default=None,
                        help="also write an HTML page of where the model looked (the first picture)")
    parser.add_argument("--png", metavar="DIR", default=None,
                        help="also write DIR/<picture>-attention.png: attention rollout and the last "
                        "layer's class-token attention per head, over each picture")
    add_force_argument(parser, "the --show-attention page and the --png pictures")
    parser.set_defaults(run=run_classify)
