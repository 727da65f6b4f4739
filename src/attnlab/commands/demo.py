"""`attnlab demo`: attention step by step on a toy sentence, and every backend timed."""

from __future__ import annotations

import argparse
import json
import time

from attnlab.commands.common import UsageError, positive_int, seed

TOY_WORDS = ["the", "cat", "sat", "on", "the", "mat"]


def _time_call(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def run_demo(seq_len: int, heads: int, head_dim: int, seed: int) -> dict:
    """Attention on a toy sentence (every step) and on ``seq_len`` random tokens (every backend)."""
    # Imported here, not at the top: `attnlab --help` must not wait for torch.
    import torch

    from attnlab.attention import attention, attention_trace

    gen = torch.Generator().manual_seed(seed)
    words = TOY_WORDS
    q, k, v = (torch.randn(1, 1, len(words), 4, generator=gen) for _ in range(3))
    trace = attention_trace(q, k, v, is_causal=True)
    toy = {
        "words": words,
        "weights": [[round(w, 3) for w in row] for row in trace.weights[0, 0].tolist()],
    }

    shape = (1, heads, seq_len, head_dim)
    q, k, v = (torch.randn(shape, generator=gen) for _ in range(3))
    exact = attention(q.double(), k.double(), v.double(), is_causal=True, backend="reference")
    rows = []
    for backend in ("reference", "tiled", "torch", "auto"):
        out = attention(q, k, v, is_causal=True, backend=backend)
        seconds = _time_call(lambda b=backend: attention(q, k, v, is_causal=True, backend=b))
        rows.append({
            "backend": backend,
            "seconds": seconds,
            "max_abs_error_vs_float64": float((out.double() - exact).abs().max()),
        })
    score_bytes = heads * seq_len * seq_len * 4
    return {
        "toy": toy,
        "seq_len": seq_len,
        "heads": heads,
        "head_dim": head_dim,
        "causal": True,
        "threads": torch.get_num_threads(),
        "dense_scores_mib": score_bytes / 2**20,
        "backends": rows,
    }


def _print_demo(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    toy = result["toy"]
    console.print("[bold]Causal self-attention on a toy sentence[/] (random 4-d vectors, 1 head).")
    console.print("Row = a word; columns = how much of its output comes from each earlier word.\n")
    table = Table(show_header=True, header_style="bold")
    table.add_column("word")
    for word in toy["words"]:
        table.add_column(word, justify="right")
    for word, row in zip(toy["words"], toy["weights"], strict=True):
        table.add_row(word, *(f"{w:.0%}" if w > 0 else "·" for w in row))
    console.print(table)
    console.print("Each row sums to 100%; '·' is the future, hidden by the causal mask.\n")

    console.print(
        f"[bold]Every backend on {result['seq_len']} random tokens[/] "
        f"({result['heads']} heads × {result['head_dim']} dims, causal, "
        f"{result['threads']} threads). A dense score matrix would take "
        f"{result['dense_scores_mib']:.0f} MiB; tiled never builds it."
    )
    table = Table(show_header=True, header_style="bold")
    table.add_column("backend")
    table.add_column("median time", justify="right")
    table.add_column("max |error| vs float64", justify="right")
    for row in result["backends"]:
        table.add_row(row["backend"], f"{row['seconds'] * 1e3:.1f} ms",
                      f"{row['max_abs_error_vs_float64']:.1e}")
    console.print(table)


DEMO_MAX_DENSE_GIB = 2.0


DEMO_MAX_HEADS = 64
DEMO_MAX_HEAD_DIM = 512


def run(args: argparse.Namespace) -> None:
    if args.heads > DEMO_MAX_HEADS:
        raise UsageError(f"--heads {args.heads} is more than the demo allows ({DEMO_MAX_HEADS})")
    if args.head_dim > DEMO_MAX_HEAD_DIM:
        raise UsageError(f"--head-dim {args.head_dim} is more than the demo allows ({DEMO_MAX_HEAD_DIM})")
    # The reference backend (and the float64 check) build the dense scores several times over.
    dense_gib = args.heads * args.seq_len**2 * 8 / 2**30
    if dense_gib > DEMO_MAX_DENSE_GIB:
        raise UsageError(
            f"--seq-len {args.seq_len} with {args.heads} heads needs {dense_gib:.1f} GiB of float64 "
            f"scores for the reference check; the demo allows {DEMO_MAX_DENSE_GIB:g} GiB "
            "(try --seq-len 4096)"
        )
    result = run_demo(args.seq_len, args.heads, args.head_dim, args.seed)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_demo(result)



def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser(
        "demo",
        help="show attention step by step on a toy sentence and check every backend",
        description="Show causal attention weights on a toy sentence, then run every attention "
        "backend on random inputs and report its time and its error against float64 math.",
    )
    demo.add_argument("--seq-len", type=positive_int, default=2048,
                      help="tokens in the random input (default: 2048)")
    demo.add_argument("--heads", type=positive_int, default=8, help="attention heads (default: 8)")
    demo.add_argument("--head-dim", type=positive_int, default=64,
                      help="dimensions per head (default: 64)")
    demo.add_argument("--seed", type=seed, default=0, help="random seed (default: 0)")
    demo.add_argument("--json", action="store_true", help="print the results as JSON")
    demo.set_defaults(run=run)
