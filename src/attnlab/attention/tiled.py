"""The ``tiled`` backend: exact attention in O(seq) extra memory, forward and backward.

Plain formula it must equal (per head, per query row ``i``)::

    s_ij = softcap(scale * q_i . k_j) - slope * |i - j| + float_mask_ij     (-inf where masked)
    p_ij = exp(s_ij - logsumexp_j s_ij)                                      (0 for empty rows)
    o_i  = sum_j dropout(p_ij) * v_j

Queries are cut into blocks of ``block_q`` rows and keys into blocks of ``block_k`` columns.
For each query block the key blocks are visited with the *online softmax*: a running row
maximum ``m``, a running normaliser ``l`` and an unnormalised output ``acc`` are rescaled
whenever a larger score appears, so no row of scores is ever held whole. The forward keeps only
the output and the per-row log-sum-exp ``lse = m + log l``; the backward recomputes each block's
probabilities from ``lse`` (``p = exp(s - lse)``), so neither pass stores an n x n tensor.

Key blocks that causality or a window make empty are never visited (a window of ``w`` costs
O(n * w)), and blocks a boolean mask empties are skipped after one cheap ``any()``. Global
tokens (the first ``g`` positions, Longformer-style) add their key blocks to every query block's
visit and give their own query blocks every key: O(n * (w + g)).
Dropout keeps no mask: each block's keep-mask is regenerated from a seed derived from the
block's position, identically in forward and backward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

# Score-tile budget (elements per (batch*heads x block_q x block_k) tile), measured on the 2-core
# development machine (AVX-512, H=8, D=64, n=4096, fp32 forward vs PyTorch's fused kernel):
# 256K-element tiles ran at 0.55-0.58x, 512K at 0.57-0.67x, 1M and 2M at 0.71-0.75x (equal within
# noise), 4M at 0.64-0.66x (0.58x in bf16): past a few MiB a tile falls out of cache. Key blocks of
# 256-1024 were equal at 1M; 512 keeps partial (diagonal, window) blocks small.
TILE_ELEMENTS = 8 * 256 * 512
BLOCK_K = 512
MIN_BLOCK_Q, MAX_BLOCK_Q = 16, 1024
_LOW_PRECISION = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class TiledParams:
    """Everything about a request except the tensors. Sizes are after GQA grouping."""

    scale: float
    left: int | None  # keys allowed down to i - left (None: unlimited)
    right: int | None  # keys allowed up to i + right (None: unlimited; 0 when causal)
    softcap: float | None
    dropout_p: float
    seed: int
    block_q: int
    block_k: int
    global_tokens: int = 0  # the first g positions see and are seen by all (widen the window)
    causal: bool = False  # still applies to global tokens (left/right already include it)
    q_offset: int = 0  # query i sits at position q_offset + i (cached decoding); key j at j


def choose_blocks(rows_per_query: int, q_len: int, k_len: int) -> tuple[int, int]:
    """Block sizes keeping one score tile near :data:`TILE_ELEMENTS` elements.

    ``rows_per_query`` is how many score rows one query position produces across the batched
    matmul (batch x query heads).
    """
    block_k = min(BLOCK_K, max(k_len, 1))
    block_q = TILE_ELEMENTS // max(rows_per_query * block_k, 1)
    block_q = 1 << max(block_q, 1).bit_length() - 1  # round down to a power of two
    block_q = max(MIN_BLOCK_Q, min(MAX_BLOCK_Q, block_q))
    return min(block_q, max(q_len, 1)), block_k


def _key_range(i0: int, i1: int, k_len: int, p: TiledParams) -> tuple[int, int]:
    """Keys ``[lo, hi)`` that any query at the positions ``[i0, i1)`` may see under the window."""
    lo = 0 if p.left is None else max(0, i0 - p.left)
    hi = k_len if p.right is None else min(k_len, i1 - 1 + p.right + 1)
    return lo, hi


def _key_blocks(i0: int, i1: int, k_len: int, p: TiledParams):
    """The ``(j0, j1)`` key blocks to visit for queries ``[i0, i1)``: the window's range, plus
    the global keys ``[0, g)``; a block holding a global query visits every (causal) key."""
    g = p.global_tokens
    i0, i1 = i0 + p.q_offset, i1 + p.q_offset  # positions from here on
    if g and i0 < g:
        spans = [(0, min(k_len, i1) if p.causal else k_len)]
    else:
        lo, hi = _key_range(i0, i1, k_len, p)
        spans = [(0, min(g, lo, k_len)), (lo, hi)] if g and lo > 0 else [(lo, hi)]
    for lo, hi in spans:
        for j0 in range(lo, hi, p.block_k):
            yield j0, min(j0 + p.block_k, hi)


def _offsets(i0: int, i1: int, j0: int, j1: int, device) -> torch.Tensor:
    """(bq, bk) integer ``j - i`` for the tile's queries i in [i0, i1) and keys j in [j0, j1)."""
    return torch.arange(j0, j1, device=device)[None, :] - torch.arange(i0, i1, device=device)[:, None]


def _window_block_bias(i0, i1, j0, j1, p: TiledParams, device, dtype) -> torch.Tensor | None:
    """(bq, bk) additive bias of the window inside a tile of the query positions ``[i0, i1)``
    and keys ``[j0, j1)`` (0 inside, -inf outside), or None when
    the tile lies wholly inside. Added rather than masked_fill'ed: broadcasting a (bq, bk) bias
    over the heads runs ~8x faster here than a broadcast masked_fill_."""
    g = p.global_tokens
    if g and (j1 <= g or i1 <= g):  # every pair in the tile involves a global token
        if not p.causal or j1 - 1 <= i0:
            return None
        allowed = _offsets(i0, i1, j0, j1, device) <= 0
        return torch.zeros((), dtype=dtype, device=device).masked_fill(~allowed, -math.inf)
    inside_right = p.right is None or j1 - 1 <= i0 + p.right
    inside_left = p.left is None or j0 >= i1 - 1 - p.left
    if inside_right and inside_left:
        return None
    offset = _offsets(i0, i1, j0, j1, device)
    allowed = torch.ones_like(offset, dtype=torch.bool)
    if p.right is not None:
        allowed &= offset <= p.right
    if p.left is not None:
        allowed &= offset >= -p.left
    if g and (j0 < g or i0 < g):
        keys, queries = torch.arange(j0, j1, device=device), torch.arange(i0, i1, device=device)
        widened = (keys < g) | (queries < g)[:, None]
        allowed |= widened & (offset <= 0) if p.causal else widened
    return torch.zeros((), dtype=dtype, device=device).masked_fill(~allowed, -math.inf)


def _block_seed(p: TiledParams, i0: int, j0: int) -> int:
    # Depends only on the block's corner, so forward and backward draw the same keep-mask.
    return (p.seed * 1_000_003 + i0 * 1_048_573 + j0) % (2**63 - 1)


def _keep_mask(shape, p: TiledParams, i0: int, j0: int, device) -> torch.Tensor:
    gen = torch.Generator(device=device)
    gen.manual_seed(_block_seed(p, i0, j0))
    return torch.rand(shape, generator=gen, device=device) >= p.dropout_p


class _BlockScores:
    """Recomputes one tile of masked scores; shared by forward and backward so they agree.

    ``k`` is ``(NHk, Lk, D)``; each tile multiplies by a transposed view of its key block, which
    runs as fast here as a pre-transposed copy and keeps extra memory at the tile's size.
    """

    def __init__(self, k, mask, neg_slopes, p: TiledParams, n: int, kv_heads: int):
        self.k, self.mask, self.neg_slopes, self.p = k, mask, neg_slopes, p
        self.n, self.kv_heads = n, kv_heads

    def __call__(self, q_rows: torch.Tensor, i0: int, i1: int, j0: int, j1: int):
        """Scores ``(batch*kv_heads, groups*bq, bk)`` and the softcap tanh (or None).

        Returns ``None`` when a boolean mask empties the whole block.
        """
        p, device = self.p, q_rows.device
        mask_blk = None
        if self.mask is not None:
            mask_blk = _mask_block(self.mask, i0, i1, j0, j1)
            if mask_blk.dtype == torch.bool:
                if not mask_blk.any():
                    return None
                if mask_blk.all():
                    mask_blk = None
        # Half-precision keys are upcast per tile: a bf16 score tile would round logits of ~1e4
        # by hundreds and change which key wins.
        s = torch.bmm(q_rows, self.k[:, j0:j1].to(q_rows.dtype).transpose(1, 2))
        tanh = None
        if p.softcap is not None:
            tanh = s.div_(p.softcap).tanh_()
            s = tanh * p.softcap
        s5 = s.view(self.n, self.kv_heads, -1, i1 - i0, j1 - j0)  # (N, Hk, G, bq, bk)
        a0, a1 = i0 + p.q_offset, i1 + p.q_offset  # the queries' positions
        if self.neg_slopes is not None:
            distance = _offsets(a0, a1, j0, j1, device).abs().to(s.dtype)
            s5.addcmul_(self.neg_slopes, distance)
        if mask_blk is not None:
            if mask_blk.dtype == torch.bool:
                s5.masked_fill_(~mask_blk, -math.inf)
            else:
                s5.add_(mask_blk)
        window_bias = _window_block_bias(a0, a1, j0, j1, p, device, s.dtype)
        if window_bias is not None:
            s5.add_(window_bias)
        return s, tanh


def _mask_block(mask: torch.Tensor, i0: int, i1: int, j0: int, j1: int) -> torch.Tensor:
    """The tile of a mask, keeping size-1 (broadcast) query or key dims as they are."""
    if mask.shape[-2] > 1:
        mask = mask[..., i0:i1, :]
    if mask.shape[-1] > 1:
        mask = mask[..., j0:j1]
    return mask


def _query_rows(q: torch.Tensor, i0: int, i1: int, scale: float = 1.0) -> torch.Tensor:
    """(NHk, G, Lq, D) -> (NHk, G*bq, D): one block's query rows in the accumulator dtype,
    groups stacked, times ``scale`` (folded into q: O(bq * D) work, not O(bq * bk))."""
    rows = q[:, :, i0:i1].reshape(q.shape[0], -1, q.shape[-1])
    return rows.to(_accumulator_dtype(q.dtype)) * scale


def blocked_function(forward, backward, name: str) -> type[torch.autograd.Function]:
    """An autograd Function over one blocked attention implementation, in this layout: ``q``
    (NHk, G, Lq, D), ``k`` (NHk, Lk, D), ``v`` (NHk, Lk, Dv); ``mask`` broadcastable to
    (N, Hk, G, Lq, Lk); ``neg_slopes`` broadcastable to (N, Hk, G, 1, 1); output (NHk, G, Lq, Dv)
    in ``q``'s dtype. ``forward(q, k, v, mask, neg_slopes, n, p)`` returns ``(out, lse)`` in the
    accumulator dtype and ``backward(grad_out, q, k, v, out, lse, mask, neg_slopes, n, p)``
    returns ``(dq, dk, dv)``; the tiled and native backends share this wrapper."""

    def forward_(ctx, q, k, v, mask, neg_slopes, n: int, p: TiledParams):
        out, lse = forward(q, k, v, mask, neg_slopes, n, p)
        ctx.save_for_backward(q, k, v, out, lse, mask, neg_slopes)
        ctx.n, ctx.p = n, p
        return out.to(q.dtype)

    @once_differentiable
    def backward_(ctx, grad_out):
        q, k, v, out, lse, mask, neg_slopes = ctx.saved_tensors
        dq, dk, dv = backward(grad_out, q, k, v, out, lse, mask, neg_slopes, ctx.n, ctx.p)
        return dq, dk, dv, None, None, None, None

    return type(name, (torch.autograd.Function,), {
        "forward": staticmethod(forward_), "backward": staticmethod(backward_),
        "__doc__": f"Autograd wrapper of {forward.__module__}.{forward.__name__}."})


def _accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def _forward(q, k, v, mask, neg_slopes, n, p: TiledParams):
    nhk, groups, q_len, _ = q.shape
    k_len, v_dim = k.shape[1], v.shape[-1]
    acc_dtype = _accumulator_dtype(q.dtype)
    scores = _BlockScores(k, mask, neg_slopes, p, n, nhk // n)
    # Kept in the accumulator dtype: the backward's dO . O needs more than bf16 precision.
    out = torch.empty(nhk, groups, q_len, v_dim, dtype=acc_dtype, device=q.device)
    lse = torch.empty(nhk, groups, q_len, dtype=acc_dtype, device=q.device)
    for i0 in range(0, q_len, p.block_q):
        i1 = min(i0 + p.block_q, q_len)
        rows = _query_rows(q, i0, i1, p.scale)
        m = torch.full((nhk, rows.shape[1], 1), -math.inf, dtype=acc_dtype, device=q.device)
        l = torch.zeros_like(m)  # noqa: E741 (the paper's name for the normaliser)
        acc = torch.zeros(nhk, rows.shape[1], v_dim, dtype=acc_dtype, device=q.device)
        for j0, j1 in _key_blocks(i0, i1, k_len, p):
            block = scores(rows, i0, i1, j0, j1)
            if block is None:
                continue
            keep = _keep_mask(block[0].shape, p, i0, j0, q.device) if p.dropout_p > 0 else None
            online_softmax_step(m, l, acc, block[0], v[:, j0:j1], keep)
        empty = l == 0
        norm = l.masked_fill(empty, 1.0)
        if p.dropout_p > 0:
            norm = norm * (1.0 - p.dropout_p)
        out[:, :, i0:i1] = (acc / norm).view(nhk, groups, i1 - i0, v_dim)
        # Empty rows get lse = +inf so the backward's exp(s - lse) is 0 there, never NaN.
        row_lse = torch.where(empty, math.inf, m + l.log())
        lse[:, :, i0:i1] = row_lse.view(nhk, groups, i1 - i0)
    return out, lse


def online_softmax_step(m, l, acc, s, v_block, keep=None) -> None:  # noqa: E741
    """Fold one tile of scores into the running softmax state, in place.

    ``m``, ``l`` ``(B, rows, 1)``: running row maximum and normaliser; ``acc`` ``(B, rows, Dv)``:
    unnormalised output; ``s`` ``(B, rows, bk)``: the tile's scores (overwritten);
    ``v_block`` ``(B, bk, Dv)``; ``keep``: the dropout keep-mask of the tile, or None.
    """
    m_new = torch.maximum(m, s.amax(-1, keepdim=True))
    # Rows with no visible key yet have m_new = -inf; shift by 0 so exp gives 0, not NaN.
    m_safe = m_new.masked_fill(m_new == -math.inf, 0.0)
    prob = s.sub_(m_safe).exp_()
    alpha = (m - m_safe).exp_()
    l.mul_(alpha).add_(prob.sum(-1, keepdim=True))
    if keep is not None:
        prob.mul_(keep)
    acc.mul_(alpha)
    _accumulate(acc, prob, v_block)
    m.copy_(m_new)


def _accumulate(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor, transpose_a=False) -> None:
    """``acc += a @ b`` with the matmul in ``b``'s dtype (fast bf16/fp16 matmuls, fp32 acc)."""
    if transpose_a:
        a = a.transpose(1, 2)
    if a.dtype != b.dtype:
        acc.add_(torch.bmm(a.to(b.dtype), b))
    else:
        acc.baddbmm_(a, b)


def _backward(grad_out, q, k, v, out, lse, mask, neg_slopes, n, p: TiledParams):
    acc_dtype = lse.dtype
    in_dtypes = q.dtype, k.dtype, v.dtype
    # Half precision is upcast once (O(n)): rounding dP or dS to bf16 and multiplying by keys or
    # queries of size ~100 would put errors of order 1 into the gradients.
    q, k, v, grad_out = (t.to(acc_dtype) for t in (q, k, v, grad_out))
    # delta_i = sum_j p_ij dP_ij = dO_i . O_i  (holds with dropout too, as O includes it)
    delta = (grad_out * out).sum(-1)
    dq, dk, dv = (torch.zeros(t.shape, dtype=acc_dtype, device=q.device) for t in (q, k, v))
    backward_into(dq, dk, dv, grad_out, q, k, v, delta, lse, mask, neg_slopes, n, p)
    return dq.to(in_dtypes[0]), dk.to(in_dtypes[1]), dv.to(in_dtypes[2])


def backward_into(dq, dk, dv, grad_out, q, k, v, delta, lse, mask, neg_slopes, n, p: TiledParams):
    """Add the gradients of one attention call to ``dq``, ``dk``, ``dv`` (in place).

    Everything is in the accumulator dtype and the layout of :class:`TiledAttentionFunction`;
    ``lse`` and ``delta = (grad_out * out).sum(-1)`` are ``(NHk, G, Lq)`` and may come from a
    larger softmax than ``k`` covers (ring attention passes the log-sum-exp over all keys, so
    each key block's probabilities are already the final ones).
    """
    nhk, groups, q_len, head_dim = q.shape
    k_len = k.shape[1]
    scores = _BlockScores(k, mask, neg_slopes, p, n, nhk // n)
    keep_scale = 1.0 / (1.0 - p.dropout_p)
    for i0 in range(0, q_len, p.block_q):
        i1 = min(i0 + p.block_q, q_len)
        rows = _query_rows(q, i0, i1, p.scale)
        d_out = _query_rows(grad_out, i0, i1)
        row_lse = lse[:, :, i0:i1].reshape(nhk, -1, 1)
        row_delta = delta[:, :, i0:i1].reshape(nhk, -1, 1)
        d_rows = torch.zeros(nhk, rows.shape[1], head_dim, dtype=dq.dtype, device=q.device)
        for j0, j1 in _key_blocks(i0, i1, k_len, p):
            block = scores(rows, i0, i1, j0, j1)
            if block is None:
                continue
            s, tanh = block
            prob = s.sub_(row_lse).exp_()
            d_prob = torch.bmm(d_out, v[:, j0:j1].transpose(1, 2))
            if p.dropout_p > 0:
                keep = _keep_mask(prob.shape, p, i0, j0, q.device) * keep_scale
                _accumulate(dv[:, j0:j1], prob * keep, d_out, transpose_a=True)
                d_prob.mul_(keep)
            else:
                _accumulate(dv[:, j0:j1], prob, d_out, transpose_a=True)
            d_score = d_prob.sub_(row_delta).mul_(prob)
            if tanh is not None:
                d_score.mul_(1.0 - tanh.square())
            _accumulate(d_rows, d_score, k[:, j0:j1])
            _accumulate(dk[:, j0:j1], d_score, rows, transpose_a=True)
        dq[:, :, i0:i1].add_(d_rows.view(nhk, groups, i1 - i0, head_dim), alpha=p.scale)


TiledAttentionFunction = blocked_function(_forward, _backward, "TiledAttentionFunction")
