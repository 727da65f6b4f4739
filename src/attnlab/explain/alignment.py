"""Word alignment of a translation: where each target token looked in the source.

:func:`alignment_data` runs the translator teacher-forced on (source, translation) and keeps its
cross-attention as plain lists; :func:`write_alignment_page` turns that into one self-contained
HTML heatmap (``templates/alignment.html``) and :func:`write_alignment_png` into a matplotlib
figure. Rows are target tokens, columns source tokens; row ``t`` is the attention the decoder
used while writing target token ``t`` (its input was BOS and the targets before ``t``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from attnlab.explain.files import fill_template, save_figure
from attnlab.files import write_html

#: Shown instead of ``<|endoftext|>``, which ends the source and the translation.
END_LABEL = "⟨end⟩"
#: Shown for the padding id, which lies outside the tokenizer's vocabulary (a poorly trained
#: model may still write it; :func:`~attnlab.train.translate_task.translate` drops it).
PAD_LABEL = "⟨pad⟩"


def token_labels(tokenizer, ids: Sequence[int], eos_id: int) -> list[str]:
    """Readable token texts: the BPE's leading space stripped, EOS as :data:`END_LABEL`, ids
    outside the vocabulary (padding) as :data:`PAD_LABEL`."""
    known = [i for i in ids if i < tokenizer.vocab_size]
    strings = iter(tokenizer.token_strings(known))
    labels = []
    for index in ids:
        if index >= tokenizer.vocab_size:
            labels.append(PAD_LABEL)
            continue
        text = next(strings)
        labels.append(END_LABEL if index == eos_id else text.replace("Ġ", " ").strip() or text)
    return labels


@torch.no_grad()
def alignment_data(model: torch.nn.Module, tokenizer, source_text: str,
                   translation_ids: Sequence[int]) -> dict:
    """The cross-attention of ``model`` between ``source_text`` and its translation.

    ``translation_ids`` are the translation's token ids (BOS left out; padding ids dropped; an EOS
    is appended when missing, since the model's last step writes it). The source is built as
    :func:`attnlab.train.translate_task.translate` builds it (tokens truncated to the model's
    length, then EOS). Returns a JSON-ready dict:

    - ``architecture``: ``"transformer"`` or ``"lstm"``;
    - ``source_text`` and ``translation_text``;
    - ``source_tokens`` ``(Ls,)`` and ``target_tokens`` ``(Lt,)``: readable token texts;
    - ``weights``: ``(Lt, Ls)`` nested lists, each row summing to 1 (for the Transformer the mean
      over heads of the last decoder layer);
    - ``layers``: for the Transformer ``(layers, heads, Lt, Ls)`` nested lists, else absent.
    """
    config = model.config
    targets = [int(t) for t in translation_ids if int(t) < tokenizer.vocab_size]
    if not targets or targets[-1] != config.eos_id:
        targets.append(config.eos_id)
    source = [*tokenizer.encode(source_text)[:config.max_positions - 1], config.eos_id]
    targets = targets[:config.max_positions]
    device = next(model.parameters()).device
    src = torch.tensor(source, device=device)
    tgt_in = torch.tensor([config.bos_id, *targets[:-1]], device=device)

    data = {"source_text": source_text,
            "translation_text": tokenizer.decode(targets[:-1]).strip(),
            "source_tokens": token_labels(tokenizer, source, config.eos_id),
            "target_tokens": token_labels(tokenizer, targets, config.eos_id)}
    if hasattr(model, "cross_attention_weights"):
        every = model.cross_attention_weights(src, tgt_in).float().cpu()   # (layers, heads, Lt, Ls)
        data.update(architecture="transformer", weights=every[-1].mean(dim=0).tolist(),
                    layers=every.tolist())
    else:
        data.update(architecture="lstm", weights=model.attention_weights(src, tgt_in).float().cpu().tolist())
    return data


def render_alignment_page(data: dict) -> str:
    """The alignment page for ``data`` (from :func:`alignment_data`) as one HTML string; the data
    is embedded as JSON in ``<script type="application/json" id="alignment-data">``."""
    return fill_template("alignment.html", title=f"attnlab alignment: {data['source_text']}", data=data)


def write_alignment_page(data: dict, path: str | os.PathLike, *, force: bool = False) -> Path:
    """Write the self-contained alignment page of ``data`` to ``path`` (atomically, never over a
    file attnlab did not write unless ``force``: see :func:`attnlab.files.write_html`); its path."""
    return write_html(path, render_alignment_page(data), force=force)


def write_alignment_png(data: dict, path: str | os.PathLike, *, force: bool = False) -> Path:
    """Write the alignment heatmap of ``data`` (target tokens down, source tokens across, a colour
    bar) as a PNG to ``path`` (atomically, never over a file attnlab did not write unless
    ``force``); its path."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    source, target = data["source_tokens"], data["target_tokens"]
    width = min(24.0, 2.5 + 0.45 * len(source))
    height = min(24.0, 2.0 + 0.35 * len(target))
    figure, axes = plt.subplots(figsize=(width, height), layout="constrained")
    # The colour scale ends at the largest weight: a spread-out alignment stays visible.
    top = max(max(row) for row in data["weights"])
    image = axes.imshow(data["weights"], cmap="Blues", vmin=0.0, vmax=top, aspect="auto")
    axes.set_xticks(range(len(source)), source, rotation=60, ha="right", fontsize=9)
    axes.set_yticks(range(len(target)), target, fontsize=9)
    axes.set_xlabel("English (source) tokens")
    axes.set_ylabel("Spanish (translation) tokens")
    where = "last decoder layer, mean of heads" if data["architecture"] == "transformer" else "LSTM attention"
    axes.set_title(f"Where each Spanish token looked ({where})", fontsize=11)
    figure.colorbar(image, ax=axes, label="attention weight")

    return save_figure(figure, path, force=force)
