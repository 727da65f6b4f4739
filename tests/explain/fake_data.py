"""A schema-conforming fake explanation (version 1) for tests that need no model.

The numbers are random but *consistent*: queries, keys and values are real projections of the
inputs, weights are the softmax of the scaled scores, outputs the weighted sums of the values,
so the page's own recomputation must agree with them just as it does with a real model's.
"""

from __future__ import annotations

import math

import torch

from attnlab.explain.collect import round_significant

ENCODER_TOKENS = ["[CLS]", "the", "animal", "didn", "'", "t", "cross", "the", "street",
                  "because", "it", "was", "too", "tired", ".", "[SEP]"]
DECODER_TOKENS = ["The", "animal", "didn", "'t", "cross", "the", "street", "because", "it",
                  "was", "too", "tired", "."]
ENCODER_SPECIAL = {"[CLS]", "[SEP]"}
DECODER_SPECIAL = {"<|im_start|>", "<|im_end|>"}


def _word_ids(tokens: list[str], special: list[bool], text: str) -> list[int | None]:
    """Which word of ``text`` each token lies in, found by walking the text left to right
    (ignoring case: MiniLM's tokens are lowercase)."""
    text = text.lower()
    word_starts = []
    pos = 0
    for word in text.split():
        pos = text.index(word, pos)
        word_starts.append((pos, pos + len(word)))
        pos += len(word)
    ids: list[int | None] = []
    pos = 0
    for token, is_special in zip(tokens, special, strict=True):
        if is_special:
            ids.append(None)
            continue
        pos = text.index(token.lower(), pos)
        ids.append(next(i for i, (start, end) in enumerate(word_starts) if start <= pos < end))
        pos += len(token)
    return ids


def fake_explanation(
    kind: str = "encoder",
    *,
    tokens: list[str] | None = None,
    num_layers: int | None = None,
    num_heads: int | None = None,
    num_kv_heads: int | None = None,
    head_dim: int | None = None,
    dims_shown: int = 8,
    seed: int = 0,
) -> dict:
    """A fake ``build_explanation`` result.

    ``kind="encoder"`` looks like all-MiniLM-L6-v2 (6 layers x 12 heads, head_dim 32, every
    token sees every token); ``kind="decoder"`` like SmolLM2-135M (30 layers x 9 heads sharing
    3 key/value heads, head_dim 64, causal). Any size can be overridden; ``tokens`` replaces the
    example sentence (the text is then the tokens joined by spaces).
    """
    if kind not in ("encoder", "decoder"):
        raise ValueError(f"kind must be 'encoder' or 'decoder', got {kind!r}")
    decoder = kind == "decoder"
    num_layers = num_layers or (30 if decoder else 6)
    num_heads = num_heads or (9 if decoder else 12)
    num_kv_heads = num_kv_heads or (3 if decoder else num_heads)
    head_dim = head_dim or (64 if decoder else 32)
    if tokens is None:
        tokens = DECODER_TOKENS if decoder else ENCODER_TOKENS
        text = "The animal didn't cross the street because it was too tired."
    else:
        text = " ".join(t for t in tokens if t not in ENCODER_SPECIAL | DECODER_SPECIAL)
    special = [t in ENCODER_SPECIAL | DECODER_SPECIAL for t in tokens]
    n = len(tokens)
    group = num_heads // num_kv_heads
    kv_head_of = [h // group for h in range(num_heads)]
    future = torch.ones(n, n, dtype=torch.bool).triu(1) if decoder else torch.zeros(n, n, dtype=torch.bool)
    model = {
        "name": "smollm2" if decoder else "minilm",
        "title": "SmolLM2-135M-Instruct" if decoder else "all-MiniLM-L6-v2",
        "kind": kind,
        "description": (
            "A small chat model that writes text one token at a time, left to right."
            if decoder else
            "A small model that turns a sentence into a list of numbers capturing its meaning."
        ),
        "num_layers": num_layers, "num_heads": num_heads, "num_kv_heads": num_kv_heads,
        "head_dim": head_dim, "embed_dim": num_heads * head_dim, "causal": decoder, "rope": decoder,
    }

    # Hundreds of tiny products: one thread, as worker threads cost more than they save here
    # (25 s instead of 1 s for the SmolLM2-sized fake on a busy 2-core machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        attention, walkthrough = _fake_layers(model, kv_head_of, future, dims_shown, seed)
    finally:
        torch.set_num_threads(threads)

    scores_total = num_layers * num_heads * n * n
    return {
        "version": 1,
        "text": text,
        "model": model,
        "tokens": list(tokens),
        "special": special,
        "word_ids": _word_ids(list(tokens), special, text),
        "kv_head_of": kv_head_of,
        "selected": {"layer": min(2, num_layers - 1), "head": min(5, num_heads - 1),
                     "reason": "This head gives the clearest pattern: most words put most of their "
                               "attention on one other word."},
        "dims_shown": dims_shown,
        "scale": 1.0 / math.sqrt(head_dim),
        "attention": attention,
        "walkthrough": walkthrough,
        "cost": {
            "tokens": n, "scores_per_head": n * n, "scores_total": scores_total,
            "examples": [{"tokens": t, "scores_total": num_layers * num_heads * t * t}
                         for t in (100, 1000, 10000)],
        },
    }


def _with_nulls(matrix: torch.Tensor, masked: torch.Tensor) -> list[list[float | None]]:
    """``matrix`` as nested lists with ``None`` wherever ``masked`` is True."""
    return [[None if m else v for v, m in zip(row, mask_row, strict=True)]
            for row, mask_row in zip(matrix.tolist(), masked.tolist(), strict=True)]


def _fake_layers(model: dict, kv_head_of: list[int], future: torch.Tensor, dims_shown: int,
                 seed: int) -> tuple[list, list]:
    """``(attention, walkthrough)`` of random but self-consistent layers for ``model`` (the schema's
    model dict); ``future`` ``(seq, seq)`` is True where a key is hidden from a query."""
    n = future.shape[0]
    num_heads, num_kv_heads = model["num_heads"], model["num_kv_heads"]
    embed_dim, head_dim = model["embed_dim"], model["head_dim"]
    scale = 1.0 / math.sqrt(head_dim)
    generator = torch.Generator().manual_seed(seed)
    attention, walkthrough = [], []
    for _ in range(model["num_layers"]):
        x = torch.randn(n, embed_dim, generator=generator, dtype=torch.float64)
        # Sharper queries in some heads, so that not every head's weights are flat.
        sharpness = 0.5 + 2.5 * torch.rand(num_heads, generator=generator, dtype=torch.float64)
        wq, wk, wv = (torch.randn(heads, embed_dim, head_dim, generator=generator, dtype=torch.float64)
                      / math.sqrt(embed_dim) for heads in (num_heads, num_kv_heads, num_kv_heads))
        layer_attention, layer_walkthrough = [], []
        for h in range(num_heads):
            q = x @ wq[h] * sharpness[h]  # (seq, head_dim)
            k, v = x @ wk[kv_head_of[h]], x @ wv[kv_head_of[h]]
            scores = q @ k.T  # (seq, seq)
            scaled = scores * scale
            weights = scaled.masked_fill(future, -math.inf).softmax(dim=-1)
            output = weights @ v
            layer_attention.append(weights.round(decimals=6).tolist())
            layer_walkthrough.append({
                "input": round_significant(x[:, :dims_shown]).tolist(),
                "query": round_significant(q[:, :dims_shown]).tolist(),
                "key": round_significant(k[:, :dims_shown]).tolist(),
                "value": round_significant(v[:, :dims_shown]).tolist(),
                "output": round_significant(output[:, :dims_shown]).tolist(),
                "scores": _with_nulls(round_significant(scores), future),
                "scaled": _with_nulls(round_significant(scaled), future),
            })
        attention.append(layer_attention)
        walkthrough.append(layer_walkthrough)
    return attention, walkthrough
