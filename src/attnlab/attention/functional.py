"""``attention(...)``: one entry point, several backends, one meaning.

The meaning is PyTorch's ``scaled_dot_product_attention`` plus three extras; the plain formula
(also the ``"reference"`` backend, and what :func:`attention_trace` records step by step) is::

    scores  = query @ key.transpose(-2, -1)                  # (..., Hq, Lq, Lk)
    scaled  = scores * scale                                  # scale = 1/sqrt(head_dim)
    scaled  = softcap * tanh(scaled / softcap)                # only with softcap
    masked  = scaled - slope_h * |i - j| + float_mask         # ALiBi, additive mask
    masked  = masked.masked_fill(~allowed, -inf)              # bool mask, causal, window
                                                              # (global tokens widen the window)
    weights = softmax(masked, dim=-1)                         # rows with no key -> all zeros
    output  = dropout(weights) @ value                        # (..., Hq, Lq, Dv)

With ``enable_gqa`` the ``Hk`` key/value heads are shared by groups of ``Hq // Hk`` query heads
(query head ``h`` uses key/value head ``h // (Hq // Hk)``, as in PyTorch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from attnlab.attention import native, tiled
from attnlab.attention.masks import (
    global_tokens_mask,
    normalize_global_tokens,
    normalize_window,
    window_mask,
)

BACKENDS = ("auto", "reference", "tiled", "torch", "native")
#: ``auto`` runs the plain formula on the CPU for unmasked, non-causal inputs with at most this
#: many queries and keys: there it beats PyTorch's fused CPU kernel, 1.2-3.9x in forward and
#: backward at head_dim 24-64 (benchmarks/short_attention.py); masks and causality add passes
#: over the scores that the fused kernel avoids, so those keep the kernel.
SHORT_CPU_LENGTH = 64
#: ``auto``'s thresholds for the native kernel on the CPU, measured side by side with PyTorch's
#: fused kernel (benchmarks/short_attention.py, docs/benchmarks.md, "The native CPU kernel"):
#: with fewer than NATIVE_MIN_QUERIES queries (decoding a token or a few at a time) its per-call
#: set-up, a transposed copy of every cached key, costs more than the attention itself; causal
#: requests gain from NATIVE_CAUSAL_KEYS keys on, others (no mask or a padding mask) from
#: NATIVE_KEYS. Requests with extras PyTorch lacks go to it at any length: it beats ``tiled``.
NATIVE_MIN_QUERIES = 16
NATIVE_CAUSAL_KEYS = 128
NATIVE_KEYS = 512


@dataclass(frozen=True)
class _Request:
    """A validated call: shapes and normalized arguments."""

    batch: tuple[int, ...]
    q_heads: int
    kv_heads: int
    q_len: int
    k_len: int
    scale: float
    window: tuple[int | None, int | None] | None
    softcap: float | None
    dropout_p: float
    global_tokens: int = 0
    q_offset: int = 0  # query i sits at position q_offset + i

    @property
    def groups(self) -> int:
        return self.q_heads // self.kv_heads

    @property
    def has_extras(self) -> bool:
        return self.window is not None or self.softcap is not None


def _validate_tensor(name: str, t) -> None:
    """``t`` is a floating-point tensor shaped ``(..., heads, seq, head_dim)``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if t.dim() < 3:
        raise ValueError(f"{name} must be shaped (..., heads, seq, head_dim), got shape {tuple(t.shape)}")


def _shapes(query, key, value) -> str:
    return f"query {tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}"


def _validate_qkv(query, key, value) -> None:
    """Three tensors with one dtype, one device, one rank and batch, and key/value of one length.
    Heads are left to the caller: :func:`attention` allows grouped-query heads, the ring does not."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        _validate_tensor(name, t)
    if not query.dtype == key.dtype == value.dtype:
        raise TypeError(
            f"query, key and value must share a dtype, got {query.dtype}, {key.dtype}, {value.dtype}"
        )
    if not query.device == key.device == value.device:
        raise ValueError(
            f"query, key and value must be on one device, got {query.device}, {key.device}, "
            f"{value.device}"
        )
    shapes = _shapes(query, key, value)
    if not query.dim() == key.dim() == value.dim():
        raise ValueError(f"query, key and value must have the same rank, got {shapes}")
    if not query.shape[:-3] == key.shape[:-3] == value.shape[:-3]:
        raise ValueError(f"query, key and value must have the same batch dims, got {shapes}")
    if key.shape[-3:-1] != value.shape[-3:-1]:
        raise ValueError(f"key and value must have the same heads and seq length, got {shapes}")
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(f"query and key must have the same head_dim, got {shapes}")


def _validate_gqa_heads(query, key, value, enable_gqa) -> None:
    q_heads, kv_heads = query.shape[-3], key.shape[-3]
    if q_heads == kv_heads:
        return
    if not enable_gqa:
        raise ValueError(
            f"query has {q_heads} heads but key/value have {kv_heads}; pass enable_gqa=True "
            f"for grouped-query attention ({_shapes(query, key, value)})"
        )
    if kv_heads == 0 or q_heads % kv_heads:
        raise ValueError(
            f"enable_gqa needs key/value heads ({kv_heads}) to divide query heads "
            f"({q_heads}), got {_shapes(query, key, value)}"
        )


def _validate_device(name: str, t: torch.Tensor, query: torch.Tensor) -> None:
    if t.device != query.device:
        raise ValueError(f"{name} must be on the query's device ({query.device}), got {t.device}")


def _distinct(t: torch.Tensor) -> torch.Tensor:
    """``t`` without its broadcast copies: dims expanded with stride 0 narrowed to size 1, so a
    mask expanded to ``(B, H, n, n)`` from ``(n, n)`` is read n*n times, not B*H*n*n."""
    for dim in range(t.dim()):
        if t.stride(dim) == 0 and t.shape[dim] > 1:
            t = t.narrow(dim, 0, 1)
    return t


def _validate_attn_mask(attn_mask, query, key) -> None:
    """A bool or float mask on the query's device that broadcasts to the scores. A float mask may
    hold finite numbers and -inf (a forbidden key); NaN or +inf would turn whole rows into NaN,
    so they are refused here, at the cost of one pass over the mask."""
    if attn_mask is None:
        return
    if not isinstance(attn_mask, torch.Tensor):
        raise TypeError(f"attn_mask must be a torch.Tensor or None, got {type(attn_mask).__name__}")
    if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
        raise TypeError(f"attn_mask must be bool or floating point, got dtype {attn_mask.dtype}")
    _validate_device("attn_mask", attn_mask, query)
    full = (*query.shape[:-1], key.shape[-2])
    try:
        if torch.broadcast_shapes(attn_mask.shape, full) != full:
            raise RuntimeError
    except RuntimeError:
        raise ValueError(
            f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to the scores' "
            f"shape {full} (..., q_heads, q_len, k_len)"
        ) from None
    if not attn_mask.is_floating_point() or attn_mask.numel() == 0:
        return
    distinct = _distinct(attn_mask)
    # The maximum is NaN or +inf exactly when some entry is (amax propagates NaN): one pass.
    if not bool(distinct.amax() < math.inf):
        nans, infs = int(distinct.isnan().sum()), int(distinct.isposinf().sum())
        raise ValueError(
            f"attn_mask holds {nans} NaN and {infs} +inf values (shape {tuple(attn_mask.shape)}, "
            "broadcast copies counted once); a float mask may hold finite numbers, and -inf to "
            "forbid a key"
        )


def _validate_dropout(dropout_p) -> float:
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, int | float) or not 0 <= dropout_p < 1:
        raise ValueError(f"dropout_p must be a number in [0, 1), got {dropout_p!r}")
    return float(dropout_p)


def _validate_scale(scale, head_dim: int) -> float:
    """The scale to use: ``1/sqrt(head_dim)`` for None, else a finite number."""
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number or None, got {scale!r}")
    return float(scale)


def _validate_alibi_slopes(alibi_slopes, query) -> None:
    if alibi_slopes is None:
        return
    if not isinstance(alibi_slopes, torch.Tensor):
        raise TypeError(f"alibi_slopes must be a torch.Tensor, got {type(alibi_slopes).__name__}")
    q_heads = query.shape[-3]
    if tuple(alibi_slopes.shape) != (q_heads,):
        raise ValueError(
            f"alibi_slopes must have shape (q_heads,) = ({q_heads},), got {tuple(alibi_slopes.shape)}"
        )
    _validate_device("alibi_slopes", alibi_slopes, query)
    if not bool(torch.isfinite(alibi_slopes).all()):
        raise ValueError(f"alibi_slopes must be finite, got {alibi_slopes.tolist()}")


def _validate_softcap(softcap) -> float | None:
    if softcap is None:
        return None
    if isinstance(softcap, bool) or not isinstance(softcap, int | float) or not softcap > 0:
        raise ValueError(f"softcap must be a positive number or None, got {softcap!r}")
    return float(softcap)


def _validate_query_offset(query_offset) -> int:
    if isinstance(query_offset, bool) or not isinstance(query_offset, int) or query_offset < 0:
        raise ValueError(f"query_offset must be an int >= 0, got {query_offset!r}")
    return query_offset


def _validate(query, key, value, *, attn_mask=None, dropout_p=0.0, scale=None, enable_gqa=False,
              window=None, alibi_slopes=None, softcap=None, global_tokens=0, query_offset=0,
              backend="auto") -> _Request:
    """Every argument of :func:`attention`, checked before any work; returns the request."""
    _validate_qkv(query, key, value)
    _validate_gqa_heads(query, key, value, enable_gqa)
    _validate_attn_mask(attn_mask, query, key)
    _validate_alibi_slopes(alibi_slopes, query)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    normalized_window = normalize_window(window)
    return _Request(
        batch=tuple(query.shape[:-3]),
        q_heads=query.shape[-3],
        kv_heads=key.shape[-3],
        q_len=query.shape[-2],
        k_len=key.shape[-2],
        scale=_validate_scale(scale, query.shape[-1]),
        window=normalized_window,
        softcap=_validate_softcap(softcap),
        dropout_p=_validate_dropout(dropout_p),
        global_tokens=normalize_global_tokens(global_tokens, normalized_window),
        q_offset=_validate_query_offset(query_offset),
    )


def _effective_window(req: _Request, is_causal: bool):
    """Causality is the window (unlimited, 0): merge the two into one ``(left, right)``."""
    left, right = req.window if req.window is not None else (None, None)
    if is_causal:
        right = 0 if right is None else min(right, 0)
    return left, right


@dataclass
class AttentionTrace:
    """Every step of one attention call, for explaining it. Shapes use ``Hq`` heads throughout.

    ``scores`` (..., Hq, Lq, Lk) raw ``q . k``; ``scaled`` after the scale (and softcap);
    ``masked`` after ALiBi, float masks and ``-inf`` where attending is not allowed;
    ``weights`` the softmax (rows with no allowed key are zeros; before dropout);
    ``output`` (..., Hq, Lq, Dv), equal to ``attention(...)`` with the same arguments.
    """

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    scores: torch.Tensor
    scaled: torch.Tensor
    masked: torch.Tensor
    weights: torch.Tensor
    output: torch.Tensor
    scale: float
    is_causal: bool
    window: tuple[int | None, int | None] | None
    softcap: float | None
    alibi_slopes: torch.Tensor | None
    attn_mask: torch.Tensor | None
    dropout_p: float
    global_tokens: int = 0
    query_offset: int = 0


def _offsets(req: _Request, device) -> torch.Tensor:
    """``(Lq, Lk)`` of ``j - (q_offset + i)``: how far key ``j`` lies after query ``i``."""
    positions = torch.arange(req.q_offset, req.q_offset + req.q_len, device=device)
    return torch.arange(req.k_len, device=device) - positions[:, None]


def _allowed(req: _Request, is_causal: bool, device) -> torch.Tensor | None:
    """``(Lq, Lk)`` bool of the keys causality and the window let each query see (global tokens
    widen the window), or None when they constrain nothing."""
    left, right = _effective_window(req, is_causal)
    if left is None and right is None:
        return None
    allowed = window_mask(req.q_len, req.k_len, (left, right), offset=req.q_offset, device=device)
    if req.global_tokens:  # the first g positions see, and are seen by, every position
        allowed = allowed | global_tokens_mask(req.q_len, req.k_len, req.global_tokens,
                                               causal=is_causal, offset=req.q_offset, device=device)
    return allowed


def _reference(query, key, value, attn_mask, is_causal, alibi_slopes, req: _Request):
    """The formula in the module docstring, spelled out; returns every intermediate:
    ``(scores, scaled, masked, weights, output)``."""
    in_dtype = query.dtype
    if in_dtype in (torch.bfloat16, torch.float16):  # softmax in half precision is too coarse
        query, key, value = query.float(), key.float(), value.float()
    if req.groups > 1:  # share each key/value head with its group of query heads
        key = key.repeat_interleave(req.groups, dim=-3)
        value = value.repeat_interleave(req.groups, dim=-3)
    scores = query @ key.transpose(-2, -1)
    scaled = scores * req.scale
    if req.softcap is not None:
        scaled = req.softcap * torch.tanh(scaled / req.softcap)
    masked = scaled
    if alibi_slopes is not None:
        slopes = alibi_slopes.to(scaled.dtype)[:, None, None]
        masked = masked - slopes * _offsets(req, query.device).abs().to(scaled.dtype)
    allowed = _allowed(req, is_causal, query.device)  # None: every key allowed
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            allowed = attn_mask if allowed is None else allowed & attn_mask
        else:
            masked = masked + attn_mask.to(scaled.dtype)
    empty_row = None
    if allowed is not None or (attn_mask is not None and attn_mask.dtype != torch.bool):
        # Only a mask can leave a row without keys; unmasked calls (the auto backend's short
        # CPU inputs) skip these passes over the scores.
        if allowed is not None:
            masked = masked.masked_fill(~allowed, -math.inf)
        empty_row = torch.isneginf(masked).all(dim=-1, keepdim=True)
        if not empty_row.any():
            empty_row = None
    if empty_row is None:
        weights = torch.softmax(masked, dim=-1)
    else:
        weights = torch.softmax(masked.masked_fill(empty_row, 0.0), dim=-1).masked_fill(empty_row, 0.0)
    dropped = F.dropout(weights, req.dropout_p) if req.dropout_p > 0 else weights
    output = (dropped @ value).to(in_dtype)
    return scores, scaled, masked, weights, output


def _flatten_batch(t: torch.Tensor | None, batch: tuple[int, ...]) -> torch.Tensor | None:
    """(..., H, L, S) broadcastable to ``batch`` -> (N or 1, H, L, S) with one batch dim."""
    if t is None:
        return None
    t = t.reshape((1,) * (len(batch) + 3 - t.dim()) + tuple(t.shape))
    if all(size == 1 for size in t.shape[:-3]):
        return t.reshape(1, *t.shape[-3:])
    return t.expand(*batch, *t.shape[-3:]).reshape(-1, *t.shape[-3:])


def _torch_backend(query, key, value, attn_mask, is_causal, enable_gqa, req: _Request):
    """PyTorch's fused kernel on 4-D views (3-D or 5-D inputs would send it to its slow path)."""
    q = query.reshape(-1, *query.shape[-3:])
    k = key.reshape(-1, *key.shape[-3:])
    v = value.reshape(-1, *value.shape[-3:])
    mask = _flatten_batch(attn_mask, req.batch)
    if is_causal and (mask is not None or req.q_offset):
        # PyTorch refuses a mask with is_causal, and aligns causality top-left: build it here.
        causal = torch.ones(req.q_len, req.k_len, dtype=torch.bool, device=q.device)
        causal = causal.tril(diagonal=req.q_offset)
        if mask is None:
            mask = causal
        else:
            mask = mask & causal if mask.dtype == torch.bool else mask.masked_fill(~causal, -math.inf)
        is_causal = False
    empty_row = None
    if mask is not None:
        if mask.dtype != torch.bool:
            mask = mask.to(q.dtype)
            empty_row = torch.isneginf(mask).all(dim=-1, keepdim=True)
        else:
            empty_row = ~mask.any(dim=-1, keepdim=True)
        if empty_row.any():
            # Give empty rows a harmless key so no kernel divides by zero, then zero them below.
            mask = mask.masked_fill(empty_row, True if mask.dtype == torch.bool else 0.0)
        else:
            empty_row = None
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=req.dropout_p, is_causal=is_causal,
        scale=req.scale, enable_gqa=enable_gqa,
    )
    if empty_row is not None:
        out = out.masked_fill(empty_row, 0.0)
    return out.reshape(*req.batch, req.q_heads, req.q_len, value.shape[-1])


def _tiled_backend(query, key, value, attn_mask, is_causal, alibi_slopes, req: _Request,
                   function=tiled.TiledAttentionFunction):
    """Group heads for GQA and hand the request to :mod:`attnlab.attention.tiled` (or, with
    ``function=native.NativeAttentionFunction``, to the native kernel: the same layout)."""
    groups, kv_heads = req.groups, req.kv_heads
    q = query.reshape(-1, kv_heads, groups, req.q_len, query.shape[-1])
    n = q.shape[0]
    q = q.reshape(n * kv_heads, groups, req.q_len, query.shape[-1])
    k = key.reshape(n * kv_heads, req.k_len, key.shape[-1])
    v = value.reshape(n * kv_heads, req.k_len, value.shape[-1])
    mask = _flatten_batch(attn_mask, req.batch)
    if mask is not None:
        heads = mask.shape[1]
        mask = mask.reshape(mask.shape[0], heads // groups if heads > 1 else 1,
                            groups if heads > 1 else 1, *mask.shape[-2:])
        if mask.dtype != torch.bool:
            mask = mask.float() if query.dtype in (torch.bfloat16, torch.float16) else mask.to(query.dtype)
    neg_slopes = None
    if alibi_slopes is not None:
        acc = torch.float32 if query.dtype in (torch.bfloat16, torch.float16) else query.dtype
        neg_slopes = -alibi_slopes.to(device=query.device, dtype=acc).view(1, kv_heads, groups, 1, 1)
    left, right = _effective_window(req, is_causal)
    block_q, block_k = tiled.choose_blocks(n * req.q_heads, req.q_len, req.k_len)
    seed = int(torch.randint(0, 2**62, (1,)).item()) if req.dropout_p > 0 else 0
    params = tiled.TiledParams(
        scale=req.scale, left=left, right=right, softcap=req.softcap, dropout_p=req.dropout_p,
        seed=seed, block_q=block_q, block_k=block_k, global_tokens=req.global_tokens,
        causal=is_causal, q_offset=req.q_offset,
    )
    out = function.apply(q, k, v, mask, neg_slopes, n, params)
    return out.reshape(*req.batch, req.q_heads, req.q_len, value.shape[-1])


def _run(backend, query, key, value, attn_mask, is_causal, enable_gqa, alibi_slopes, req):
    if backend == "reference":
        return _reference(query, key, value, attn_mask, is_causal, alibi_slopes, req)[-1]
    if backend == "tiled":
        return _tiled_backend(query, key, value, attn_mask, is_causal, alibi_slopes, req)
    if backend == "native":
        return _tiled_backend(query, key, value, attn_mask, is_causal, alibi_slopes, req,
                              function=native.NativeAttentionFunction)
    return _torch_backend(query, key, value, attn_mask, is_causal, enable_gqa, req)


def _all_finite(*tensors: torch.Tensor) -> bool:
    """Whether no tensor holds NaN or +-inf: one pass over each and a single host sync.

    A tensor is finite exactly when its minimum and maximum are (NaN propagates to both);
    ``aminmax`` reads it once without temporaries, ~15x faster here than ``isfinite().all()``.
    """
    ends = [end for t in tensors if t.numel() for end in torch.aminmax(_distinct(t.detach()))]
    if not ends:
        return True
    if ends[0].device.type == "cpu":  # reading a CPU scalar is free: skip assembling a tensor
        return all(math.isfinite(end) for end in ends)
    return bool(torch.isfinite(torch.stack(ends)).all())


def _zero_nonfinite(t: torch.Tensor) -> torch.Tensor:
    """``t`` with NaN and +-inf replaced by 0 (those entries then get zero gradient)."""
    return torch.where(torch.isfinite(t), t, 0.0)


def _rows_reached(query, key, value, attn_mask, is_causal, req: _Request) -> torch.Tensor:
    """``(..., Hq, Lq, 1)`` bool: the output rows a NaN/inf in ``query``, ``key`` or ``value``
    reaches. A bad query row reaches its own row if that row has any allowed key; a bad key or
    value row ``j`` reaches every row allowed to see key ``j``.

    "Allowed" is found by attention itself, so it keeps every mask's exact meaning (bool and
    float masks, causality, window, global tokens, GQA): zero queries and keys give every
    allowed key the same weight, so attending to the values ``[bad_j, 1]`` returns
    ``(share of the row's keys that are bad, 1)``, or zeros for a row with no allowed key.
    """
    bad_q = ~torch.isfinite(query).all(-1, keepdim=True)  # (..., Hq, Lq, 1)
    bad_kv = ~(torch.isfinite(key).all(-1, keepdim=True)
               & torch.isfinite(value).all(-1, keepdim=True))  # (..., Hk, Lk, 1)
    probe_values = torch.cat([bad_kv, torch.ones_like(bad_kv)], dim=-1).float()  # (..., Hk, Lk, 2)
    zeros_q = query.new_zeros((*query.shape[:-1], 1), dtype=torch.float32)
    zeros_k = key.new_zeros((*key.shape[:-1], 1), dtype=torch.float32)
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        attn_mask = attn_mask != -math.inf  # a float mask forbids exactly its -inf entries
    plain = replace(req, scale=1.0, softcap=None, dropout_p=0.0)  # none of these forbids a key
    with torch.no_grad():
        probe = _tiled_backend(zeros_q, zeros_k, probe_values, attn_mask, is_causal, None, plain)
    return (bad_q & (probe[..., 1:] > 0)) | (probe[..., :1] > 0)


def _pytorch_has_fused_kernel(query, key, value, attn_mask, dropout_p, is_causal, scale, gqa):
    """Whether PyTorch would run this request in a fused kernel (not its O(n^2) math path)."""
    q = query.reshape(-1, *query.shape[-3:])
    k = key.reshape(-1, *key.shape[-3:])
    v = value.reshape(-1, *value.shape[-3:])
    try:
        choice = torch._fused_sdp_choice(
            q, k, v, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=gqa
        )
    except (RuntimeError, TypeError, AttributeError):
        return False
    return choice != int(torch.nn.attention.SDPBackend.MATH)


def choose_backend(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                   scale=None, enable_gqa=False, *, window=None, alibi_slopes=None,
                   softcap=None, global_tokens=0, query_offset=0) -> str:
    """The backend ``backend="auto"`` runs for this request. The rule:

    1. ``reference`` on the CPU for short requests without masks, causality or extras (at most
       :data:`SHORT_CPU_LENGTH` queries and keys, e.g. a ViT's 50 tokens): two matrix products
       around a softmax beat every fused kernel there, and the scores are small anyway.
    2. ``native`` on the CPU for float32, bf16 and fp16 without dropout where it measures
       faster (docs/benchmarks.md, "The native CPU kernel"), when the kernel is built
       (:func:`attnlab.attention.native.available`): at least :data:`NATIVE_MIN_QUERIES`
       queries, and either a request rules 3-5 would give ``tiled`` (it beats ``tiled``
       everywhere), or causality with at least :data:`NATIVE_CAUSAL_KEYS` keys, or at least
       :data:`NATIVE_KEYS` keys. Where it cannot be built, ``auto`` notes it once on stderr and
       goes on with the rules below.
    3. ``tiled`` if the request uses an extra PyTorch lacks (``window`` and ``global_tokens``,
       ``alibi_slopes``, ``softcap``), or combines ``is_causal`` with ``attn_mask`` or a
       ``query_offset`` for :data:`NATIVE_MIN_QUERIES` or more queries (PyTorch would need an
       n x n mask; for fewer, the ``torch`` backend builds the small one).
    4. ``torch`` if PyTorch runs it in a fused kernel (FlashAttention / memory-efficient / cuDNN
       on CUDA, the flash kernel on CPU), which is the fastest exact kernel where it applies:
       every CUDA request without extras goes here.
    5. ``tiled`` otherwise: PyTorch would fall back to its math path, which materialises the
       n x n scores (e.g. dropout on CPU, value head_dim != key head_dim).
    """
    req = _validate(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale,
                    enable_gqa=enable_gqa, window=window, alibi_slopes=alibi_slopes,
                    softcap=softcap, global_tokens=global_tokens, query_offset=query_offset)
    return _choose(query, key, value, attn_mask, _causal(is_causal, req), enable_gqa, alibi_slopes,
                   req)


def _causal(is_causal: bool, req: _Request) -> bool:
    """``is_causal``, or False where it forbids nothing: every key at or before every query
    (cached decoding of one new token), which lets that call skip a mask."""
    return is_causal and req.q_offset < req.k_len - 1


def _choose(query, key, value, attn_mask, is_causal, enable_gqa, alibi_slopes, req) -> str:
    extras = req.has_extras or alibi_slopes is not None
    cpu = query.device.type == "cpu"
    if (cpu and attn_mask is None and not is_causal and not extras
            and max(req.q_len, req.k_len) <= SHORT_CPU_LENGTH):
        return "reference"
    # A causal mask PyTorch cannot express itself (with a mask, or after cached keys) is built
    # for it when it is small (a few queries); otherwise a blocked kernel avoids the n x n mask.
    merged_mask = is_causal and (attn_mask is not None or req.q_offset)
    fused = not extras and not (merged_mask and req.q_len >= NATIVE_MIN_QUERIES) and \
        _pytorch_has_fused_kernel(query, key, value, _flatten_batch(attn_mask, req.batch),
                                  req.dropout_p, is_causal and not merged_mask, req.scale, enable_gqa)
    native_fits = (cpu and req.dropout_p == 0 and query.dtype in native.AUTO_DTYPES
                   and req.q_len >= NATIVE_MIN_QUERIES)
    # The native kernel where it beats PyTorch's (measured lengths) and wherever the other
    # choice would be ``tiled`` (extras, merged masks, requests PyTorch cannot fuse).
    if native_fits and (not fused or req.k_len >= (NATIVE_CAUSAL_KEYS if is_causal else NATIVE_KEYS)):
        if native.available():
            return "native"
        native.note_unavailable()
    return "torch" if fused else "tiled"


def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
              enable_gqa=False, *, window=None, alibi_slopes=None, softcap=None, global_tokens=0,
              query_offset=0, backend="auto"):
    """Scaled dot-product attention, exact on every backend.

    Args:
        query: ``(..., Hq, Lq, D)``. key: ``(..., Hk, Lk, D)``. value: ``(..., Hk, Lk, Dv)``.
            One floating dtype for all three; any number of leading batch dims (0, 1, 2, ...).
        attn_mask: bool (True = may attend) or float (added to the scores), broadcastable to
            ``(..., Hq, Lq, Lk)``. Treated as a constant (no gradient).
        dropout_p: probability of dropping an attention weight, in ``[0, 1)``.
        is_causal: query ``i`` sees keys ``j <= i`` (top-left aligned, like PyTorch; with
            ``query_offset``, keys ``j <= query_offset + i``). May be combined with
            ``attn_mask`` (both apply).
        scale: multiplies ``q . k``; defaults to ``1/sqrt(D)``.
        enable_gqa: let ``Hk`` divide ``Hq`` (grouped-query / multi-query attention).
        window: ``(left, right)``: query ``i`` sees keys ``i-left .. i+right``; ``None`` or ``-1``
            on a side means unlimited; an int ``w`` means ``(w, w)``. The ``tiled`` and
            ``native`` backends visit only the key blocks inside the window: O(n * window) time.
        global_tokens: with ``window``, the first ``g`` positions are global (Longformer): they
            see every key and every query sees them (``is_causal`` still applies). Their key
            blocks are visited for every query block and their query blocks see all keys, so the
            cost is O(n * (window + g)).
        alibi_slopes: ``(Hq,)``; adds ``-slope * |i - j|`` to head ``h``'s scores.
        softcap: replaces scaled scores ``x`` by ``softcap * tanh(x / softcap)``.
        query_offset: the queries sit at positions ``query_offset + i`` while key ``j`` sits at
            ``j`` (decoding with a KV cache: the new queries come after the cached keys).
            Causality, the window, global tokens and ALiBi are measured from these positions.
        backend: ``"auto"`` (see :func:`choose_backend`), ``"reference"``, ``"tiled"``,
            ``"torch"`` or ``"native"`` (:mod:`attnlab.attention.native`, CPU only).

    Returns:
        ``(..., Hq, Lq, Dv)`` in the input dtype. Query rows with no allowed key are zeros
        (with zero gradients), never NaN.

    Non-finite inputs, one rule on every backend and at every length: a NaN or +-inf anywhere
    in ``query[..., h, i, :]`` makes output row ``i`` of head ``h`` all NaN (unless the row has
    no allowed key: then it stays zeros); one in ``key`` or ``value`` at position ``j`` makes
    all NaN every row allowed to see key ``j`` (not removed by a bool mask, a float mask's
    -inf, causality or the window). Every other row is exactly what it would be without that
    value, and gradients flow only through those rows (the non-finite entries get zero). The
    check costs one pass over query, key and value and one host sync (under 1% of a call at
    n = 4096, see docs/benchmarks.md); only when it finds something does the call do more: a
    second, one-dimensional attention pass finds the rows reached.

    Raises:
        TypeError / ValueError naming the argument and the shapes or dtypes seen; a float
        ``attn_mask`` holding NaN or +inf, a non-finite ``scale`` or ``alibi_slopes``, and an
        ``attn_mask`` or ``alibi_slopes`` on another device than ``query`` are refused too.
        ``backend="native"`` raises :class:`attnlab.attention.native.NativeUnavailable` where
        the kernel cannot be built, and ValueError for CUDA tensors or dropout.
    """
    req = _validate(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale,
                    enable_gqa=enable_gqa, window=window, alibi_slopes=alibi_slopes,
                    softcap=softcap, global_tokens=global_tokens, query_offset=query_offset,
                    backend=backend)
    is_causal = _causal(is_causal, req)
    if query.numel() == 0 or key.shape[-2] == 0:
        # Nothing to tile and nothing for a fused kernel to do: the formula gives the empty (or,
        # with no keys, all-zero) output, and a gradient graph, on any backend's behalf.
        backend = "reference"
    elif backend == "auto":
        backend = _choose(query, key, value, attn_mask, is_causal, enable_gqa, alibi_slopes, req)
    if backend == "torch":
        unsupported = [name for name, value_ in (("window", req.window), ("alibi_slopes", alibi_slopes),
                                                 ("softcap", req.softcap)) if value_ is not None]
        if unsupported:
            raise ValueError(
                f"backend='torch' does not support {', '.join(unsupported)}; "
                "use backend='tiled' or 'auto'"
            )
    if backend == "native":
        if query.device.type != "cpu":
            raise ValueError(f"backend='native' runs on the CPU only, got {query.device.type} tensors")
        if req.dropout_p > 0:
            raise ValueError("backend='native' does not support dropout; use backend='tiled' or 'auto'")
        native.require()
    args = (attn_mask, is_causal, enable_gqa, alibi_slopes, req)
    if _all_finite(query, key, value):
        return _run(backend, query, key, value, *args)
    # Rare: run on the inputs with every NaN/inf zeroed (the rows it reaches are overwritten
    # below, and the others never see it), then mark exactly those rows.
    reached = _rows_reached(query, key, value, attn_mask, is_causal, req)
    out = _run(backend, _zero_nonfinite(query), _zero_nonfinite(key), _zero_nonfinite(value), *args)
    return out.masked_fill(reached, math.nan)


def attention_trace(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                    scale=None, enable_gqa=False, *, window=None, alibi_slopes=None,
                    softcap=None, global_tokens=0, query_offset=0,
                    backend="reference") -> AttentionTrace:
    """Run the reference formula and keep every step (see :class:`AttentionTrace`).

    Takes :func:`attention`'s arguments. The trace always materialises the ``(..., Hq, Lq, Lk)``
    scores, so it is meant for explaining short inputs, not for long sequences. ``backend`` is
    accepted for signature compatibility and must be ``"reference"`` or ``"auto"``.
    """
    if backend not in ("reference", "auto"):
        raise ValueError(f"attention_trace always uses the reference formula, got backend={backend!r}")
    req = _validate(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale,
                    enable_gqa=enable_gqa, window=window, alibi_slopes=alibi_slopes,
                    softcap=softcap, global_tokens=global_tokens, query_offset=query_offset)
    scores, scaled, masked, weights, output = _reference(
        query, key, value, attn_mask, is_causal, alibi_slopes, req
    )
    return AttentionTrace(
        query=query, key=key, value=value, scores=scores, scaled=scaled, masked=masked,
        weights=weights, output=output, scale=req.scale, is_causal=is_causal, window=req.window,
        softcap=req.softcap, alibi_slopes=alibi_slopes, attn_mask=attn_mask,
        dropout_p=req.dropout_p, global_tokens=req.global_tokens, query_offset=req.q_offset,
    )
