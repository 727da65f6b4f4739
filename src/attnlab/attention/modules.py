"""``MultiHeadAttention``: projections around :func:`attnlab.attention.attention`."""

from __future__ import annotations

import torch
from torch import nn

from attnlab.attention.cache import KVCache
from attnlab.attention.functional import attention
from attnlab.attention.linear import linear_attention
from attnlab.attention.masks import (
    combine_masks,
    normalize_global_tokens,
    normalize_window,
    padding_mask,
)
from attnlab.attention.positions import RotaryEmbedding, alibi_slopes
from attnlab.attention.record import hooked_attention


class MultiHeadAttention(nn.Module):
    """Multi-head (and grouped-/multi-query) attention with optional RoPE, ALiBi, window, cache.

    Plainly, for ``x`` shaped ``(batch, Lq, embed_dim)`` and self-attention::

        q = q_proj(x) -> (batch, heads, Lq, head_dim)          head_dim = embed_dim // heads
        k = k_proj(x), v = v_proj(x) -> (batch, kv_heads, Lk, head_dim)
        q, k = rope(q), rope(k)                                 if rope
        o = attention(q, k, v, mask, is_causal, window, alibi_slopes, enable_gqa=kv_heads<heads)
        out = out_proj(o merged back to (batch, Lq, embed_dim))

    Args:
        embed_dim: model width; must be divisible by ``num_heads``.
        num_heads: query heads.
        num_kv_heads: key/value heads (default ``num_heads``); must divide ``num_heads``.
            ``1`` is multi-query attention. Key/value heads are shared through
            ``attention(..., enable_gqa=True)``, never copied.
        kdim, vdim: feature sizes of the context that keys and values are computed from in
            cross-attention (default ``embed_dim``).
        bias: whether the four projections have biases.
        out_bias: whether ``out_proj`` has one, when it differs from the others (Qwen2 has
            query/key/value biases only); None (the default) follows ``bias``.
        dropout: attention-weight dropout probability, applied only in training mode.
        rope: ``None``, ``True`` (build a :class:`RotaryEmbedding` for ``head_dim``) or a
            :class:`RotaryEmbedding` to use (may be shared across layers). Self-attention only.
        alibi: add ALiBi biases with :func:`alibi_slopes` for ``num_heads`` heads.
        window: ``(left, right)`` local attention window, see :func:`attention`.
        global_tokens: with ``window``, the first ``g`` positions see and are seen by every
            position (Longformer), see :func:`attention`.
        backend: passed to :func:`attention`.
        linear: use :func:`attnlab.attention.linear_attention` (``elu + 1`` feature map, O(seq)
            time and memory; *not* softmax attention) instead of :func:`attention`. It takes
            ``is_causal`` but no masks, window, ALiBi, dropout or cache, and cannot be recorded
            or edited.

    The projections are separate ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj`` linear layers
    (weights ``(out_features, in_features)``), so pretrained checkpoints load by name.

    Recording and editing: :func:`attnlab.attention.record` and :func:`attnlab.attention.edit`
    attach hooks to ``_attention_hooks`` for the duration of a ``with`` block; while the list is
    empty, :meth:`forward` runs its fast path untouched.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        num_kv_heads: int | None = None,
        kdim: int | None = None,
        vdim: int | None = None,
        bias: bool = True,
        out_bias: bool | None = None,
        dropout: float = 0.0,
        rope: RotaryEmbedding | bool | None = None,
        alibi: bool = False,
        window: tuple[int | None, int | None] | int | None = None,
        backend: str = "auto",
        linear: bool = False,
        global_tokens: int = 0,
    ) -> None:
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        kdim = embed_dim if kdim is None else kdim
        vdim = embed_dim if vdim is None else vdim
        if min(embed_dim, num_heads, num_kv_heads, kdim, vdim) <= 0:
            raise ValueError(
                f"MultiHeadAttention sizes must be positive, got {embed_dim=}, {num_heads=}, "
                f"{num_kv_heads=}, {kdim=}, {vdim=}"
            )
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        if num_heads % num_kv_heads:
            raise ValueError(
                f"num_heads={num_heads} is not divisible by num_kv_heads={num_kv_heads}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got dropout={dropout}")
        if linear and (alibi or window is not None or dropout):
            raise ValueError("linear attention takes no window, ALiBi or dropout (it never forms the "
                             "attention weights)")
        self.linear = linear
        self.global_tokens = normalize_global_tokens(global_tokens, normalize_window(window))
        self.embed_dim, self.kdim, self.vdim = embed_dim, kdim, vdim
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.window = normalize_window(window)
        self.backend = backend

        kv_width = num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(kdim, kv_width, bias=bias)
        self.v_proj = nn.Linear(vdim, kv_width, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias if out_bias is None else out_bias)

        if rope is True:
            rope = RotaryEmbedding(self.head_dim)
        elif rope is False:
            rope = None
        elif rope is not None:
            if not isinstance(rope, RotaryEmbedding):
                raise TypeError(f"rope must be None, True or a RotaryEmbedding, got {rope!r}")
            if rope.head_dim != self.head_dim:
                raise ValueError(
                    f"rope.head_dim={rope.head_dim} does not match head_dim={self.head_dim} "
                    f"(embed_dim={embed_dim} / num_heads={num_heads})"
                )
        self.rope = rope
        # Derived from num_heads, so kept out of state_dict (checkpoints never need it).
        slopes = alibi_slopes(num_heads) if alibi else None
        self.register_buffer("alibi_slopes", slopes, persistent=False)
        # Hooks of the record()/edit() contexts now open on this module (see attention/record.py).
        self._attention_hooks: list = []

    def _split_heads(self, t: torch.Tensor, heads: int) -> torch.Tensor:
        batch, seq, _ = t.shape
        return t.view(batch, seq, heads, self.head_dim).transpose(1, 2)  # (batch, heads, seq, D)

    def _check_features(self, name: str, t: torch.Tensor, features: int) -> None:
        if t.dim() != 3 or t.shape[-1] != features:
            raise ValueError(
                f"{name} must be shaped (batch, seq, {features}), got {tuple(t.shape)}"
            )

    def _keys_values(
        self, x: torch.Tensor, context, cache: KVCache | None
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Projected (and rotated, cached) keys and values, plus the queries' position offset."""
        if context is None:
            if self.kdim != self.embed_dim or self.vdim != self.embed_dim:
                raise ValueError(
                    f"self-attention needs kdim == vdim == embed_dim, got kdim={self.kdim}, "
                    f"vdim={self.vdim}, embed_dim={self.embed_dim}; pass context"
                )
            k = self._split_heads(self.k_proj(x), self.num_kv_heads)
            v = self._split_heads(self.v_proj(x), self.num_kv_heads)
            offset = 0 if cache is None else cache.length
            if self.rope is not None:
                k = self.rope(k, offset=offset)
            if cache is not None:
                k, v = cache.append(k, v)
            return k, v, offset

        if self.rope is not None:
            raise ValueError("rope applies to self-attention only; got a context")
        key_source, value_source = context if isinstance(context, tuple | list) else (context,) * 2
        self._check_features("context (keys)", key_source, self.kdim)
        self._check_features("context (values)", value_source, self.vdim)
        if cache is not None and cache.length:
            # Cross-attention keys depend only on the context: computed on the first step and
            # reused, so later decoding steps skip the projections.
            if cache.length != key_source.shape[1]:
                raise ValueError(
                    f"cross-attention cache holds {cache.length} context steps but the context "
                    f"has {key_source.shape[1]} ({tuple(key_source.shape)})"
                )
            k, v = cache.filled()
            return k, v, 0
        k = self._split_heads(self.k_proj(key_source), self.num_kv_heads)
        v = self._split_heads(self.v_proj(value_source), self.num_kv_heads)
        if cache is not None:
            k, v = cache.append(k, v)
        return k, v, 0

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
        *,
        attn_mask: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Attend from ``x`` to itself (``context=None``) or to ``context``.

        Args:
            x: ``(batch, Lq, embed_dim)`` queries (and keys/values in self-attention).
            context: ``(batch, Lc, kdim)`` for cross-attention, or a pair ``(key_source,
                value_source)`` shaped ``(batch, Lc, kdim)`` and ``(batch, Lc, vdim)``.
            attn_mask: bool (True = may attend) or float (added), broadcastable to
                ``(batch, heads, Lq, Lk)``; ``Lk`` counts cached keys too.
                Note: the opposite boolean convention to ``torch.nn.MultiheadAttention``.
            key_padding_mask: ``(batch, Lk)`` bool, True at padding keys (as in
                ``torch.nn.MultiheadAttention``); ``Lk`` counts cached keys too.
            is_causal: each query sees keys at its own position or before. With a cache the
                queries are the *last* ``Lq`` positions (a query at position ``p`` sees keys
                ``0..p``), unlike :func:`attention`'s top-left alignment.
            cache: a :class:`KVCache` shaped ``(batch, num_kv_heads, max_len, head_dim)``.
                Self-attention appends the new keys/values and attends over everything cached;
                RoPE and ALiBi positions continue from ``cache.length``. Cross-attention fills
                the cache from ``context`` on the first call and reuses it afterwards.

        Returns:
            ``(batch, Lq, embed_dim)``.

        Inside :func:`attnlab.attention.record` or :func:`~attnlab.attention.edit` the head
        outputs come from :func:`attnlab.attention.record.hooked_attention` (the same ``q``,
        ``k``, ``v`` and arguments, plus the edits); otherwise from :func:`attention` on
        ``backend``.
        """
        self._check_features("x", x, self.embed_dim)
        batch, q_len, _ = x.shape
        q = self._split_heads(self.q_proj(x), self.num_heads)  # (batch, heads, Lq, head_dim)
        k, v, offset = self._keys_values(x, context, cache)  # (batch, kv_heads, Lk, head_dim)
        if self.rope is not None:
            q = self.rope(q, offset=offset)
        if self.linear:
            if attn_mask is not None or key_padding_mask is not None or cache is not None:
                raise ValueError("linear attention supports is_causal only: no attn_mask, "
                                 "key_padding_mask or cache")
            heads = linear_attention(q, k, v, is_causal=is_causal)
            return self.out_proj(heads.transpose(1, 2).reshape(batch, q_len, self.embed_dim))

        # Masks from half precision inputs stay float32: ALiBi distances would round in bf16.
        mask_dtype = torch.promote_types(q.dtype, torch.float32)
        padding = None if key_padding_mask is None else padding_mask(key_padding_mask)
        mask = combine_masks(attn_mask, padding, dtype=mask_dtype)
        kwargs = {
            "attn_mask": mask,
            "dropout_p": self.dropout if self.training else 0.0,
            "is_causal": is_causal,
            "enable_gqa": self.num_kv_heads != self.num_heads,
            "window": self.window,
            "alibi_slopes": self.alibi_slopes,
            "global_tokens": self.global_tokens if self.window is not None else 0,
            # Cached queries sit after the cached keys: causality, the window and ALiBi are
            # measured from there, inside the kernels (which then still skip empty blocks).
            "query_offset": offset,
        }
        if self._attention_hooks:  # a record()/edit() context is open on this module
            heads = hooked_attention(self, x, q, k, v, offset=offset, cross=context is not None,
                                     kwargs=kwargs)
        else:
            heads = attention(q, k, v, backend=self.backend, **kwargs)
        # (batch, heads, Lq, head_dim) -> (batch, Lq, embed_dim): heads side by side
        return self.out_proj(heads.transpose(1, 2).reshape(batch, q_len, self.embed_dim))

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
            f"num_kv_heads={self.num_kv_heads}, dropout={self.dropout}, window={self.window}, "
            f"global_tokens={self.global_tokens}, "
            f"alibi={self.alibi_slopes is not None}, backend={self.backend!r}, linear={self.linear}"
        )
