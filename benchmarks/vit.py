"""Vision Transformer throughput: pictures/s for training and inference of attnlab's ViT with its
own attention (``auto``) against the same ViT with PyTorch's ``scaled_dot_product_attention``
called directly, on this machine's CPU with 2 threads, in float32 and under bfloat16 autocast
(the training loop's ``bf16``: weights and optimizer float32, matrix products bf16).

Both rows use the same model (preset ``fashion-mnist`` by default, same initial weights) and the
same Fashion-MNIST batches:

  training     forward, cross-entropy, backward, AdamW on batches of the preset's size
  inference    forward only (``torch.inference_mode``) on batches of 500 test pictures

Before timing, three training steps of each from the same weights must end at the same loss
(within 1e-5 in float32, 2e-2 in bf16, whose rounding differs between the two kernels). One step
would prove nothing: the ViT's head starts at zero, so the first loss is ln 10 whatever the
attention computes, and only the first update lets the attention layers' output reach the loss.
Rows are interleaved (A B C D A B C D ...) for ``--repeats`` runs and the medians reported.

    python benchmarks/vit.py
    python benchmarks/vit.py --steps 5 --repeats 2 --precision fp32 --json /tmp/vit.json
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
from unittest import mock

import torch
import torch.nn.functional as F

from attnlab.attention import modules
from attnlab.data.images import load_test_split
from attnlab.models.vit import ViT
from attnlab.train import TrainConfig, seed_everything
from attnlab.train.vit_task import VIT_TRAIN_PRESETS, ImageClassificationTask

THREADS = 2
LOSS_TOLERANCE = {"fp32": 1e-5, "bf16": 2e-2}
CHECK_STEPS = 3
INFERENCE_BATCH = 500


def torch_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, enable_gqa=False,
               window=None, alibi_slopes=None, global_tokens=0, query_offset=0, backend="auto"):
    """What ``MultiHeadAttention`` computes for a ViT, with PyTorch's kernel called directly (the
    ViT passes no mask, window or ALiBi; refusing them keeps the swap from dropping one)."""
    if (attn_mask is not None or window is not None or alibi_slopes is not None or global_tokens
            or is_causal or query_offset):
        raise ValueError("torch_sdpa stands in for plain bidirectional self-attention only")
    return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout_p, enable_gqa=enable_gqa)


ATTENTION = {
    "attnlab auto": contextlib.nullcontext,
    "torch sdpa": lambda: mock.patch.object(modules, "attention", torch_sdpa),
}


def autocast(precision: str):
    """What the training loop runs the forward pass under for ``bf16`` (and nothing for fp32)."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def train_seconds(initial: ViT, task: ImageClassificationTask, config: TrainConfig,
                  steps: int, precision: str) -> tuple[float, float]:
    """``(seconds, last loss)`` of ``steps`` training steps of a copy of ``initial``."""
    model = copy.deepcopy(initial).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    batches = [task.train_batch(step, 0, 1) for step in range(steps)]
    start = time.perf_counter()
    for batch in batches:
        with autocast(precision):
            loss = task.loss(model, batch)
        loss.float().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start, loss.item()


def inference_seconds(model: ViT, images: torch.Tensor, precision: str) -> float:
    start = time.perf_counter()
    with torch.inference_mode(), autocast(precision):
        for first in range(0, len(images), INFERENCE_BATCH):
            model(images[first:first + INFERENCE_BATCH])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(VIT_TRAIN_PRESETS), default="fashion-mnist")
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed run (default: 20)")
    parser.add_argument("--pictures", type=int, default=5000,
                        help="test pictures per timed inference run (default: 5000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per row (default: 5)")
    parser.add_argument("--precision", choices=("both", "fp32", "bf16"), default="both",
                        help="float32, bf16 autocast or both (default)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args()
    if min(args.steps, args.pictures, args.repeats) < 1:
        parser.error("--steps, --pictures and --repeats must be >= 1")
    torch.set_num_threads(THREADS)

    preset = VIT_TRAIN_PRESETS[args.preset]
    config = TrainConfig(**preset.train)
    task = ImageClassificationTask.from_preset(preset, config)
    seed_everything(config.seed)
    initial = ViT(preset.model_config(len(task.classes)))
    images = task.normalization(load_test_split(preset.dataset).images[:args.pictures])

    precisions = ("fp32", "bf16") if args.precision == "both" else (args.precision,)
    rows_wanted = [(precision, name) for precision in precisions for name in ATTENTION]
    checked = {}
    for precision, name in rows_wanted:
        with ATTENTION[name]():
            checked[f"{name} {precision}"] = train_seconds(initial, task, config, CHECK_STEPS, precision)[1]
    print(f"loss after {CHECK_STEPS} steps: {checked}", file=sys.stderr)
    for precision in precisions:
        difference = abs(checked[f"attnlab auto {precision}"] - checked[f"torch sdpa {precision}"])
        if difference > LOSS_TOLERANCE[precision]:
            sys.exit(f"the two attention calls disagree by {difference:.1e} in {precision}: the swap "
                     "changed more than the kernel")

    timings = {row: {"train": [], "infer": []} for row in rows_wanted}
    for round_ in range(args.repeats):
        for precision, name in rows_wanted:
            with ATTENTION[name]():
                times = timings[precision, name]
                times["train"].append(train_seconds(initial, task, config, args.steps, precision)[0])
                times["infer"].append(inference_seconds(initial.eval(), images, precision))
            print(f"round {round_ + 1}/{args.repeats}: {name} {precision}: train {times['train'][-1]:.2f} s, "
                  f"inference {times['infer'][-1]:.2f} s", file=sys.stderr, flush=True)
    pictures_trained = args.steps * config.batch_size
    rows = {row: {"train_images_per_s": pictures_trained / statistics.median(t["train"]),
                  "inference_images_per_s": args.pictures / statistics.median(t["infer"]),
                  "train_seconds": t["train"], "inference_seconds": t["infer"]}
            for row, t in timings.items()}
    parameters = sum(p.numel() for p in initial.parameters())
    lines = [f"ViT `{args.preset}` ({parameters:,} parameters), CPU, {THREADS} threads, median of "
             f"{args.repeats}: training {args.steps} steps of {config.batch_size} pictures, inference "
             f"{args.pictures} test pictures in batches of {INFERENCE_BATCH}. Ratios: against torch sdpa "
             "in the same precision, and against the same attention in float32.", "",
             "| precision | attention | training pictures/s | vs torch sdpa | vs fp32 "
             "| inference pictures/s | vs torch sdpa | vs fp32 |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for (precision, name), row in rows.items():
        cells = [precision, name]
        for measure in ("train_images_per_s", "inference_images_per_s"):
            same_precision = rows[precision, "torch sdpa"][measure]
            in_fp32 = rows.get(("fp32", name), {}).get(measure)
            cells += [f"{row[measure]:,.0f}", f"{row[measure] / same_precision:.3f}x",
                      "-" if in_fp32 is None else f"{row[measure] / in_fp32:.3f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"preset": args.preset, "steps": args.steps, "pictures": args.pictures,
                       "repeats": args.repeats, "threads": THREADS, "torch": torch.__version__,
                       "machine": platform.processor() or platform.machine(),
                       f"loss_after_{CHECK_STEPS}_steps": checked,
                       "rows": {f"{name} {precision}": row for (precision, name), row in rows.items()}},
                      f, indent=2)


if __name__ == "__main__":
    main()
