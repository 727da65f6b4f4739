"""Exact attention over a sequence split across processes, with ``ring_attention``.

    torchrun --nproc-per-node 2 examples/ring_attention.py --seq-len 8192

Every process holds 1/W of the sequence's queries, keys and values (rank r: positions
[r*n/W, (r+1)*n/W)), computes its rows of the output and the gradients of its shard, and never
holds the whole sequence. Rank 0 then checks its rows against one-process attention.
"""

import argparse

import torch
import torch.distributed as dist

from attnlab.attention import attention, ring_attention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-len", type=int, default=8192, help="sequence length (divisible by W)")
    parser.add_argument("--causal", action="store_true")
    args = parser.parse_args()

    dist.init_process_group("gloo")  # "nccl" with one CUDA device per process works the same way
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.seq_len % world:
        raise SystemExit(f"--seq-len {args.seq_len} is not divisible by {world} processes")
    torch.manual_seed(0)  # every rank draws the same full tensors, then keeps its shard
    full_q, full_k, full_v = (torch.randn(1, 8, args.seq_len, 64) for _ in range(3))
    rows = slice(rank * args.seq_len // world, (rank + 1) * args.seq_len // world)
    q, k, v = (t[..., rows, :].clone().requires_grad_() for t in (full_q, full_k, full_v))

    out = ring_attention(q, k, v, is_causal=args.causal)  # (1, 8, n / W, 64): this shard's rows
    out.sum().backward()                                   # q.grad, k.grad, v.grad of this shard

    if rank == 0:
        expected = attention(full_q, full_k, full_v, is_causal=args.causal)[..., rows, :]
        error = (out - expected).abs().max().item()
        print(f"{world} processes, n = {args.seq_len}: rank 0's rows differ from one-process "
              f"attention by at most {error:.1e}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
