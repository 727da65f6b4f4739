"""The explainer's files: self-contained pages filled from templates, and PNG figures.

This is the one home of templating for every page attnlab makes (``attnlab
explain``, the translation and vision pages, and the live page of ``attnlab serve``):

- :func:`fill_template` reads ``templates/NAME``, expands ``{{include:OTHER}}`` (recursively),
  then fills ``{{title}}``, ``{{data}}`` and ``{{strings}}`` in one pass;
- :func:`save_figure` saves a matplotlib figure as a PNG.

Writing itself (atomic, and never over a file attnlab did not write) lives in
:mod:`attnlab.files`.
"""

from __future__ import annotations

import html
import json
import os
import re
from importlib import resources
from pathlib import Path

from attnlab.files import write_png

__all__ = ["fill_template", "read_template", "save_figure", "script_json"]

INCLUDE = re.compile(r"\{\{include:([A-Za-z0-9_.-]+)\}\}")
PLACEHOLDER = re.compile(r"\{\{(title|data|strings)\}\}")
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


def fill_template(name: str, *, title: str, data, strings: dict | None = None) -> str:
    """``templates/name`` as one self-contained page.

    ``{{include:OTHER}}`` placeholders (CSS, scripts, shared HTML fragments) are expanded first;
    then ``{{title}}`` becomes ``title`` HTML-escaped and ``{{data}}`` becomes ``data`` as JSON
    safe inside a ``<script>`` element (:func:`script_json`). The second step is a single pass,
    so placeholder-looking text inside the title or the data stays as it is. Raises
    ``ValueError`` when ``data`` is not JSON-serialisable. ``{{strings}}`` becomes the string
    tables the page's text comes from (``strings``, else
    :func:`attnlab.explain.i18n.page_strings` in English).
    """
    from attnlab.explain.i18n import page_strings

    parts = {"title": html.escape(title), "data": script_json(data),
             "strings": script_json(strings if strings is not None else page_strings())}
    return PLACEHOLDER.sub(lambda match: parts[match.group(1)], read_template(name))


def save_figure(figure, path: str | os.PathLike, *, dpi: int = 110, force: bool = False) -> Path:
    """Save a matplotlib ``figure`` as a PNG at ``path`` with attnlab's mark, atomically (see
    :func:`attnlab.files.write_png`: without ``force`` a file there that attnlab did not write
    is kept and :class:`attnlab.files.NotOursError` raised), and close it; the path."""
    from matplotlib import pyplot as plt

    try:
        return write_png(path, lambda temporary: figure.savefig(temporary, format="png", dpi=dpi),
                         force=force)
    finally:
        plt.close(figure)
