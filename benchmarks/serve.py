"""The live explorer's latency, measured through its real HTTP server on loopback, 2 threads.

Rows (p50 and p95 over ``--requests`` requests each, the kinds interleaved so that a noisy
moment hits all of them alike):

  MiniLM explain, 16 / 64 / 117 tokens   POST /api/explain, whole round trip (the answer parsed
                                         with orjson)
  MiniLM what-if, 16 tokens              POST /api/whatif hiding one word, as the page asks it
                                         (the original run remembered and not sent again)
  SmolLM2 explain (first answer)         POST /api/explain of a 6-token prompt: walkthrough,
                                         next-token candidates and the token's path
  SmolLM2 what-if                        POST /api/whatif hiding one word
  SmolLM2 per generated token            POST /api/generate streaming, greedy: time between
                                         token events

Ratios printed, side by side in this run:
  - what-if / plain explain (target <= 1.5);
  - explorer streaming tokens/s / ``attnlab.stream_ids`` tokens/s on the same prompt and length
    (target >= 0.9), both greedy with the KV cache, alternated;
  - with ``--browser``, the time from Enter in the page to the page drawn (``data-busy`` gone),
    in Chromium (target <= 300 ms for 16 tokens).

    python benchmarks/serve.py
    python benchmarks/serve.py --requests 50 --browser --json /tmp/serve.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import httpx
import orjson
import torch

THREADS = 2
SENTENCE = ("the animal did not cross the street because it was too tired and the river was wide "
            "so everyone waited on the bank for the rain to stop before they went on")
WORDS = SENTENCE.split(" ")
PROMPT = "The capital of France is"


def text_of(tokenizer, tokens: int) -> str:
    """A sentence of exactly ``tokens`` MiniLM tokens (markers included)."""
    words = []
    while len(tokenizer.encode(" ".join(words))) < tokens:
        words.append(WORDS[len(words) % len(WORDS)])
    while len(tokenizer.encode(" ".join(words))) > tokens:
        words.pop()
    return " ".join(words)


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95


def timed_post(client: httpx.Client, path: str, body: dict) -> float:
    start = time.perf_counter()
    answer = client.post(path, json=body)
    answer.raise_for_status()
    orjson.loads(answer.content)
    return (time.perf_counter() - start) * 1000


def stream_token_gaps(client: httpx.Client, body: dict) -> tuple[list[float], float]:
    """Milliseconds between token events, and tokens/s from the request to the last token."""
    gaps, last, count = [], None, 0
    start = time.perf_counter()
    with client.stream("POST", "/api/generate", json=body) as answer:
        answer.raise_for_status()
        for line in answer.iter_lines():
            event = json.loads(line)
            if event["type"] != "token":
                continue
            now = time.perf_counter()
            if last is not None:
                gaps.append((now - last) * 1000)
            last, count = now, count + 1
    return gaps, count / (last - start)


def library_tokens_per_s(model, tokenizer, tokens: int) -> float:
    from attnlab.generation import stream_ids

    start = time.perf_counter()
    produced = sum(1 for _ in stream_ids(model, tokenizer.encode(PROMPT), tokens, temperature=0))
    return produced / (time.perf_counter() - start)


def browser_latency(url: str, text: str, repeats: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    samples = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("body[data-ready='true']")
        box = page.locator("#text")
        for i in range(repeats):
            box.fill(f"{text} {WORDS[i % len(WORDS)]}"[: len(text)])
            start = time.perf_counter()
            box.press("Enter")
            page.wait_for_function("document.body.dataset.busy === 'true'", polling="raf")
            page.wait_for_function("document.body.dataset.busy !== 'true'", polling="raf")
            samples.append((time.perf_counter() - start) * 1000)
        browser.close()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--streams", type=int, default=5, help="generations per side for the ratio")
    parser.add_argument("--browser", action="store_true", help="also time Enter -> drawn in Chromium")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)

    from attnlab.serve.app import ServedModel
    from attnlab.serve.models import load_named
    from attnlab.serve.runner import BackgroundServer

    minilm: ServedModel = load_named("minilm")
    smollm2: ServedModel = load_named("smollm2")
    texts = {n: text_of(minilm.tokenizer, n) for n in (16, 64, 117)}
    kinds = {
        **{f"MiniLM explain, {n} tokens": ("/api/explain", {"model": "minilm", "text": t})
           for n, t in texts.items()},
        "MiniLM what-if, 16 tokens": ("/api/whatif", {"model": "minilm", "text": texts[16],
                                                      "edit": {"hide": [2]}, "original": False}),
        "SmolLM2 explain (first answer)": ("/api/explain", {"model": "smollm2", "text": PROMPT}),
        "SmolLM2 what-if": ("/api/whatif", {"model": "smollm2", "text": PROMPT,
                                            "edit": {"hide": [3]}, "original": False}),
    }
    rows: dict[str, list[float]] = {name: [] for name in kinds}
    rows["SmolLM2 per generated token"] = []
    server_side: dict[str, list[float]] = {name: [] for name in kinds}
    rates = {"explorer": [], "library": []}
    with BackgroundServer([minilm, smollm2]) as server, \
            httpx.Client(base_url=server.url.rstrip("/"), timeout=120) as client:
        for path, body in kinds.values():  # warm-up, and the originals what-if remembers
            timed_post(client, path, body)
            timed_post(client, "/api/explain", {**body, "edit": None, "original": None})
        for _ in range(args.requests):
            for name, (path, body) in kinds.items():
                start = time.perf_counter()
                # orjson, as a browser's native JSON.parse: the client's parsing is not the server's
                answer = orjson.loads(client.post(path, json=body).content)
                rows[name].append((time.perf_counter() - start) * 1000)
                server_side[name].append(answer["elapsed_ms"])
        generate = {"model": "smollm2", "text": PROMPT, "max_new_tokens": args.new_tokens,
                    "temperature": 0}
        library_tokens_per_s(smollm2.model, smollm2.tokenizer, 4)
        for _ in range(args.streams):
            gaps, rate = stream_token_gaps(client, generate)
            rows["SmolLM2 per generated token"].extend(gaps)
            rates["explorer"].append(rate)
            rates["library"].append(library_tokens_per_s(smollm2.model, smollm2.tokenizer,
                                                         args.new_tokens))
        browser = browser_latency(server.url, texts[16], 20) if args.browser else None

    print(f"attnlab serve latency, {THREADS} threads, torch {torch.__version__}, "
          f"{args.requests} requests per row")
    print(f"{'request':36} {'p50 ms':>9} {'p95 ms':>9} {'model ms p50':>13}")
    results = {}
    for name, samples in rows.items():
        p50, p95 = percentiles(samples)
        inside = statistics.median(server_side[name]) if name in server_side else None
        results[name] = {"p50_ms": p50, "p95_ms": p95, "model_p50_ms": inside}
        shown = f"{inside:13.1f}" if inside is not None else f"{'':13}"
        print(f"{name:36} {p50:9.1f} {p95:9.1f} {shown}")
    p50 = {name: row["p50_ms"] for name, row in results.items()}
    whatif_minilm = p50["MiniLM what-if, 16 tokens"] / p50["MiniLM explain, 16 tokens"]
    whatif_smol = p50["SmolLM2 what-if"] / p50["SmolLM2 explain (first answer)"]
    stream_ratio = statistics.median(rates["explorer"]) / statistics.median(rates["library"])
    print(f"what-if / explain p50: MiniLM {whatif_minilm:.2f}x, SmolLM2 {whatif_smol:.2f}x (target <= 1.5)")
    print(f"streaming {statistics.median(rates['explorer']):.1f} tokens/s vs attnlab.stream_ids "
          f"{statistics.median(rates['library']):.1f} tokens/s: {stream_ratio:.2f}x (target >= 0.9)")
    if browser is not None:
        p50, p95 = percentiles(browser)
        print(f"page: Enter -> drawn, 16 tokens, Chromium: p50 {p50:.0f} ms, p95 {p95:.0f} ms "
              "(target p50 <= 300)")
        results["browser_enter_to_drawn"] = {"p50_ms": p50, "p95_ms": p95}
    results["ratios"] = {"whatif_minilm": whatif_minilm, "whatif_smollm2": whatif_smol,
                         "stream_vs_library": stream_ratio}
    results["tokens_per_s"] = rates
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    sys.exit(main())
