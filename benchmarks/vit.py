"""Vision Transformer throughput: pictures/s for training and inference of attnlab's ViT with its
own attention (``auto``) against the same ViT with PyTorch's ``scaled_dot_product_attention``
called directly, on this machine's CPU with 2 threads.

Both rows use the same model (preset ``fashion-mnist`` by default, same initial weights) and the
same Fashion-MNIST batches:

  training     forward, cross-entropy, backward, AdamW on batches of the preset's size
  inference    forward only (``torch.inference_mode``) on batches of 500 test pictures

Before timing, one training step of each from the same weights must give the same loss (within
1e-5). Rows are interleaved (A B A B ...) for ``--repeats`` runs and the medians reported.

    python benchmarks/vit.py
    python benchmarks/vit.py --steps 5 --repeats 2 --json /tmp/vit.json
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
LOSS_TOLERANCE = 1e-5
INFERENCE_BATCH = 500


def torch_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, enable_gqa=False,
               window=None, alibi_slopes=None, global_tokens=0, backend="auto"):
    """What ``MultiHeadAttention`` computes for a ViT, with PyTorch's kernel called directly (the
    ViT passes no mask, window or ALiBi; refusing them keeps the swap from dropping one)."""
    if attn_mask is not None or window is not None or alibi_slopes is not None or global_tokens or is_causal:
        raise ValueError("torch_sdpa stands in for plain bidirectional self-attention only")
    return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout_p, enable_gqa=enable_gqa)


ATTENTION = {
    "attnlab auto": contextlib.nullcontext,
    "torch sdpa": lambda: mock.patch.object(modules, "attention", torch_sdpa),
}


def train_seconds(initial: ViT, task: ImageClassificationTask, config: TrainConfig,
                  steps: int) -> tuple[float, float]:
    """``(seconds, last loss)`` of ``steps`` training steps of a copy of ``initial``."""
    model = copy.deepcopy(initial).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    batches = [task.train_batch(step, 0, 1) for step in range(steps)]
    start = time.perf_counter()
    for batch in batches:
        loss = task.loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start, loss.item()


def inference_seconds(model: ViT, images: torch.Tensor) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
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

    first = {}
    for name, swap in ATTENTION.items():
        with swap():
            first[name] = train_seconds(initial, task, config, 1)[1]
    difference = abs(first["attnlab auto"] - first["torch sdpa"])
    print(f"first-step loss: {first}, difference {difference:.1e}", file=sys.stderr)
    if difference > LOSS_TOLERANCE:
        sys.exit(f"the two attention calls disagree by {difference:.1e}: the swap changed more than "
                 "the kernel")

    timings = {name: {"train": [], "infer": []} for name in ATTENTION}
    for round_ in range(args.repeats):
        for name, swap in ATTENTION.items():
            with swap():
                timings[name]["train"].append(train_seconds(initial, task, config, args.steps)[0])
                timings[name]["infer"].append(inference_seconds(initial.eval(), images))
            print(f"round {round_ + 1}/{args.repeats}: {name}: train {timings[name]['train'][-1]:.2f} s, "
                  f"inference {timings[name]['infer'][-1]:.2f} s", file=sys.stderr, flush=True)
    pictures_trained = args.steps * config.batch_size
    rows = {name: {"train_images_per_s": pictures_trained / statistics.median(t["train"]),
                   "inference_images_per_s": args.pictures / statistics.median(t["infer"]),
                   "train_seconds": t["train"], "inference_seconds": t["infer"]}
            for name, t in timings.items()}
    reference = rows["torch sdpa"]
    parameters = sum(p.numel() for p in initial.parameters())
    lines = [f"ViT `{args.preset}` ({parameters:,} parameters), float32, CPU, {THREADS} threads, median "
             f"of {args.repeats}: training {args.steps} steps of {config.batch_size} pictures, "
             f"inference {args.pictures} test pictures in batches of {INFERENCE_BATCH}.", "",
             "| attention | training pictures/s | vs torch sdpa | inference pictures/s | vs torch sdpa |",
             "|---|---:|---:|---:|---:|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['train_images_per_s']:,.0f} | "
                     f"{row['train_images_per_s'] / reference['train_images_per_s']:.3f}x | "
                     f"{row['inference_images_per_s']:,.0f} | "
                     f"{row['inference_images_per_s'] / reference['inference_images_per_s']:.3f}x |")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"preset": args.preset, "steps": args.steps, "pictures": args.pictures,
                       "repeats": args.repeats, "threads": THREADS, "torch": torch.__version__,
                       "machine": platform.processor() or platform.machine(), "first_step_loss": first,
                       "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
