"""One training loop for every attnlab model, with checkpoints that survive crashes.

``train(model, task, config, out_dir)`` trains any ``SafetensorsModel`` on any :class:`Task`
(AdamW with decay groups, warmup + cosine, clipping, accumulation, bf16, evaluation, a progress
bar, ``metrics.jsonl``, ``loss.png``), on one process or under ``torchrun`` with DDP.
``load_checkpoint(folder)`` reads back what it saved.
"""

from attnlab.train.checkpoint import (
    CheckpointError,
    LoadedCheckpoint,
    latest_checkpoint,
    load_checkpoint,
    seed_everything,
)
from attnlab.train.config import TrainConfig
from attnlab.train.loop import Task, TrainResult, train

__all__ = [
    "CheckpointError",
    "LoadedCheckpoint",
    "Task",
    "TrainConfig",
    "TrainResult",
    "latest_checkpoint",
    "load_checkpoint",
    "seed_everything",
    "train",
]
