"""What self-attention costs, in numbers: FLOPs, memory and time for one sequence length.

For ``layers`` layers of width ``d = heads * head_dim`` on ``batch`` sequences of ``n`` tokens
(forward pass, a multiply-add counted as 2 FLOPs):

=====================  ====================================  =================================
                       self-attention (naive or tiled)       LSTM of the same width
=====================  ====================================  =================================
FLOPs per layer        q,k,v,o projections ``8·B·n·d²``      4 gates from input and state
                       + scores and weighted sum             ``16·B·n·d²``
                       ``4·B·heads·n²·head_dim``
score memory           naive: ``B·heads·n²`` values          none (a ``B·2d`` state)
                       tiled: one score tile + 2 running
                       statistics per row: ``O(n)``
generation state       KV cache ``2·L·B·heads·n·head_dim``   ``2·L·B·d`` (constant in n)
=====================  ====================================  =================================

:func:`estimate` adds the time these FLOPs take at a rate measured on this machine
(:func:`calibrate`: a large matmul for attention, ``torch.nn.LSTM`` steps for the LSTM, which
runs one token after another) and the largest ``n`` whose memory fits in the available RAM.
Times are estimates from that rate, not measurements of the full computation.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
#: Score elements in one tile of the tiled kernel (its blocks are sized to about this many).
TILE_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class Shape:
    """The workload: ``seq_len`` tokens, ``batch`` sequences, ``layers`` layers of ``heads`` heads of
    ``head_dim``, values of ``dtype`` (``fp32``, ``bf16`` or ``fp16``)."""

    seq_len: int
    heads: int = 8
    head_dim: int = 64
    layers: int = 1
    batch: int = 1
    dtype: str = "fp32"

    def __post_init__(self) -> None:
        for name in ("seq_len", "heads", "head_dim", "layers", "batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a whole number > 0, got {value!r}")
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"dtype must be one of {sorted(DTYPE_BYTES)}, got {self.dtype!r}")
        limits = {"seq_len": 1 << 31, "heads": 4096, "head_dim": 4096, "layers": 10_000,
                  "batch": 1 << 20}
        for name, limit in limits.items():
            if getattr(self, name) > limit:
                raise ValueError(f"{name}={getattr(self, name):,} is beyond any real model "
                                 f"(limit {limit:,})")

    @property
    def width(self) -> int:
        return self.heads * self.head_dim

    @property
    def bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]


def attention_flops(shape: Shape, n: int | None = None) -> float:
    """Forward FLOPs of ``shape.layers`` self-attention layers over ``n`` tokens (default seq_len)."""
    n = shape.seq_len if n is None else n
    projections = 8 * shape.batch * n * shape.width ** 2
    scores = 4 * shape.batch * shape.heads * n * n * shape.head_dim
    return float(shape.layers * (projections + scores))


def lstm_flops(shape: Shape, n: int | None = None) -> float:
    """Forward FLOPs of ``shape.layers`` LSTM layers of width ``shape.width`` over ``n`` tokens."""
    n = shape.seq_len if n is None else n
    return float(shape.layers * 16 * shape.batch * n * shape.width ** 2)


def naive_score_bytes(shape: Shape, n: int | None = None) -> int:
    """The ``(batch, heads, n, n)`` score matrix of one layer (the weights take as much again)."""
    n = shape.seq_len if n is None else n
    return shape.batch * shape.heads * n * n * shape.bytes


def tiled_score_bytes(shape: Shape, n: int | None = None) -> int:
    """One score tile plus the running max and sum (fp32) of every query row, one layer."""
    n = shape.seq_len if n is None else n
    tile = min(TILE_ELEMENTS, shape.batch * shape.heads * n * n)
    return tile * shape.bytes + shape.batch * shape.heads * n * 2 * 4


def kv_cache_bytes(shape: Shape, n: int | None = None) -> int:
    """Keys and values of ``n`` tokens kept for generation, every layer."""
    n = shape.seq_len if n is None else n
    return 2 * shape.layers * shape.batch * shape.heads * n * shape.head_dim * shape.bytes


def lstm_state_bytes(shape: Shape) -> int:
    """The hidden and cell state an LSTM carries between steps, every layer."""
    return 2 * shape.layers * shape.batch * shape.width * shape.bytes


def activation_bytes(shape: Shape, n: int | None = None) -> int:
    """Token-sized tensors of one layer's forward (input, q, k, v, output): ``5·B·n·d`` values."""
    n = shape.seq_len if n is None else n
    return 5 * shape.batch * n * shape.width * shape.bytes


def available_memory_bytes() -> int:
    """``MemAvailable`` from ``/proc/meminfo`` (or total RAM from ``sysconf`` elsewhere)."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def largest_fitting(memory, budget: int) -> int:
    """The largest ``n`` with ``memory(n) <= budget`` (``memory`` increasing), by doubling and
    bisection; 0 when not even one token fits."""
    if memory(1) > budget:
        return 0
    low, high = 1, 2
    while memory(high) <= budget:
        low, high = high, high * 2
        if high > 1 << 40:
            return low
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if memory(middle) <= budget else (low, middle)
    return low


@dataclass(frozen=True)
class Calibration:
    """Measured rates on this machine: ``matmul_flops_per_s`` (a large matrix product, what
    attention and the projections mostly are) and ``lstm_flops_per_s`` (``torch.nn.LSTM`` stepping
    through a sequence, counted with :func:`lstm_flops`)."""

    matmul_flops_per_s: float
    lstm_flops_per_s: float
    threads: int


def calibrate(width: int, dtype: str = "fp32", seconds: float = 0.3) -> Calibration:
    """Measure :class:`Calibration` in about ``2 * seconds``."""
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    a = torch.randn(1024, 1024, dtype=torch_dtype)
    b = torch.randn(1024, 1024, dtype=torch_dtype)
    a @ b  # warm-up
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        runs += 1
    matmul_rate = runs * 2 * 1024 ** 3 / (time.perf_counter() - start)

    hidden = min(width, 2048)  # the rate of a wider LSTM is taken from this size
    lstm = torch.nn.LSTM(hidden, hidden).to(torch_dtype)
    tokens = torch.randn(32, 1, hidden, dtype=torch_dtype)
    with torch.inference_mode():
        lstm(tokens)  # warm-up
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            lstm(tokens)
            runs += 1
        elapsed = time.perf_counter() - start
    lstm_rate = runs * 16 * 32 * hidden ** 2 / elapsed
    return Calibration(matmul_rate, lstm_rate, torch.get_num_threads())


def estimate(shape: Shape, calibration: Calibration, memory_budget: int | None = None) -> dict:
    """Every figure of the module docstring for ``shape``, as a JSON-ready dict."""
    budget = available_memory_bytes() if memory_budget is None else memory_budget
    attention = attention_flops(shape)
    lstm = lstm_flops(shape)
    rows = {
        "naive attention": {
            "flops": attention,
            "score_memory_bytes": naive_score_bytes(shape),
            "generation_state_bytes": kv_cache_bytes(shape),
            "estimated_seconds": attention / calibration.matmul_flops_per_s,
            # scores and weights both live at once, plus the token-sized tensors
            "max_seq_len_in_ram": largest_fitting(
                lambda n: 2 * naive_score_bytes(shape, n) + activation_bytes(shape, n), budget),
        },
        "tiled attention": {
            "flops": attention,
            "score_memory_bytes": tiled_score_bytes(shape),
            "generation_state_bytes": kv_cache_bytes(shape),
            "estimated_seconds": attention / calibration.matmul_flops_per_s,
            "max_seq_len_in_ram": largest_fitting(
                lambda n: tiled_score_bytes(shape, n) + activation_bytes(shape, n), budget),
        },
        "LSTM": {
            "flops": lstm,
            "score_memory_bytes": 0,
            "generation_state_bytes": lstm_state_bytes(shape),
            "estimated_seconds": lstm / calibration.lstm_flops_per_s,
            # input and output sequences (the state is constant)
            "max_seq_len_in_ram": largest_fitting(
                lambda n: 2 * shape.batch * n * shape.width * shape.bytes + lstm_state_bytes(shape),
                budget),
        },
    }
    return {"shape": asdict(shape), "calibration": asdict(calibration),
            "memory_available_bytes": budget, "models": rows}


def human_bytes(count: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(count) < 1024 or unit == "PiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def human_flops(count: float) -> str:
    """``2.5e9`` -> ``"2.50 GFLOP"``."""
    if count < 1e3:
        return f"{count:.0f} FLOP"
    exponent = min(int(math.log10(count)) // 3, 6)
    return f"{count / 10 ** (3 * exponent):.2f} {' kMGTPE'[exponent]}FLOP"


def human_seconds(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    if seconds < 3600:
        return f"{seconds:.2f} s"
    return f"{seconds / 3600:.1f} h"
