"""`attnlab cost`: what self-attention costs at a sequence length, next to an LSTM of the same width."""

from __future__ import annotations

import argparse
import json

from attnlab.commands.common import UsageError, positive_int


def run_cost(args: argparse.Namespace) -> None:
    from attnlab.cost import Shape, calibrate, estimate, human_bytes, human_flops, human_seconds

    try:
        shape = Shape(seq_len=args.seq_len, heads=args.heads, head_dim=args.head_dim, layers=args.layers,
                      batch=args.batch, dtype=args.dtype)
    except ValueError as err:
        raise UsageError(str(err)) from None
    result = estimate(shape, calibrate(shape.width, shape.dtype))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    c = result["calibration"]
    print(f"sequence of {shape.seq_len:,} tokens, batch {shape.batch}, {shape.layers} layer(s) of "
          f"{shape.heads} heads x {shape.head_dim} (width {shape.width}), {shape.dtype}, forward pass")
    print(f"{'':18}{'FLOPs':>14}{'score memory':>15}{'generation state':>18}{'est. time':>12}"
          f"{'max n in RAM':>15}")
    for name, row in result["models"].items():
        print(f"{name:18}{human_flops(row['flops']):>14}{human_bytes(row['score_memory_bytes']):>15}"
              f"{human_bytes(row['generation_state_bytes']):>18}{human_seconds(row['estimated_seconds']):>12}"
              f"{row['max_seq_len_in_ram']:>15,}")
    print(f"Times are estimates: FLOPs divided by rates measured just now on this machine "
          f"({c['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s for a matmul, {c['lstm_flops_per_s'] / 1e9:.1f} "
          f"GFLOP/s for LSTM steps, {c['threads']} threads). Max n: the longest sequence whose memory "
          f"fits the {human_bytes(result['memory_available_bytes'])} available now (one layer's "
          "forward; scores and weights for naive attention).")


def _dtype(text: str) -> str:
    if text not in ("fp32", "bf16", "fp16"):
        raise argparse.ArgumentTypeError(f"expected fp32, bf16 or fp16, got {text!r}")
    return text


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "cost",
        help="FLOPs, memory and estimated time of self-attention vs an LSTM at a sequence length",
        description="Print, for naive attention (the full n x n score matrix), attnlab's tiled "
        "attention (O(n) memory) and an LSTM of the same width: forward FLOPs, memory for the "
        "scores, the state kept for generation (KV cache or LSTM state), an estimated time from a "
        "quick calibration on this machine, and the largest sequence that fits in the RAM available.",
    )
    parser.add_argument("--seq-len", type=positive_int, required=True, metavar="N",
                        help="tokens per sequence")
    parser.add_argument("--heads", type=positive_int, default=8, metavar="H",
                        help="attention heads (default: 8)")
    parser.add_argument("--head-dim", type=positive_int, default=64, metavar="D",
                        help="size of each head (default: 64)")
    parser.add_argument("--layers", type=positive_int, default=1, metavar="L", help="layers (default: 1)")
    parser.add_argument("--batch", type=positive_int, default=1, metavar="B", help="sequences (default: 1)")
    parser.add_argument("--dtype", type=_dtype, default="fp32", help="fp32 (default), bf16 or fp16")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.set_defaults(run=run_cost)
