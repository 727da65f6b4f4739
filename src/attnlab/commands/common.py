"""Pieces every subcommand shares: the user-error type and argument parsers."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


class UsageError(Exception):
    """A mistake in the user's input: printed as one line, exit status 2."""


def positive_int(text: str) -> int:
    """argparse type: a whole number > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def probability(text: str) -> float:
    """argparse type: a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0.0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


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
