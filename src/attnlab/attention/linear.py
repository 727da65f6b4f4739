"""Linear attention (Katharopoulos et al., 2020): attention in O(seq) time and memory.

Softmax attention weighs value ``j`` for query ``i`` by ``exp(q_i · k_j)``, which needs every
pair (O(n²)). Linear attention replaces the exponential with a product of feature maps,
``φ(q_i) · φ(k_j)`` with ``φ(x) = elu(x) + 1`` (positive, so the weights stay positive), and then
the sums can be regrouped::

    out_i = Σ_j (φ(q_i)·φ(k_j)) v_j / Σ_j φ(q_i)·φ(k_j)
          = φ(q_i)ᵀ S / φ(q_i)ᵀ z         S = Σ_j φ(k_j) v_jᵀ  (head_dim x v_dim),  z = Σ_j φ(k_j)

``S`` and ``z`` are computed once (non-causal) or as running sums (causal: only ``j ≤ i``). The
causal version goes through the sequence in chunks: inside a chunk the few pairs are computed
directly (a ``chunk x chunk`` masked product), and the state ``(S, z)`` carries everything before
it, so memory stays O(seq · head_dim + chunk²), never a ``(seq, head_dim, v_dim)`` prefix sum.

**The trade-off:** this is *not* softmax attention and gives different outputs. ``φ(q)·φ(k)``
is a smoother, lower-rank similarity than ``exp(q·k)``: it cannot focus as sharply on one key,
so models trained with it are usually somewhat weaker at exact recall; in exchange its cost
grows linearly with the sequence, and causal generation needs only the fixed-size state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """``φ(x) = elu(x) + 1``: positive everywhere, ≈ ``x + 1`` for positive ``x``."""
    return F.elu(x) + 1


def linear_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
                     is_causal: bool = False, chunk_size: int = 64, eps: float = 1e-6) -> torch.Tensor:
    """Linear attention with the ``elu + 1`` feature map (see the module docstring).

    Args:
        query: ``(..., heads, Lq, head_dim)``.
        key: ``(..., kv_heads, Lk, head_dim)``; ``kv_heads`` must divide ``heads`` (grouped
            key/value heads are shared, not copied).
        value: ``(..., kv_heads, Lk, v_dim)``.
        is_causal: query ``i`` sees keys ``0..i`` (needs ``Lq == Lk``).
        chunk_size: rows per chunk of the causal computation (memory ``chunk_size²`` per head).
        eps: added to the normaliser ``φ(q_i)ᵀ z``.

    Returns:
        ``(..., heads, Lq, v_dim)``.
    """
    if query.dim() < 3 or key.dim() != query.dim() or value.dim() != query.dim():
        raise ValueError(f"query, key and value must have the same number (>= 3) of dimensions, got "
                         f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
    heads, kv_heads = query.shape[-3], key.shape[-3]
    if key.shape[-1] != query.shape[-1]:
        raise ValueError(f"query and key head_dim differ: {query.shape[-1]} vs {key.shape[-1]}")
    if key.shape[:-1] != value.shape[:-1]:
        raise ValueError(f"key {tuple(key.shape)} and value {tuple(value.shape)} must agree but for "
                         "the last dim")
    if heads % kv_heads:
        raise ValueError(f"key/value heads ({kv_heads}) must divide query heads ({heads})")
    if is_causal and query.shape[-2] != key.shape[-2]:
        raise ValueError(f"is_causal needs as many queries as keys, got {query.shape[-2]} and "
                         f"{key.shape[-2]}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    group = heads // kv_heads
    # (..., kv_heads, group, L, d): each key/value head serves `group` query heads.
    q = elu_feature_map(query).unflatten(-3, (kv_heads, group))
    k = elu_feature_map(key).unsqueeze(-3)
    v = value.unsqueeze(-3)
    if not is_causal:
        state = k.transpose(-1, -2) @ v  # (..., kv_heads, 1, d, v_dim)
        normaliser = k.sum(dim=-2, keepdim=True)  # (..., kv_heads, 1, 1, d)
        out = (q @ state) / ((q * normaliser).sum(-1, keepdim=True) + eps)
        return out.flatten(-4, -3)

    length = q.shape[-2]
    state = torch.zeros(*k.shape[:-2], k.shape[-1], v.shape[-1], dtype=q.dtype, device=q.device)
    normaliser = torch.zeros(*k.shape[:-2], 1, k.shape[-1], dtype=q.dtype, device=q.device)
    outputs = []
    for start in range(0, length, chunk_size):
        end = min(start + chunk_size, length)
        qc, kc, vc = q[..., start:end, :], k[..., start:end, :], v[..., start:end, :]
        # Pairs inside the chunk, lower triangle (j <= i), computed directly.
        scores = (qc @ kc.transpose(-1, -2)).tril()  # (..., c, c)
        numerator = scores @ vc + qc @ state
        denominator = scores.sum(-1, keepdim=True) + (qc * normaliser).sum(-1, keepdim=True)
        outputs.append(numerator / (denominator + eps))
        state = state + kc.transpose(-1, -2) @ vc
        normaliser = normaliser + kc.sum(dim=-2, keepdim=True)
    return torch.cat(outputs, dim=-2).flatten(-4, -3)
