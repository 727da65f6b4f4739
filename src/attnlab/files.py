"""Writing files where the user said: whole or not at all, and never over a file of theirs.

Every file attnlab writes goes through :func:`write_atomically`: the content goes to a hidden
temporary file in the destination's folder, is flushed to disk (fsync) and renamed over the
destination, so a reader (or a crash) never sees half a file and a failure leaves the old file
as it was. The new file has the permissions a plain ``open(path, "w")`` would give it: the
user's umask for a new file, the old file's mode for a replaced one.

The files a user names (pages, pictures, JSON results) carry a mark in their first bytes that
says attnlab wrote them, so that a later run may replace them and nothing else:

- HTML pages: ``<meta name="generator" content="attnlab">`` in the ``<head>`` (:func:`write_html`);
- PNG pictures: a ``tEXt`` chunk ``Software: attnlab`` right after the header (:func:`write_png`);
- JSON files: ``"generator": "attnlab"`` as the first key of the object (:func:`write_json`).

:func:`written_by_attnlab` looks for the mark in the first :data:`MARK_WINDOW` bytes only, so a
large or hostile file costs one small read. With ``owned_only=True`` a writer refuses to replace
a file without the mark (:class:`NotOursError`, one line that says to use ``--force``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

from attnlab.errors import AttnlabError

GENERATOR = "attnlab"
HTML_MARK = f'<meta name="generator" content="{GENERATOR}">'
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_MARK = b"Software\0" + GENERATOR.encode()  # the body of the tEXt chunk
PNG_MARK_AT = len(PNG_SIGNATURE) + 25  # after the signature and the IHDR chunk (4+4+13+4 bytes)
JSON_MARK = b'{\n  "generator": "' + GENERATOR.encode() + b'"'  # how write_json's output begins
MARK_WINDOW = 4096


class NotOursError(AttnlabError, FileExistsError):
    """A file that attnlab did not write is where attnlab would write; nothing was written."""


def written_by_attnlab(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a regular file that carries attnlab's mark (see the module docstring).

    A symbolic link is never attnlab's (replacing it would drop the user's link), nor is
    anything that is not a regular file (a FIFO could block the read forever).
    """
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with open(path, "rb") as file:
            head = file.read(MARK_WINDOW)
    except OSError:
        return False
    mark_chunk = _png_chunk(b"tEXt", PNG_MARK)
    png_marked = head.startswith(PNG_SIGNATURE) and head[PNG_MARK_AT:].startswith(mark_chunk)
    return png_marked or head.startswith(JSON_MARK) or HTML_MARK.encode() in head


def check_target(path: str | os.PathLike, *, what: str | None = None, suffix: str | None = None,
                 owned_only: bool = False) -> Path:
    """Raise now the one-line ``OSError`` that writing ``path`` would raise, before any work.

    ``FileNotFoundError`` when its folder is missing, ``NotADirectoryError`` when that folder is a
    file, ``IsADirectoryError`` when ``path`` is a folder (suggesting a name ending in ``suffix``)
    and, with ``owned_only``, :class:`NotOursError` when a file that attnlab did not write is
    there. Each message reads "cannot write {what} to {path}: ..." ("cannot write {path}: ..."
    without ``what``). Returns ``path`` as a ``Path``.
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
    if owned_only and (path.exists() or path.is_symlink()) and not written_by_attnlab(path):
        raise NotOursError(f"{prefix}: attnlab did not write the file there; use --force to replace it")
    return path


def fsync(path: str | os.PathLike) -> None:
    """Flush the file or folder ``path`` to disk (for a folder: the names in it)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomically(path: str | os.PathLike, write: Callable[[Path], object], *,
                     what: str | None = None, suffix: str | None = None,
                     owned_only: bool = False) -> Path:
    """Call ``write(temporary_path)``, then rename that file over ``path``; returns ``path``.

    The temporary file is ``.NAME.<random>.tmp.SUFFIX`` beside ``path``, ending in ``suffix`` (or
    ``path``'s own), so a writer that infers the format from the name, like matplotlib's
    ``savefig``, still works.
    Raises what :func:`check_target` raises before calling ``write``, and an ``OSError`` of the
    same kind with a one-line message naming ``path`` when writing fails; either way the old
    file is untouched and no temporary file is left behind.
    """
    path = check_target(path, what=what, suffix=suffix, owned_only=owned_only)
    prefix = f"cannot write {what} to {path}" if what else f"cannot write {path}"
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{suffix or path.suffix}")
    try:
        write(temporary)
        if path.is_file():  # what open(path, "w") would keep: the old file's permissions
            os.chmod(temporary, stat.S_IMODE(path.stat().st_mode))
        fsync(temporary)
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise type(error)(f"{prefix}: {error.strerror or error}") from error
        raise
    with contextlib.suppress(OSError):  # some file systems cannot fsync a folder
        fsync(path.parent)  # make the rename itself durable
    return path


def write_text(path: str | os.PathLike, text: str, *, what: str | None = None,
               suffix: str | None = None, owned_only: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`write_atomically`); the path."""

    def write(temporary: Path) -> None:
        # Mode "x": a fresh file with the umask's permissions, never one that appeared meanwhile.
        with open(temporary, "x", encoding="utf-8") as file:
            file.write(text)

    return write_atomically(path, write, what=what, suffix=suffix, owned_only=owned_only)


def mark_html(page: str) -> str:
    """``page`` with :data:`HTML_MARK` as the first element of its ``<head>`` (unchanged when the
    head already holds it). Raises ``ValueError`` for a page without ``<head>``."""
    start = page.find("<head>")
    if start < 0:
        raise ValueError("the page has no <head> to carry attnlab's mark")
    if HTML_MARK in page[start:page.find("</head>", start)]:
        return page
    start += len("<head>")
    return f"{page[:start]}\n{HTML_MARK}{page[start:]}"


def write_html(path: str | os.PathLike, page: str, *, force: bool = False,
               what: str | None = "the page") -> Path:
    """Write the HTML ``page`` to ``path`` with attnlab's mark (:func:`mark_html`), atomically;
    the path. Without ``force``, a file there that attnlab did not write is kept and
    :class:`NotOursError` raised."""
    return write_text(path, mark_html(page), what=what, suffix=".html", owned_only=not force)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk: length, type, body, CRC-32 of type and body."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def mark_png(data: bytes) -> bytes:
    """The PNG ``data`` with ``Software: attnlab`` as a ``tEXt`` chunk right after its header
    chunk, in place of any other ``Software`` text (matplotlib writes its own). Raises
    ``ValueError`` when ``data`` is not a PNG."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG file: it lacks the PNG signature")
    chunks, at = [], len(PNG_SIGNATURE)
    while at + 12 <= len(data):
        (length,) = struct.unpack(">I", data[at:at + 4])
        end = at + 12 + length  # length, type, body, CRC
        kind, body = data[at + 4:at + 8], data[at + 8:end - 4]
        if not (kind == b"tEXt" and body.startswith(b"Software\0")):
            chunks.append(data[at:end])
        at = end
    header, rest = chunks[0], chunks[1:]
    return PNG_SIGNATURE + header + _png_chunk(b"tEXt", PNG_MARK) + b"".join(rest)


def write_png(path: str | os.PathLike, draw: Callable[[Path], object], *, force: bool = False,
              what: str | None = None) -> Path:
    """Write a PNG to ``path`` atomically: ``draw(temporary_path)`` writes it (the temporary name
    ends in ``.png``), then it gets attnlab's mark (:func:`mark_png`); the path. Without
    ``force``, a file there that attnlab did not write is kept and :class:`NotOursError` raised."""

    def write(temporary: Path) -> None:
        draw(temporary)
        temporary.write_bytes(mark_png(temporary.read_bytes()))

    return write_atomically(path, write, what=what, suffix=".png", owned_only=not force)


def write_json(path: str | os.PathLike, data: dict, *, force: bool = False,
               what: str | None = None) -> Path:
    """Write ``{"generator": "attnlab", **data}`` as indented JSON (UTF-8) to ``path``
    atomically; the path. Without ``force``, a file there that attnlab did not write is kept
    and :class:`NotOursError` raised."""
    text = json.dumps({"generator": GENERATOR, **data}, indent=2, ensure_ascii=False) + "\n"
    return write_text(path, text, what=what, suffix=".json", owned_only=not force)
