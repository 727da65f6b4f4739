"""What a training run tells the outside: ``metrics.jsonl``, a progress display, ``loss.png``.

``metrics.jsonl`` holds one JSON object per logged step and per evaluation, always with the keys
of :data:`METRIC_KEYS` (null where that step measured nothing of the kind)::

    {"step": 120, "loss": 2.31, "lr": 0.00098, "grad_norm": 0.84, "tokens_per_s": 12345.0,
     "val_loss": null, "elapsed_s": 83.2}

A task may add validation metrics of its own (``val_accuracy`` for image classification); they
follow the standard keys on the lines of evaluations. ``tokens_per_s`` counts the task's units
(tokens, or pictures for images).
``step`` counts optimizer steps done; ``loss`` is the mean training loss of the steps since the
previous line; ``elapsed_s`` is training time summed over every run that resumed this one.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import TextIO

from attnlab.files import write_text

METRIC_KEYS = ("step", "loss", "lr", "grad_norm", "tokens_per_s", "val_loss", "elapsed_s")


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a ``metrics.jsonl`` file (an empty list when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLog:
    """Appends records to ``metrics.jsonl``, one flushed line each, so a crash loses none."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def start(self, resumed_step: int | None) -> None:
        """Begin a fresh log, or (resuming) keep only the records up to ``resumed_step``: lines
        a crashed run wrote after its last checkpoint describe steps that will be redone."""
        kept = [] if resumed_step is None else [
            r for r in read_metrics(self.path) if r["step"] <= resumed_step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Atomically: a crash here must not lose the log of the run being resumed.
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def append(self, record: dict) -> None:
        extras = {key: value for key, value in record.items() if key not in METRIC_KEYS}
        line = json.dumps({**{key: record.get(key) for key in METRIC_KEYS}, **extras})
        with open(self.path, "a") as f:
            f.write(line + "\n")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def extra_metrics(record: dict) -> str:
    """A task's own metrics in ``record`` as text, e.g. ``val_accuracy 0.9012`` (empty if none)."""
    return "  ".join(f"{key} {value:.4f}" for key, value in record.items()
                     if key not in METRIC_KEYS and isinstance(value, float))


def format_record(record: dict, max_steps: int, unit: str = "tok") -> str:
    """One plain progress line, e.g. ``step 120/1000  loss 2.3100  lr 9.80e-04  grad 0.84
    12,345 tok/s  val 2.4012  0:01:23``, with only the parts the record has (``unit``: what
    the task counts)."""
    parts = [f"step {record['step']}/{max_steps}"]
    if record.get("loss") is not None:
        parts += [f"loss {record['loss']:.4f}", f"lr {record['lr']:.2e}", f"grad {record['grad_norm']:.2f}",
                  f"{record['tokens_per_s']:,.0f} {unit}/s"]
    if record.get("val_loss") is not None:
        parts.append(f"val {record['val_loss']:.4f}")
    if extra_metrics(record):
        parts.append(extra_metrics(record))
    parts.append(_clock(record["elapsed_s"]))
    return "  ".join(parts)


class ProgressDisplay:
    """A ``rich`` progress bar (step, loss, val loss, tokens/s, ETA) when ``stream`` is a
    terminal; otherwise one plain line per record. Silent when ``enabled`` is False (every rank
    but 0 of a multi-process run). ``unit`` names what the speed counts. Use as a context manager."""

    def __init__(self, *, max_steps: int, start_step: int, enabled: bool = True,
                 stream: TextIO | None = None, unit: str = "tok") -> None:
        self.max_steps, self.unit = max_steps, unit
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self._progress = None
        if enabled and self.stream.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("val {task.fields[val_loss]}"),
                TextColumn("{task.fields[extra]}"), TextColumn(f"{{task.fields[speed]}} {unit}/s"),
                TimeElapsedColumn(), TextColumn("ETA"),
                TimeRemainingColumn(), console=Console(file=self.stream),
            )
            self._task = self._progress.add_task("train", total=max_steps, completed=start_step,
                                                 loss="-", val_loss="-", speed="-", extra="")

    def __enter__(self) -> ProgressDisplay:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def set_total(self, max_steps: int) -> None:
        """Change the step the bar (and the plain lines) count towards, e.g. the estimate of a
        run that stops when its time budget is spent."""
        self.max_steps = max_steps
        if self._progress is not None:
            self._progress.update(self._task, total=max_steps)

    def advance(self, step: int) -> None:
        """Optimizer step ``step`` is done (moves the bar; plain mode waits for records)."""
        if self._progress is not None:
            self._progress.update(self._task, completed=step)

    def record(self, record: dict) -> None:
        """Show a metrics record (see :data:`METRIC_KEYS`)."""
        if self._progress is not None:
            fields = {}
            if record.get("loss") is not None:
                fields.update(loss=f"{record['loss']:.4f}", speed=f"{record['tokens_per_s']:,.0f}")
            if record.get("val_loss") is not None:
                fields["val_loss"] = f"{record['val_loss']:.4f}"
            if extra_metrics(record):
                fields["extra"] = extra_metrics(record)
            self._progress.update(self._task, **fields)
        elif self.enabled:
            print(format_record(record, self.max_steps, self.unit), file=self.stream, flush=True)

    def message(self, text: str) -> None:
        """A line of text (above the bar when there is one)."""
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        elif self.enabled:
            print(text, file=self.stream, flush=True)


def plot_loss_curve(records: list[dict], path: str | os.PathLike, *, title: str) -> Path:
    """Draw training and validation loss against the step into PNG ``path``; returns it.

    Drawn on a bare matplotlib ``Figure`` (the Agg renderer, no pyplot), so no window opens and
    the caller's matplotlib backend is left alone.
    """
    from matplotlib.figure import Figure

    train = [(r["step"], r["loss"]) for r in records
             if r.get("loss") is not None and math.isfinite(r["loss"])]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    figure = Figure(figsize=(7.5, 4.5), layout="constrained")
    axes = figure.add_subplot()
    if train:
        axes.plot(*zip(*train, strict=True), label="training loss", color="#4c72b0", linewidth=1.2)
    if val:
        axes.plot(*zip(*val, strict=True), label="validation loss", color="#dd8452", marker="o",
                  markersize=4, linewidth=1.5)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    handles, labels = axes.get_legend_handles_labels()
    accuracy = [(r["step"], 100 * r["val_accuracy"]) for r in records if r.get("val_accuracy") is not None]
    if accuracy:  # image classification: accuracy on a second axis
        right = axes.twinx()
        right.plot(*zip(*accuracy, strict=True), label="validation accuracy (%)", color="#55a868",
                   marker="s", markersize=4, linewidth=1.5)
        right.set_ylabel("validation accuracy (%)")
        more_handles, more_labels = right.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    if handles:
        axes.legend(handles, labels, loc="center right")
    path = Path(path)
    figure.savefig(path, dpi=120)
    return path
