"""Where a Vision Transformer looks: attention rollout and the class token's attention, drawn.

A :class:`~attnlab.models.vit.ViT` decides from its class token (token 0), so the class token's
attention over the patches says which parts of the picture it read:

- **class-token attention** of layer ``l``, head ``h``: row 0 of that head's weights, over the
  patches (``N`` numbers summing, with the class token's weight on itself, to 1);
- **attention rollout** (Abnar & Zuidema, 2020) follows attention through all layers: each
  layer's weights averaged over heads, plus the identity for the residual connection, rows
  renormalised, then multiplied layer after layer::

      A_l = (mean_h W_l,h + I) / 2        R = A_L @ ... @ A_2 @ A_1        rollout = R[0, 1:]

  ``R[0, j]`` estimates how much of the class token's final state came from patch ``j``.

:func:`vision_data` gathers a picture, the prediction and these maps as plain lists;
:func:`write_vision_page` draws them as one self-contained HTML page (``templates/vision.html``),
:func:`write_vision_png` as a PNG of overlays, and :func:`write_confusion_png` draws a test set's
confusion matrix.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from attnlab.attention import record
from attnlab.explain.files import fill_template, save_figure
from attnlab.files import write_html


def attention_rollout(weights: torch.Tensor) -> torch.Tensor:
    """The rollout ``(T, T)`` of one picture's attention ``weights`` ``(layers, heads, T, T)``:
    ``R = A_L @ ... @ A_1`` with ``A_l = (mean over heads + I) / 2``, each row summing to 1."""
    if weights.dim() != 4 or weights.shape[-1] != weights.shape[-2]:
        raise ValueError(f"weights must be (layers, heads, T, T), got {tuple(weights.shape)}")
    weights = weights.double()
    tokens = weights.shape[-1]
    rollout = torch.eye(tokens, dtype=torch.float64)
    for layer in weights:
        mixed = (layer.mean(dim=0) + torch.eye(tokens, dtype=torch.float64)) / 2
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        rollout = mixed @ rollout
    return rollout


def png_data_url(pixels: torch.Tensor) -> str:
    """``(C, H, W)`` uint8 (C = 1 or 3) as a ``data:image/png;base64,...`` URL."""
    from PIL import Image

    array = pixels.permute(1, 2, 0).contiguous().numpy()
    picture = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@torch.no_grad()
def vision_data(model: torch.nn.Module, pixels: torch.Tensor, normalization, classes: Sequence[str], *,
                original: torch.Tensor | None = None, source: str = "", top: int = 3) -> dict:
    """Prediction and attention maps of ``model`` (a ViT) for one picture, JSON-ready.

    ``pixels`` ``(C, H, W)`` uint8 is the model's input before ``normalization``; ``original``
    ``(C, S, S)`` uint8 a larger view of the same square picture to draw on (default ``pixels``).
    Returns ``source``, ``classes``, ``predictions`` (the ``top`` classes with probabilities),
    ``probabilities`` (all classes), ``grid`` (patches a side), ``patch_size``, ``patch_overlap``
    (extra pixels each patch's token reads on every side), ``stem_channels`` (filters of the
    3 x 3 convolution before the patches; 0: none), ``image`` and
    ``input_image`` (PNG data URLs), ``rollout`` ``(N,)``, ``cls_attention``
    ``(layers, heads, N)`` (row 0 of each head over the patches) and ``cls_self``
    ``(layers, heads)`` (the class token's weight on itself).
    """
    config = model.config
    inputs = normalization(pixels[None])  # (1, C, H, W)
    with record(model) as recording:
        logits = model(inputs)
    probabilities = torch.softmax(logits[0].double(), dim=-1)
    # (layers, heads, T, T)
    weights = torch.stack([trace.attention.weights[0] for trace in recording.traces]).double()
    rollout = attention_rollout(weights)[0, 1:]
    order = probabilities.argsort(descending=True)[:top].tolist()
    return {
        "source": source,
        "classes": list(classes),
        "predictions": [{"class": classes[i], "probability": float(probabilities[i])} for i in order],
        "probabilities": probabilities.tolist(),
        "grid": config.grid_size,
        "patch_size": config.patch_size,
        "patch_overlap": config.patch_overlap,
        "stem_channels": config.stem_channels,
        "image": png_data_url(pixels if original is None else original),
        "input_image": png_data_url(pixels),
        "rollout": rollout.tolist(),
        "cls_attention": weights[:, :, 0, 1:].tolist(),
        "cls_self": weights[:, :, 0, 0].tolist(),
    }


def render_vision_page(data: dict) -> str:
    """The page for ``data`` (from :func:`vision_data`) as one HTML string, the data embedded as
    JSON in ``<script type="application/json" id="vision-data">``."""
    best = data["predictions"][0]
    title = f"attnlab classify: {best['class']} ({100 * best['probability']:.1f}%)"
    return fill_template("vision.html", title=title, data=data)


def write_vision_page(data: dict, path: str | os.PathLike, *, force: bool = False) -> Path:
    """Write the self-contained page of ``data`` to ``path`` (atomically, never over a file
    attnlab did not write unless ``force``: see :func:`attnlab.files.write_html`); its path."""
    return write_html(path, render_vision_page(data), force=force)


def _overlay(axes, image, values: Sequence[float], grid: int, title: str) -> None:
    """Draw ``image`` (H, W[, 3]) with the ``grid x grid`` map ``values`` over it, its colours
    running from the map's smallest value to its largest (so a nearly even map still shows
    which patches stand out)."""
    import numpy as np

    cells = np.asarray(values, dtype=float).reshape(grid, grid)
    height, width = image.shape[:2]
    axes.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
    stretched = (cells - cells.min()) / max(cells.max() - cells.min(), 1e-12)
    axes.imshow(stretched, cmap="inferno", alpha=0.55, vmin=0, vmax=1,
                extent=(-0.5, width - 0.5, height - 0.5, -0.5), interpolation="nearest")
    axes.set_title(title, fontsize=9)
    axes.set_xticks([])
    axes.set_yticks([])


def write_vision_png(data: dict, pixels: torch.Tensor, path: str | os.PathLike,
                     original: torch.Tensor | None = None, *, force: bool = False) -> Path:
    """Overlays on the picture as one PNG: the picture, the rollout, then the last layer's
    class-token attention of every head (``pixels``/``original`` as for :func:`vision_data`).
    Never replaces a file attnlab did not write, unless ``force``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    picture = (pixels if original is None else original).permute(1, 2, 0).numpy()
    picture = picture[:, :, 0] if picture.shape[2] == 1 else picture
    last = data["cls_attention"][-1]
    panels = 2 + len(last)
    figure, axes = plt.subplots(1, panels, figsize=(2.3 * panels, 2.9), layout="constrained")
    axes[0].imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=255)
    best = data["predictions"][0]
    axes[0].set_title(f"{best['class']} {100 * best['probability']:.1f}%", fontsize=9)
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    _overlay(axes[1], picture, data["rollout"], data["grid"], "attention rollout\n(all layers)")
    for head, values in enumerate(last):
        _overlay(axes[2 + head], picture, values, data["grid"],
                 f"last layer, head {head + 1}\nclass token → patches")

    return save_figure(figure, path, force=force)


def write_confusion_png(matrix: torch.Tensor, classes: Sequence[str], path: str | os.PathLike, *,
                        title: str = "", force: bool = False) -> Path:
    """A confusion matrix ``(classes, classes)`` (rows: true class, columns: predicted; counts)
    as a PNG heatmap with the counts written in, rows also shown as percentages by colour.
    Never replaces a file attnlab did not write, unless ``force``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    counts = matrix.double()
    share = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    size = len(classes)
    figure, axes = plt.subplots(figsize=(1.0 + 0.75 * size, 0.8 + 0.7 * size), layout="constrained")
    image = axes.imshow(share.numpy(), cmap="Blues", vmin=0, vmax=1)
    for row in range(size):
        for col in range(size):
            value = int(counts[row, col])
            if value:
                axes.text(col, row, str(value), ha="center", va="center", fontsize=8,
                          color="white" if share[row, col] > 0.5 else "black")
    axes.set_xticks(range(size), classes, rotation=45, ha="right", fontsize=9)
    axes.set_yticks(range(size), classes, fontsize=9)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(title or "confusion matrix (colour: share of the true class)", fontsize=10)
    figure.colorbar(image, ax=axes, label="share of the row", shrink=0.8)

    return save_figure(figure, path, force=force)
