"""What the explorer's "Recognise a picture" part computes: one run of a Vision Transformer on a
picture, with or without some patches hidden, and what hiding them changed.

- :func:`classify_picture`: ONE forward pass under :func:`attnlab.attention.record` (through
  :func:`attnlab.explain.vision.vision_data`) and, when patches are hidden, under
  :func:`attnlab.attention.edit`: probabilities, the attention rollout, the class token's
  attention per layer and head, and what the run cost.
- :func:`compare_pictures`: how every class's probability moved between two such runs.

Patch ``i`` (row-major, ``0 .. grid² - 1``) is token ``i + 1``: token 0 is the class token, which
the model reads its answer from, so it cannot be hidden. Hiding patch ``i`` removes key ``i + 1``
from every query of every layer and head: no token may take anything from it any more (its own
query still runs, so the patch still changes, but nobody reads it). The JSON shapes are
documented in ``docs/serve-api.md``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext

import torch

from attnlab.attention import edit
from attnlab.explain.vision import vision_data


def check_hidden_patches(hidden: Sequence[int], patches: int) -> tuple[int, ...]:
    """``hidden`` as sorted unique patch indices; ``ValueError`` naming the first index that is not
    a whole number from 0 to ``patches - 1``."""
    for index in hidden:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < patches:
            raise ValueError(f"patch {index!r} does not exist: this model cuts the picture into "
                             f"{patches} patches, numbered 0 to {patches - 1}")
    return tuple(sorted(set(hidden)))


def picture_cost(config, elapsed_ms: float) -> dict:
    """What one run of a ViT with ``config`` computes: ``tokens`` (patches + the class token),
    ``patches``, ``layers``, ``heads``, ``attention_scores`` (every head of every layer scores
    every token against every token: ``layers x heads x tokens²``) and ``elapsed_ms``."""
    tokens = config.num_patches + 1
    return {"tokens": tokens, "patches": config.num_patches, "layers": config.num_layers,
            "heads": config.num_heads, "attention_scores": config.num_layers * config.num_heads * tokens ** 2,
            "elapsed_ms": round(elapsed_ms, 2)}


@torch.no_grad()
def classify_picture(model: torch.nn.Module, pixels: torch.Tensor, normalization, classes: Sequence[str], *,
                     hidden_patches: Sequence[int] = (), original: torch.Tensor | None = None,
                     top: int = 3) -> dict:
    """One run of ``model`` (a :class:`~attnlab.models.vit.ViT`) on one picture, JSON-ready.

    ``pixels`` ``(C, H, W)`` uint8 is the model's input before ``normalization``; ``original``
    ``(C, S, S)`` uint8 a larger view of the same square picture (as
    :func:`attnlab.data.images.load_image` returns both). ``hidden_patches``: patch indices
    hidden from every query (see the module docstring).

    Returns :func:`~attnlab.explain.vision.vision_data`'s dict (``probabilities`` of all
    classes, the ``top`` ``predictions``, ``grid``, ``patch_size``, ``image`` and
    ``input_image`` PNG data URLs, ``rollout`` ``(N,)``, ``cls_attention`` ``(layers, heads, N)``,
    ``cls_self`` ``(layers, heads)``), computed with the patches hidden, plus ``hidden`` (sorted
    patch indices) and ``cost`` (:func:`picture_cost`, timed over the run and its maps).
    Raises ``ValueError`` for a patch index out of range (before any model work).
    """
    config = model.config
    hidden = check_hidden_patches(hidden_patches, config.num_patches)
    start = time.perf_counter()
    # Token 0 is the class token, so patch i is key i + 1.
    hiding = edit(model, hide_keys=[index + 1 for index in hidden]) if hidden else nullcontext()
    with hiding:
        data = vision_data(model, pixels, normalization, classes, original=original,
                           top=min(top, len(classes)))
    data.pop("source")  # a picture from the browser has no file name
    data["hidden"] = list(hidden)
    data["cost"] = picture_cost(config, (time.perf_counter() - start) * 1000)
    return data


def compare_pictures(original: dict, edited: dict) -> list[dict]:
    """How each class's probability moved from ``original`` to ``edited`` (two results of
    :func:`classify_picture` for the same picture and model): ``[{"class", "before", "after",
    "change"}]``, ``change = after - before``, the biggest moves (either way) first.
    Raises ``ValueError`` when the two runs name different classes."""
    if original["classes"] != edited["classes"]:
        raise ValueError("the two runs must come from the same model: their classes differ")
    changes = [{"class": name, "before": before, "after": after, "change": after - before}
               for name, before, after in zip(original["classes"], original["probabilities"],
                                              edited["probabilities"], strict=True)]
    return sorted(changes, key=lambda item: -abs(item["change"]))
