"""Short inputs on the CPU: attnlab's ``reference`` formula and ``native`` kernel against
PyTorch's fused CPU kernel.

PyTorch's CPU flash kernel (what ``backend="torch"`` runs) tiles the keys and recomputes the
softmax in backward, which pays off when the ``(Lq, Lk)`` scores are large. For short inputs the
plain formula (two matrix products around a softmax, see ``backend="reference"``) does less work.
This script measures where the two cross, side by side in one run (2 threads, median of
``--repeats``), so that ``backend="auto"`` can pick the faster one; the rule it supports is in
:func:`attnlab.attention.choose_backend`.

Each row keeps ``batch * heads * n`` fixed (``--tokens``, default the ViT preset's 128 pictures
x 4 heads x 50 tokens), so rows compare the same amount of projection work at different lengths.

    python benchmarks/short_attention.py
    python benchmarks/short_attention.py --n 32,64,128 --head-dim 64 --mask causal
    python benchmarks/short_attention.py --queries 1 --mask none --pass fwd   # cached decoding
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from attnlab.attention import attention, choose_backend

HEADS = 4
MASKS = ("none", "causal", "padding")


BACKENDS = ("torch", "reference", "tiled", "native")


def _inputs(n: int, head_dim: int, tokens: int, mask: str, seed: int = 0, queries: int | None = None):
    generator = torch.Generator().manual_seed(seed)
    batch = max(1, tokens // (HEADS * n))
    q, k, v = (torch.randn(batch, HEADS, length, head_dim, generator=generator, requires_grad=True)
               for length in (queries or n, n, n))
    attn_mask = None
    if mask == "padding":  # the last quarter of every other sequence is padding
        keep = torch.ones(batch, n, dtype=torch.bool)
        keep[::2, n - n // 4:] = False
        attn_mask = keep[:, None, None, :]
    return q, k, v, attn_mask


def time_call(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` timings (each loops to >= 20 ms)."""
    fn()
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    loops = max(1, int(0.02 / max(once, 1e-6)))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        times.append((time.perf_counter() - start) / loops)
    return statistics.median(times)


def measure(n: int, head_dim: int, tokens: int, mask: str, passes: str, repeats: int,
            queries: int | None = None) -> dict:
    """Seconds per call of each backend on one configuration (``queries`` new queries after
    ``n - queries`` cached keys when given: decoding)."""
    q, k, v, attn_mask = _inputs(n, head_dim, tokens, mask, queries=queries)
    grad = torch.randn_like(q)
    causal = mask == "causal"
    offset = n - q.shape[-2]
    result = {"auto picks": choose_backend(q, k, v, attn_mask, is_causal=causal, query_offset=offset)}
    for backend in BACKENDS:
        def call(backend=backend):
            kwargs = dict(is_causal=causal, query_offset=offset, backend=backend)
            if passes == "fwd":
                with torch.no_grad():
                    attention(q, k, v, attn_mask, **kwargs)
            else:
                attention(q, k, v, attn_mask, **kwargs).backward(grad)
        result[backend] = time_call(call, repeats)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", default="16,32,50,64,96,128,192,256,512",
                        help="sequence lengths (queries = keys), comma-separated")
    parser.add_argument("--head-dim", default="24,64", help="head dims, comma-separated")
    parser.add_argument("--mask", default="none,causal,padding", help=f"from {MASKS}")
    parser.add_argument("--pass", dest="passes", default="fwd,fwd+bwd", help="fwd and/or fwd+bwd")
    parser.add_argument("--tokens", type=int, default=128 * 4 * 50, help="batch x heads x n per row")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--queries", type=int, help="queries per row (default n): 1 for decoding")
    args = parser.parse_args(argv)
    masks = args.mask.split(",")
    if bad := sorted(set(masks) - set(MASKS)):
        parser.error(f"unknown --mask {', '.join(bad)}; choose from {', '.join(MASKS)}")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {HEADS} heads, "
          f"batch x heads x n = {args.tokens}, median of {args.repeats}")
    print("| pass | mask | head_dim | queries | n | torch ms | reference ms | tiled ms | native ms "
          "| fastest | auto picks |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for passes in args.passes.split(","):
        for mask in masks:
            for head_dim in (int(d) for d in args.head_dim.split(",")):
                for n in (int(x) for x in args.n.split(",")):
                    r = measure(n, head_dim, args.tokens, mask, passes, args.repeats, args.queries)
                    times = " | ".join(f"{r[backend] * 1e3:.3f}" for backend in BACKENDS)
                    fastest = min(BACKENDS, key=r.get)
                    print(f"| {passes} | {mask} | {head_dim} | {args.queries or n} | {n} | {times} | "
                          f"{fastest} | {r['auto picks']} |", flush=True)


if __name__ == "__main__":
    main()
