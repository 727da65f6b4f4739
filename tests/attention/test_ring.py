"""ring_attention on 1, 2 and 4 real processes (gloo on loopback) against single-process attention."""

from __future__ import annotations

import os
import socket
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from attnlab.attention import attention, ring_attention

# (batch dims, heads, shard length, D, Dv, chunk_size): several chunks per shard, one chunk
# larger than the shard, a ragged last chunk, no batch dim, Dv != D.
CASES = [
    ((2,), 3, 8, 16, 16, 3),
    ((), 2, 6, 8, 12, 64),
    ((1, 2), 1, 5, 4, 4, 2),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _full_inputs(batch, heads, n, d, dv, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    shape = (*batch, heads, n)
    q = torch.randn(*shape, d, generator=generator, dtype=torch.float64)
    k = torch.randn(*shape, d, generator=generator, dtype=torch.float64)
    v = torch.randn(*shape, dv, generator=generator, dtype=torch.float64)
    grad = torch.randn(*shape, dv, generator=generator, dtype=torch.float64)
    return [t.to(dtype) for t in (q, k, v, grad)]


def _compare_one(rank, world, group, group_rank, case, dtype, is_causal, scale, seed):
    batch, heads, shard, d, dv, chunk = case
    n = shard * world
    q, k, v, grad = _full_inputs(batch, heads, n, d, dv, dtype, seed)
    # Reference: the whole sequence in one process, in float64.
    full = [t.double().requires_grad_() for t in (q, k, v)]
    expected = attention(*full, is_causal=is_causal, scale=scale, backend="reference")
    expected.backward(grad.double())
    rows = slice(group_rank * shard, (group_rank + 1) * shard)
    mine = [t.detach()[..., rows, :].clone().requires_grad_() for t in (q, k, v)]
    out = ring_attention(*mine, is_causal=is_causal, scale=scale, group=group, chunk_size=chunk)
    out.backward(grad[..., rows, :])
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    what = f"rank {rank} case {case} {dtype} causal={is_causal}"
    torch.testing.assert_close(out.double(), expected[..., rows, :], atol=tol, rtol=tol, msg=what)
    for name, ours, ref in zip("qkv", mine, full, strict=True):
        torch.testing.assert_close(ours.grad.double(), ref.grad[..., rows, :], atol=tol, rtol=tol,
                                   msg=f"d{name}: {what}")
    assert out.dtype == dtype and out.shape == (*batch, heads, shard, dv)


def _worker(rank, world, port, result_dir, job):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world)
        job(rank, world)
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        with open(os.path.join(result_dir, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        os._exit(1)  # the other ranks may be blocked in a collective: do not wait for them


def _launch(world, job, tmp_path):
    mp.start_processes(_worker, args=(world, _free_port(), str(tmp_path), job), nprocs=world,
                       join=True, start_method="spawn")


def _launch_expecting_success(world, job, tmp_path):
    try:
        _launch(world, job, tmp_path)
    except Exception as err:
        errors = "\n".join(p.read_text() for p in sorted(tmp_path.glob("rank*.err")))
        pytest.fail(f"a rank failed:\n{errors or err}")


def _parity_job(rank, world):
    for case in CASES:
        for dtype in (torch.float64, torch.float32):
            for is_causal in (False, True):
                _compare_one(rank, world, None, rank, case, dtype, is_causal, None, seed=len(case))
    _compare_one(rank, world, None, rank, CASES[0], torch.float32, True, 0.3, seed=7)


def _subgroup_job(rank, world):
    """Two rings of two inside a world of four (ranks 0-1 and 2-3), each its own sequence."""
    groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    group = groups[rank // 2]
    _compare_one(rank, 2, group, rank % 2, CASES[0], torch.float64, True, None, seed=11 + rank // 2)


def _unequal_shards_job(rank, world):
    q = torch.randn(1, 2, 4 + rank, 8)
    ring_attention(q, q, q)


@pytest.mark.parametrize("world", [1, 2, pytest.param(4, marks=pytest.mark.slow)])  # 4: 10 s
def test_ring_matches_single_process_attention_outputs_and_gradients(world, tmp_path):
    _launch_expecting_success(world, _parity_job, tmp_path)


@pytest.mark.slow  # 12 s of process start-up
def test_ring_runs_inside_a_process_subgroup(tmp_path):
    _launch_expecting_success(4, _subgroup_job, tmp_path)


def test_unequal_shards_fail_on_every_rank_with_a_clear_error(tmp_path):
    with pytest.raises(mp.ProcessExitedException):
        _launch(2, _unequal_shards_job, tmp_path)
    errors = [p.read_text() for p in sorted(tmp_path.glob("rank*.err"))]
    assert len(errors) == 2 and all("equal shards on every rank" in e for e in errors)


def test_ring_without_torch_distributed_says_how_to_start_it():
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(RuntimeError, match="init_process_group"):
        ring_attention(q, q, q)


@pytest.mark.parametrize("kwargs, message", [
    (dict(key=torch.randn(1, 3, 4, 8), value=torch.randn(1, 3, 4, 8)), "as many key/value heads"),
    (dict(key=torch.randn(1, 3, 4, 8)), "key and value must have the same heads and seq length"),
    (dict(key=torch.randn(1, 2, 4, 6), value=torch.randn(1, 2, 4, 6)), "same head_dim"),
    (dict(key=torch.randn(1, 2, 5, 8), value=torch.randn(1, 2, 5, 8), is_causal=True), "one length"),
    (dict(query=torch.randn(4, 8)), r"\(\.\.\., heads, seq, head_dim\)"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(scale=float("nan")), "scale must be a finite number"),
    (dict(key=torch.randn(1, 2, 4, 8, device="meta")), "one device"),
])
def test_ring_rejects_bad_arguments(kwargs, message):
    args = dict(query=torch.randn(1, 2, 4, 8), key=torch.randn(1, 2, 4, 8), value=torch.randn(1, 2, 4, 8))
    args.update(kwargs)
    error = TypeError if "dtype" in message else ValueError
    with pytest.raises(error, match=message):
        ring_attention(args.pop("query"), args.pop("key"), args.pop("value"), **args)
