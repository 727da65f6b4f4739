"""What ``record()`` / ``edit()`` cost, and proof that a forward pass without them costs nothing extra.

Every :class:`~attnlab.attention.MultiHeadAttention` checks one list (its hooks) before running
its fast path. This script times forward passes side by side in one run (2 threads, interleaved,
median of ``--repeats``) of:

- a GPT the size of the ``shakespeare-char`` preset (4 layers x 128, 4 heads, seq 128, batch 16);
- a random BertEncoder the size of MiniLM (6 layers x 384, 12 heads, batch 1, seq 16 and 64);

(a) with no context, (b) inside an empty ``edit(model)`` (the hooked path, nothing changed) and
(c) inside ``record(model)`` (the reference formula, every intermediate kept). Ratios are to (a).

(a) uses only APIs that predate ``record``/``edit``, so running the script on an older tree shows
whether the plain forward pass changed::

    python benchmarks/record_overhead.py
    python benchmarks/record_overhead.py --plain-only          # alternate with the line below
    git worktree add /tmp/before <commit> && PYTHONPATH=/tmp/before/src python benchmarks/record_overhead.py
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

import attnlab.attention
from attnlab.models.bert import BertConfig, BertEncoder
from attnlab.models.gpt import GPT, GPTConfig

HAS_HOOKS = hasattr(attnlab.attention, "record")


def _cases():
    """``(label, model, input)`` for every measured forward pass."""
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=65, max_positions=128, num_layers=4, num_heads=4, embed_dim=128)).eval()
    bert = BertEncoder(BertConfig(vocab_size=30522)).eval()  # MiniLM's sizes are the defaults
    generator = torch.Generator().manual_seed(1)
    yield "GPT 4x128, batch 16 x seq 128", gpt, torch.randint(65, (16, 128), generator=generator)
    for seq in (16, 64):
        yield f"BERT 6x384, batch 1 x seq {seq}", bert, torch.randint(30522, (1, seq), generator=generator)


def _variants(model, plain_only: bool):
    """``name -> (context factory, per-sample cleanup)``: (a) always, (b) and (c) where they exist."""
    variants = {"plain": (contextlib.nullcontext, None)}
    if HAS_HOOKS and not plain_only:
        variants["edit()"] = (lambda: attnlab.attention.edit(model), None)
        variants["record()"] = (lambda: attnlab.attention.record(model), lambda rec: rec.clear())
    return variants


def measure(model, inputs, repeats: int, plain_only: bool = False, warmup: int = 3) -> dict[str, float]:
    """Median seconds of one forward pass per variant; variants take turns in every repeat."""
    variants = _variants(model, plain_only)
    times = {name: [] for name in variants}
    with torch.no_grad():
        for step in range(warmup + repeats):
            names = list(variants)
            names = names[step % len(names):] + names[:step % len(names)]  # rotate who goes first
            for name in names:
                enter, cleanup = variants[name]
                with enter() as handle:
                    start = time.perf_counter()
                    model(inputs)
                    elapsed = time.perf_counter() - start
                    if cleanup is not None:
                        cleanup(handle)
                if step >= warmup:
                    times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200, help="timed forward passes per variant")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plain-only", action="store_true",
                        help="time (a) only, as on a tree without record/edit (for alternating runs)")
    args = parser.parse_args()
    hooks = HAS_HOOKS and not args.plain_only
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats}; "
          f"record/edit {'present' if HAS_HOOKS else 'absent (pre-refactor tree)'}; "
          f"attnlab from {attnlab.attention.__file__.rsplit('/attention/', 1)[0]}")
    header = f"{'forward pass':32} {'plain ms':>9}"
    if hooks:
        header += f" {'edit() ms':>10} {'ratio':>6} {'record() ms':>12} {'ratio':>6}"
    print(header)
    for label, model, inputs in _cases():
        medians = measure(model, inputs, args.repeats, args.plain_only)
        plain = medians["plain"]
        row = f"{label:32} {plain * 1e3:9.3f}"
        if hooks:
            row += (f" {medians['edit()'] * 1e3:10.3f} {medians['edit()'] / plain:6.3f}"
                    f" {medians['record()'] * 1e3:12.3f} {medians['record()'] / plain:6.3f}")
        print(row, flush=True)


if __name__ == "__main__":
    main()
