"""What a model hands the explainer: one record per attention layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnlab.attention import AttentionTrace


@dataclass
class LayerTrace:
    """One self-attention layer of one forward pass, every step kept.

    ``attn_input`` ``(batch, seq, embed_dim)`` is exactly what the layer's ``q_proj``/``k_proj``/
    ``v_proj`` read (after the LayerNorm/RMSNorm in pre-norm models, the block input in
    post-norm ones). ``attention`` is the layer's :class:`AttentionTrace`: ``query``
    ``(batch, heads, seq, head_dim)`` (after RoPE where the model uses it), ``key``/``value``
    ``(batch, kv_heads, seq, head_dim)``, ``scores``/``scaled``/``masked``/``weights``
    ``(batch, heads, seq, seq)`` and ``output`` ``(batch, heads, seq, head_dim)``.
    """

    layer: int
    attn_input: torch.Tensor
    attention: AttentionTrace
