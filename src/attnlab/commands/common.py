"""Pieces every subcommand shares: the user-error type and argument parsers."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from attnlab.errors import AttnlabError

# The largest seed torch's generators take (a signed 64-bit integer).
MAX_SEED = 2**63 - 1


class UsageError(AttnlabError):
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


def seed(text: str) -> int:
    """argparse type: a random seed, a whole number from 0 to 2**63 - 1."""
    return _number(text, int, "a whole number", lambda v: 0 <= v <= MAX_SEED, f"from 0 to {MAX_SEED}")


def whole_number_up_to(high: int):
    """argparse type: a whole number from 1 to ``high`` (a bound on the work a flag can ask for)."""
    def parse(text: str) -> int:
        return _number(text, int, "a whole number", lambda v: 1 <= v <= high, f"from 1 to {high:,}")
    return parse


def model_name_or_folder(names) -> callable:
    """argparse type for ``--model``: one of ``names`` (the pretrained models attnlab ships), or
    the path of a local Hugging Face model folder (``config.json``, ``*.safetensors``,
    ``tokenizer.json``; see :func:`attnlab.models.load_pretrained`). Only whether the folder
    exists is checked here; what it holds is checked when the model loads."""
    def parse(text: str) -> str:
        if text in names:
            return text
        if text and os.path.isdir(text):
            return text
        if text and (os.sep in text or text.startswith(".") or os.path.exists(text)):
            raise argparse.ArgumentTypeError(f"{text!r} is not a folder; give a model folder "
                                             "(config.json, *.safetensors, tokenizer.json)")
        raise argparse.ArgumentTypeError(f"expected {', '.join(names)} or the path of a model "
                                         f"folder, got {text!r}")
    return parse


def model_label(name: str) -> str:
    """How a ``--model`` value is named in messages and pages: a folder by its own name."""
    return name if not os.path.isdir(name) else (os.path.basename(os.path.normpath(name)) or name)


def standard_input(purpose: str):
    """``sys.stdin``, or a UsageError saying ``purpose`` when there is none (closed by the caller)."""
    if sys.stdin is None or sys.stdin.closed:
        raise UsageError(f"standard input is closed; {purpose}")
    return sys.stdin


def read_lines(stream):
    """The lines of ``stream``; one-line UsageError when it cannot be read or is not text."""
    try:
        yield from stream
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read standard input: {err}") from None


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


def check_output(path: str | os.PathLike, flag: str, *, force: bool, suffix: str | None = None) -> Path:
    """Fail now, before any work, when the file ``path`` given to ``flag`` could not be written:
    a missing folder, a folder in the way, or (without ``--force``) a file there that attnlab
    did not write. Returns ``path`` as a ``Path``."""
    from attnlab.files import check_target

    try:
        return check_target(path, suffix=suffix, owned_only=not force)
    except OSError as err:
        raise UsageError(f"{flag}: {err}") from None


def add_force_argument(parser: argparse.ArgumentParser, what: str = "an output file") -> None:
    """``--force``: replace ``what`` even when attnlab did not write it (by default such a file
    is kept and the command stops before any work)."""
    parser.add_argument("--force", action="store_true",
                        help=f"replace {what} even when attnlab did not write it (without --force, "
                        "a file of yours is kept and the command stops before doing anything)")


def add_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    """The required ``--checkpoint DIR`` every command that reads a trained model takes."""
    parser.add_argument("--checkpoint", metavar="DIR", required=True,
                        help="a checkpoint folder, or a training --out folder (its latest checkpoint)")
