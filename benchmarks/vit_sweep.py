"""Compare variants of a ViT training preset by validation accuracy, many runs at once.

Each variant is a full training run (``attnlab train vit``), launched as its own process with one
CPU thread, all of them side by side. On a machine with a GPU the runs go there (the training
loop's default device), which is how the preset was chosen: the 2-core machine needs 20 minutes
per run, one GPU with 16 CPU cores ran 15 runs at once in about 4 minutes.

Configs are a JSON object ``{"name": [overrides, steps]}``. ``overrides`` may hold ``"train"``
(:class:`attnlab.train.TrainConfig` fields), ``"model_overrides"`` (:class:`ViTConfig` fields)
and :class:`ViTPreset` fields such as ``"crop_padding"`` or ``"label_smoothing"``, applied to
``--preset`` (default ``fashion-mnist``). To compare variants at equal cost *on the 2-core
machine*, give each the steps that fit the same CPU time there (see ``docs/benchmarks.md`` for
the measured cost per step of each shape).

    python benchmarks/vit_sweep.py benchmarks/vit_sweep/round3.json --out /tmp/sweep --deadline 245

Equal cost needs each shape's cost per training step on the 2-core machine, relative to the
first config's; ``--cpu-cost`` measures it there (2 threads, random pictures, interleaved repeats,
median) and prints the steps each config gets for the first config's CPU time:

    python benchmarks/vit_sweep.py benchmarks/vit_sweep/round2.json --cpu-cost

A name ending in ``-sN`` is a seed of the variant before it; the summary gives each variant's
mean over its seeds. The validation split is the preset's; the test set is never read.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def run_one(preset_name: str, name: str, overrides: dict, steps: int, minutes: float, out: Path) -> int:
    """Train one variant of ``preset_name`` for ``steps`` into ``out/name`` (one CPU thread)."""
    import torch

    torch.set_num_threads(1)
    # Plain fp32 matrix products on a GPU too, as on the CPU the preset is meant for.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    from attnlab.cli import main
    from attnlab.train import vit_task

    preset = vit_task.VIT_TRAIN_PRESETS[preset_name]
    vit_task.VIT_TRAIN_PRESETS[preset_name] = variant_preset(preset, overrides, steps, minutes)
    return main(["train", "vit", "--preset", preset_name, "--out", str(out / name)])


def variant_preset(preset, overrides: dict, steps: int, minutes: float):
    """``preset`` (a :class:`ViTPreset`) with a config's ``overrides`` applied, trained for ``steps``."""
    overrides = dict(overrides)
    every = max(steps // 10, 1)
    # Steps, not a time budget, set each variant's schedule: the runs share one machine.
    train = dict(preset.train, max_steps=steps, max_minutes=minutes, budget_minutes=None,
                 eval_every=every, checkpoint_every=steps)
    train.update(overrides.pop("train", {}))
    model = dict(preset.model_overrides, **overrides.pop("model_overrides", {}))
    return dataclasses.replace(preset, train=train, model_overrides=model, **overrides)


def validation_curve(folder: Path) -> list[tuple[int, float]]:
    """``[(step, validation accuracy)]`` from a run's ``metrics.jsonl``."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r["step"], r["val_accuracy"]) for r in rows if r.get("val_accuracy") is not None]


def variant_of(name: str) -> str:
    """``"ov1-s2"`` -> ``"ov1"``: seeds of one variant share the name before ``-sN``."""
    head, _, tail = name.rpartition("-s")
    return head if head and tail.isdigit() else name


def sweep(configs: dict, out: Path, deadline_s: float, preset: str = "fashion-mnist") -> dict:
    """Run every config at once; stop them all after ``deadline_s``. Returns ``{name: result}``."""
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    minutes = max(deadline_s - 20, 1) / 60  # each run stops itself a little before the deadline
    start, procs = time.monotonic(), {}
    for name, (overrides, steps) in configs.items():
        with open(out / f"{name}.log", "w") as log:  # the child keeps its own handle
            procs[name] = subprocess.Popen(
                [sys.executable, __file__, "--one", preset, name, json.dumps(overrides), str(steps),
                 str(minutes), str(out)], stdout=log, stderr=subprocess.STDOUT, env=env)
    while any(p.poll() is None for p in procs.values()) and time.monotonic() - start < deadline_s:
        time.sleep(5)
        done = sum(p.poll() is not None for p in procs.values())
        print(f"\r{time.monotonic() - start:6.0f} s  {done}/{len(procs)} runs done", end="", flush=True)
    print()
    results = {}
    for name, proc in procs.items():
        if proc.poll() is None:
            proc.terminate()
        curve = validation_curve(out / name)
        results[name] = {"steps": configs[name][1], "returncode": proc.wait(), "curve": curve,
                         "final": curve[-1][1] if curve else None}
    return results


def summary(results: dict) -> str:
    """A markdown table: each run, then each variant's mean over its seeds."""
    lines = ["| run | steps reached / planned | validation accuracy |", "|---|---:|---:|"]
    by_variant: dict[str, list[float]] = {}
    for name, r in results.items():
        reached = r["curve"][-1][0] if r["curve"] else 0
        final = f"{100 * r['final']:.2f}%" if r["final"] is not None else f"failed (exit {r['returncode']})"
        lines.append(f"| {name} | {reached:,} / {r['steps']:,} | {final} |")
        if r["final"] is not None:
            by_variant.setdefault(variant_of(name), []).append(r["final"])
    lines += ["", "| variant | seeds | mean | spread |", "|---|---:|---:|---:|"]
    for variant, finals in by_variant.items():
        spread = f"{100 * min(finals):.2f}-{100 * max(finals):.2f}%" if len(finals) > 1 else "-"
        lines.append(f"| {variant} | {len(finals)} | {100 * statistics.mean(finals):.2f}% | {spread} |")
    return "\n".join(lines)


def cpu_cost(configs: dict, preset_name: str = "fashion-mnist", repeats: int = 5,
             steps_per_repeat: int = 10, threads: int = 2) -> dict[str, float]:
    """Seconds per training step (forward, backward, AdamW) of each config's model, batch size and
    precision (``bf16``) on this CPU, configs interleaved within each repeat; the median over
    ``repeats``."""
    import torch
    import torch.nn.functional as F

    from attnlab.models.vit import ViT
    from attnlab.train.optim import build_optimizer
    from attnlab.train.vit_task import VIT_TRAIN_PRESETS

    torch.set_num_threads(threads)
    preset = VIT_TRAIN_PRESETS[preset_name]
    cpu, setups = torch.device("cpu"), {}
    for name, (overrides, _) in configs.items():
        torch.manual_seed(0)
        c = dataclasses.replace(preset.model_config(10), **overrides.get("model_overrides", {}))
        model = ViT(c)
        batch = overrides.get("train", {}).get("batch_size", preset.train["batch_size"])
        optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95), device=cpu)
        images = torch.randn(batch, c.in_channels, c.image_size, c.image_size)
        bf16 = overrides.get("train", {}).get("bf16", preset.train.get("bf16", False))
        setups[name] = (model, optimizer, images, torch.randint(0, c.num_classes, (batch,)), bf16)
    times: dict[str, list[float]] = {name: [] for name in setups}
    for repeat in range(repeats + 1):  # the first round warms up and is not counted
        for name, (model, optimizer, images, labels, bf16) in setups.items():
            start = time.perf_counter()
            for _ in range(steps_per_repeat):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # as the training loop
                    loss = F.cross_entropy(model(images), labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            if repeat:
                times[name].append((time.perf_counter() - start) / steps_per_repeat)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--one"]:
        preset, name, overrides, steps, minutes, out = argv[1:7]
        return run_one(preset, name, json.loads(overrides), int(steps), float(minutes), Path(out))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", type=Path, help='JSON file: {"name": [overrides, steps]}')
    parser.add_argument("--out", type=Path, help="a folder for the runs (needed unless --cpu-cost)")
    parser.add_argument("--cpu-cost", action="store_true",
                        help="only measure each config's CPU cost per step (2 threads) and print it")
    parser.add_argument("--deadline", type=float, default=600.0,
                        help="seconds after which every run is stopped (default 600)")
    parser.add_argument("--preset", default="fashion-mnist",
                        help="the attnlab train vit preset the overrides apply to (default fashion-mnist)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    try:
        configs = json.loads(args.configs.read_text())
    except (OSError, json.JSONDecodeError) as error:
        parser.error(f"cannot read configs {args.configs}: {error}")
    for name, value in configs.items():
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], dict)
                and isinstance(value[1], int) and value[1] > 0):
            parser.error(f"config {name!r} must be [overrides object, steps > 0], got {value!r}")
    from attnlab.train.vit_task import VIT_TRAIN_PRESETS

    if args.preset not in VIT_TRAIN_PRESETS:
        parser.error(f"unknown preset {args.preset!r}; choose from {', '.join(VIT_TRAIN_PRESETS)}")
    if args.cpu_cost:
        costs = cpu_cost(configs, args.preset)
        first_name, first_steps = next(iter(configs)), next(iter(configs.values()))[1]
        print("| config | ms per step | cost vs first | steps in the first config's time | steps given |")
        print("|---|---:|---:|---:|---:|")
        for name, seconds in costs.items():
            ratio = seconds / costs[first_name]
            print(f"| {name} | {1000 * seconds:.1f} | {ratio:.3f} | {first_steps / ratio:,.0f} | "
                  f"{configs[name][1]:,} |")
        return 0
    if args.out is None:
        parser.error("--out is needed to run the sweep")
    results = sweep(configs, args.out, args.deadline, args.preset)
    print(summary(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0 if all(r["final"] is not None for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
