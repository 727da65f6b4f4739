"""Tune the Transformer and the LSTM translators alike: variants trained for the same wall-clock
budget one after another, each chosen on the validation books only.

Each variant is a full ``attnlab train translate --preset PRESET --arch ARCH`` run whose learning
rate decays over the budget (``--budget-minutes``: it ends at its floor when the time is spent),
then ``attnlab eval translate --split validation`` for each decoding setting (beams and GNMT
length penalty). The test books are never read here: score the chosen models on them afterwards
with ``attnlab eval translate`` (see ``docs/benchmarks.md``).

A sweep file is a JSON object ``{"name": overrides}``; ``overrides`` holds ``"arch"``
(``"transformer"`` or ``"lstm"``), and may hold ``"model"`` (for the Transformer,
:class:`attnlab.models.seq2seq.Seq2SeqConfig` fields such as ``num_encoder_layers``,
``embed_dim``, ``dropout``; for the LSTM, :class:`attnlab.models.lstm_seq2seq.LSTMSeq2SeqConfig`
fields such as ``hidden_dim``, ``num_layers``, ``dropout``, ``teacher_forcing``, ``attention``),
``"train"`` (:class:`attnlab.train.TrainConfig` fields: ``lr``, ``min_lr``, ``warmup_steps``,
``batch_size``, ...), ``"seed"``, and ``"decode"``: a list of ``[beams, length penalty]`` to
score (default ``[[4, 1.0]]``). Names ending in ``-sN`` are seeds of the variant before them.
Results go to ``OUT/results.jsonl`` and a killed sweep resumes (see ``sweep_common.py``).

    python benchmarks/translate_sweep.py benchmarks/translate_sweep/round1.json \\
        --out /tmp/mt-sweep --minutes 8
    python benchmarks/translate_sweep.py benchmarks/translate_sweep/round1.json \\
        --out /tmp/mt-sweep --summary

``--arch`` keeps one architecture's variants and ``--threads`` sets each run's threads: two
sweeps side by side, one per architecture with one thread each, give both the same machine.
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

DEFAULT_DECODE = [[4, 1.0]]


def run_one(preset_name: str, overrides: dict, minutes: float, folder: Path) -> int:
    """Train one variant of ``preset_name`` for ``minutes`` into ``folder``."""
    from attnlab.cli import main
    from attnlab.models import seq2seq
    from attnlab.train import translate_task

    preset = translate_task.TRANSLATE_PRESETS[preset_name]
    arch = overrides.get("arch", "transformer")
    model = overrides.get("model", {})
    changes = {}
    if arch == "transformer" and model:
        # A model size of its own under a new name: the checkpoint records the sizes themselves.
        name = f"{preset.model}-sweep"
        seq2seq.SEQ2SEQ_PRESETS[name] = {**seq2seq.SEQ2SEQ_PRESETS[preset.model], **model}
        changes["model"] = name
    elif arch == "lstm":
        changes["lstm"] = {**preset.lstm, **model}
    # The budget ends the run, never the step count; evaluations and checkpoints every 200 steps.
    train = dict(preset.train_fields(arch), max_steps=10**6, max_minutes=None, budget_minutes=minutes,
                 eval_every=200, checkpoint_every=200)
    # The preset's warm-up is sized for its 30-minute runs: a shorter run keeps the same share of
    # its time warming up (at 8 minutes on one core the LSTM takes ~210 steps, and 150 of them
    # would be warm-up).
    train["warmup_steps"] = max(10, round(train["warmup_steps"] * min(1.0, minutes / 30)))
    train.update(overrides.get("train", {}))
    translate_task.TRANSLATE_PRESETS[preset_name] = dataclasses.replace(
        preset, train=train, lstm_train={}, **changes)
    args = ["train", "translate", "--preset", preset_name, "--arch", arch, "--out", str(folder)]
    if "seed" in overrides:
        args += ["--seed", str(overrides["seed"])]
    return main(args)


def run_variant(name: str, overrides: dict, folder: Path, minutes: float, preset: str,
                max_sentences: int | None, threads: int = 2) -> dict:
    """Train one variant in a child process with ``threads`` threads, then score it on the
    validation books."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    started = time.monotonic()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{name}.log", "w") as log:
        code = subprocess.call(
            [sys.executable, __file__, "--one", preset, json.dumps(overrides), str(minutes), str(folder)],
            stdout=log, stderr=subprocess.STDOUT, env=env)
    row = {"arch": overrides.get("arch", "transformer"), "minutes": minutes, "threads": threads,
           "returncode": code,
           "train_wall_s": round(time.monotonic() - started, 1), "validation": []}
    if code != 0:
        return row
    limit = [] if max_sentences is None else ["--max-sentences", str(max_sentences)]
    for beams, penalty in overrides.get("decode", DEFAULT_DECODE):
        scored = subprocess.run(
            [sys.executable, "-m", "attnlab", "eval", "translate", "--checkpoint", str(folder),
             "--split", "validation", "--beam", str(beams), "--length-penalty", str(penalty),
             *limit, "--json"], capture_output=True, text=True, env=env)
        if scored.returncode != 0:
            row["eval_error"] = scored.stderr.strip()[-500:]
            break
        result = json.loads(scored.stdout)
        row["steps"] = result["step"]
        row["validation"].append({key: result[key] for key in (
            "beam", "length_penalty", "sentences", "bleu", "chrf", "bleu_signature", "chrf_signature",
            "seconds")})
    return row


def last_val_loss(folder: Path) -> float | None:
    """The last validation loss (label-smoothed cross-entropy) in ``folder/metrics.jsonl``."""
    from attnlab.train.metrics import read_metrics

    try:
        losses = [row["val_loss"] for row in read_metrics(folder / "metrics.jsonl")
                  if row.get("val_loss") is not None]
    except (OSError, ValueError):  # a run killed in the middle of a line
        return None
    return losses[-1] if losses else None


def best(row: dict) -> dict | None:
    """The decoding setting of ``row`` with the highest validation BLEU."""
    return max(row.get("validation") or [], key=lambda scores: scores["bleu"], default=None)


def describe(row: dict) -> str:
    top = best(row)
    if top is None:
        return f"failed (exit {row['returncode']}{', ' + row['eval_error'] if 'eval_error' in row else ''})"
    return (f"validation BLEU {top['bleu']:.2f} chrF {top['chrf']:.2f} (beam {top['beam']}, "
            f"length penalty {top['length_penalty']:g}) after {row.get('steps')} steps")


def summary(results: dict, out: Path) -> str:
    """A markdown table: each run with each decoding setting and its last validation loss (read
    from ``out/NAME/metrics.jsonl``), then each variant's mean over seeds (of its best setting's
    validation BLEU)."""
    lines = ["| run | arch | minutes | steps | val loss | beam | length penalty | val BLEU | val chrF |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    scores = {}
    for name, row in results.items():
        if best(row) is None:
            lines.append(f"| {name} | {row.get('arch')} | {row['minutes']} | - | - | - | - | "
                         f"{describe(row)} | - |")
            continue
        loss = last_val_loss(out / name)
        loss = "-" if loss is None else f"{loss:.3f}"
        for scored in row["validation"]:
            lines.append(f"| {name} | {row['arch']} | {row['minutes']} | {row.get('steps') or 0:,} | "
                         f"{loss} | {scored['beam']} | {scored['length_penalty']:g} | "
                         f"{scored['bleu']:.2f} | {scored['chrf']:.2f} |")
        scores[name] = best(row)["bleu"]
    lines += ["", "| variant | seeds | mean val BLEU | min-max | sd |", "|---|---:|---:|---:|---:|"]
    lines += [spread_row(variant, values, digits=2) for variant, values in by_variant(scores).items()]
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        preset, overrides, minutes, folder = sys.argv[2:6]
        return run_one(preset, json.loads(overrides), float(minutes), Path(folder))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", type=Path, help="a sweep file: {name: overrides}")
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs and results.jsonl")
    parser.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget of each run")
    parser.add_argument("--preset", default="base")
    parser.add_argument("--max-sentences", type=int, default=None,
                        help="score this many validation verses spread over the books (default: all 452)")
    parser.add_argument("--arch", choices=("transformer", "lstm"), default=None,
                        help="run only the variants of this architecture")
    parser.add_argument("--threads", type=int, default=2,
                        help="threads of each run (default 2: the whole machine; 1 lets a "
                             "Transformer sweep and an LSTM sweep share a 2-core machine alike)")
    parser.add_argument("--summary", action="store_true", help="print the table of what is done")
    args = parser.parse_args()
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    configs = json.loads(args.configs.read_text())
    if args.arch is not None:
        configs = {name: overrides for name, overrides in configs.items()
                   if overrides.get("arch", "transformer") == args.arch}
    if args.summary:
        results = read_results(args.out)
    else:
        results = run_in_sequence(
            configs, args.out,
            lambda name, overrides, folder: run_variant(name, overrides, folder, args.minutes, args.preset,
                                                        args.max_sentences, args.threads),
            describe)
    print(summary({name: results[name] for name in configs if name in results}, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
