"""Attention benchmark: attnlab's ``native``, ``tiled`` and ``auto`` backends and naive attention against
PyTorch's ``scaled_dot_product_attention``, side by side, on this machine's CPU with 2 threads.

Every configuration (implementation x dtype x n x mask x pass) runs in a fresh subprocess
(``--one CONFIG_JSON``), so its peak RSS is its own and no allocator state leaks between runs.
The subprocess creates its inputs from a fixed seed, notes its RSS, builds whatever dense mask
the implementation needs (counted as memory, not timed: a PyTorch user builds it once), runs
one warm-up call, then times the median of 2..``--repeats`` repeats (a first call of 10 s or
more is itself the measurement). Peak extra memory is the
peak RSS (``VmHWM``) minus the RSS right after the inputs were created.

Implementations, all on ``(B, H, n, D)`` tensors:
  torch   ``F.scaled_dot_product_attention``; ``is_causal=True`` for causal, a dense boolean
          ``(n, n)`` mask for the window (PyTorch has no window argument).
  native  ``attention(..., backend="native")`` (the compiled kernel) with ``is_causal`` /
          ``window=(256, 0)``.
  tiled   ``attention(..., backend="tiled")`` with ``is_causal`` / ``window=(256, 0)``.
  auto    ``attention(..., backend="auto")``; the table shows the backend it picked.
  naive   ``softmax(q @ k^T * scale + mask) @ v`` in the input dtype, dense mask where needed.

    python benchmarks/attention.py --out docs/benchmarks.md --json docs/benchmarks.json
    python benchmarks/attention.py --n 512,2048 --dtype fp32 --impl tiled,torch --pass fwd
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

from attnlab.attention import attention, choose_backend
from memory_probe import reset_peak_rss, status_kib

B, H, D = 1, 8, 64  # batch, heads, head_dim
WINDOW_LEFT = 256  # default window (256, 0): keys i-256 .. i, a causal sliding window
THREADS = 2
SEED = 0
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
NS = (512, 2048, 8192, 16384, 32768)  # the default sweep
OTHER_NS = (64, 128, 256, 1024, 4096)  # on request (--n)
LONG_NS = (65536, 131072, 262144)  # on request (--n): minutes per call, see docs/benchmarks.md
MASKS = ("none", "causal", "window")
PASSES = ("fwd", "fwd+bwd")
IMPLS = ("torch", "native", "tiled", "auto", "naive")  # torch first: the others are compared with it
PRIME_N = 512  # size of the untimed first call that loads code and thread pools
MIN_REPEAT_S = 0.2  # calls shorter than this are looped inside one repeat
REPEAT_BUDGET_S = 30.0  # fewer repeats (never under 2) once a config would take longer
SINGLE_RUN_S = 10.0  # a first call this long is the measurement: warm-up effects are < 1% of it
MIB = 2**20
GIB = 2**30


@dataclass(frozen=True)
class Config:
    impl: str
    dtype: str
    n: int
    mask: str
    pass_: str
    window_left: int = WINDOW_LEFT  # the window is (window_left, 0) when mask == "window"

    @property
    def window(self) -> tuple[int, int] | None:
        return (self.window_left, 0) if self.mask == "window" else None


def estimate_bytes(cfg: Config) -> float:
    """Rough peak extra memory of one config, to skip those that would not fit.

    Calibrated against peaks measured at n = 2048 and 4096.
    """
    n, elt = cfg.n, DTYPES[cfg.dtype].itemsize
    scores = B * H * n * n * elt  # one (B, H, n, n) tensor in the input dtype
    dense_mask = n * n  # one (n, n) bool, shared by batch and heads
    linear = 16 * B * H * n * D * 4 + 64 * MIB  # O(n) buffers, fp32 accumulators, tiles
    impl = cfg.impl
    if impl == "auto":
        impl = "native"
    if impl == "naive":
        copies = 2.5 if cfg.pass_ == "fwd" else 3.5  # measured: 2.1 and 3.3 at n = 2048
        return copies * scores + (dense_mask if cfg.mask != "none" else 0) + linear
    if impl == "torch" and cfg.mask == "window":
        # The boolean mask, plus the additive mask in the input dtype that PyTorch converts it
        # to, once for the forward and again for the backward (measured at n = 4096).
        converted = 1 if cfg.pass_ == "fwd" else 2
        return dense_mask * (1 + converted * elt) + linear
    return linear


# ---------------------------------------------------------------- one config, in a subprocess


def _dense_allowed(n: int, mask: str, window_left: int = WINDOW_LEFT) -> torch.Tensor | None:
    """Boolean (n, n) mask, True where query i may attend to key j; built in place, no temporaries."""
    if mask == "none":
        return None
    allowed = torch.ones(n, n, dtype=torch.bool).tril_()  # causal: j <= i
    if mask == "window":
        allowed.triu_(-window_left)  # and j >= i - left
    return allowed


def _naive(q, k, v, allowed):
    scores = q @ k.transpose(-2, -1) * (1.0 / math.sqrt(q.shape[-1]))  # (B, H, n, n)
    if allowed is not None:
        scores = torch.where(allowed, scores, -math.inf)
    return torch.softmax(scores, dim=-1) @ v  # (B, H, n, D)


def make_impl(cfg: Config, q, k, v) -> Callable[[], torch.Tensor]:
    """A zero-argument call computing the attention output; dense masks are built here."""
    causal = cfg.mask == "causal"
    window = cfg.window
    if cfg.impl in ("native", "tiled", "auto"):
        return lambda: attention(q, k, v, is_causal=causal, window=window, backend=cfg.impl)
    if cfg.impl == "torch":
        allowed = _dense_allowed(cfg.n, "window", cfg.window_left) if window else None
        return lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, is_causal=causal)
    if cfg.impl == "naive":
        allowed = _dense_allowed(cfg.n, cfg.mask, cfg.window_left)
        return lambda: _naive(q, k, v, allowed)
    raise ValueError(f"impl must be one of {IMPLS}, got {cfg.impl!r}")


def _seconds(step: Callable[[], None], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        step()
    return (time.perf_counter() - start) / number


def _inputs(cfg: Config) -> tuple[torch.Tensor, ...]:
    """q, k, v (B, H, n, D) and a fixed d(loss)/d(output), all from the fixed seed."""
    torch.manual_seed(SEED)
    dtype, backward = DTYPES[cfg.dtype], cfg.pass_ == "fwd+bwd"
    q, k, v = (torch.randn(B, H, cfg.n, D, dtype=dtype, requires_grad=backward) for _ in range(3))
    return q, k, v, torch.randn(B, H, cfg.n, D, dtype=dtype)


def _step(cfg: Config, q, k, v, grad) -> Callable[[], object]:
    """The timed call: the forward, or the forward and backward of ``sum(output * grad)``."""
    fn = make_impl(cfg, q, k, v)
    if cfg.pass_ == "fwd":
        return fn

    def step() -> None:
        (fn() * grad).sum().backward()
        q.grad = k.grad = v.grad = None

    return step


def measure(cfg: Config, max_repeats: int) -> dict:
    """Time one config and measure its peak extra memory; runs in a fresh process."""
    torch.set_num_threads(THREADS)
    # An implementation's first call pages in kernel code and starts thread pools (~100 MiB of
    # RSS that is not the attention's own): make it on a tiny input before the baseline.
    tiny = replace(cfg, n=PRIME_N)
    _step(tiny, *_inputs(tiny))()
    q, k, v, grad = _inputs(cfg)
    baseline_kib = status_kib("VmRSS")
    peak_reset = reset_peak_rss()
    step = _step(cfg, q, k, v, grad)  # builds any dense mask: extra memory, not timed

    warmup_s = _seconds(step, 1)
    number = max(1, math.ceil(MIN_REPEAT_S / warmup_s))
    if warmup_s >= SINGLE_RUN_S:
        # Code and thread pools were primed at n=512 above; repeating a 10 s+ call would only
        # stretch the full run past an hour (the n=32768 configs alone take ~40 s per call).
        times = [warmup_s]
    else:
        repeats = max(2, min(max_repeats, int(REPEAT_BUDGET_S / (warmup_s * number))))
        times = [_seconds(step, number) for _ in range(repeats)]
    # Not ru_maxrss: Linux carries the parent's peak RSS into it across fork + exec, so a fresh
    # child started by a 350 MiB runner would report >= 350 MiB. VmHWM is this process's own.
    peak_kib = status_kib("VmHWM")
    picked = None
    if cfg.impl == "auto":
        picked = choose_backend(q, k, v, is_causal=cfg.mask == "causal",
                                window=cfg.window)
    return {
        "time_ms": statistics.median(times) * 1e3,
        "times_ms": [t * 1e3 for t in times],
        "warmup_ms": warmup_s * 1e3,
        "calls_per_repeat": number,
        "peak_extra_mib": (peak_kib - baseline_kib) / 1024,
        "baseline_rss_mib": baseline_kib / 1024,
        "peak_reset": peak_reset,
        "picked": picked,
    }


# ---------------------------------------------------------------- the runner


def run_config(cfg: Config, args) -> dict:
    """Run one config in a subprocess; skips, timeouts and crashes become records, not errors."""
    record = {**asdict(cfg), "estimate_gib": estimate_bytes(cfg) / GIB}
    if record["estimate_gib"] > args.max_gib:
        return {**record, "status": "skip",
                "reason": f"skip: would need {record['estimate_gib']:.1f} GiB"}
    command = [sys.executable, os.path.abspath(__file__), "--one", json.dumps(asdict(cfg)),
               "--repeats", str(args.repeats)]
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**record, "status": "failed", "reason": f"failed: timeout after {args.timeout:g} s",
                "wall_s": time.perf_counter() - start}
    record["wall_s"] = time.perf_counter() - start
    if done.returncode != 0:
        if done.returncode < 0:
            why = f"killed by {signal.Signals(-done.returncode).name}"
            if done.returncode == -signal.SIGKILL:
                why += " (out of memory?)"
        else:
            last = done.stderr.strip().splitlines()[-1:] or ["no output"]
            why = f"exit {done.returncode}: {last[0][:120]}"
        return {**record, "status": "failed", "reason": f"failed: {why}"}
    return {**record, "status": "ok", **json.loads(done.stdout.strip().splitlines()[-1])}


def check_agreement(configs: list[Config]) -> None:
    """Before timing, prove every implementation computes the same attention (n = 600 > window)."""
    torch.manual_seed(SEED)
    n = 600
    window_left = configs[0].window_left
    for dtype_name, mask in sorted({(c.dtype, c.mask) for c in configs}):
        dtype = DTYPES[dtype_name]
        q, k, v = (torch.randn(B, H, n, D, dtype=torch.float64) for _ in range(3))
        want = attention(q, k, v, is_causal=mask == "causal",
                         window=(window_left, 0) if mask == "window" else None,
                         backend="reference")
        tol = 1e-4 if dtype == torch.float32 else 3e-2
        for impl in sorted({c.impl for c in configs}):
            cfg = Config(impl, dtype_name, n, mask, "fwd", window_left)
            got = make_impl(cfg, q.to(dtype), k.to(dtype), v.to(dtype))().double()
            error = (got - want).abs().max().item()
            if not error <= tol:
                raise SystemExit(f"{impl} {dtype_name} {mask}: max error {error:.2e} > {tol:g}")


def cpu_model() -> str:
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _ratio(reference: float | None, value: float | None) -> str:
    if reference is None or value is None:
        return "—"
    return f"{reference / value:.2f}×"


def render(records: list[dict], command: str, max_repeats: int, load: float,
           window_left: int = WINDOW_LEFT) -> str:
    """The markdown report: machine, command, then one table row per config."""
    lines = [
        "# Attention benchmark",
        "",
        f"- Machine: {cpu_model()} ({os.cpu_count()} CPUs visible, "
        f"{torch.backends.cpu.get_cpu_capability()}), {THREADS} threads, "
        f"torch {torch.__version__}, Python {platform.python_version()}; load average "
        f"{load:.2f} before the run (other work on the machine makes timings noisy)",
        f"- Command: `{command}`",
        f"- Shapes: B={B}, H={H}, D={D}; window = {(window_left, 0)} (left, right). Time: median of 2 to "
        f"{max_repeats} repeats after a warm-up; a first call of {SINGLE_RUN_S:g} s or more is timed "
        f"once. Peak extra = peak RSS − RSS after creating "
        "q, k, v (dense masks count as extra), each config in a fresh process.",
        "- speed vs PyTorch = PyTorch time / impl time, memory vs PyTorch = PyTorch MiB / impl "
        "MiB (both: > 1 is better; memory under 1 MiB counts as 1 MiB).",
        "",
        "| dtype | n | mask | pass | impl | time (ms) | speed vs PyTorch | peak extra MiB "
        "| memory vs PyTorch |",
        "|---|---:|---|---|---|---:|---:|---:|---:|",
    ]
    torch_ok = {
        (r["dtype"], r["n"], r["mask"], r["pass_"]): r
        for r in records if r["impl"] == "torch" and r["status"] == "ok"
    }

    def order(r):
        return (list(DTYPES).index(r["dtype"]), r["n"], MASKS.index(r["mask"]),
                PASSES.index(r["pass_"]), IMPLS.index(r["impl"]))

    for r in sorted(records, key=order):
        impl = f"{r['impl']} → {r['picked']}" if r.get("picked") else r["impl"]
        cells = [r["dtype"], str(r["n"]), r["mask"], r["pass_"], impl]
        if r["status"] != "ok":
            cells += [r["reason"], "—", "—", "—"]
        else:
            ref = torch_ok.get((r["dtype"], r["n"], r["mask"], r["pass_"]))
            mib = max(r["peak_extra_mib"], 1.0)
            cells += [
                f"{r['time_ms']:.1f}" if r["time_ms"] >= 10 else f"{r['time_ms']:.2f}",
                _ratio(ref and ref["time_ms"], r["time_ms"]),
                f"{r['peak_extra_mib']:.0f}",
                _ratio(ref and max(ref["peak_extra_mib"], 1.0), mib),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _choices(allowed: tuple, cast=str):
    def parse(text: str) -> list:
        values = [cast(item) for item in text.split(",") if item]
        bad = [value for value in values if value not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"{bad} not in {list(allowed)}")
        return values

    return parse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=_choices(NS + LONG_NS + OTHER_NS, int), default=list(NS),
                        help=f"e.g. 512,2048 (default {','.join(map(str, NS))}; also "
                             f"{','.join(map(str, OTHER_NS + LONG_NS))})")
    parser.add_argument("--dtype", type=_choices(tuple(DTYPES)), default=list(DTYPES))
    parser.add_argument("--mask", type=_choices(MASKS), default=list(MASKS))
    parser.add_argument("--impl", type=_choices(IMPLS), default=list(IMPLS))
    parser.add_argument("--pass", dest="passes", type=_choices(PASSES), default=list(PASSES),
                        help="fwd, fwd+bwd or both")
    parser.add_argument("--window", type=int, default=WINDOW_LEFT, metavar="LEFT",
                        help="the window mask is (LEFT, 0): query i sees keys i-LEFT .. i")
    parser.add_argument("--repeats", type=int, default=5,
                        help="most timed repeats per config (long configs get fewer, at least 2)")
    parser.add_argument("--max-gib", type=float, default=16.0,
                        help="skip configs estimated to need more extra memory than this")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per config")
    parser.add_argument("--out", help="also write the markdown table to this file")
    parser.add_argument("--json", help="write the raw records to this file")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one config (JSON)
    args = parser.parse_args(argv)
    if args.window < 0:
        parser.error(f"--window must be >= 0, got {args.window}")

    if args.one:
        cfg = Config(**json.loads(args.one))
        print(json.dumps(measure(cfg, args.repeats)))
        return

    torch.set_num_threads(THREADS)
    command = shlex.join(["python", *sys.argv])
    configs = [
        Config(impl, dtype, n, mask, pass_, args.window)
        for n, dtype, mask, pass_, impl in itertools.product(
            args.n, args.dtype, args.mask, args.passes, args.impl)
    ]
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: load average {load:.2f}: other work will make the timings noisy",
              file=sys.stderr)
    check_agreement(configs)
    records = []
    for index, cfg in enumerate(configs, 1):
        record = run_config(cfg, args)
        records.append(record)
        result = (f"{record['time_ms']:.2f} ms, {record['peak_extra_mib']:.0f} MiB extra"
                  if record["status"] == "ok" else record["reason"])
        wall = f" [{record['wall_s']:.0f} s]" if "wall_s" in record else ""
        print(f"[{index}/{len(configs)}] {cfg.dtype} n={cfg.n} {cfg.mask} {cfg.pass_} "
              f"{cfg.impl}: {result}{wall}", file=sys.stderr, flush=True)
    report = render(records, command, args.repeats, load, args.window)
    print(report)
    if args.out:
        with open(args.out, "w") as out:
            out.write(report)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"command": command, "records": records}, out, indent=1)


if __name__ == "__main__":
    main()
