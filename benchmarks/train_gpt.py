"""Training throughput: tokens/s of attnlab's GPT with ``auto`` attention against the same GPT
with PyTorch's ``scaled_dot_product_attention`` called directly, on this machine's CPU with 2 threads.

Both rows train the same model (preset ``shakespeare-char`` by default: same initial weights,
same batches of the Shakespeare training works, same AdamW settings) for ``--steps`` optimizer
steps: forward, cross-entropy, backward, gradient clipping, AdamW. The only difference:

  attnlab auto      ``MultiHeadAttention`` calls ``attnlab.attention.attention(..., backend="auto")``
                    as it always does (argument checks, then the backend choice)
  torch sdpa        the same call is replaced by ``F.scaled_dot_product_attention(q, k, v,
                    is_causal=True, enable_gqa=...)`` with no attnlab code around it

Before timing, one step of each from the same weights must give the same loss (within 1e-5),
which shows the swap changes nothing else. Each row then gets one warm-up step, and ``--repeats``
timed runs from the initial weights, the rows interleaved (A B A B ...) so that a noisy moment
hits both alike; the median is reported.

    python benchmarks/train_gpt.py
    python benchmarks/train_gpt.py --steps 5 --repeats 2 --json /tmp/train_gpt.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from unittest import mock

import torch
import torch.nn.functional as F

from attnlab.attention import modules
from attnlab.models.gpt import GPT
from attnlab.train import TrainConfig, seed_everything
from attnlab.train.lm_task import GPT_PRESETS, LanguageModelTask
from attnlab.train.optim import build_optimizer

THREADS = 2
LOSS_TOLERANCE = 1e-5


def torch_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, enable_gqa=False,
               window=None, alibi_slopes=None, global_tokens=0, query_offset=0, backend="auto"):
    """What ``MultiHeadAttention`` computes with PyTorch's kernel called directly.

    The GPT passes no mask, window or ALiBi; refusing them keeps the swap from silently dropping one.
    """
    if (attn_mask is not None or window is not None or alibi_slopes is not None or global_tokens
            or query_offset):
        raise ValueError("torch_sdpa stands in for plain causal self-attention only; got a mask, "
                         "a window or ALiBi slopes")
    return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout_p, is_causal=is_causal,
                                          enable_gqa=enable_gqa)


ATTENTION = {
    "attnlab auto": contextlib.nullcontext,
    "torch sdpa": lambda: mock.patch.object(modules, "attention", torch_sdpa),
}


def train_steps(model: GPT, task: LanguageModelTask, config: TrainConfig, steps: int) -> list[float]:
    """Train ``model`` in place for ``steps`` optimizer steps from step 0 (constant ``config.lr``);
    the loss of each."""
    optimizer = build_optimizer(model, lr=config.lr, weight_decay=config.weight_decay, betas=config.betas,
                                device=torch.device("cpu"))
    model.train()
    losses = []
    for step in range(steps):
        loss = task.loss(model, task.train_batch(step, 0, 1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def runner(initial: GPT, task: LanguageModelTask, config: TrainConfig, swap: Callable) -> Callable:
    """``run(steps) -> (seconds, losses)``: a fresh copy of ``initial`` trained with ``swap`` on."""
    def run(steps: int) -> tuple[float, list[float]]:
        model = copy.deepcopy(initial)
        with swap():
            start = time.perf_counter()
            losses = train_steps(model, task, config, steps)
            return time.perf_counter() - start, losses
    return run


def measure(runners: dict[str, Callable], steps: int, repeats: int, tokens_per_step: int) -> dict[str, dict]:
    for name, run in runners.items():
        print(f"warm-up: {name}", file=sys.stderr, flush=True)
        run(1)
    times: dict[str, list[float]] = {name: [] for name in runners}
    final_loss = {}
    for round_ in range(repeats):
        for name, run in runners.items():
            seconds, losses = run(steps)
            times[name].append(seconds)
            final_loss[name] = losses[-1]
            print(f"round {round_ + 1}/{repeats}: {name}: {seconds:.2f} s", file=sys.stderr, flush=True)
    return {
        name: {"seconds": statistics.median(t), "all_seconds": t,
               "tokens_per_s": steps * tokens_per_step / statistics.median(t), "final_loss": final_loss[name]}
        for name, t in times.items()
    }


def markdown(rows: dict[str, dict], preset: str, steps: int, repeats: int, tokens_per_step: int) -> str:
    reference = rows["torch sdpa"]["tokens_per_s"]
    lines = [
        f"Training the `{preset}` GPT for {steps} steps of {tokens_per_step:,} tokens (forward, backward, "
        f"AdamW), float32, CPU, {THREADS} threads, median of {repeats}.",
        "",
        "| attention | tokens/s | median time | vs torch sdpa | loss after the last step |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        rate = row["tokens_per_s"]
        lines.append(f"| {name} | {rate:,.0f} | {row['seconds']:.2f} s | {rate / reference:.3f}x "
                     f"| {row['final_loss']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(GPT_PRESETS), default="shakespeare-char",
                        help="the GPT preset (default: shakespeare-char)")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per timed run (default: 20)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per row (default: 5)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args()
    if args.steps < 1 or args.repeats < 1:
        parser.error(f"--steps and --repeats must be >= 1, got {args.steps} and {args.repeats}")
    torch.set_num_threads(THREADS)

    preset = GPT_PRESETS[args.preset]
    config = TrainConfig(**preset.train)
    task = LanguageModelTask.from_preset(preset, config)
    seed_everything(config.seed)
    initial = GPT(preset.config(task.tokenizer.vocab_size))
    runners = {name: runner(initial, task, config, swap) for name, swap in ATTENTION.items()}

    first = {name: run(1)[1][0] for name, run in runners.items()}
    difference = abs(first["attnlab auto"] - first["torch sdpa"])
    print(f"first-step loss: {first}, difference {difference:.1e}", file=sys.stderr)
    if difference > LOSS_TOLERANCE:
        sys.exit(f"the two attention calls disagree on the first step's loss by {difference:.1e} "
                 f"(> {LOSS_TOLERANCE:g}): the swap changed more than the kernel call")

    tokens_per_step = config.batch_size * config.block_size
    rows = measure(runners, args.steps, args.repeats, tokens_per_step)
    print(markdown(rows, args.preset, args.steps, args.repeats, tokens_per_step))
    if args.json:
        result = {
            "preset": args.preset,
            "steps": args.steps,
            "repeats": args.repeats,
            "tokens_per_step": tokens_per_step,
            "threads": THREADS,
            "first_step_loss": first,
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "rows": rows,
            "ratio_auto_over_sdpa": rows["attnlab auto"]["tokens_per_s"] / rows["torch sdpa"]["tokens_per_s"],
        }
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
