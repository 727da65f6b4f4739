"""Ring attention: exact attention over a sequence split across ``torch.distributed`` ranks.

Rank ``r`` of ``w`` holds the contiguous shard ``[r*n/w, (r+1)*n/w)`` of the queries, keys and
values. The key/value shards travel around the ring ``r -> r+1``: in round ``s`` rank ``r`` holds
the shard of rank ``r - s`` and folds it into its queries' running softmax (the online softmax of
:mod:`attnlab.attention.tiled`: a row maximum, a normaliser and an unnormalised output), so after
``w`` rounds every query has seen every key and the result equals single-process attention::

    o_i = sum_j exp(s_ij - lse_i) v_j,   lse_i = log sum_j exp(s_ij)   over all n keys

Shards travel in chunks of ``chunk_size`` positions, at most two in flight, so besides its own
shard a process holds a few chunks (two ranks), or one forwarded shard (more ranks) -- never the
whole sequence. The backward sends the same chunks around again, with the gradients of their
keys and values riding along: every rank adds its queries' share, and after a last hop each
shard's gradients are home. Both passes use the final log-sum-exp, so each rank's share is exact.

Causal: queries of rank ``r`` see all keys of ranks ``< r``, their own shard causally, and no
key of ranks ``> r`` (those chunks are passed on without computing). With contiguous shards the
last rank does the most work; balanced ("zig-zag") layouts would need another shard order.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from attnlab.attention import tiled
from attnlab.attention.functional import _shapes, _validate_qkv, _validate_scale

#: Default positions per travelling chunk: bounds a process's extra memory. Measured at n = 32768,
#: H=8, D=64, two processes (benchmarks/ring_attention.py): 512 -> 362 MiB per process in 86 s,
#: 2048 -> 406 MiB in 68 s, against 629 MiB for one process.
CHUNK_SIZE = 512


class _Ring:
    """This process's neighbours in ``group``: it sends to the next rank, receives from the previous."""

    def __init__(self, group):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "ring_attention needs torch.distributed: call torch.distributed.init_process_group "
                "first (or use attention() in a single process)"
            )
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        self.next = self._global((self.rank + 1) % self.size)
        self.prev = self._global((self.rank - 1) % self.size)

    def _global(self, group_rank: int) -> int:
        return group_rank if self.group is None else dist.get_global_rank(self.group, group_rank)

    def origin(self, round_: int) -> int:
        """The rank whose shard this process holds in ``round_``."""
        return (self.rank - round_) % self.size


class _Exchange:
    """The transfers of one pass, in an order every rank shares; each sends one tensor to the next
    rank and receives one from the previous.

    ``transfers`` is a list of ``(payload, shape)``: ``payload()`` returns the tensor to send, or
    None while it is not computed yet. :meth:`get` (called for 0, 1, 2, ... in turn) returns what
    transfer ``t`` received and posts transfer ``t + 1`` if its payload is ready, so the next chunk
    travels while this one is computed; at most two receive buffers exist at a time.
    """

    def __init__(self, ring: _Ring, transfers: list, dtype, device):
        self.ring, self.transfers, self.dtype, self.device = ring, transfers, dtype, device
        self.posted: dict[int, tuple] = {}

    def _post(self, t: int) -> bool:
        if t in self.posted or t >= len(self.transfers):
            return True
        payload, shape = self.transfers[t]
        sent = payload()
        if sent is None:
            return False
        received = torch.empty(shape, dtype=self.dtype, device=self.device)
        handles = (dist.isend(sent.contiguous(), self.ring.next, group=self.ring.group),
                   dist.irecv(received, self.ring.prev, group=self.ring.group))
        self.posted[t] = handles, received
        return True

    def get(self, t: int) -> torch.Tensor:
        if not self._post(t):
            raise RuntimeError(f"ring transfer {t} was asked for before its payload was computed")
        handles, received = self.posted.pop(t)
        for handle in handles:
            handle.wait()
        self._post(t + 1)
        return received


def _chunks(length: int, chunk_size: int) -> list[tuple[int, int]]:
    return [(c0, min(c0 + chunk_size, length)) for c0 in range(0, length, chunk_size)]


def _params(scale: float, rows: int, q_len: int, k_len: int, right: int | None) -> tiled.TiledParams:
    block_q, block_k = tiled.choose_blocks(rows, q_len, k_len)
    return tiled.TiledParams(scale=scale, left=None, right=right, softcap=None, dropout_p=0.0,
                             seed=0, block_q=block_q, block_k=block_k)


def _visible(ring: _Ring, round_: int, c0: int, is_causal: bool):
    """``(compute?, window right edge)`` for a chunk starting at local position ``c0`` of the shard
    held in ``round_``. Keys of earlier ranks are all visible; the own shard is causal (query
    ``i`` sees chunk key ``jj`` when ``c0 + jj <= i``, a window with right edge ``-c0``)."""
    if not is_causal:
        return True, None
    origin = ring.origin(round_)
    if origin > ring.rank:
        return False, None
    return True, (-c0 if origin == ring.rank else None)


def _forward(q, k, v, is_causal: bool, scale: float, ring: _Ring, chunk_size: int):
    """q ``(B, Lq, D)``, k ``(B, Lk, D)``, v ``(B, Lk, Dv)`` -> out ``(B, Lq, Dv)`` and lse
    ``(B, Lq)`` over all ranks' keys, both in the accumulator dtype."""
    batch, q_len, _ = q.shape
    k_len, d, dv = k.shape[1], k.shape[2], v.shape[2]
    acc_dtype = tiled._accumulator_dtype(q.dtype)
    q4 = q.unsqueeze(1)
    m = torch.full((batch, q_len, 1), -math.inf, dtype=acc_dtype, device=q.device)
    l = torch.zeros_like(m)  # noqa: E741 (the paper's name for the normaliser)
    acc = torch.zeros(batch, q_len, dv, dtype=acc_dtype, device=q.device)
    spans = _chunks(k_len, chunk_size)

    def fold(round_, i, k_chunk, v_chunk):
        """Fold one key/value chunk into every query row's running softmax."""
        c0, c1 = spans[i]
        run, right = _visible(ring, round_, c0, is_causal)
        if not run:
            return
        p = _params(scale, batch, q_len, c1 - c0, right)
        scores = tiled._BlockScores(k_chunk, None, None, p, batch, 1)
        for i0 in range(0, q_len, p.block_q):
            i1 = min(i0 + p.block_q, q_len)
            rows = tiled._query_rows(q4, i0, i1, scale)
            for j0, j1 in tiled._key_blocks(i0, i1, c1 - c0, p):
                s_tile, _ = scores(rows, i0, i1, j0, j1)
                tiled.online_softmax_step(m[:, i0:i1], l[:, i0:i1], acc[:, i0:i1], s_tile,
                                          v_chunk[:, j0:j1])

    for i, (c0, c1) in enumerate(spans):
        fold(0, i, k[:, c0:c1], v[:, c0:c1])
    held: dict = {}  # (round, chunk) -> received [k | v] chunk, kept to pass on next round

    def payload(round_, i):  # transfer (round_, i) sends chunk i of round round_ - 1
        if round_ == 1:
            c0, c1 = spans[i]
            return torch.cat([k[:, c0:c1], v[:, c0:c1]], dim=-1)
        return held.pop((round_ - 1, i), None)

    order = [(s, i) for s in range(1, ring.size) for i in range(len(spans))]
    exchange = _Exchange(ring, [(partial(payload, s, i), (batch, spans[i][1] - spans[i][0], d + dv))
                                for s, i in order], k.dtype, q.device)
    for t, (s, i) in enumerate(order):
        packed = exchange.get(t)
        fold(s, i, packed[..., :d], packed[..., d:])
        if s < ring.size - 1:
            held[(s, i)] = packed
    empty = l == 0
    out = acc / l.masked_fill(empty, 1.0)
    lse = torch.where(empty, math.inf, m + l.log()).squeeze(-1)
    return out, lse


def _backward_order(size: int, chunks: int) -> list[tuple[int, int]]:
    """Transfers of the backward: rounds ``1 .. size-1`` pass ``[k | v | dk | dv]`` chunks on;
    transfer ``(size, i)`` takes chunk ``i``'s finished gradients home. Each homeward transfer
    follows its chunk's last computation closely, so gradients do not pile up waiting."""
    order = [(s, i) for s in range(1, size - 1) for i in range(chunks)]
    last = size - 1
    order.append((last, 0))
    for i in range(1, chunks):
        order += [(last, i), (size, i - 1)]
    order.append((size, chunks - 1))
    return order


def _backward(grad_out, q, k, v, out, lse, is_causal, scale, ring: _Ring, chunk_size: int):
    batch, q_len, d = q.shape
    k_len, dv = k.shape[1], v.shape[2]
    acc_dtype = lse.dtype
    q, k, v, grad_out = (t.to(acc_dtype) for t in (q, k, v, grad_out))
    delta = (grad_out * out).sum(-1)
    q4, grad4, delta3, lse3 = q.unsqueeze(1), grad_out.unsqueeze(1), delta.unsqueeze(1), lse.unsqueeze(1)
    dq4 = torch.zeros_like(q4)
    # This shard's key/value gradients: first its own queries' share; that share then travels the
    # ring collecting everyone else's and comes back whole.
    dk = torch.zeros_like(k)
    dv_ = torch.zeros_like(v)
    spans = _chunks(k_len, chunk_size)

    def add_share(round_, i, k_chunk, v_chunk, dk_chunk, dv_chunk):
        c0, c1 = spans[i]
        run, right = _visible(ring, round_, c0, is_causal)
        if run:
            p = _params(scale, batch, q_len, c1 - c0, right)
            tiled.backward_into(dq4, dk_chunk, dv_chunk, grad4, q4, k_chunk, v_chunk, delta3, lse3,
                                None, None, batch, p)

    for i, (c0, c1) in enumerate(spans):
        add_share(0, i, k[:, c0:c1], v[:, c0:c1], dk[:, c0:c1], dv_[:, c0:c1])
    held: dict = {}  # (round, chunk) -> [k | v | dk | dv] chunk computed that round, to send on

    def payload(round_, i):
        if round_ == 1:
            c0, c1 = spans[i]
            packed = torch.cat([k[:, c0:c1], v[:, c0:c1], dk[:, c0:c1], dv_[:, c0:c1]], dim=-1)
        else:
            packed = held.pop((round_ - 1, i), None)
        if packed is not None and round_ == ring.size:
            packed = packed[..., d + dv:]  # the last hop carries only the gradients
        return packed

    order = _backward_order(ring.size, len(spans)) if ring.size > 1 else []
    transfers = []
    for s, i in order:
        width = 2 * (d + dv) if s < ring.size else d + dv
        transfers.append((partial(payload, s, i), (batch, spans[i][1] - spans[i][0], width)))
    exchange = _Exchange(ring, transfers, acc_dtype, q.device)
    for t, (s, i) in enumerate(order):
        received = exchange.get(t)
        c0, c1 = spans[i]
        if s == ring.size:  # this shard's gradients, back from their trip
            dk[:, c0:c1], dv_[:, c0:c1] = received[..., :d], received[..., d:]
            continue
        add_share(s, i, received[..., :d], received[..., d:d + dv],
                  received[..., d + dv:2 * d + dv], received[..., 2 * d + dv:])
        held[(s, i)] = received
    return dq4.squeeze(1), dk, dv_


class _RingAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, is_causal, scale, ring, chunk_size):
        out, lse = _forward(q, k, v, is_causal, scale, ring, chunk_size)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = is_causal, scale, ring, chunk_size
        return out.to(q.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward(grad_out, q, k, v, out, lse, *ctx.args)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None


def _validate_ring_shards(query, key, value, is_causal, chunk_size) -> None:
    """:func:`attention`'s checks of query/key/value, plus what the ring itself needs."""
    _validate_qkv(query, key, value)
    if query.shape[-3] != key.shape[-3]:
        raise ValueError(
            f"ring_attention needs as many key/value heads as query heads, got "
            f"{_shapes(query, key, value)} (repeat key/value heads for grouped-query attention)"
        )
    if is_causal and query.shape[-2] != key.shape[-2]:
        raise ValueError(f"causal ring attention needs query and key shards of one length, got "
                         f"{query.shape[-2]} and {key.shape[-2]}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a whole number > 0, got {chunk_size!r}")


def _check_shards_agree(ring: _Ring, query, key, value) -> None:
    """Every rank must hold shards of one shape (the chunks are received into fixed buffers)."""
    mine = torch.tensor([query.shape[-2], key.shape[-2], query[..., 0, 0].numel(), key.shape[-1],
                         value.shape[-1]], dtype=torch.int64, device=query.device)
    everyone = [torch.empty_like(mine) for _ in range(ring.size)]
    dist.all_gather(everyone, mine, group=ring.group)
    shapes = {tuple(t.tolist()) for t in everyone}
    if len(shapes) > 1:
        raise ValueError(
            "ring_attention needs equal shards on every rank (rank r holds positions "
            f"[r*n/w, (r+1)*n/w)); got (q_len, k_len, batch*heads, D, Dv) = {sorted(shapes)}"
        )


def ring_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
                   is_causal: bool = False, scale: float | None = None, group=None,
                   chunk_size: int = CHUNK_SIZE) -> torch.Tensor:
    """Exact attention over a sequence sharded across the ranks of ``group``; call it on every rank.

    Args:
        query: ``(..., H, Lq, D)``, this rank's shard of the queries (positions
            ``[r*Lq, (r+1)*Lq)`` of rank ``r``). key: ``(..., H, Lk, D)``, value ``(..., H, Lk, Dv)``:
            this rank's key/value shard. Every rank's shards have the same shape.
        is_causal: global position ``i`` sees keys ``j <= i`` (needs ``Lq == Lk``).
        scale: multiplies ``q . k``; defaults to ``1/sqrt(D)``.
        group: the ``torch.distributed`` process group (default: the whole world).
        chunk_size: positions per travelling key/value chunk (memory vs number of messages).

    Returns:
        ``(..., H, Lq, Dv)``: this shard's rows of ``attention(full_query, full_key, full_value,
        is_causal=is_causal, scale=scale)``, differentiable (the backward runs the ring again).
    """
    _validate_ring_shards(query, key, value, is_causal, chunk_size)
    scale = _validate_scale(scale, query.shape[-1])
    ring = _Ring(group)
    _check_shards_agree(ring, query, key, value)
    q = query.reshape(-1, *query.shape[-2:])
    k = key.reshape(-1, *key.shape[-2:])
    v = value.reshape(-1, *value.shape[-2:])
    out = _RingAttentionFunction.apply(q, k, v, bool(is_causal), scale, ring, chunk_size)
    return out.reshape(*query.shape[:-1], value.shape[-1])
