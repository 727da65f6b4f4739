"""The self-contained HTML page of ``attnlab explain``.

One file: the CSS and JavaScript of ``templates/`` are inlined and the explanation data (the
dict of :func:`attnlab.explain.collect.build_explanation`, schema version 1) is embedded as JSON
in ``<script type="application/json" id="attnlab-data">``. The page draws everything itself
(SVG and canvas, no libraries), makes no network request and opens straight from disk.
"""

from __future__ import annotations

import html
import json
import os
import re
import secrets
from importlib import resources
from pathlib import Path

SCHEMA_VERSION = 1
REQUIRED_KEYS = ("version", "text", "model", "tokens", "special", "word_ids", "kv_head_of", "selected",
                 "dims_shown", "scale", "attention", "walkthrough", "cost")
PLACEHOLDER = re.compile(r"\{\{(title|css|js|data)\}\}")


def render_page(data: dict) -> str:
    """The page for ``data`` as one HTML string.

    Raises ``ValueError`` when ``data`` lacks a key of the schema, has another schema version,
    or holds something JSON cannot carry (NaN, infinity, a non-string key...).
    """
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise ValueError(f"explanation data lacks the key(s) {', '.join(missing)}")
    if data["version"] != SCHEMA_VERSION:
        raise ValueError(f"explanation data has version={data['version']!r}, the page reads {SCHEMA_VERSION}")
    try:
        payload = json.dumps(data, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as error:
        raise ValueError(f"explanation data is not JSON-serialisable: {error}") from error

    template = _template("page.html")
    parts = {
        "title": html.escape(f"attnlab explain: {data['text']}"),
        "css": _template("page.css"),
        "js": _template("page.js"),
        "data": _script_safe(payload),
    }
    # One pass, so a placeholder-looking string inside the data or the scripts stays as it is.
    return PLACEHOLDER.sub(lambda match: parts[match.group(1)], template)


def write_page(data: dict, path: str | os.PathLike) -> Path:
    """Write the page for ``data`` to ``path`` and return the path.

    The file is written next to its destination under a temporary name, then renamed over it,
    so a reader never sees half a page. Raises ``ValueError`` for bad data (see
    :func:`render_page`) and ``OSError`` with a one-line message naming the path when it cannot
    be written (missing folder, no permission, a folder in the way...).
    """
    page = render_page(data)
    path = Path(path)
    if path.parent.exists() and not path.parent.is_dir():
        raise NotADirectoryError(f"cannot write the page to {path}: {path.parent} is a file, not a folder")
    if not path.parent.exists():
        raise FileNotFoundError(f"cannot write the page to {path}: the folder {path.parent} does not exist")
    if path.is_dir():
        raise IsADirectoryError(
            f"cannot write the page to {path}: it is a folder; give a file name ending in .html"
        )
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        # Mode "x" creates the file with the user's usual permissions (umask), unlike mkstemp's 0600.
        with open(temporary, "x", encoding="utf-8") as file:
            file.write(page)
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise type(error)(f"cannot write the page to {path}: {error.strerror or error}") from error
    return path


def _template(name: str) -> str:
    return (resources.files(__package__) / "templates" / name).read_text(encoding="utf-8")


def _script_safe(payload: str) -> str:
    """``payload`` made safe inside a ``<script>`` element and still the same JSON.

    ``<`` becomes ``\\u003c`` (so neither ``</script>`` nor ``<!--`` can end or bend the element)
    and ``>``/``&`` follow for symmetry; U+2028/U+2029 are escaped for old parsers. All of these
    can only occur inside JSON strings, where the escapes mean the same characters.
    """
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        payload = payload.replace(char, escape)
    return payload
