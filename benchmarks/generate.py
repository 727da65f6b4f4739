"""Generation benchmark: tokens/s of ``attnlab.generate`` against ``transformers``' ``generate``
on the same SmolLM2-135M-Instruct weights, on this machine's CPU with 2 threads.

All runs decode greedily from the same prompt and produce exactly ``--new-tokens`` tokens
(end-of-sequence is ignored on both sides: attnlab is given a tokenizer without one,
transformers gets ``min_new_tokens``). Rows:

  attnlab (KV cache)       ``attnlab.generate(..., use_cache=True)``: text out, so it includes
                           the streaming detokenizer's work
  attnlab (no cache)       ``attnlab.generate(..., use_cache=False)``: every step re-runs the
                           whole sequence
  transformers eager       ``model.generate(do_sample=False)``, float32, eager attention
  transformers sdpa        the same with ``attn_implementation="sdpa"``

Each row gets one short warm-up call, then ``--repeats`` timed calls, the rows interleaved
(A B C D A B C D ...) so that a noisy moment hits every row alike; the median is reported.
The transformers model is loaded from the same GGUF file (``transformers`` dequantizes it).

    python benchmarks/generate.py
    python benchmarks/generate.py --new-tokens 64 --repeats 3 --json /tmp/generate.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch

import attnlab
from attnlab.models.pretrained import load_pretrained
from attnlab.models.pretrained.smollm2 import GGUF_FILE, gguf_path

THREADS = 2
PROMPT = "Once upon a time, in a small village at the edge of a great forest,"
WARMUP_TOKENS = 8


class IgnoreEos:
    """A tokenizer that is ``tokenizer`` but has no end-of-sequence id, so generation runs on."""

    eos_token_id = None

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def attnlab_runner(model, tokenizer, use_cache: bool) -> Callable[[int], int]:
    def run(new_tokens: int) -> int:
        text = attnlab.generate(model, tokenizer, PROMPT, max_new_tokens=new_tokens, temperature=0,
                                use_cache=use_cache)
        assert text, "attnlab generated nothing"
        return new_tokens  # greedy, no end-of-sequence, no stop string: exactly new_tokens
    return run


def transformers_runner(model, prompt_ids: list[int], pad_id: int) -> Callable[[int], int]:
    input_ids = torch.tensor([prompt_ids])
    mask = torch.ones_like(input_ids)

    def run(new_tokens: int) -> int:
        with torch.inference_mode():
            out = model.generate(input_ids, attention_mask=mask, do_sample=False,
                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=pad_id)
        return out.shape[1] - input_ids.shape[1]
    return run


def load_transformers() -> dict:
    """``{"eager": model, "sdpa": model}``: one GGUF load (slow), the second model a copy."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import transformers

    eager = transformers.AutoModelForCausalLM.from_pretrained(
        gguf_path().parent, gguf_file=GGUF_FILE, attn_implementation="eager", dtype=torch.float32,
    ).eval()
    sdpa = copy.deepcopy(eager)
    sdpa.set_attn_implementation("sdpa")
    return {"eager": eager, "sdpa": sdpa}


def measure(runners: dict[str, Callable[[int], int]], new_tokens: int, repeats: int) -> dict[str, dict]:
    """Median seconds per row over ``repeats`` interleaved rounds, after one warm-up call each."""
    for name, run in runners.items():
        print(f"warm-up: {name}", file=sys.stderr, flush=True)
        run(WARMUP_TOKENS)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for round_ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            produced = run(new_tokens)
            seconds = time.perf_counter() - start
            if produced != new_tokens:
                raise RuntimeError(f"{name} produced {produced} tokens, expected {new_tokens}")
            times[name].append(seconds)
            print(f"round {round_ + 1}/{repeats}: {name}: {seconds:.2f} s", file=sys.stderr, flush=True)
    return {
        name: {"seconds": statistics.median(t), "all_seconds": t,
               "tokens_per_s": new_tokens / statistics.median(t)}
        for name, t in times.items()
    }


def markdown(rows: dict[str, dict], new_tokens: int, repeats: int, prompt_tokens: int) -> str:
    reference = rows["transformers eager"]["tokens_per_s"]
    no_cache = rows["attnlab (no cache)"]["tokens_per_s"]
    lines = [
        f"Greedy decoding of {new_tokens} tokens after a {prompt_tokens}-token prompt, SmolLM2-135M "
        f"float32, CPU, {THREADS} threads, median of {repeats}.",
        "",
        "| implementation | tokens/s | median time | vs transformers eager | vs attnlab no cache |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        rate = row["tokens_per_s"]
        lines.append(f"| {name} | {rate:.1f} | {row['seconds']:.2f} s | {rate / reference:.2f}x "
                     f"| {rate / no_cache:.1f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=256, help="tokens per generation (default: 256)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per row (default: 3)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args()
    if args.new_tokens < 1 or args.repeats < 1:
        parser.error(f"--new-tokens and --repeats must be >= 1, got {args.new_tokens} and {args.repeats}")
    torch.set_num_threads(THREADS)

    model, tokenizer = load_pretrained("smollm2")
    prompt_ids = tokenizer.encode(PROMPT)
    if len(prompt_ids) + args.new_tokens > model.config.max_positions:
        parser.error(f"--new-tokens {args.new_tokens} does not fit in "
                     f"max_positions={model.config.max_positions}")
    no_eos = IgnoreEos(tokenizer)
    runners = {
        "attnlab (KV cache)": attnlab_runner(model, no_eos, use_cache=True),
        "attnlab (no cache)": attnlab_runner(model, no_eos, use_cache=False),
    }
    for attn, hf_model in load_transformers().items():
        runners[f"transformers {attn}"] = transformers_runner(hf_model, prompt_ids, tokenizer.eos_token_id)
    rows = measure(runners, args.new_tokens, args.repeats)
    print(markdown(rows, args.new_tokens, args.repeats, len(prompt_ids)))
    if args.json:
        import transformers

        result = {
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
            "prompt": PROMPT,
            "prompt_tokens": len(prompt_ids),
            "threads": THREADS,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "machine": platform.processor() or platform.machine(),
            "rows": rows,
        }
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
