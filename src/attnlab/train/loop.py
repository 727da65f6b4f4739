"""One training loop for every attnlab model: :func:`train` a model on a :class:`Task`.

Each optimizer step, plainly::

    lr = lr_at(step)                                       warmup + cosine, from the step alone
                                                           (or lr_at_time with a time budget)
    batch = task.train_batch(step, rank, world_size)       the same data for the same step
    for micro in split(batch, grad_accum):                 equal slices along dim 0
        (task.loss(model, micro) * count(micro) / count(batch)).backward()
    grad_norm = clip_grad_norm_(params, grad_clip)
    AdamW step; step += 1
    log every log_every, evaluate every eval_every, checkpoint every checkpoint_every

Because the data of a step depends only on the step, and a checkpoint holds the weights, the
optimizer moments and every RNG state, a run that resumes from step N computes exactly what an
uninterrupted run computes after step N.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from attnlab.files import NotOursError, write_json, write_png, written_by_attnlab
from attnlab.models.checkpoint import SafetensorsModel
from attnlab.train.checkpoint import (
    CheckpointError,
    CheckpointWarning,
    capture_rng,
    checkpoint_folder,
    checkpoint_folders,
    latest_checkpoint,
    partial_checkpoints,
    restore_training_state,
    save_checkpoint,
    seed_everything,
)
from attnlab.train.config import TrainConfig
from attnlab.train.distributed import DistributedContext, setup_distributed
from attnlab.train.metrics import METRIC_KEYS, MetricsLog, ProgressDisplay, plot_loss_curve, read_metrics
from attnlab.train.optim import build_optimizer
from attnlab.train.schedule import lr_at, lr_at_time

METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "loss.png"
RUN_MARKER = ".attnlab-run"  # a JSON file that says: this folder is an attnlab training run
# The staging folders save_checkpoint makes (tempfile.mkdtemp: its prefix, then 8 random characters).
_OWN_PARTIAL = re.compile(r"\.tmp-(step-\d+|replaced)-[a-z0-9_]{8}")
_MAX_METRICS_LINE = 1 << 16


# ---------------------------------------------------------------------------------------------
# The run folder: attnlab writes only into its own, and replaces only what it wrote


def _own_partials(out_dir: Path) -> list[Path]:
    """Leftovers of this run's interrupted checkpoint saves: folders named as save_checkpoint
    names its staging folders (any other ``.tmp-*`` under ``checkpoints/`` is left alone)."""
    return [path for path in partial_checkpoints(out_dir)
            if _OWN_PARTIAL.fullmatch(path.name) and path.is_dir() and not path.is_symlink()]


def is_run_folder(out_dir: str | os.PathLike) -> bool:
    """Whether ``out_dir`` is an attnlab training run: it holds attnlab's :data:`RUN_MARKER`
    or, for a run from before the marker existed, checkpoints with attnlab's folder names."""
    out_dir = Path(out_dir)
    return (written_by_attnlab(out_dir / RUN_MARKER) or bool(checkpoint_folders(out_dir))
            or bool(_own_partials(out_dir)))


def _metrics_are_ours(path: Path) -> bool:
    """Whether ``metrics.jsonl`` holds nothing, or begins with a record that :class:`MetricsLog`
    wrote (a JSON object with every key of :data:`METRIC_KEYS`); reads one bounded line."""
    if path.is_symlink() or not path.is_file():
        return False
    with open(path, "rb") as file:
        first = file.readline(_MAX_METRICS_LINE)
        if not first.strip():
            return not file.read(1)  # an empty file holds nothing to lose
    try:
        record = json.loads(first)
    except ValueError:
        return False
    return isinstance(record, dict) and all(key in record for key in METRIC_KEYS)


def check_out_dir(out_dir: str | os.PathLike, *, force: bool = False) -> Path:
    """Raise unless :func:`train` may write into ``out_dir``; returns it as a ``Path``.

    ``out_dir`` must be new, empty, or an attnlab run (:func:`is_run_folder`), and its
    ``metrics.jsonl`` and ``loss.png``, when there, must be attnlab's: otherwise
    :class:`attnlab.files.NotOursError` (``NotADirectoryError`` when it is a file), one line.
    ``force`` accepts any folder and lets attnlab replace those two files.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir} is a file, not a folder")
    if force or not out_dir.is_dir():
        return out_dir
    if not is_run_folder(out_dir) and any(out_dir.iterdir()):
        raise NotOursError(f"{out_dir} is neither empty nor an attnlab training run; give a new or "
                           "empty folder, or use --force to add attnlab's files to it")
    for name, ours in ((METRICS_FILE, _metrics_are_ours), (CURVE_FILE, written_by_attnlab)):
        path = out_dir / name
        if (path.exists() or path.is_symlink()) and not ours(path):
            raise NotOursError(f"cannot write {path}: attnlab did not write the file there; "
                               "use --force to replace it")
    return out_dir


class Task(Protocol):
    """What :func:`train` needs to know about a problem: its data, its loss, its files.

    A batch is a tensor or a (nested) tuple, list or dict of tensors whose first dimension
    indexes items; the loop moves it to the device and, with ``grad_accum > 1``, slices it
    into micro-batches along that dimension (other values are passed to every slice).
    """

    def train_batch(self, step: int, rank: int, world_size: int) -> Any:
        """Rank ``rank``'s share of the batch of optimizer step ``step`` (0-based), a function of
        (seed, step, rank, world_size) only, so a resumed run sees the same data order."""

    def val_batches(self) -> Iterable[Any]:
        """The fixed validation batches; the loop uses the first ``config.eval_batches``."""

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """Scalar mean loss over the ``count(batch)`` units of ``batch``. ``model`` may be a
        ``DistributedDataParallel`` wrapper: call it, do not read its attributes."""

    def count(self, batch: Any) -> int:
        """Units (e.g. tokens) the loss of ``batch`` averages over, for throughput and for
        weighting micro-batches; must work on any slice of a batch."""

    def save_assets(self, folder: Path) -> None:
        """Write what a checkpoint needs besides the weights (e.g. the tokenizer) into ``folder``."""


@dataclass
class TrainResult:
    """How a :func:`train` call ended. ``elapsed_s`` is this call's wall time; the paths are the
    files rank 0 wrote (``checkpoint`` is None only if no checkpoint exists)."""

    final_step: int
    val_loss: float | None
    elapsed_s: float
    checkpoint: Path | None
    metrics_path: Path
    curve_path: Path | None


def _tree_map(fn: Callable[[torch.Tensor], torch.Tensor], batch: Any) -> Any:
    """``batch`` with ``fn`` applied to every tensor in it (through tuples, lists and dicts)."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, dict):
        return {key: _tree_map(fn, value) for key, value in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(_tree_map(fn, value) for value in batch))
    if isinstance(batch, list | tuple):
        return type(batch)(_tree_map(fn, value) for value in batch)
    return batch


def split_batch(batch: Any, parts: int) -> list[Any]:
    """``parts`` micro-batches: every tensor sliced along dim 0 (``torch.tensor_split``)."""
    if parts == 1:
        return [batch]

    def piece(index: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def cut(t: torch.Tensor) -> torch.Tensor:
            if t.dim() == 0 or t.shape[0] < parts:
                raise ValueError(f"cannot cut a batch tensor shaped {tuple(t.shape)} into "
                                 f"grad_accum={parts} micro-batches along its first dimension")
            return t.tensor_split(parts)[index]
        return cut

    return [_tree_map(piece(i), batch) for i in range(parts)]


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def accumulate_gradients(model: nn.Module, task: Task, batch: Any, grad_accum: int, *,
                         bf16: bool = False) -> tuple[float, int]:
    """Backpropagate ``batch`` in ``grad_accum`` micro-batches; returns (loss, count).

    Micro-batch ``i``'s loss is weighted by ``count_i / count`` so the summed gradients, and the
    returned loss, equal those of the whole batch at once (when the task's loss is a mean over
    ``count`` units). A DDP ``model`` all-reduces gradients only on the last micro-batch.
    """
    micro_batches = split_batch(batch, grad_accum)
    counts = [task.count(micro) for micro in micro_batches]
    total = sum(counts)
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    for index, (micro, count) in enumerate(zip(micro_batches, counts, strict=True)):
        last = index == len(micro_batches) - 1
        with nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync():
            with _autocast(device, bf16):
                loss = task.loss(model, micro)
            weighted = loss.float() * (count / total)
            weighted.backward()
        loss_sum += weighted.detach()
    return loss_sum.item(), total


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, batches: list, ctx: DistributedContext, *,
             bf16: bool = False) -> float:
    """Mean loss over ``batches`` (weighted by ``task.count``) in eval mode, then back to the
    model's previous mode. With several processes each rank takes every ``world_size``-th
    batch and the sums are all-reduced, so every rank returns the loss over all of them."""
    was_training = model.training
    model.eval()
    loss_sum, count_sum = 0.0, 0
    for index in range(ctx.rank, len(batches), ctx.world_size):
        batch = _tree_map(lambda t: t.to(ctx.device), batches[index])
        with _autocast(ctx.device, bf16):
            loss = task.loss(model, batch)
        count = task.count(batch)
        loss_sum += loss.float().item() * count
        count_sum += count
    model.train(was_training)
    loss_sum, count_sum = ctx.sum([loss_sum, count_sum])
    return loss_sum / count_sum


@torch.no_grad()
def evaluate_metrics(model: nn.Module, task: Task, batches: list, ctx: DistributedContext, *,
                     bf16: bool = False) -> dict[str, float]:
    """A task's own validation metrics, if it has ``val_metrics(model, batches) -> {name: (value,
    weight)}`` (e.g. accuracy and pictures): each rank scores every ``world_size``-th batch and the
    weighted means are combined across ranks. ``{}`` for a task without them."""
    hook = getattr(task, "val_metrics", None)
    if hook is None:
        return {}
    was_training = model.training
    model.eval()
    mine = [_tree_map(lambda t: t.to(ctx.device), batch) for batch in batches[ctx.rank::ctx.world_size]]
    with _autocast(ctx.device, bf16):
        results = hook(model, mine)
    model.train(was_training)
    combined = {}
    for name in sorted(results):  # every rank reduces the same names in the same order
        value, weight = results[name]
        total, weights = ctx.sum([value * weight, weight])
        combined[name] = total / weights if weights else float("nan")
    return combined


def _check_arguments(model: nn.Module, task: Task, config: TrainConfig, meta: dict | None) -> None:
    if not isinstance(model, SafetensorsModel) or not isinstance(model, nn.Module):
        raise TypeError(f"train needs an nn.Module that mixes in SafetensorsModel (checkpoints save it "
                        f"with model.save), got {type(model).__name__}")
    missing = [name for name in ("train_batch", "val_batches", "loss", "count", "save_assets")
               if not callable(getattr(task, name, None))]
    if missing:
        raise TypeError(f"task {type(task).__name__} lacks {', '.join(missing)} (see attnlab.train.Task)")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as error:
        raise TypeError(f"meta must be JSON-serialisable (checkpoints store it as JSON): {error}") from None


def train(model: nn.Module, task: Task, config: TrainConfig, out_dir: str | os.PathLike, *,
          resume: bool = False, meta: dict | None = None,
          device: str | torch.device | None = None, force: bool = False) -> TrainResult:
    """Train ``model`` on ``task`` and return how it ended; files go to ``out_dir``.

    ``out_dir`` receives ``checkpoints/step-*/`` (see :mod:`attnlab.train.checkpoint`),
    ``metrics.jsonl`` and ``loss.png`` (see :mod:`attnlab.train.metrics`) and the marker
    :data:`RUN_MARKER`. It must be new, empty or an attnlab run, and attnlab replaces only the
    files it wrote there (see :func:`check_out_dir`; ``force`` lifts both rules), else
    :class:`attnlab.files.NotOursError` is raised before anything is written. The model moves to
    ``device`` (default: CUDA when available, else CPU) and is left there in train mode.
    Seed the global RNGs (:func:`~attnlab.train.checkpoint.seed_everything`) before building
    the model for a reproducible initialisation; ``train`` seeds them again for the run.

    ``resume=True`` continues from the latest complete checkpoint in ``out_dir`` (printing
    ``resuming from step N`` to stderr) and raises :class:`CheckpointError` when there is none
    (the caller asked to continue something; silently starting over would hide a wrong path),
    or when the checkpoint's model, world size or step-defining config fields differ. Without
    ``resume``, an ``out_dir`` that already holds checkpoints is refused rather than mixed up.

    Under ``torchrun`` the process group is set up here (gloo on CPU, NCCL on CUDA), the model
    is wrapped in ``DistributedDataParallel``, each rank trains on its own data shard and only
    rank 0 writes files or shows progress. ``meta`` is stored in every checkpoint.
    """
    _check_arguments(model, task, config, meta)
    ctx = setup_distributed(device)
    try:
        return _Run(model, task, config, Path(out_dir), meta or {}, ctx, force).run(resume)
    finally:
        ctx.close()


def _expected_steps(step: int, steps_run: int, seconds_run: float, seconds_left: float,
                    max_steps: int) -> int:
    """Where a time-budgeted run will stop: ``step`` plus what the speed so far fits into the
    ``seconds_left`` (never past ``max_steps``)."""
    if steps_run <= 0 or seconds_run <= 0:
        return max_steps
    return min(max_steps, step + max(0, round(seconds_left * steps_run / seconds_run)))


class _Run:
    """The state of one :func:`train` call; ``run`` is the loop."""

    def __init__(self, model: nn.Module, task: Task, config: TrainConfig, out_dir: Path, meta: dict,
                 ctx: DistributedContext, force: bool) -> None:
        self.model, self.task, self.config, self.out_dir, self.meta, self.ctx, self.force = (
            model, task, config, out_dir, meta, ctx, force)
        self.model.to(ctx.device).train()
        self.optimizer = build_optimizer(model, lr=config.lr, weight_decay=config.weight_decay,
                                         betas=config.betas, device=ctx.device, kind=config.optimizer)
        self.metrics_path = out_dir / METRICS_FILE
        self.log = MetricsLog(self.metrics_path)
        self.step = 0
        self.elapsed_before = 0.0  # training seconds of the runs this one resumes
        self.val_loss: float | None = None
        self.last_loss: float | None = None
        self.lr = self.grad_norm = math.nan  # of the latest step
        self.last_eval_step = self.last_checkpoint_step = None
        self.checkpoint: Path | None = None
        self._reset_window()

    def _reset_window(self) -> None:
        """Start a new logging window: steps, summed loss, tokens and compute seconds since the last line."""
        self.window_steps, self.window_loss, self.window_tokens, self.window_seconds = 0, 0.0, 0, 0.0

    def _elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def _spent(self) -> float:
        """Training seconds of the whole run so far, the same on every rank (their mean), so
        that a time-budgeted schedule gives every rank the same learning rate."""
        return self.ctx.sum([self._elapsed()])[0] / self.ctx.world_size

    def _start(self, resume: bool, display: ProgressDisplay) -> None:
        """Check that ``out_dir`` may be written, restore the latest checkpoint (``resume``) or
        check that ``out_dir`` holds none, and seed."""
        check_out_dir(self.out_dir, force=self.force)  # every rank: it only reads
        if resume:
            with warnings.catch_warnings():
                if not self.ctx.is_main:  # one warning per run, not one per process
                    warnings.simplefilter("ignore", CheckpointWarning)
                latest = latest_checkpoint(self.out_dir)
            if latest is None:
                raise CheckpointError(
                    f"cannot resume: {self.out_dir / 'checkpoints'} holds no complete checkpoint "
                    "(train without resume to start from scratch)")
            state = restore_training_state(latest, self.model, self.optimizer, self.config,
                                           rank=self.ctx.rank, world_size=self.ctx.world_size)
            self.step = self.last_checkpoint_step = state["step"]
            self.checkpoint = latest
            metrics = state["metrics"]
            self.elapsed_before = metrics.get("elapsed_s", 0.0)
            self.val_loss, self.last_loss = metrics.get("val_loss"), metrics.get("loss")
            if metrics.get("val_step") == self.step:
                self.last_eval_step = self.step
            display.message(f"resuming from step {self.step} ({latest})")
        else:
            existing = checkpoint_folders(self.out_dir)
            if existing:
                raise CheckpointError(
                    f"{self.out_dir} already holds checkpoints (newest: {existing[0][1].name}); "
                    "pass resume=True to continue that run, or use another out_dir")
            seed_everything(self.config.seed + self.ctx.rank)
        # Every rank has read the folder before rank 0 writes into it: a rank still checking
        # would otherwise see rank 0's half-written marker (its temporary file) as a stranger's.
        self.ctx.barrier()
        if self.ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            marker = self.out_dir / RUN_MARKER
            if not written_by_attnlab(marker):
                write_json(marker, {"what": "an attnlab training run: checkpoints/, metrics.jsonl, loss.png"},
                           force=self.force)
            for partial in _own_partials(self.out_dir):
                shutil.rmtree(partial, ignore_errors=True)
            self.log.start(self.step if resume else None)
        self.ctx.barrier()

    def run(self, resume: bool) -> TrainResult:
        config, ctx = self.config, self.ctx
        # Read once: the validation batches are fixed, and re-reading them every eval is waste.
        self.val_batches = list(islice(self.task.val_batches(), config.eval_batches))
        if not self.val_batches:
            raise ValueError(f"task {type(self.task).__name__}.val_batches() yielded no batches")
        self.started = time.perf_counter()
        display = ProgressDisplay(max_steps=config.max_steps, start_step=self.step, enabled=ctx.is_main,
                                  unit=getattr(self.task, "count_unit", "tok"))
        with display:
            self._start(resume, display)
            train_model = self.model
            if ctx.distributed:
                train_model = nn.parallel.DistributedDataParallel(
                    self.model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
            display.advance(self.step)
            budget_s = None if config.budget_minutes is None else 60 * config.budget_minutes
            self.spent = self.elapsed_before
            first_step, first_spent = self.step, self.spent
            while self.step < config.max_steps and (budget_s is None or self.spent < budget_s):
                self._train_step(train_model)
                out_of_budget = False
                if budget_s is not None:
                    self.spent = self._spent()
                    out_of_budget = self.spent >= budget_s
                    display.set_total(_expected_steps(self.step, self.step - first_step,
                                                      self.spent - first_spent, budget_s - self.spent,
                                                      config.max_steps))
                display.advance(self.step)
                out_of_time = config.max_minutes is not None and ctx.any(
                    time.perf_counter() - self.started >= 60 * config.max_minutes)
                final = out_of_time or out_of_budget or self.step >= config.max_steps
                self._after_step(display, final)
                if out_of_time:
                    display.message(f"stopping at step {self.step}: max_minutes={config.max_minutes} reached")
                    break
                if out_of_budget:
                    display.message(f"stopping at step {self.step}: the budget of "
                                    f"{config.budget_minutes:g} minutes is spent")
        curve_path = self.out_dir / CURVE_FILE
        if ctx.is_main:
            title = f"{type(self.model).__name__} training"
            if "preset" in self.meta:
                title += f": {self.meta['preset']}"
            if self.val_loss is not None:
                title += f" (validation loss {self.val_loss:.4f} at step {self.last_eval_step})"
            records = read_metrics(self.metrics_path)
            write_png(curve_path, lambda temporary: plot_loss_curve(records, temporary, title=title),
                      force=self.force, what="the loss curve")
        return TrainResult(final_step=self.step, val_loss=self.val_loss,
                           elapsed_s=time.perf_counter() - self.started, checkpoint=self.checkpoint,
                           metrics_path=self.metrics_path, curve_path=curve_path)

    def _train_step(self, train_model: nn.Module) -> None:
        config = self.config
        began = time.perf_counter()
        if config.budget_minutes is None:
            lr = lr_at(self.step, lr=config.lr, min_lr=config.min_lr,
                       warmup_steps=config.warmup_steps, max_steps=config.max_steps)
        else:
            lr = lr_at_time(self.step, self.spent, lr=config.lr, min_lr=config.min_lr,
                            warmup_steps=config.warmup_steps, budget_s=60 * config.budget_minutes,
                            max_steps=config.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = _tree_map(lambda t: t.to(self.ctx.device),
                          self.task.train_batch(self.step, self.ctx.rank, self.ctx.world_size))
        loss, tokens = accumulate_gradients(train_model, self.task, batch, config.grad_accum,
                                            bf16=config.bf16)
        if not math.isfinite(loss):
            raise FloatingPointError(f"the training loss is {loss} at step {self.step + 1}; "
                                     f"try a lower lr (lr={config.lr}) or grad_clip")
        max_norm = config.grad_clip if config.grad_clip is not None else math.inf
        self.grad_norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.lr = lr
        self.window_steps += 1
        self.window_loss += loss
        self.window_tokens += tokens
        self.window_seconds += time.perf_counter() - began

    def _after_step(self, display: ProgressDisplay, final: bool) -> None:
        """Log, evaluate and checkpoint as the config's intervals (and the end of the run) ask."""
        config, step = self.config, self.step
        record = {"step": step}
        if step % config.log_every == 0 or (final and self.window_steps):
            loss_sum, steps = self.ctx.sum([self.window_loss, self.window_steps])
            self.last_loss = loss_sum / steps
            tokens_per_s = self.window_tokens * self.ctx.world_size / max(self.window_seconds, 1e-9)
            record.update(loss=self.last_loss, lr=self.lr, grad_norm=self.grad_norm,
                          tokens_per_s=tokens_per_s)
            self._reset_window()
        if step % config.eval_every == 0 or (final and self.last_eval_step != step):
            self.val_loss = evaluate(self.model, self.task, self.val_batches, self.ctx, bf16=config.bf16)
            self.last_eval_step = step
            record["val_loss"] = self.val_loss
            record.update(evaluate_metrics(self.model, self.task, self.val_batches, self.ctx,
                                           bf16=config.bf16))
        if len(record) > 1:
            record["elapsed_s"] = self._elapsed()
            if self.ctx.is_main:
                self.log.append(record)
            display.record(record)
        if step % config.checkpoint_every == 0 or (final and self.last_checkpoint_step != step):
            self._save_checkpoint(display)

    def _save_checkpoint(self, display: ProgressDisplay) -> None:
        rng_states = self.ctx.gather(capture_rng())  # every rank's streams, for an exact resume
        if self.ctx.is_main:
            metrics = {"loss": self.last_loss, "val_loss": self.val_loss, "val_step": self.last_eval_step,
                       "elapsed_s": self._elapsed()}
            self.checkpoint = save_checkpoint(
                self.out_dir, step=self.step, model=self.model, optimizer=self.optimizer,
                train_config=self.config, rng_states=rng_states, meta=self.meta, metrics=metrics,
                task=self.task, keep_last=self.config.keep_last)
            display.message(f"saved checkpoint {self.checkpoint}")
        else:
            self.checkpoint = checkpoint_folder(self.out_dir, self.step)
        self.last_checkpoint_step = self.step
        self.ctx.barrier()  # nobody reads or moves on before the checkpoint is in place
