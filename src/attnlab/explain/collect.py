"""One traced forward pass turned into the explanation data that the page, summary and plots read.

:func:`build_explanation` returns a JSON-serialisable dict (schema version 1, described in its
docstring). Every number in it is read from the model's :class:`~attnlab.attention.LayerTrace`
records of a single float32 forward pass; nothing is recomputed here.
"""

from __future__ import annotations

import math

import torch

from attnlab.attention import RotaryEmbedding, record
from attnlab.explain.heads import choose_head
from attnlab.explain.i18n import strings

SCHEMA_VERSION = 1
DIMS_SHOWN = 8  # vector dimensions the walkthrough shows (a whole 32- or 64-d vector is a wall)
SIGNIFICANT_DIGITS = 6
ATTENTION_DECIMALS = 6  # weights are in [0, 1]: fixed decimals keep tiny ones short ("0.0")
COST_EXAMPLE_TOKENS = (100, 1_000, 10_000)

# The explanation stores every weight, score and scaled score of every head: about 3 numbers of
# ~10 characters per (layer, head, query, key). This many weights (≈ 30 MB of page) is the
# default ceiling; it allows 117 tokens for MiniLM (6 x 12 heads) and 60 for SmolLM2 (30 x 9).
PAGE_WEIGHT_BUDGET = 1_000_000

# The models' titles and descriptions: the English text of the pages' "model.text.NAME" keys,
# which the page shows in the reader's language (see templates/i18n.js, fromEnglish).
MODEL_TEXT = {
    "minilm": ("all-MiniLM-L6-v2", strings("en")["model.text.minilm"]),
    "smollm2": ("SmolLM2-135M-Instruct", strings("en")["model.text.smollm2"]),
}


def default_max_tokens(num_layers: int, num_heads: int) -> int:
    """The longest text (in tokens) whose explanation stays within :data:`PAGE_WEIGHT_BUDGET`."""
    return math.isqrt(PAGE_WEIGHT_BUDGET // (num_layers * num_heads))


def round_significant(values: torch.Tensor, digits: int = SIGNIFICANT_DIGITS) -> torch.Tensor:
    """``values`` rounded to ``digits`` significant digits, as float64 (so that ``tolist()`` gives
    floats whose shortest repr is at most ``digits`` digits long). Zeros stay zero."""
    values = values.double()
    exponent = torch.floor(torch.log10(values.abs()))
    shift = (digits - 1 - exponent).nan_to_num(0.0, posinf=0.0, neginf=0.0)
    # Multiply or divide by an exact power of ten, never by an inexact one like 0.1.
    up = 10.0 ** shift.clamp(min=0)
    down = 10.0 ** (-shift).clamp(min=0)
    return torch.round(values * up / down) * down / up


def readable_token(token: str) -> str:
    """A token's text without the leading space that marks a word start in byte-level BPE."""
    return token[1:] if token.startswith(" ") and token.strip() else token


def _with_gaps(rows: list[list[float]], blocked: list[list[bool]]) -> list[list[float | None]]:
    """``rows`` with None wherever ``blocked`` is True (JSON ``null``: masked, never computed)."""
    return [[None if b else v for v, b in zip(row, brow, strict=True)]
            for row, brow in zip(rows, blocked, strict=True)]


def _run_traced(model, ids: list[int]) -> list:
    """The model's :class:`LayerTrace` list (one per attention layer) for one sequence of ids."""
    device = next(model.parameters()).device
    batch = torch.tensor([ids], dtype=torch.long, device=device)  # (1, seq)
    with torch.no_grad(), record(model) as recording:
        model(batch)
    return recording.traces


def _check_length(n_tokens: int, model_name: str, model_limit: int, max_tokens: int, layers: int,
                  heads: int) -> None:
    if n_tokens > model_limit:
        raise ValueError(
            f"the text is {n_tokens} tokens long; {model_name} reads at most {model_limit} tokens"
        )
    if n_tokens > max_tokens:
        raise ValueError(
            f"the text is {n_tokens} tokens long; the explanation keeps every attention weight "
            f"({layers} layers x {heads} heads x {n_tokens}² = {layers * heads * n_tokens**2:,} "
            f"numbers), so it allows at most {max_tokens} tokens for {model_name}; shorten the text "
            "or allow more with --max-tokens (max_tokens= in Python)"
        )


def _select(attention: torch.Tensor, special, word_ids, causal, layer, head, layers, heads):
    """``{"layer", "head", "reason"}``: the head the user chose, or the most informative one."""
    if layer is not None and not 0 <= layer < layers:
        raise ValueError(f"layer={layer} is out of range: this model has layers 0 to {layers - 1}")
    if head is not None and not 0 <= head < heads:
        raise ValueError(f"head={head} is out of range: this model has heads 0 to {heads - 1}")
    if head is not None and layer is None:
        raise ValueError(f"head={head} needs a layer too (0 to {layers - 1})")
    if head is not None:
        return {"layer": layer, "head": head, "reason": f"you chose layer {layer}, head {head}"}
    chosen_layer, chosen_head, reason = choose_head(attention, special, word_ids, causal, layer=layer)
    return {"layer": chosen_layer, "head": chosen_head, "reason": reason}


def _layer_walkthrough(trace, kv_head_of: list[int], dims: int) -> list[dict]:
    """One walkthrough dict per head of one layer (see :func:`build_explanation`)."""
    att = trace.attention
    inputs = round_significant(trace.attn_input[0, :, :dims]).tolist()  # (seq, dims)
    query = round_significant(att.query[0, :, :, :dims]).tolist()  # (heads, seq, dims)
    key = round_significant(att.key[0, :, :, :dims]).tolist()  # (kv_heads, seq, dims)
    value = round_significant(att.value[0, :, :, :dims]).tolist()
    output = round_significant(att.output[0, :, :, :dims]).tolist()  # (heads, seq, dims)
    scores = round_significant(att.scores[0]).tolist()  # (heads, seq, seq)
    scaled = round_significant(att.scaled[0]).tolist()
    blocked = torch.isneginf(att.masked[0])  # (heads, seq, seq): never attended
    any_blocked = bool(blocked.any())
    blocked = blocked.tolist()
    heads = []
    for h, kv in enumerate(kv_head_of):
        head_scores, head_scaled = scores[h], scaled[h]
        if any_blocked:
            head_scores = _with_gaps(head_scores, blocked[h])
            head_scaled = _with_gaps(head_scaled, blocked[h])
        heads.append({
            "input": inputs,
            "query": query[h],
            "key": key[kv],
            "value": value[kv],
            "output": output[h],
            "scores": head_scores,
            "scaled": head_scaled,
        })
    return heads


def build_explanation(model, tokenizer, text: str, *, model_name: str, layer: int | None = None,
                      head: int | None = None, max_tokens: int | None = None) -> dict:
    """Everything the explanation page shows, from ONE traced forward pass of ``text``.

    Args:
        model: a ``BertEncoder`` or ``LlamaDecoder`` (anything with ``config``, ``is_causal`` and
            ``forward(ids)``, whose attention :func:`attnlab.attention.record` records).
        tokenizer: its tokenizer (``encode``, ``token_strings``, ``word_ids``, ``special_ids``,
            ``max_length``).
        text: the text to explain.
        model_name: ``"minilm"``, ``"smollm2"`` or another name (then the title is the name).
        layer, head: show this head (0-based). ``layer`` alone: the most informative head of that
            layer; neither: the most informative head of all (see :func:`choose_head`).
        max_tokens: refuse longer texts, because the data grows as ``layers x heads x tokens²``
            (default: :func:`default_max_tokens` for the model). The model's own limit
            ``tokenizer.max_length`` always applies.

    Returns the schema-version-1 dict::

        version, text, model {name, title, kind, description, num_layers, num_heads,
        num_kv_heads, head_dim, embed_dim, causal, rope}, tokens, special, word_ids, kv_head_of,
        selected {layer, head, reason}, dims_shown, scale,
        attention [layer][head][query][key]   softmax weights (6 decimals, exact 0 where masked),
        walkthrough [layer][head] {input, query, key, value, output: [token][first dims_shown
            dims]; scores, scaled: [query][key], null where masked},
        cost {tokens, scores_per_head, scores_total, examples [{tokens, scores_total}]}

    Other floats keep 6 significant digits. Raises ``ValueError`` for empty text, text longer
    than the model reads or than ``max_tokens``, and a ``layer``/``head`` out of range.
    """
    ids = check_text(model, tokenizer, text, model_name=model_name, max_tokens=max_tokens)
    return explanation_from_traces(model, tokenizer, text, ids, _run_traced(model, ids),
                                   model_name=model_name, layer=layer, head=head)


def check_text(model, tokenizer, text: str, *, model_name: str, max_tokens: int | None = None) -> list[int]:
    """``text``'s token ids, or ``ValueError`` when it is empty or longer than the model reads or
    than ``max_tokens`` (default :func:`default_max_tokens`) allows."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text is empty; give a sentence to explain, got {text!r}")
    cfg = model.config
    layers, heads = cfg.num_layers, cfg.num_heads
    if max_tokens is None:
        max_tokens = default_max_tokens(layers, heads)
    ids = tokenizer.encode(text)
    special = getattr(tokenizer, "special_ids", frozenset())
    if not ids or all(i in special for i in ids):
        raise ValueError(f"the text has no words once {model_name} cuts it into tokens (only markers "
                         f"such as unknown-word tokens are left); give a sentence with words")
    model_limit = getattr(tokenizer, "max_length", None) or cfg.max_positions
    _check_length(len(ids), model_name, model_limit, max_tokens, layers, heads)
    return ids


def explanation_from_traces(model, tokenizer, text: str, ids: list[int], traces: list, *,
                            model_name: str, layer: int | None = None, head: int | None = None) -> dict:
    """The explanation dict of :func:`build_explanation` from the :class:`LayerTrace` records of
    one recorded forward pass of ``ids`` (``text`` tokenized), one per self-attention layer."""
    cfg = model.config
    layers, heads = cfg.num_layers, cfg.num_heads
    # (layers, heads, seq, seq) softmax weights, the basis of the head choice and the page
    weights = torch.stack([t.attention.weights[0] for t in traces]).float()
    word_ids = tokenizer.word_ids(ids)
    special = [i in tokenizer.special_ids for i in ids]
    causal = bool(model.is_causal)
    group = heads // cfg.num_kv_heads
    kv_head_of = [h // group for h in range(heads)]
    dims = min(DIMS_SHOWN, cfg.head_dim)
    n = len(ids)
    title, description = MODEL_TEXT.get(model_name, (model_name, ""))
    if not description:
        description = strings("en")["model.text.decoder" if causal else "model.text.encoder"]

    return {
        "version": SCHEMA_VERSION,
        "text": text,
        "model": {
            "name": model_name,
            "title": title,
            "kind": "decoder" if causal else "encoder",
            "description": description,
            "num_layers": layers,
            "num_heads": heads,
            "num_kv_heads": cfg.num_kv_heads,
            "head_dim": cfg.head_dim,
            "embed_dim": cfg.embed_dim,
            "causal": causal,
            "rope": any(isinstance(m, RotaryEmbedding) for m in model.modules()),
        },
        "tokens": [readable_token(t) for t in tokenizer.token_strings(ids)],
        "special": special,
        "word_ids": word_ids,
        "kv_head_of": kv_head_of,
        "selected": _select(weights, special, word_ids, causal, layer, head, layers, heads),
        "dims_shown": dims,
        "scale": traces[0].attention.scale,
        "attention": weights.double().round(decimals=ATTENTION_DECIMALS).tolist(),
        "walkthrough": [_layer_walkthrough(t, kv_head_of, dims) for t in traces],
        "cost": {
            "tokens": n,
            "scores_per_head": n * n,
            "scores_total": layers * heads * n * n,
            "examples": [{"tokens": t, "scores_total": layers * heads * t * t}
                         for t in COST_EXAMPLE_TOKENS],
        },
    }
