"""Attention vs RNN, measured: speed, per-token generation latency and long-range recall of causal
self-attention against an LSTM, side by side in one run, on this machine's CPU.

Three parts (``--part``, default ``all``):

  speed       one causal ``MultiHeadAttention`` layer against one ``torch.nn.LSTM`` layer of the
              same width on ``(batch, n, dim)`` inputs: a training step (forward and backward of
              ``sum(output * grad)`` with a fixed random ``grad``; no optimizer, whose cost grows
              with the parameters, not with n) and an inference forward (``torch.no_grad``), for
              n = 256 .. 16384. One warm-up call, then the median of up to ``--repeats`` timed
              repeats, fewer when the warm-up says a measurement would pass ``--budget``
              seconds (never under 1); the two models alternate repeat by repeat.
  generation  the latency of producing one token: attention decodes one new token against a
              ``KVCache`` holding n tokens (the cache is refilled to exactly n before every
              timed call), the LSTM takes one step from its carried ``(h, c)``; median
              microseconds per token.
  recall      associative recall at a controlled distance d (see ``RecallTask``): four small
              models with about the same number of parameters, each trained for the same
              ``--train-seconds`` of compute on the same stream of sequences (every pair asked
              once, d uniform), then scored on a fixed held-out set per d (one query, at the
              end): full causal softmax attention, the same with a sliding window
              ``(--window, 0)``, the same with linear attention, and a 2-layer LSTM.

    python benchmarks/rnn_vs_attention.py --json /tmp/rnn.json --png /tmp/rnn-png
    python benchmarks/rnn_vs_attention.py --part speed --n 256,1024 --repeats 3
    python benchmarks/rnn_vs_attention.py --part recall --seeds 0,1,2   (mean and spread over seeds)
    python benchmarks/rnn_vs_attention.py --quick            (smoke run: small sizes, seconds)
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attnlab.attention import KVCache, MultiHeadAttention, choose_backend
from attnlab.explain.files import save_figure
from attnlab.files import write_atomically
from attnlab.models.blocks import FeedForward

THREADS = 2
SEED = 0
PARTS = ("speed", "generation", "recall")
NS = (256, 512, 1024, 2048, 4096, 8192, 16384)
QUICK_NS = (256, 512)
DISTANCES = (8, 16, 32, 64, 128, 256)
MIN_REPEAT_S = 0.05  # calls shorter than this are looped inside one timed repeat
MODELS = ("attention", "LSTM")
IGNORE = -100  # target at positions that are not queries (cross_entropy's ignore_index)


# ---------------------------------------------------------------- timing


def seconds_per_call(call: Callable[[], object], calls: int) -> float:
    """Mean seconds of ``calls`` back-to-back calls of ``call()``."""
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls


def time_side_by_side(calls: dict[str, Callable[[], object]], max_repeats: int,
                      budget_s: float) -> dict[str, list[float]]:
    """Seconds per call of each of ``calls``, repeat by repeat, the calls alternating.

    Each call gets one warm-up; from its duration, a call shorter than ``MIN_REPEAT_S`` is looped
    inside a repeat, and a call gets at most ``budget_s / warm-up`` repeats (at least 1, at most
    ``max_repeats``). Alternating keeps a burst of other work on the machine from landing on
    one model only.
    """
    plan = {}
    for name, call in calls.items():
        warmup = seconds_per_call(call, 1)
        loops = max(1, math.ceil(MIN_REPEAT_S / warmup))
        plan[name] = (loops, max(1, min(max_repeats, int(budget_s / (warmup * loops)))))
    times: dict[str, list[float]] = {name: [] for name in calls}
    for repeat in range(max(repeats for _, repeats in plan.values())):
        for name, call in calls.items():
            loops, repeats = plan[name]
            if repeat < repeats:
                times[name].append(seconds_per_call(call, loops))
    return times


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- part 1: speed


def speed_layers(dim: int, heads: int) -> dict[str, nn.Module]:
    """One causal self-attention layer and one LSTM layer, both ``(batch, n, dim) -> (batch, n, dim)``."""
    torch.manual_seed(SEED)
    attention_layer = MultiHeadAttention(dim, heads)
    lstm = nn.LSTM(dim, dim, batch_first=True)
    return {"attention": attention_layer, "LSTM": lstm}


def layer_forward(name: str, layer: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x (batch, n, dim) -> (batch, n, dim)``: attention with ``is_causal=True``, the LSTM's
    outputs (its final ``(h, c)`` dropped)."""
    if name == "attention":
        return lambda x: layer(x, is_causal=True)
    return lambda x: layer(x)[0]


def train_call(forward: Callable, layer: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> Callable:
    """One training step without optimizer: forward and backward of ``sum(forward(x) * grad)``."""

    def step() -> None:
        (forward(x) * grad).sum().backward()
        layer.zero_grad(set_to_none=True)

    return step


def infer_call(forward: Callable, x: torch.Tensor) -> Callable:
    def step() -> None:
        with torch.no_grad():
            forward(x)

    return step


def measure_speed(ns: list[int], dim: int, heads: int, batch: int, repeats: int,
                  budget_s: float) -> dict:
    """Training-step and inference milliseconds of both layers for each n."""
    layers = speed_layers(dim, heads)
    forwards = {name: layer_forward(name, layer) for name, layer in layers.items()}
    rows = []
    for n in ns:
        generator = torch.Generator().manual_seed(SEED + n)
        x = torch.randn(batch, n, dim, generator=generator)
        grad = torch.randn(batch, n, dim, generator=generator)
        row = {"n": n}
        for pass_ in ("train", "infer"):
            calls = {name: (train_call(forwards[name], layers[name], x, grad) if pass_ == "train"
                            else infer_call(forwards[name], x))
                     for name in MODELS}
            times = time_side_by_side(calls, repeats, budget_s)
            for name in MODELS:
                row[f"{name}_{pass_}_ms"] = 1e3 * statistics.median(times[name])
                row[f"{name}_{pass_}_all_ms"] = [1e3 * t for t in times[name]]
            log(f"speed n={n} {pass_}: attention {row[f'attention_{pass_}_ms']:.2f} ms, "
                f"LSTM {row[f'LSTM_{pass_}_ms']:.2f} ms")
        rows.append(row)
    probe = torch.zeros(batch, heads, ns[0], dim // heads)
    return {
        "rows": rows,
        "parameters": {name: count_parameters(layer) for name, layer in layers.items()},
        "attention_backend": choose_backend(probe, probe, probe, is_causal=True),
    }


# ---------------------------------------------------------------- part 2: generation


def time_single_calls(call: Callable[[], object], prepare: Callable[[], object], samples: int,
                      budget_s: float) -> list[float]:
    """Seconds of up to ``samples`` single calls of ``call()`` (after one warm-up), each preceded
    by an untimed ``prepare()``; stops early once the timed calls pass ``budget_s`` seconds."""
    prepare()
    call()
    times: list[float] = []
    while len(times) < samples and sum(times) < budget_s:
        prepare()
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def attention_decoder(layer: MultiHeadAttention, n: int, generator: torch.Generator):
    """``(prepare, call)``: ``prepare`` resets a ``KVCache`` to hold exactly the keys and values of
    ``n`` random tokens, ``call`` decodes one new token ``(1, 1, dim)`` against it (``n + 1`` keys)."""
    dim, heads = layer.embed_dim, layer.num_kv_heads
    cache = KVCache(1, heads, n + 1, layer.head_dim)
    with torch.no_grad():
        layer(torch.randn(1, n, dim, generator=generator), cache=cache, is_causal=True)
    keys, values = (t.clone() for t in cache.filled())  # (1, heads, n, head_dim)
    token = torch.randn(1, 1, dim, generator=generator)

    def prepare() -> None:
        cache.reset()
        cache.append(keys, values)

    def call() -> None:
        with torch.no_grad():
            layer(token, cache=cache, is_causal=True)

    return prepare, call


def lstm_stepper(lstm: nn.LSTM, generator: torch.Generator):
    """``(prepare, call)``: ``call`` runs one LSTM step on a ``(1, 1, dim)`` token from the carried
    ``(h, c)`` (each ``(1, 1, dim)``), whatever the context length; ``prepare`` does nothing."""
    dim = lstm.hidden_size
    token = torch.randn(1, 1, dim, generator=generator)
    state = [(torch.zeros(1, 1, dim), torch.zeros(1, 1, dim))]

    def call() -> None:
        with torch.no_grad():
            _, state[0] = lstm(token, state[0])

    return (lambda: None), call


def measure_generation(ns: list[int], dim: int, heads: int, samples: int, budget_s: float) -> dict:
    """Median microseconds to produce one token with n tokens of context, both models, each n."""
    layers = speed_layers(dim, heads)
    rows = []
    for n in ns:
        generator = torch.Generator().manual_seed(SEED + n)
        runners = {"attention": attention_decoder(layers["attention"], n, generator),
                   "LSTM": lstm_stepper(layers["LSTM"], generator)}
        row = {"n": n}
        for name in MODELS:
            prepare, call = runners[name]
            times = time_single_calls(call, prepare, samples, budget_s)
            row[f"{name}_us"] = 1e6 * statistics.median(times)
            row[f"{name}_samples"] = len(times)
        log(f"generation n={n}: attention {row['attention_us']:.0f} µs/token, "
            f"LSTM {row['LSTM_us']:.0f} µs/token")
        rows.append(row)
    return {"rows": rows}


# ---------------------------------------------------------------- part 3: recall


@dataclass(frozen=True)
class RecallTask:
    """Associative recall with the answer a chosen distance back.

    Every position holds two tokens: a *key slot* (a key ``[0, keys)`` or a filler
    ``[keys, keys + fillers)``) and a *value slot* (a value ``[0, values)``, :attr:`blank` or
    :attr:`query`). A sequence of ``seq_len`` positions is filler positions (value slot blank)
    with ``pairs`` key–value pairs among them (key slot a key, value slot its value; the pairs'
    keys are all different), and ends with a query at the last position ``seq_len - 1``: a key
    in the key slot and :attr:`query` in the value slot. The query's key appears exactly once
    before, at position ``seq_len - 1 - d``; the target is the value stored there. The other
    pairs sit at random places, before or after the answer.

    Putting a pair in one position makes the lookup one content match (the query's key against
    every earlier key slot), which one softmax attention layer can learn within a couple of
    minutes here; written as two tokens in a row, it needs a two-layer "induction" circuit that
    did not form within the time budget when this benchmark was designed.
    """

    keys: int = 16
    values: int = 16
    fillers: int = 16
    pairs: int = 8
    seq_len: int = 300

    @property
    def blank(self) -> int:
        """Value-slot token of filler positions."""
        return self.values

    @property
    def query(self) -> int:
        """Value-slot token of a query position."""
        return self.values + 1

    @property
    def key_vocab(self) -> int:
        return self.keys + self.fillers

    @property
    def value_vocab(self) -> int:
        return self.values + 2

    @property
    def max_distance(self) -> int:
        return self.seq_len - 1

    def _fillers(self, batch: int, rng: np.random.Generator) -> np.ndarray:
        """``(batch, seq_len, 2)`` filler positions: a random filler key, a blank value."""
        tokens = np.empty((batch, self.seq_len, 2), dtype=np.int64)
        tokens[..., 0] = rng.integers(self.keys, self.key_vocab, size=(batch, self.seq_len))
        tokens[..., 1] = self.blank
        return tokens

    def sample(self, distances: list[int], rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens, targets)``: ``(batch, seq_len, 2)`` int64 tokens and ``(batch,)`` value
        indices, one sequence per entry of ``distances`` (each in ``[1, seq_len - 1]``)."""
        last = self.seq_len - 1
        tokens = self._fillers(len(distances), rng)
        targets = np.empty(len(distances), dtype=np.int64)
        for row, d in enumerate(distances):
            if not 1 <= d <= self.max_distance:
                raise ValueError(f"distance d={d} must be in [1, {self.max_distance}] for "
                                 f"seq_len={self.seq_len}")
            pair_keys = rng.permutation(self.keys)[: self.pairs]  # distinct: the query's appears once
            pair_values = rng.integers(self.values, size=self.pairs)
            others = rng.permutation(np.setdiff1d(np.arange(last), [last - d]))[: self.pairs - 1]
            for position, key, value in zip([last - d, *others], pair_keys, pair_values, strict=True):
                tokens[row, position] = key, value
            tokens[row, last] = pair_keys[0], self.query
            targets[row] = pair_values[0]
        return torch.from_numpy(tokens), torch.from_numpy(targets)

    def sample_training(self, batch: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens, targets)``, ``(batch, seq_len, 2)`` and ``(batch, seq_len)`` int64:
        sequences with ``pairs`` pairs in which *every* pair's key comes back once later as a
        query, ``d`` positions after it (``d`` uniform over ``[1, seq_len - 1]``, as many as fit).
        ``targets`` holds the value at each query position and ``IGNORE`` elsewhere. The
        evaluation's sequence is the special case with one query, at the end; asking every pair
        gives ``pairs`` answers to learn from per sequence instead of one."""
        tokens = self._fillers(batch, rng)
        targets = np.full((batch, self.seq_len), IGNORE, dtype=np.int64)
        for row in range(batch):
            taken: set[int] = set()
            for key, value in zip(rng.permutation(self.keys)[: self.pairs],
                                  rng.integers(self.values, size=self.pairs), strict=True):
                query, pair = self._place(taken, rng)
                tokens[row, pair], tokens[row, query] = (key, value), (key, self.query)
                targets[row, query] = value
        return torch.from_numpy(tokens), torch.from_numpy(targets)

    def _place(self, taken: set[int], rng: np.random.Generator) -> tuple[int, int]:
        """``(query, pair)`` positions for one more asked pair, ``query - pair = d`` with ``d``
        uniform over ``[1, seq_len - 1]``, clear of the positions in ``taken`` (then added to it)."""
        while True:
            d = int(rng.integers(1, self.seq_len))
            query = int(rng.integers(d, self.seq_len))
            if query not in taken and query - d not in taken:
                taken.update((query, query - d))
                return query, query - d


class PairEmbedding(nn.Module):
    """``(batch, seq, 2)`` key-slot and value-slot tokens -> ``(batch, seq, dim)``: the sum of
    their two embeddings."""

    def __init__(self, task: RecallTask, dim: int) -> None:
        super().__init__()
        self.key = nn.Embedding(task.key_vocab, dim)
        self.value = nn.Embedding(task.value_vocab, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.key(tokens[..., 0]) + self.value(tokens[..., 1])


class CausalBlock(nn.Module):
    """Pre-LayerNorm causal block: ``x + attn(LN(x))``, then ``x + ffn(LN(x))``;
    ``(batch, seq, dim) -> (batch, seq, dim)``. ``window`` and ``linear`` go to
    ``MultiHeadAttention``."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, *,
                 window: tuple[int, int] | None = None, linear: bool = False) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads, window=window, linear=linear)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), is_causal=True)
        return x + self.ffn(self.ffn_norm(x))


class AttentionRecaller(nn.Module):
    """Pair embeddings, ``layers`` causal blocks, a final LayerNorm and a linear read-out of every
    position: ``(batch, seq, 2) int64 -> (batch, seq, values)`` logits.

    No position encoding: the lookup is by content (the query's key against earlier key slots),
    and the causal mask alone tells a position what came before it. A position table would only
    add something to learn to ignore.
    """

    def __init__(self, task: RecallTask, dim: int, heads: int, layers: int, *,
                 window: tuple[int, int] | None = None, linear: bool = False) -> None:
        super().__init__()
        self.embed = PairEmbedding(task, dim)
        self.blocks = nn.ModuleList(CausalBlock(dim, heads, 4 * dim, window=window, linear=linear)
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, task.values)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)  # (batch, seq, dim)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


class LSTMRecaller(nn.Module):
    """Pair embeddings (width ``hidden``), a ``layers``-deep LSTM and a linear read-out of every
    position: ``(batch, seq, 2) int64 -> (batch, seq, values)`` logits."""

    def __init__(self, task: RecallTask, hidden: int, layers: int) -> None:
        super().__init__()
        self.embed = PairEmbedding(task, hidden)
        self.lstm = nn.LSTM(hidden, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, task.values)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        outputs, _ = self.lstm(self.embed(tokens))  # (batch, seq, hidden)
        return self.head(outputs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def matched_lstm_hidden(task: RecallTask, layers: int, target: int) -> int:
    """The LSTM width whose parameter count is closest to ``target`` (bisection: the count grows
    with the width)."""
    def size(hidden: int) -> int:
        return count_parameters(LSTMRecaller(task, hidden, layers))

    low, high = 1, 1
    while size(high) < target:
        low, high = high, 2 * high
    while high - low > 1:  # size(low) < target <= size(high), or low == high == 1
        middle = (low + high) // 2
        low, high = (middle, high) if size(middle) < target else (low, middle)
    return min(low, high, key=lambda hidden: abs(size(hidden) - target))


@dataclass(frozen=True)
class RecallSetup:
    """Sizes shared by the four recall models (2 layers each, so they compare like for like)."""

    dim: int = 64
    heads: int = 4
    layers: int = 2
    window: int = 32
    batch: int = 32
    lr: float = 3e-3
    warmup_steps: int = 50


def recall_models(task: RecallTask, setup: RecallSetup, seed: int = SEED) -> dict[str, nn.Module]:
    """The four models, each from ``seed``; the LSTM sized to match the attention models."""
    builders = {
        "full attention": lambda: AttentionRecaller(task, setup.dim, setup.heads, setup.layers),
        f"window {setup.window}": lambda: AttentionRecaller(task, setup.dim, setup.heads, setup.layers,
                                                            window=(setup.window, 0)),
        "linear attention": lambda: AttentionRecaller(task, setup.dim, setup.heads, setup.layers,
                                                      linear=True),
    }
    models = {}
    for name, build in builders.items():
        torch.manual_seed(seed)
        models[name] = build()
    hidden = matched_lstm_hidden(task, setup.layers, count_parameters(models["full attention"]))
    torch.manual_seed(seed)
    models[f"LSTM {hidden}"] = LSTMRecaller(task, hidden, setup.layers)
    return models


def train_for(model: nn.Module, task: RecallTask, setup: RecallSetup, seconds: float, name: str,
              seed: int = SEED) -> dict:
    """Train ``model`` with AdamW (linear warm-up, then constant) on fresh
    :meth:`RecallTask.sample_training` batches until its steps have taken ``seconds`` (drawing
    the data is not counted). Every model sees the same stream of batches from ``seed``;
    they differ in how far into it they get."""
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=setup.lr, weight_decay=0.0)
    model.train()
    spent, step, losses, next_report = 0.0, 0, [], 10.0
    while spent < seconds:
        tokens, targets = task.sample_training(setup.batch, rng)
        for group in optimizer.param_groups:
            group["lr"] = setup.lr * min(1.0, (step + 1) / setup.warmup_steps)
        start = time.perf_counter()
        loss = F.cross_entropy(model(tokens).flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        spent += time.perf_counter() - start
        step += 1
        losses.append(loss.item())
        if spent >= next_report:
            log(f"recall {name}: {spent:.0f} s, step {step}, loss {statistics.mean(losses[-50:]):.3f}")
            next_report += 10.0
    return {"steps": step, "seconds": spent, "final_loss": statistics.mean(losses[-50:])}


def held_out_sets(task: RecallTask, distances: list[int], count: int) -> dict[int, tuple]:
    """``count`` fixed sequences per distance, from seeds the training stream never uses."""
    return {d: task.sample([d] * count, np.random.default_rng([SEED, 1, d])) for d in distances}


def accuracy(model: nn.Module, tokens: torch.Tensor, targets: torch.Tensor, batch: int = 100) -> float:
    """Fraction of ``(count, seq)`` sequences whose argmax prediction equals its ``(count,)`` target."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for first in range(0, len(tokens), batch):
            logits = model(tokens[first:first + batch])[:, -1]  # the query is the last token
            correct += (logits.argmax(-1) == targets[first:first + batch]).sum().item()
    return correct / len(tokens)


def measure_recall(distances: list[int], train_seconds: float, eval_sequences: int, window: int,
                   task: RecallTask | None = None, seeds: list[int] | tuple[int, ...] = (SEED,)) -> dict:
    """Train the four models for the same time, then their held-out accuracy per distance; once
    per seed (the weights and the training stream change with it, the held-out sets do not).

    Each model's ``accuracy`` is the mean over the seeds per distance, ``accuracy_min`` and
    ``accuracy_max`` the spread, ``runs`` every seed's own result.
    """
    task = task or RecallTask()
    setup = RecallSetup(window=window)
    held_out = held_out_sets(task, distances, eval_sequences)
    runs: dict[str, list[dict]] = {}
    for seed in seeds:
        for name, model in recall_models(task, setup, seed).items():
            log(f"recall {name}, seed {seed}: {count_parameters(model):,} parameters, "
                f"training {train_seconds:g} s")
            training = train_for(model, task, setup, train_seconds, name, seed)
            scores = {str(d): accuracy(model, *held_out[d]) for d in distances}
            log(f"recall {name}, seed {seed}: {training['steps']} steps, accuracy "
                + ", ".join(f"d={d} {score:.2f}" for d, score in scores.items()))
            runs.setdefault(name, []).append({"seed": seed, "parameters": count_parameters(model),
                                              **training, "accuracy": scores})
    results = {}
    for name, per_seed in runs.items():
        by_d = {str(d): [run["accuracy"][str(d)] for run in per_seed] for d in distances}
        results[name] = {
            "parameters": per_seed[0]["parameters"],
            "steps": statistics.mean(run["steps"] for run in per_seed),
            "seconds": statistics.mean(run["seconds"] for run in per_seed),
            "final_loss": statistics.mean(run["final_loss"] for run in per_seed),
            "accuracy": {d: statistics.mean(values) for d, values in by_d.items()},
            "accuracy_min": {d: min(values) for d, values in by_d.items()},
            "accuracy_max": {d: max(values) for d, values in by_d.items()},
            "runs": per_seed,
        }
    return {"task": asdict(task), "setup": asdict(setup), "distances": distances,
            "eval_sequences": eval_sequences, "train_seconds": train_seconds, "seeds": list(seeds),
            "chance": 1 / task.values, "models": results}


# ---------------------------------------------------------------- report


def ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}"


def speed_tables(speed: dict, args) -> str:
    params = speed["parameters"]
    lines = [f"## Speed: one layer, dim {args.dim}, {args.heads} heads, batch {args.batch}, float32, "
             f"{args.threads} threads, median of up to {args.repeats} repeats",
             "",
             f"Causal `MultiHeadAttention` ({params['attention']:,} parameters, backend "
             f"`{speed['attention_backend']}`) vs `nn.LSTM` ({params['LSTM']:,} parameters). "
             "train = forward + backward of sum(output * grad), no optimizer step; "
             "infer = forward under `torch.no_grad()`. ratio = attention ÷ LSTM (< 1: attention faster).",
             ""]
    for pass_ in ("train", "infer"):
        lines += [f"| n | {pass_}: attention ms | {pass_}: LSTM ms | ratio |", "|---:|---:|---:|---:|"]
        for row in speed["rows"]:
            attention_ms, lstm_ms = row[f"attention_{pass_}_ms"], row[f"LSTM_{pass_}_ms"]
            lines.append(f"| {row['n']} | {attention_ms:.2f} | {lstm_ms:.2f} | "
                         f"{ratio(attention_ms, lstm_ms)} |")
        lines.append("")
    lines.append("Why: attention handles all n positions at once, as a few large matrix products that "
                 "keep every core busy, but it scores every pair of positions, so its work grows as "
                 "O(n²·d) and doubling n eventually quadruples its time. The LSTM does only O(n·d²) "
                 "work, but step t needs the state of step t−1: its n steps run one after another as "
                 "small matrix products, so its time grows linearly from a high cost per position.")
    return "\n".join(lines)


def generation_table(generation: dict, args) -> str:
    lines = [f"## Generation: time to produce one token with n tokens of context, dim {args.dim}, "
             f"{args.heads} heads, batch 1",
             "",
             "attention = one new token against a KV cache of n tokens (n + 1 keys); LSTM = one step "
             "from the carried (h, c). ratio = attention ÷ LSTM.",
             "",
             "| n | attention µs/token | LSTM µs/token | ratio |", "|---:|---:|---:|---:|"]
    for row in generation["rows"]:
        lines.append(f"| {row['n']} | {row['attention_us']:.0f} | {row['LSTM_us']:.0f} | "
                     f"{ratio(row['attention_us'], row['LSTM_us'])} |")
    lines += ["",
              "Why: each new token's query is scored against every cached key and reads every cached "
              "value, so attention's cost per token grows as O(n·d) and its cache holds 2·n·d numbers "
              "per layer. The LSTM carries only (h, c), 2·d numbers, and each step costs O(d²) "
              "whatever came before: constant time and memory per token."]
    return "\n".join(lines)


def recall_table(recall: dict) -> str:
    models, distances = recall["models"], recall["distances"]
    task, window = recall["task"], recall["setup"]["window"]
    lines = [f"## Recall: accuracy vs distance d, {recall['eval_sequences']} held-out sequences per d",
             "",
             f"Sequences of {task['seq_len']} positions, each holding a key slot and a value slot: "
             f"{task['pairs']} key–value pairs ({task['keys']} keys, {task['values']} values) among "
             f"filler positions; the last position asks for a key that appeared once, d positions "
             f"earlier; the model must output the value stored with it (chance "
             f"{recall['chance']:.3f}). Each model trained for {recall['train_seconds']:g} s of "
             f"compute on the same sequences, in which every pair is asked once, d positions later "
             f"(d uniform in [1, {task['seq_len'] - 1}]). Attention models: "
             f"{recall['setup']['layers']} pre-LN layers of width {recall['setup']['dim']}, "
             f"{recall['setup']['heads']} heads, no position encoding (the lookup is by content); "
             f"LSTM: {recall['setup']['layers']} layers, width chosen to match the parameters.",
             "",
             "| model | parameters | steps | final training loss |", "|---|---:|---:|---:|"]
    seeds = recall.get("seeds", [SEED])
    for name, result in models.items():
        lines.append(f"| {name} | {result['parameters']:,} | {result['steps']:,.0f} | "
                     f"{result['final_loss']:.3f} |")
    if len(seeds) > 1:
        lines += ["", f"Seeds {', '.join(map(str, seeds))}: steps and loss are means; each accuracy "
                  "is the mean over the seeds, with the lowest and highest seed in brackets."]

    def cell(result: dict, d: int) -> str:
        mean = f"{result['accuracy'][str(d)]:.3f}"
        if len(seeds) == 1:
            return mean
        return f"{mean} ({result['accuracy_min'][str(d)]:.3f}–{result['accuracy_max'][str(d)]:.3f})"

    lines += ["", "| d | " + " | ".join(models) + " |", "|---:|" + "---:|" * len(models)]
    for d in distances:
        lines.append(f"| {d} | " + " | ".join(cell(result, d) for result in models.values()) + " |")
    lines += ["",
              f"The window model's query sees keys at distance ≤ {window} in one layer and at most "
              f"{2 * window} through its two layers, so for d > {2 * window} the pair is out of "
              f"reach and that model can only guess (chance). "
              f"At d ≤ {window} the pair is inside the query's own window; in between, the answer "
              f"would have to be relayed by another position that cannot see the query yet. "
              "Full attention sees every earlier token; linear attention too, but through a "
              "running sum of fixed size (one matrix per head) that must hold every pair; the "
              "LSTM must carry the pairs in its fixed-size state across d steps."]
    return "\n".join(lines)


# ---------------------------------------------------------------- plots


def new_axes():
    """``(figure, axes)`` of one plot, the size every PNG here has."""
    from matplotlib import pyplot as plt

    return plt.subplots(figsize=(7, 4.5))


def save_plot(figure, axes, path: Path, **settings) -> None:
    """Apply ``axes.set(**settings)``, add the legend and grid, and save the PNG atomically."""
    axes.set(**settings)
    axes.legend(fontsize="small")
    axes.grid(True, which="both", alpha=0.3)
    save_figure(figure, path)


def plot_speed(speed: dict, path: Path) -> None:
    figure, axes = new_axes()
    ns = [row["n"] for row in speed["rows"]]
    for name, color in zip(MODELS, ("tab:blue", "tab:orange"), strict=True):
        for pass_, style in (("train", "-"), ("infer", "--")):
            axes.plot(ns, [row[f"{name}_{pass_}_ms"] for row in speed["rows"]], style, marker="o",
                      color=color, label=f"{name}, {pass_}")
    save_plot(figure, axes, path, xscale="log", yscale="log", xlabel="sequence length n",
              ylabel="milliseconds", title="One causal attention layer vs one LSTM layer")


def plot_generation(generation: dict, path: Path) -> None:
    figure, axes = new_axes()
    ns = [row["n"] for row in generation["rows"]]
    for name in MODELS:
        axes.plot(ns, [row[f"{name}_us"] for row in generation["rows"]], marker="o", label=name)
    save_plot(figure, axes, path, xscale="log", yscale="log", xlabel="tokens of context n",
              ylabel="µs per generated token", title="Generating one token: KV-cache attention vs LSTM step")


def plot_recall(recall: dict, path: Path) -> None:
    figure, axes = new_axes()
    distances = recall["distances"]
    # Models that score the same would hide each other: shrinking markers and line widths keep
    # every curve visible where they overlap (e.g. two models at 1.0 everywhere).
    styles = zip(("o", "s", "^", "D"), (11, 8, 6, 4), (4.0, 2.5, 1.5, 1.0), ("-", "--", "-.", ":"),
                 strict=True)
    for (name, result), (marker, size, width, line) in zip(recall["models"].items(), styles, strict=False):
        (drawn,) = axes.plot(distances, [result["accuracy"][str(d)] for d in distances], marker=marker,
                             markersize=size, linewidth=width, linestyle=line, label=name)
        if len(recall.get("seeds", [SEED])) > 1:  # the band from the lowest seed to the highest
            axes.fill_between(distances, [result["accuracy_min"][str(d)] for d in distances],
                              [result["accuracy_max"][str(d)] for d in distances],
                              color=drawn.get_color(), alpha=0.15, linewidth=0)
    axes.axhline(recall["chance"], color="grey", linestyle=":", label="chance")
    axes.axvline(2 * recall["setup"]["window"], color="grey", linestyle="--", linewidth=0.8,
                 label="window model's reach (2 layers)")
    pairs, keys = recall["task"]["pairs"], recall["task"]["keys"]
    axes.set_xscale("log")
    axes.set_xticks(distances, [str(d) for d in distances])
    save_plot(figure, axes, path, xlabel="distance d from the query back to its key", ylabel="accuracy",
              ylim=(-0.02, 1.05),
              title=f"Associative recall, {pairs} pairs of {keys} keys, "
                    f"{recall['train_seconds']:g} s of training")


# ---------------------------------------------------------------- command line


def int_list(text: str) -> list[int]:
    try:
        values = [int(item) for item in text.split(",") if item]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from error
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def seed_list(text: str) -> list[int]:
    try:
        values = [int(item) for item in text.split(",") if item]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from error
    if not values or min(values) < 0 or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct integers >= 0, got {text!r}")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=(*PARTS, "all"), default="all")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: n up to 512, 1 repeat, 3 s of recall training, 50 "
                             "held-out sequences per d (explicit flags still win)")
    parser.add_argument("--n", type=int_list, help=f"sequence lengths (default {','.join(map(str, NS))})")
    parser.add_argument("--dim", type=int, default=256, help="layer width (default 256)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    parser.add_argument("--batch", type=int, default=1, help="batch size for speed (default 1)")
    parser.add_argument("--repeats", type=int, help="most timed repeats per measurement (default 5)")
    parser.add_argument("--budget", type=float, default=20.0,
                        help="seconds one measurement may take before it gets fewer repeats (default 20)")
    parser.add_argument("--samples", type=int, help="timed tokens per n in generation (default 100)")
    parser.add_argument("--distances", type=int_list,
                        help=f"recall distances d (default {','.join(map(str, DISTANCES))})")
    parser.add_argument("--window", type=int, default=32,
                        help="the recall window model sees keys i-WINDOW .. i (default 32)")
    parser.add_argument("--keys", type=int, default=RecallTask.keys,
                        help=f"distinct recall keys (default {RecallTask.keys})")
    parser.add_argument("--pairs", type=int, default=RecallTask.pairs,
                        help=f"key-value pairs per recall sequence (default {RecallTask.pairs}; "
                             "more pairs fill a fixed-size state: linear attention's and the LSTM's)")
    parser.add_argument("--train-seconds", type=float, help="recall training seconds per model (default 120)")
    parser.add_argument("--eval-sequences", type=int, help="held-out recall sequences per d (default 500)")
    parser.add_argument("--seeds", type=seed_list, default=[SEED],
                        help=f"recall: train every model once per seed, report mean and spread "
                             f"(comma-separated, default {SEED})")
    parser.add_argument("--threads", type=int, default=THREADS, help=f"torch threads (default {THREADS})")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--png", metavar="DIR", help="also write one PNG per part into DIR")
    args = parser.parse_args(argv)
    quick = {"n": list(QUICK_NS), "repeats": 1, "samples": 5, "train_seconds": 3.0, "eval_sequences": 50}
    full = {"n": list(NS), "repeats": 5, "samples": 100, "train_seconds": 120.0, "eval_sequences": 500}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.distances is None:
        args.distances = list(DISTANCES)
    if min(args.dim, args.heads, args.batch, args.repeats, args.samples, args.eval_sequences,
           args.threads, args.window) < 1:
        parser.error("--dim, --heads, --batch, --repeats, --samples, --eval-sequences, --threads and "
                     "--window must be >= 1")
    if args.dim % args.heads:
        parser.error(f"--dim {args.dim} is not divisible by --heads {args.heads}")
    if args.train_seconds <= 0 or args.budget <= 0:
        parser.error("--train-seconds and --budget must be > 0")
    if not 1 <= args.pairs <= min(args.keys, RecallTask.seq_len // 4):
        parser.error(f"--pairs must be in [1, min(--keys, {RecallTask.seq_len // 4})], got "
                     f"{args.pairs} with --keys {args.keys}")
    if not 1 <= min(args.distances) <= max(args.distances) <= RecallTask().max_distance:
        parser.error(f"--distances must lie in [1, {RecallTask().max_distance}], got {args.distances}")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the chosen parts, print their tables, write ``--json`` / ``--png``; the results."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = PARTS if args.part == "all" else (args.part,)
    results: dict = {"threads": args.threads, "torch": torch.__version__,
                     "machine": platform.processor() or platform.machine(),
                     "argv": sys.argv[1:] if argv is None else list(argv)}
    tables, plots = [], []
    if "speed" in parts:
        results["speed"] = measure_speed(args.n, args.dim, args.heads, args.batch, args.repeats, args.budget)
        tables.append(speed_tables(results["speed"], args))
        plots.append((plot_speed, results["speed"], "speed.png"))
    if "generation" in parts:
        results["generation"] = measure_generation(args.n, args.dim, args.heads, args.samples, args.budget)
        tables.append(generation_table(results["generation"], args))
        plots.append((plot_generation, results["generation"], "generation.png"))
    if "recall" in parts:
        results["recall"] = measure_recall(args.distances, args.train_seconds, args.eval_sequences,
                                           args.window, RecallTask(keys=args.keys, pairs=args.pairs),
                                           seeds=args.seeds)
        tables.append(recall_table(results["recall"]))
        plots.append((plot_recall, results["recall"], "recall.png"))
    print("\n\n".join(tables))
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        folder = Path(args.png)
        folder.mkdir(parents=True, exist_ok=True)
        for plot, data, name in plots:
            plot(data, folder / name)
            log(f"wrote {folder / name}")
    if args.json:
        text = json.dumps(results, indent=1)
        write_atomically(Path(args.json), lambda temporary: temporary.write_text(text))
    return results


if __name__ == "__main__":
    main()
