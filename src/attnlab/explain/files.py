"""The explainer's files: self-contained pages filled from templates, and written so that a
crash never leaves half of one.

This is the one home of templating and writing for every page attnlab makes (``attnlab
explain``, the translation and vision pages, and the live page of ``attnlab serve``):

- :func:`fill_template` reads ``templates/NAME``, expands ``{{include:OTHER}}`` (recursively),
  then fills ``{{title}}`` and ``{{data}}`` in one pass;
- :func:`write_atomically` / :func:`write_text` write a file under a temporary name and rename
  it over the destination.
"""

from __future__ import annotations

import html
import json
import os
import re
import secrets
from importlib import resources
from pathlib import Path

INCLUDE = re.compile(r"\{\{include:([A-Za-z0-9_.-]+)\}\}")
PLACEHOLDER = re.compile(r"\{\{(title|data)\}\}")
MAX_INCLUDE_DEPTH = 8


def read_template(name: str) -> str:
    """The text of ``templates/name``, with its ``{{include:OTHER}}`` placeholders replaced by
    the (likewise expanded) text of ``templates/OTHER``. Raises ``ValueError`` for an include
    cycle and ``FileNotFoundError`` for a missing template."""
    return _expand(name, ())


def _expand(name: str, chain: tuple[str, ...]) -> str:
    if name in chain or len(chain) >= MAX_INCLUDE_DEPTH:
        raise ValueError(f"template {name} includes itself: {' -> '.join((*chain, name))}")
    text = (resources.files(__package__) / "templates" / name).read_text(encoding="utf-8")
    return INCLUDE.sub(lambda match: _expand(match.group(1), (*chain, name)), text)


def script_json(data) -> str:
    """``data`` as compact JSON that is safe inside a ``<script>`` element and still the same JSON.

    ``<`` becomes ``\\u003c`` (so neither ``</script>`` nor ``<!--`` can end or bend the element)
    and ``>``/``&`` follow for symmetry; U+2028/U+2029 are escaped for old parsers. All of these
    can only occur inside JSON strings, where the escapes mean the same characters. Raises
    ``ValueError`` for what JSON cannot carry (NaN, infinity, a non-string key, an object).
    """
    try:
        payload = json.dumps(data, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as error:
        raise ValueError(f"data is not JSON-serialisable: {error}") from error
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        payload = payload.replace(char, escape)
    return payload


def fill_template(name: str, *, title: str, data) -> str:
    """``templates/name`` as one self-contained page.

    ``{{include:OTHER}}`` placeholders (CSS, scripts, shared HTML fragments) are expanded first;
    then ``{{title}}`` becomes ``title`` HTML-escaped and ``{{data}}`` becomes ``data`` as JSON
    safe inside a ``<script>`` element (:func:`script_json`). The second step is a single pass,
    so placeholder-looking text inside the title or the data stays as it is. Raises
    ``ValueError`` when ``data`` is not JSON-serialisable.
    """
    parts = {"title": html.escape(title), "data": script_json(data)}
    return PLACEHOLDER.sub(lambda match: parts[match.group(1)], read_template(name))


def write_atomically(path: str | os.PathLike, write, *, what: str | None = None,
                     suffix: str | None = None) -> Path:
    """Call ``write(temporary_path)``, then rename the file over ``path``; the path.

    A reader never sees half a file, and a failure leaves the old file as it was and no
    temporary file behind. Raises ``OSError`` (``FileNotFoundError``, ``NotADirectoryError``,
    ``IsADirectoryError``, ``PermissionError``...) with a one-line message naming ``path``:
    "cannot write {what} to {path}: ..." (or "cannot write {path}: ..." without ``what``);
    ``suffix`` (".html") is suggested when ``path`` is a folder.
    """
    path = Path(path)
    prefix = f"cannot write {what} to {path}" if what else f"cannot write {path}"
    if path.parent.exists() and not path.parent.is_dir():
        raise NotADirectoryError(f"{prefix}: {path.parent} is a file, not a folder")
    if not path.parent.exists():
        raise FileNotFoundError(f"{prefix}: the folder {path.parent} does not exist")
    if path.is_dir():
        ending = f" ending in {suffix}" if suffix else ""
        raise IsADirectoryError(f"{prefix}: it is a folder; give a file name{ending}")
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise type(error)(f"{prefix}: {error.strerror or error}") from error
    return path


def write_text(path: str | os.PathLike, text: str, *, what: str | None = None,
               suffix: str | None = None) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`write_atomically`); the path.

    The file gets the user's usual permissions (umask), like any file they create.
    """

    def write(temporary: Path) -> None:
        # Mode "x": a fresh file, never one that appeared under the temporary name meanwhile.
        with open(temporary, "x", encoding="utf-8") as file:
            file.write(text)

    return write_atomically(path, write, what=what, suffix=suffix)


def save_figure(figure, path: str | os.PathLike, *, dpi: int = 110) -> Path:
    """Save a matplotlib ``figure`` as a PNG at ``path`` (atomically, see :func:`write_atomically`)
    and close it; the path."""
    from matplotlib import pyplot as plt

    def save(temporary: Path) -> None:
        figure.savefig(temporary, format="png", dpi=dpi)

    try:
        return write_atomically(Path(path), save)
    finally:
        plt.close(figure)
