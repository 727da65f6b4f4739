"""Ring attention benchmark: per-process peak memory and time of ``ring_attention`` on W
processes against single-process ``attention`` on the same n, side by side in one run.

Every case runs in fresh processes: the single-process baselines (``tiled``, and ``auto``, which
picks PyTorch's fused kernel where it can) with all threads, the ring as W processes (gloo on
loopback, threads split between them). Each process imports, primes its code on a tiny input,
notes its RSS, then creates its inputs and runs one forward (+ backward of ``sum(out * grad)``).
"Memory" is the process's peak RSS (``VmHWM``) minus the RSS before its inputs existed, so it
counts the inputs, output, gradients and every workspace: the memory the attention itself needs.

Inputs are made of W shards, shard ``r`` drawn from seed ``(tensor, r)``, so the single process
and rank ``r`` see the same numbers; each process reports the sums of its output and gradient
rows per shard, and the run checks they agree (exactness, not just speed).

    python benchmarks/ring_attention.py --n 32768 --world 2
    python benchmarks/ring_attention.py --n 8192,32768 --world 2,4 --causal --json /tmp/ring.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import time

import torch
import torch.distributed as dist

from attnlab.attention import attention, ring_attention
from attnlab.attention.ring import CHUNK_SIZE
from memory_probe import reset_peak_rss, status_kib

B, H, D = 1, 8, 64
THREADS = 2
MIB = 2**20


def _shard(tensor_id: int, shard: int, length: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1000 * tensor_id + shard)
    return torch.randn(B, H, length, D, generator=generator)


def _inputs(shards: list[int], length: int, backward: bool):
    """q, k, v (B, H, len(shards) * length, D) and d(loss)/d(out), shard by shard (filled in
    place, so making them costs one shard of scratch memory, not a second copy)."""
    tensors = []
    for t in range(4):
        whole = torch.empty(B, H, len(shards) * length, D)
        for position, r in enumerate(shards):
            whole[..., position * length:(position + 1) * length, :] = _shard(t, r, length)
        tensors.append(whole.requires_grad_(backward and t < 3))
    return tensors


def _shard_sums(tensor: torch.Tensor | None, shards: int) -> list[float]:
    if tensor is None:
        return []
    return [float(piece.double().sum()) for piece in tensor.chunk(shards, dim=-2)]


def run_one(kind: str, n: int, world: int, causal: bool, backward: bool, chunk: int) -> dict:
    """One process's share: ``kind`` is ``tiled``/``auto`` (single process) or ``ring``."""
    if kind == "ring":
        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        torch.set_num_threads(max(1, THREADS // world))
        call = lambda q, k, v: ring_attention(q, k, v, is_causal=causal, chunk_size=chunk)  # noqa: E731
        shards = [rank]
    else:
        rank = 0
        torch.set_num_threads(THREADS)
        call = lambda q, k, v: attention(q, k, v, is_causal=causal, backend=kind)  # noqa: E731
        shards = list(range(world))
    length = n // world
    # Prime code paths and thread pools (and gloo's buffers) on a tiny input first.
    tiny = [torch.randn(B, H, 64, D, requires_grad=True) for _ in range(3)]
    call(*tiny).sum().backward()
    baseline_kib = status_kib("VmRSS")
    reset_peak_rss()
    q, k, v, grad = _inputs(shards, length, backward)
    start = time.perf_counter()
    out = call(q, k, v)
    if backward:
        (out * grad).sum().backward()
    seconds = time.perf_counter() - start
    record = {
        "kind": kind, "rank": rank, "seconds": seconds,
        "peak_mib": (status_kib("VmHWM") - baseline_kib) * 1024 / MIB,
        "baseline_mib": baseline_kib / 1024,
        "shards": shards,
        "out": _shard_sums(out.detach(), len(shards)),
        "grads": [_shard_sums(t.grad, len(shards)) for t in (q, k, v)],
    }
    if kind == "ring":
        dist.destroy_process_group()
    return record


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(kind: str, n: int, world: int, args) -> list[dict]:
    """Run ``kind`` in fresh processes (``world`` of them for the ring) and collect their records."""
    processes = 1 if kind != "ring" else world
    port = _free_port()
    children = []
    for rank in range(processes):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "RANK": str(rank), "WORLD_SIZE": str(world),
               "OMP_NUM_THREADS": str(THREADS if kind != "ring" else max(1, THREADS // world))}
        command = [sys.executable, os.path.abspath(__file__), "--one", kind, "--n", str(n),
                   "--world", str(world), "--chunk", str(args.chunk)]
        command += ["--causal"] if args.causal else []
        command += ["--forward-only"] if args.forward_only else []
        children.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True, env=env))
    records = []
    for child in children:
        stdout, stderr = child.communicate(timeout=args.timeout)
        if child.returncode != 0:
            raise SystemExit(f"{kind} n={n} world={world} failed:\n{stderr[-2000:]}")
        records.append(json.loads(stdout.strip().splitlines()[-1]))
    return records


def check_same_numbers(single: list[dict], ring: list[dict]) -> float:
    """Largest relative difference between the single process's and the ranks' shard sums."""
    worst = 0.0
    whole = single[0]
    for record in ring:
        r = record["rank"]
        pairs = [(whole["out"][r], record["out"][0])]
        pairs += [(g_single[r], g_ring[0]) for g_single, g_ring in zip(whole["grads"], record["grads"],
                                                                    strict=True) if g_single]
        for want, got in pairs:
            worst = max(worst, abs(want - got) / max(abs(want), 1.0))
    return worst


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", default="32768", help="sequence lengths, e.g. 8192,32768")
    parser.add_argument("--world", default="2", help="ring sizes, e.g. 2,4 (each must divide n)")
    parser.add_argument("--causal", action="store_true", help="causal attention (default: full)")
    parser.add_argument("--forward-only", action="store_true", help="no backward pass")
    parser.add_argument("--chunk", type=int, default=CHUNK_SIZE,
                        help=f"ring_attention chunk_size (default {CHUNK_SIZE})")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per process")
    parser.add_argument("--json", help="also write the records here")
    parser.add_argument("--one", choices=("tiled", "auto", "ring"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        ns = [int(x) for x in args.n.split(",")]
        worlds = [int(x) for x in args.world.split(",")]
    except ValueError:
        parser.error(f"--n and --world take whole numbers separated by commas, got {args.n!r}, "
                     f"{args.world!r}")
    if any(n <= 0 for n in ns) or any(w <= 0 for w in worlds) or any(n % w for n in ns for w in worlds):
        parser.error(f"every world size must divide every n > 0, got n={ns}, world={worlds}")
    if args.one:
        print(json.dumps(run_one(args.one, ns[0], worlds[0], args.causal, not args.forward_only,
                                 args.chunk)))
        return

    passes = "forward" if args.forward_only else "forward+backward"
    print(f"# ring attention vs one process: B={B}, H={H}, D={D}, fp32, "
          f"{'causal' if args.causal else 'full'} attention, {passes}; {THREADS} threads in all\n")
    print("| n | W | one process, tiled (MiB / s) | one process, auto (MiB / s) "
          "| ring, per process (MiB / s) | memory ring ÷ tiled | ring ÷ auto | max rel. diff |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    results = []
    for n in ns:
        for world in worlds:
            tiled_run = launch("tiled", n, world, args)
            auto_run = launch("auto", n, world, args)
            ring_run = launch("ring", n, world, args)
            peak = max(r["peak_mib"] for r in ring_run)
            seconds = max(r["seconds"] for r in ring_run)
            diff = check_same_numbers(tiled_run, ring_run)
            results.append({"n": n, "world": world, "tiled": tiled_run, "auto": auto_run,
                            "ring": ring_run, "max_rel_diff": diff})
            t, a = tiled_run[0], auto_run[0]
            print(f"| {n} | {world} | {t['peak_mib']:.0f} / {t['seconds']:.1f} | "
                  f"{a['peak_mib']:.0f} / {a['seconds']:.1f} | {peak:.0f} / {seconds:.1f} | "
                  f"{peak / t['peak_mib']:.2f}× | {peak / a['peak_mib']:.2f}× | {diff:.1e} |",
                  flush=True)
    print("\nMemory: peak RSS minus RSS before the inputs were made (inputs, output, gradients and "
          "workspace), the largest over the ring's processes. Time: the slowest process. "
          "max rel. diff: output and gradient sums per shard, ring against one process (tiled).")
    if args.json:
        with open(args.json + ".tmp", "w") as out:
            json.dump({"command": shlex.join(["python", *sys.argv]), "results": results}, out,
                      indent=1)
        os.replace(args.json + ".tmp", args.json)


if __name__ == "__main__":
    main()
