"""The explainer's files: self-contained pages filled from templates, and written so that a
crash never leaves half of one."""

from __future__ import annotations

import html
import json
import os
import secrets
from importlib import resources
from pathlib import Path


def _template(name: str) -> str:
    return (resources.files(__package__) / "templates" / name).read_text(encoding="utf-8")


def fill_template(name: str, *, title: str, data: dict) -> str:
    """``templates/name`` with ``{{title}}`` (HTML-escaped), ``{{common_css}}`` (the shared
    ``common.css``) and ``{{data}}``: ``data`` as JSON, safe inside a ``<script>`` element."""
    payload = json.dumps(data, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    # "<" cannot appear in JSON outside strings, where "\u003c" means the same character: this
    # keeps "</script>" inside a string from closing the element.
    payload = payload.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return (_template(name).replace("{{common_css}}", _template("common.css"))
            .replace("{{title}}", html.escape(title)).replace("{{data}}", payload))


def write_atomically(path: Path, write) -> Path:
    """Call ``write(temporary_path)`` then rename the file over ``path``; OSError with a one-line
    message naming ``path`` when that fails (missing folder, a folder in the way, no permission)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder, give a file name")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: the folder {path.parent} does not exist")
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise type(error)(f"cannot write {path}: {error.strerror or error}") from error
    return path


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
