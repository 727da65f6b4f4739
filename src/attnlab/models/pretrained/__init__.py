"""Pretrained transformers loaded into attnlab's own modules, from packages or local folders
(never a hub)."""

from __future__ import annotations

import os
from pathlib import Path

from attnlab.errors import AttnlabError
from attnlab.models.pretrained.packages import MissingPackageError, package_folder

PRETRAINED = {
    "minilm": "all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers x 12 heads, 22.7 M parameters)",
    "smollm2": "SmolLM2-135M-Instruct chat model (LLaMA, 30 layers x 9 heads, 3 key/value heads)",
}


class UnknownModelError(AttnlabError, ValueError):
    """A model name that is neither a pretrained one nor a folder."""


def is_folder_path(name_or_path: str | os.PathLike) -> bool:
    """Whether ``name_or_path`` means a folder rather than a name: a path object, a string with
    a path separator, or an existing directory."""
    if not isinstance(name_or_path, str):
        return isinstance(name_or_path, os.PathLike)
    separators = {os.sep, os.altsep or os.sep, "/"}
    return any(sep in name_or_path for sep in separators) or Path(name_or_path).is_dir()


def load_pretrained(name_or_path: str | os.PathLike):
    """``(model, tokenizer)`` for ``"minilm"``, ``"smollm2"`` or a Hugging Face model folder,
    in eval mode, float32.

    A name in :data:`PRETRAINED` wins over a folder of that name in the working directory; any
    other folder path (see :func:`is_folder_path`) loads through
    :func:`attnlab.models.hf.load_folder`, which says what it supports and refuses. Raises
    :class:`UnknownModelError` for any other name, :class:`MissingPackageError` when the package
    holding the weights is not installed, and ``ModelFolderError`` for a folder it cannot load.
    """
    if name_or_path in PRETRAINED:
        if name_or_path == "minilm":
            from attnlab.models.pretrained.minilm import load_minilm

            return load_minilm()
        from attnlab.models.pretrained.smollm2 import load_smollm2

        return load_smollm2()
    if is_folder_path(name_or_path):
        from attnlab.models.hf import load_folder

        return load_folder(name_or_path)
    raise UnknownModelError(f"unknown pretrained model {name_or_path!r:.80}; choose one of: "
                            f"{', '.join(PRETRAINED)}, or give the path of a model folder")


__all__ = ["PRETRAINED", "MissingPackageError", "UnknownModelError", "is_folder_path", "load_pretrained",
           "package_folder"]
