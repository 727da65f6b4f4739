"""PNG heatmaps of an explanation: one head in detail, and every head of its layer side by side.

Rows are the tokens doing the looking (queries), columns the tokens looked at (keys); a cell is
the attention weight, so each row sums to 1. Cells a decoder may not attend to (the future) are
grey. Drawn with matplotlib's Agg backend: no display needed.
"""

from __future__ import annotations

import math
from pathlib import Path

from attnlab.explain.summary import shown_token
from attnlab.files import check_target, write_png

MASKED_COLOUR = "#c8c8c8"
COLOUR_MAP = "viridis"
DPI = 120
ANNOTATE_UP_TO = 24  # write the percentages into the cells of heatmaps this small
INCHES_PER_TOKEN = 0.3


def _figure_modules():
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    return plt, Patch


def _label(token: str) -> str:
    """A token as a tick label: visible whitespace, and no ``$`` that matplotlib reads as math."""
    return shown_token(token).replace("$", r"\$")


def _head_arrays(data: dict, layer: int, head: int):
    """``(weights, masked)`` numpy arrays ``(seq, seq)`` of one head; masked = never attended."""
    import numpy as np

    weights = np.array(data["attention"][layer][head], dtype=float)
    masked = np.array([[s is None for s in row] for row in data["walkthrough"][layer][head]["scores"]])
    return weights, masked


def _check_head(data: dict, layer: int, head: int) -> None:
    layers, heads = data["model"]["num_layers"], data["model"]["num_heads"]
    if not 0 <= layer < layers or not 0 <= head < heads:
        raise ValueError(f"layer={layer}, head={head} is out of range: the model has layers 0 to "
                         f"{layers - 1} and heads 0 to {heads - 1}")


def _save(fig, path: Path, force: bool) -> None:
    """Write ``fig`` as the PNG ``path`` (atomically, with attnlab's mark) and close it."""
    plt, _ = _figure_modules()
    try:
        write_png(path, lambda temporary: fig.savefig(temporary, dpi=DPI, bbox_inches="tight"), force=force)
    finally:
        plt.close(fig)


def _plot_head(data: dict, layer: int, head: int, path: Path, force: bool) -> None:
    import numpy as np

    plt, Patch = _figure_modules()
    weights, masked = _head_arrays(data, layer, head)
    labels = [_label(t) for t in data["tokens"]]
    n = len(labels)
    side = max(5.0, INCHES_PER_TOKEN * n + 2.5)
    font = max(6.0, min(10.0, 12.0 - n / 8))
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    cmap = plt.get_cmap(COLOUR_MAP).with_extremes(bad=MASKED_COLOUR)
    image = ax.imshow(np.ma.masked_where(masked, weights), cmap=cmap, vmin=0.0,
                      vmax=max(float(weights.max()), 1e-6), interpolation="nearest")
    ax.set_xticks(range(n), labels, rotation=90, fontsize=font)
    ax.set_yticks(range(n), labels, fontsize=font)
    ax.set_xlabel("word looked at (key)")
    ax.set_ylabel("word looking (query)")
    if n <= ANNOTATE_UP_TO:
        top = weights.max()
        for i, j in zip(*np.nonzero(weights >= 0.05), strict=True):
            dark_cell = weights[i, j] < 0.6 * top  # viridis is dark at the low end
            ax.text(j, i, f"{100 * weights[i, j]:.0f}", ha="center", va="center",
                    fontsize=font * 0.75, color="white" if dark_cell else "black")
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label("attention weight")
    title = f"{data['model']['title']}: layer {layer}, head {head}"
    subtitle = "each row sums to 1" + (" (numbers in cells: %)" if n <= ANNOTATE_UP_TO else "")
    ax.set_title(f"{title}\n{subtitle}", fontsize=11, pad=24 if masked.any() else 10)
    if masked.any():
        note = Patch(facecolor=MASKED_COLOUR, edgecolor="grey",
                     label="grey: future tokens, hidden by the causal mask")
        ax.legend(handles=[note], loc="lower left", bbox_to_anchor=(0.0, 1.0), frameon=False,
                  fontsize=9, borderaxespad=0.2)
    _save(fig, path, force)


def _plot_layer(data: dict, layer: int, chosen_head: int, path: Path, force: bool) -> None:
    import numpy as np

    plt, Patch = _figure_modules()
    heads = data["model"]["num_heads"]
    n = len(data["tokens"])
    cols = math.ceil(math.sqrt(heads))
    rows = math.ceil(heads / cols)
    cell = max(2.2, 0.07 * n + 1.4)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * cell + 1.2, rows * cell + 1.2), squeeze=False,
                             layout="constrained")
    cmap = plt.get_cmap(COLOUR_MAP).with_extremes(bad=MASKED_COLOUR)
    for index, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if index >= heads:
            ax.set_visible(False)
            continue
        weights, masked = _head_arrays(data, layer, index)
        image = ax.imshow(np.ma.masked_where(masked, weights), cmap=cmap, vmin=0.0, vmax=1.0,
                          interpolation="nearest")
        shown = index == chosen_head
        ax.set_title(f"head {index}" + (" (shown)" if shown else ""), fontsize=10,
                     color="crimson" if shown else "black", fontweight="bold" if shown else "normal")
        if shown:
            for spine in ax.spines.values():
                spine.set_edgecolor("crimson")
                spine.set_linewidth(2.5)
    bar = fig.colorbar(image, ax=axes, shrink=0.6)
    bar.set_label("attention weight")
    fig.suptitle(f"{data['model']['title']}: all {heads} heads of layer {layer}\n"
                 "rows: word looking (query), columns: word looked at (key), tokens in text order",
                 fontsize=11)
    if data["model"]["causal"]:
        note = Patch(facecolor=MASKED_COLOUR, edgecolor="grey", label="grey: future tokens (causal mask)")
        fig.legend(handles=[note], loc="outside lower center", frameon=False, fontsize=9)
    _save(fig, path, force)


def heatmap_paths(data: dict, out_dir, layer: int, head: int) -> list[Path]:
    """The two PNGs :func:`write_heatmaps` writes into ``out_dir`` for ``(layer, head)``."""
    folder, name = Path(out_dir), data["model"]["name"]
    return [folder / f"{name}_layer{layer}_head{head}.png", folder / f"{name}_layer{layer}_all_heads.png"]


def write_heatmaps(data: dict, out_dir, layer: int, head: int, *, force: bool = False) -> list[Path]:
    """Write two PNGs into ``out_dir`` (created if missing) and return their paths:

    - ``<model>_layer<L>_head<H>.png``: head ``(layer, head)`` with token labels on both axes,
      a colour bar, percentages in the cells for short texts, grey masked cells;
    - ``<model>_layer<L>_all_heads.png``: every head of ``layer`` on one colour scale (0 to 1),
      the chosen head framed.

    Raises ``ValueError`` for a layer or head out of range and ``OSError`` when the folder
    cannot be created or written, among them :class:`attnlab.files.NotOursError`, before either
    picture is written, when a file attnlab did not write has one of the names (unless ``force``).
    """
    _check_head(data, layer, head)
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    head_png, layer_png = heatmap_paths(data, folder, layer, head)
    for path in (head_png, layer_png):
        check_target(path, suffix=".png", owned_only=not force)
    _plot_head(data, layer, head, head_png, force)
    _plot_layer(data, layer, head, layer_png, force)
    return [head_png, layer_png]
