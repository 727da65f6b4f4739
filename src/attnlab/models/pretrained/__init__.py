"""Pretrained transformers loaded into attnlab's own modules, from packages (never a hub)."""

from __future__ import annotations

from attnlab.models.pretrained.packages import MissingPackageError, package_folder

PRETRAINED = {
    "minilm": "all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers x 12 heads, 22.7 M parameters)",
    "smollm2": "SmolLM2-135M-Instruct chat model (LLaMA, 30 layers x 9 heads, 3 key/value heads)",
}


def load_pretrained(name: str):
    """``(model, tokenizer)`` for ``"minilm"`` or ``"smollm2"``, in eval mode, float32.

    Raises ``ValueError`` for an unknown name and :class:`MissingPackageError` when the package
    holding the weights is not installed.
    """
    if name == "minilm":
        from attnlab.models.pretrained.minilm import load_minilm

        return load_minilm()
    if name == "smollm2":
        from attnlab.models.pretrained.smollm2 import load_smollm2

        return load_smollm2()
    raise ValueError(f"unknown pretrained model {name!r}; choose one of: {', '.join(PRETRAINED)}")


__all__ = ["PRETRAINED", "MissingPackageError", "load_pretrained", "package_folder"]
