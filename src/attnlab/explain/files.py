"""Writing the explainer's files so that a crash never leaves half of one."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


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
