"""The self-contained HTML page of ``attnlab explain``.

One file: ``templates/page.html`` includes the CSS, the shared body (``explain_body.html``, also
used by the live page of ``attnlab serve``) and the JavaScript, and the explanation data (the
dict of :func:`attnlab.explain.collect.build_explanation`, schema version 1) is embedded as JSON
in ``<script type="application/json" id="attnlab-data">``. The page draws everything itself
(SVG and canvas, no libraries), makes no network request and opens straight from disk.
Templating lives in :mod:`attnlab.explain.files`, writing in :mod:`attnlab.files` (the page
carries attnlab's mark, so a later run may replace it and no file of the user's).
"""

from __future__ import annotations

import os
from pathlib import Path

from attnlab.explain.files import fill_template
from attnlab.explain.i18n import DEFAULT_LANGUAGE, page_strings
from attnlab.files import write_html

SCHEMA_VERSION = 1
REQUIRED_KEYS = ("version", "text", "model", "tokens", "special", "word_ids", "kv_head_of", "selected",
                 "dims_shown", "scale", "attention", "walkthrough", "cost")


def check_explanation(data: dict) -> None:
    """Raise ``ValueError`` when ``data`` lacks a key of the schema or has another version."""
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise ValueError(f"explanation data lacks the key(s) {', '.join(missing)}")
    if data["version"] != SCHEMA_VERSION:
        raise ValueError(f"explanation data has version={data['version']!r}, the page reads {SCHEMA_VERSION}")


def render_page(data: dict, *, lang: str = DEFAULT_LANGUAGE) -> str:
    """The page for ``data`` as one HTML string, written in ``lang`` ("en" or "zh"; the reader
    may switch it, or ask with ``?lang=``; the browser's own language does not override it).

    Raises ``ValueError`` when ``data`` lacks a key of the schema, has another schema version,
    or holds something JSON cannot carry (NaN, infinity, a non-string key...), and for a
    language attnlab has no table for.
    """
    check_explanation(data)
    strings = page_strings(lang, follow_browser=False)
    try:
        return fill_template("page.html", title=f"attnlab explain: {data['text']}", data=data,
                             strings=strings)
    except ValueError as error:
        raise ValueError(f"explanation {error}") from error


def write_page(data: dict, path: str | os.PathLike, *, force: bool = False,
               lang: str = DEFAULT_LANGUAGE) -> Path:
    """Write the page for ``data`` to ``path`` and return the path.

    The file is written next to its destination under a temporary name, then renamed over it,
    so a reader never sees half a page. Raises ``ValueError`` for bad data (see
    :func:`render_page`) and ``OSError`` with a one-line message naming the path when it cannot
    be written (missing folder, no permission, a folder in the way...), among them
    :class:`attnlab.files.NotOursError` for a file there that attnlab did not write (replaced
    only with ``force``). ``lang``: see :func:`render_page`.
    """
    return write_html(path, render_page(data, lang=lang), force=force)
