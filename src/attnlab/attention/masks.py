"""Attention masks.

The convention, stated once for all of attnlab: a **boolean mask is True where a query may attend
to a key** (PyTorch's ``scaled_dot_product_attention`` convention). A float mask is *added* to the
scaled scores, so ``0`` keeps a key and ``-inf`` removes it.

The single exception is ``key_padding_mask`` (as in ``torch.nn.MultiheadAttention``): it is True
where a key is *padding*. :func:`padding_mask` turns it into the convention above.

Masks are shaped ``(..., heads, q_len, k_len)`` or anything that broadcasts to it, for example
``(q_len, k_len)`` for one mask shared by every batch element and head.
"""

from __future__ import annotations

import numbers

import torch

Window = tuple[int | None, int | None]


def normalize_window(window: Window | int | None) -> tuple[int | None, int | None] | None:
    """Turn a user window into ``(left, right)`` with ``None`` meaning unlimited.

    ``window`` may be ``None`` (no window), an int ``w`` (same as ``(w, w)``) or a pair
    ``(left, right)`` whose entries are ``None`` or ``-1`` (unlimited) or a non-negative int.
    """
    if window is None:
        return None
    if isinstance(window, bool):
        raise TypeError(f"window must be an int or a pair (left, right), got {window!r}")
    if isinstance(window, numbers.Integral):
        window = (int(window), int(window))
    if not isinstance(window, tuple | list) or len(window) != 2:
        raise TypeError(f"window must be an int or a pair (left, right), got {window!r}")
    sides = []
    for name, side in zip(("left", "right"), window, strict=True):
        if side is None or side == -1:
            sides.append(None)
        elif isinstance(side, numbers.Integral) and not isinstance(side, bool) and side >= 0:
            sides.append(int(side))
        else:
            raise ValueError(
                f"window {name} side must be >= 0, or -1/None for unlimited, got {side!r}"
            )
    left, right = sides
    return None if left is None and right is None else (left, right)


def causal_mask(q_len: int, k_len: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean ``(q_len, k_len)`` mask, True where key ``j <= i`` (top-left aligned, like PyTorch).

    Query ``i`` sees keys ``0..i``. For decoding with a cache, where queries are the *last*
    ``q_len`` positions, use :func:`window_mask` with ``offset = k_len - q_len``.
    """
    return window_mask(q_len, k_len, (None, 0), device=device)


def window_mask(
    q_len: int,
    k_len: int,
    window: Window | int,
    *,
    offset: int = 0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Boolean ``(q_len, k_len)`` mask allowing keys ``j`` with ``i - left <= j <= i + right``.

    ``offset`` shifts query ``i`` to absolute position ``i + offset`` (for cached decoding).
    """
    sides = normalize_window(window)
    i = torch.arange(q_len, device=device).unsqueeze(-1) + offset
    j = torch.arange(k_len, device=device).unsqueeze(0)
    allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=device)
    if sides is None:
        return allowed
    left, right = sides
    if left is not None:
        allowed &= j >= i - left
    if right is not None:
        allowed &= j <= i + right
    return allowed


def normalize_global_tokens(global_tokens: int, window) -> int:
    """Check ``global_tokens`` (a whole number >= 0, and only together with a window)."""
    if isinstance(global_tokens, bool) or not isinstance(global_tokens, int) or global_tokens < 0:
        raise ValueError(f"global_tokens must be a whole number >= 0, got {global_tokens!r}")
    if global_tokens and window is None:
        raise ValueError("global_tokens widens a window: pass window=(left, right) with it "
                         "(without a window every token is already global)")
    return global_tokens


def global_tokens_mask(
    q_len: int,
    k_len: int,
    global_tokens: int,
    *,
    causal: bool,
    offset: int = 0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Boolean ``(q_len, k_len)``: True where query ``i`` or key ``j`` is one of the first
    ``global_tokens`` positions (Longformer's global attention, which widens a window), and
    ``j <= i`` when ``causal``. ``offset`` shifts query ``i`` to position ``i + offset``."""
    i = torch.arange(q_len, device=device).unsqueeze(-1) + offset
    j = torch.arange(k_len, device=device).unsqueeze(0)
    widened = (j < global_tokens) | (i < global_tokens)
    return widened & (j <= i) if causal else widened


def padding_mask(key_padding_mask: torch.Tensor) -> torch.Tensor:
    """``(batch, k_len)`` bool, True = padding  ->  ``(batch, 1, 1, k_len)`` bool, True = may attend."""
    if key_padding_mask.dtype != torch.bool or key_padding_mask.dim() != 2:
        raise ValueError(
            "key_padding_mask must be a boolean (batch, k_len) tensor with True at padding, got "
            f"dtype {key_padding_mask.dtype} and shape {tuple(key_padding_mask.shape)}"
        )
    return ~key_padding_mask[:, None, None, :]


def lengths_to_padding_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """Sequence lengths ``(batch,)`` -> ``(batch, max_len)`` bool, True at padding positions."""
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device) >= lengths[:, None]


def to_float_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean mask -> additive float mask (0 where allowed, -inf where not); floats pass through."""
    if mask.dtype == torch.bool:
        zeros = torch.zeros((), dtype=dtype, device=mask.device)
        return zeros.masked_fill(~mask, float("-inf"))
    return mask.to(dtype)


def combine_masks(*masks: torch.Tensor | None, dtype: torch.dtype = torch.float32):
    """Combine masks so a key is kept only if every mask keeps it. ``None`` entries are ignored.

    All-boolean inputs give a boolean result (logical AND); any float input gives a float result
    of ``dtype`` (the sum of additive masks, booleans turned into ``0 / -inf``).
    Returns ``None`` when every input is ``None``.
    """
    present = [m for m in masks if m is not None]
    if not present:
        return None
    if all(m.dtype == torch.bool for m in present):
        out = present[0]
        for m in present[1:]:
            out = out & m
        return out
    out = to_float_mask(present[0], dtype)
    for m in present[1:]:
        out = out + to_float_mask(m, dtype)
    return out
