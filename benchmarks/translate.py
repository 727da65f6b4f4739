"""Translators side by side: the encoder-decoder Transformer against the LSTM with attention, on
this machine's CPU with 2 threads.

1. Training throughput. Both architectures of one ``attnlab train translate`` preset (default
   ``base``) are built fresh and trained on the same batches of the Bible training books (forward,
   label-smoothed cross-entropy, backward, clipping, AdamW), ``--steps`` optimizer steps per run,
   the two interleaved (A B A B ...) for ``--repeats`` runs; medians. Tokens/s counts target
   tokens (what the loss averages over), as the training log does.
2. Translation latency. Two trained checkpoints (``--transformer DIR --lstm DIR``) translate
   ``--sentences`` held-out verses spread over the test books one at a time (batch of 1, as a
   user typing a sentence would), with greedy decoding and with beam search (4 beams), the two
   models alternating sentence by sentence; median milliseconds per sentence and per output token.

    python benchmarks/translate.py --transformer runs/translate-base-transformer \
        --lstm runs/translate-base-lstm
    python benchmarks/translate.py --steps 3 --repeats 1      (training throughput only)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from attnlab.train import TrainConfig, seed_everything
from attnlab.train.translate_task import (
    ARCHITECTURES,
    TRANSLATE_PRESETS,
    TranslationTask,
    build_model,
    spread,
    translate,
)

THREADS = 2
BEAM = 4


def train_run(arch: str, preset, task: TranslationTask, config: TrainConfig, steps: int) -> tuple[float, int]:
    """``(seconds, target tokens)`` of ``steps`` training steps of a fresh ``arch`` model."""
    seed_everything(config.seed)
    model = build_model(arch, preset, task.tokenizer)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    tokens = 0
    start = time.perf_counter()
    for step in range(steps):
        batch = task.train_batch(step, 0, 1)
        task.loss(model, batch).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += task.count(batch)
    return time.perf_counter() - start, tokens


def measure_training(preset_name: str, steps: int, repeats: int) -> dict[str, dict]:
    preset = TRANSLATE_PRESETS[preset_name]
    config = TrainConfig(**preset.train)
    print("building the task (BPE on the training verses) ...", file=sys.stderr, flush=True)
    task = TranslationTask.from_preset(preset, config)
    for arch in ARCHITECTURES:
        train_run(arch, preset, task, config, 1)  # warm-up
    seconds: dict[str, list[float]] = {arch: [] for arch in ARCHITECTURES}
    tokens = {}
    for round_ in range(repeats):
        for arch in ARCHITECTURES:
            elapsed, tokens[arch] = train_run(arch, preset, task, config, steps)
            seconds[arch].append(elapsed)
            print(f"round {round_ + 1}/{repeats}: {arch}: {elapsed:.2f} s", file=sys.stderr, flush=True)
    return {arch: {"median_s": statistics.median(t), "all_s": t, "target_tokens": tokens[arch],
                   "tokens_per_s": tokens[arch] / statistics.median(t),
                   "s_per_step": statistics.median(t) / steps}
            for arch, t in seconds.items()}


def measure_latency(checkpoints: dict[str, str], count: int) -> dict[str, dict]:
    from attnlab.data.bible import split_pairs, verse_pairs
    from attnlab.train.runs import load_translator

    loaded = {arch: load_translator(path) for arch, path in checkpoints.items()}
    sentences = [pair.en for pair in spread(split_pairs(verse_pairs())[2], count)]
    modes = {"greedy": {"greedy": True}, f"beam {BEAM}": {"beam": BEAM}}
    times = {(arch, mode): [] for arch in loaded for mode in modes}
    out_tokens = {(arch, mode): 0 for arch in loaded for mode in modes}
    for item in loaded.values():  # warm-up
        translate(item.model, item.tokenizer, sentences[:1], greedy=True)
    for index, sentence in enumerate(sentences):
        for mode, options in modes.items():
            for arch, item in loaded.items():
                start = time.perf_counter()
                output = translate(item.model, item.tokenizer, [sentence], **options)[0]
                times[arch, mode].append(time.perf_counter() - start)
                out_tokens[arch, mode] += len(item.tokenizer.encode(output)) + 1  # + EOS
        print(f"sentence {index + 1}/{len(sentences)}", file=sys.stderr, flush=True)
    return {f"{arch} / {mode}": {"median_ms": 1000 * statistics.median(t),
                                 "ms_per_output_token": 1000 * sum(t) / out_tokens[arch, mode],
                                 "sentences": len(t)}
            for (arch, mode), t in times.items()}


def markdown(training: dict, latency: dict | None, args) -> str:
    lines = [f"Training the `{args.preset}` preset, {args.steps} steps per run, median of {args.repeats}, "
             f"float32, CPU, {THREADS} threads.", "",
             "| model | s/step | target tokens/s | vs LSTM |", "|---|---:|---:|---:|"]
    reference = training["lstm"]["tokens_per_s"]
    for arch, row in training.items():
        lines.append(f"| {arch} | {row['s_per_step']:.3f} | {row['tokens_per_s']:,.0f} | "
                     f"{row['tokens_per_s'] / reference:.2f}x |")
    if latency:
        lines += ["", f"Translating {args.sentences} held-out verses one at a time (batch 1).", "",
                  "| model / decoding | median ms per verse | ms per output token |", "|---|---:|---:|"]
        for name, row in latency.items():
            lines.append(f"| {name} | {row['median_ms']:.1f} | {row['ms_per_output_token']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(TRANSLATE_PRESETS), default="base")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per timed run (default: 10)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per model (default: 3)")
    parser.add_argument("--transformer", metavar="DIR",
                        help="a trained Transformer translator (run or checkpoint folder)")
    parser.add_argument("--lstm", metavar="DIR", help="a trained LSTM translator (run or checkpoint folder)")
    parser.add_argument("--sentences", type=int, default=50, help="verses for the latency part (default: 50)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args()
    if min(args.steps, args.repeats, args.sentences) < 1:
        parser.error("--steps, --repeats and --sentences must be >= 1")
    if bool(args.transformer) != bool(args.lstm):
        parser.error("give both --transformer and --lstm for the latency part, or neither")
    torch.set_num_threads(THREADS)

    training = measure_training(args.preset, args.steps, args.repeats)
    latency = None
    if args.transformer:
        with torch.inference_mode():
            latency = measure_latency({"transformer": args.transformer, "lstm": args.lstm}, args.sentences)
    print(markdown(training, latency, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"preset": args.preset, "steps": args.steps, "repeats": args.repeats,
                       "threads": THREADS, "torch": torch.__version__,
                       "machine": platform.processor() or platform.machine(),
                       "training": training, "latency": latency}, f, indent=2)


if __name__ == "__main__":
    main()
