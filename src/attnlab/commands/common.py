"""Pieces every subcommand shares: the user-error type and argument parsers."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path


class UsageError(Exception):
    """A mistake in the user's input: printed as one line, exit status 2."""


def _number(text: str, convert, kind: str, allowed, rule: str):
    """``convert(text)`` if it parses and ``allowed(value)``; else argparse's one-line error."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
    if not allowed(value):  # comparisons with nan are False, so nan is refused too
        raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number > 0."""
    return _number(text, int, "a whole number", lambda v: v > 0, "> 0")


def non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0."""
    return _number(text, int, "a whole number", lambda v: v >= 0, ">= 0")


def probability(text: str) -> float:
    """argparse type: a number in (0, 1]."""
    return _number(text, float, "a number", lambda v: 0.0 < v <= 1.0, "in (0, 1]")


def non_negative_float(text: str) -> float:
    """argparse type: a number >= 0."""
    return _number(text, float, "a number", lambda v: v >= 0.0, ">= 0")


def prepare_png_dir(png: Path) -> None:
    """Create the ``--png`` folder now, so that a bad path fails before the model loads."""
    try:
        png.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"--png {png} is a file, not a folder") from None
    except OSError as err:
        raise UsageError(f"--png {png}: cannot create the folder ({err.strerror or err})") from None
    if not os.access(png, os.W_OK):
        raise UsageError(f"--png {png}: no permission to write in this folder")


def write_json_atomic(path: str | os.PathLike, data) -> Path:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename, so a crash never
    leaves half a file; a folder that cannot be written is a UsageError."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2, ensure_ascii=False)
            out.write("\n")
        os.replace(temporary, path)
    except OSError as err:
        raise UsageError(f"cannot write {path}: {err.strerror or err}") from None
    return path


def add_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    """The required ``--checkpoint DIR`` every command that reads a trained model takes."""
    parser.add_argument("--checkpoint", metavar="DIR", required=True,
                        help="a checkpoint folder, or a training --out folder (its latest checkpoint)")
