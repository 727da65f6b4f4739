"""Tune a GPT training preset for a wall-clock budget: variants run one after another, each with
the machine's 2 threads to itself, each scored on the whole held-out text.

Each variant is a full ``attnlab train gpt`` run whose learning rate decays over the budget
(``--budget-minutes``: the schedule ends at its floor when the time is spent, however fast the
machine), then ``attnlab eval gpt`` on all of the held-out works (consecutive windows of the
block size, every character but the first of each window predicted once). Variants run in
sequence, never side by side: the budget is wall-clock time on this 2-core machine, so a run
sharing the cores would be measured on a slower machine.

A sweep file is a JSON object ``{"name": overrides}``; ``overrides`` may hold ``"model"``
(:class:`attnlab.models.gpt.GPTConfig` fields) and ``"train"`` (:class:`attnlab.train.TrainConfig`
fields), applied to ``--preset``, and ``"seed"``. A name ending in ``-sN`` is a seed of the
variant before it; the summary gives each variant's mean and spread over its seeds. Results go
to ``OUT/results.jsonl`` and a killed sweep resumes (see ``sweep_common.py``).

    python benchmarks/gpt_sweep.py benchmarks/gpt_sweep/char-round1.json --out /tmp/gpt-sweep \\
        --minutes 5
    python benchmarks/gpt_sweep.py benchmarks/gpt_sweep/char-round1.json --out /tmp/gpt-sweep \\
        --summary   # the table only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from sweep_common import by_variant, read_results, run_in_sequence, spread_row


def run_one(preset_name: str, name: str, overrides: dict, minutes: float, out: Path) -> int:
    """Train one variant of ``preset_name`` for ``minutes`` into ``out/name`` (2 threads)."""
    from attnlab.cli import main
    from attnlab.train import lm_task

    preset = lm_task.GPT_PRESETS[preset_name]
    lm_task.GPT_PRESETS[preset_name] = variant_preset(preset, overrides, minutes)
    args = ["train", "gpt", "--preset", preset_name, "--out", str(out / name)]
    if "seed" in overrides:
        args += ["--seed", str(overrides["seed"])]
    return main(args)


def variant_preset(preset, overrides: dict, minutes: float):
    """``preset`` (a :class:`GPTPreset`) with ``overrides`` applied, its schedule over ``minutes``."""
    steps = 10**6  # the budget ends the run, never the step count
    every = 500
    train = dict(preset.train, max_steps=steps, max_minutes=None, budget_minutes=minutes,
                 eval_every=every, checkpoint_every=every)
    train.update(overrides.get("train", {}))
    model = dict(preset.model, **overrides.get("model", {}))
    return dataclasses.replace(preset, train=train, model=model)


def run_variant(name: str, overrides: dict, folder: Path, minutes: float, preset: str) -> dict:
    """Train one variant in a child process, then score it on the whole held-out text."""
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1")
    started = time.monotonic()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{name}.log", "w") as log:
        code = subprocess.call(
            [sys.executable, __file__, "--one", preset, name, json.dumps(overrides), str(minutes),
             str(folder.parent)], stdout=log, stderr=subprocess.STDOUT, env=env)
    row = {"minutes": minutes, "returncode": code, "train_wall_s": round(time.monotonic() - started, 1)}
    if code == 0:
        scored = subprocess.run(
            [sys.executable, "-m", "attnlab", "eval", "gpt", "--checkpoint", str(folder), "--json"],
            capture_output=True, text=True, env=env)
        if scored.returncode == 0:
            row["eval"] = json.loads(scored.stdout)
            row["steps"] = row["eval"]["step"]
        else:
            row["eval_error"] = scored.stderr.strip()[-500:]
    return row


def nats_per_char(row: dict) -> float | None:
    evaluation = row.get("eval")
    if not evaluation:
        return None
    return evaluation["bits_per_char"] * 0.6931471805599453


def describe(row: dict) -> str:
    value = nats_per_char(row)
    if value is None:
        return f"failed (exit {row['returncode']}{', ' + row['eval_error'] if 'eval_error' in row else ''})"
    bits = row["eval"]["bits_per_char"]
    return f"{value:.4f} nats/char ({bits:.4f} bits/char) after {row.get('steps')} steps"


def summary(results: dict) -> str:
    """A markdown table: each run, then each variant's mean and spread over its seeds."""
    lines = ["| run | minutes | steps | held-out nats/char | bits/char |", "|---|---:|---:|---:|---:|"]
    scores = {}
    for name, row in results.items():
        value = nats_per_char(row)
        if value is None:
            lines.append(f"| {name} | {row['minutes']} | - | {describe(row)} | - |")
            continue
        lines.append(f"| {name} | {row['minutes']} | {row.get('steps') or 0:,} | {value:.4f} | "
                     f"{row['eval']['bits_per_char']:.4f} |")
        scores[name] = value
    lines += ["", "| variant | seeds | mean nats/char | min-max | sd |", "|---|---:|---:|---:|---:|"]
    lines += [spread_row(variant, values) for variant, values in by_variant(scores).items()]
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        preset, name, overrides, minutes, out = sys.argv[2:7]
        return run_one(preset, name, json.loads(overrides), float(minutes), Path(out))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", type=Path, help="a sweep file: {name: overrides}")
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs and results.jsonl")
    parser.add_argument("--minutes", type=float, default=15.0, help="wall-clock budget of each run")
    parser.add_argument("--preset", default="shakespeare-char")
    parser.add_argument("--summary", action="store_true", help="print the table of what is done")
    args = parser.parse_args()
    configs = json.loads(args.configs.read_text())
    if args.summary:
        results = read_results(args.out)
    else:
        results = run_in_sequence(
            configs, args.out,
            lambda name, overrides, folder: run_variant(name, overrides, folder, args.minutes, args.preset),
            describe)
    print(summary({name: results[name] for name in configs if name in results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
