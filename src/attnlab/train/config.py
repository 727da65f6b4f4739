"""``TrainConfig``: every knob of :func:`attnlab.train.train`, checked when it is built.

A config round-trips through JSON (``to_dict`` / ``from_dict``) because checkpoints store it in
``trainer_state.json``; resuming compares the saved config with the new one field by field.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

# Fields a resumed run may change without breaking "continue exactly": they decide how long to
# run and how often to look, not what each optimizer step computes.
RESUMABLE_CHANGES = frozenset(
    {"max_steps", "max_minutes", "budget_minutes", "eval_every", "eval_batches", "checkpoint_every",
     "keep_last", "log_every"}
)


@dataclass(kw_only=True)
class TrainConfig:
    """Hyperparameters and bookkeeping of one training run.

    Batches and steps:
        batch_size: items (e.g. token windows) per optimizer step *on each process*; the task's
            ``train_batch`` returns this many. With ``grad_accum > 1`` the loop cuts each batch
            into ``grad_accum`` micro-batches, so memory scales with ``batch_size / grad_accum``.
        block_size: tokens per item, read by the task (the loop itself does not use it).
        grad_accum: micro-batches per optimizer step; must divide ``batch_size``.
        max_steps: optimizer steps to reach; the run also stops after ``max_minutes`` of wall
            time (this call's, not counting earlier runs it resumed), whichever comes first.
        budget_minutes: a time budget for the whole run (counting the runs a resumed one
            continues, evaluations and checkpoints included). When set, the cosine decay follows
            the fraction of the budget spent instead of the step (:func:`~.schedule.lr_at_time`)
            and the run stops when the budget is spent, so a machine's whole budget is used
            whatever its speed. ``max_steps`` still caps it, and the decay then ends there. The
            price is exact reproducibility: which learning rate a step gets depends on how fast
            the steps ran.

    Optimizer (see :mod:`attnlab.train.optim`) and schedule (:mod:`~.schedule`):
        optimizer: ``"adamw"``, or ``"muon"``: Muon for the hidden weight matrices, its steps
            scaled to AdamW's size so that ``lr`` and the schedule serve both, and AdamW for
            embeddings, gains and biases.
        lr: peak learning rate, reached after ``warmup_steps`` linear warmup steps (a warmup
            longer than ``max_steps`` just never reaches it).
        min_lr: learning rate at the last step, after the cosine decay.
        weight_decay: applied to weight matrices only (the optim module states the rule).
        betas: AdamW's moment decay rates.
        grad_clip: clip the global gradient norm to this; ``None`` disables clipping (the norm
            is still measured and logged).
        bf16: run forward and loss under ``torch.autocast(dtype=torch.bfloat16)``.

    Bookkeeping (all in optimizer steps):
        eval_every / eval_batches: mean validation loss over the first ``eval_batches`` of the
            task's fixed validation batches, every ``eval_every`` steps and at the end.
        checkpoint_every / keep_last: save every ``checkpoint_every`` steps and at the end,
            keeping the newest ``keep_last`` complete checkpoints.
        log_every: a metrics line (and a plain progress line when stderr is not a terminal).
        seed: seeds torch, Python's ``random`` and numpy (rank ``r`` of a multi-process run
            uses ``seed + r``); the task derives its data order from it.
    """

    batch_size: int = 32
    block_size: int = 128
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    optimizer: str = "adamw"
    warmup_steps: int = 100
    max_steps: int = 1000
    max_minutes: float | None = None
    budget_minutes: float | None = None
    grad_clip: float | None = 1.0
    eval_every: int = 200
    eval_batches: int = 20
    checkpoint_every: int = 200
    keep_last: int = 3
    seed: int = 0
    bf16: bool = False
    log_every: int = 10

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        positive = ("batch_size", "block_size", "grad_accum", "max_steps", "eval_every",
                    "eval_batches", "checkpoint_every", "keep_last", "log_every")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"TrainConfig.{name} must be a whole number > 0, got {name}={value!r}")
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"TrainConfig.grad_accum={self.grad_accum} must divide batch_size={self.batch_size} "
                "(each optimizer step's batch is cut into grad_accum equal micro-batches)"
            )
        for name in ("seed", "warmup_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"TrainConfig.{name} must be a whole number >= 0, got {name}={value!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"TrainConfig.lr must be > 0, got lr={self.lr!r}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"TrainConfig.min_lr must be in [0, lr={self.lr}], got min_lr={self.min_lr!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got weight_decay={self.weight_decay!r}")
        if self.optimizer not in ("adamw", "muon"):
            raise ValueError(
                f"TrainConfig.optimizer must be 'adamw' or 'muon', got optimizer={self.optimizer!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"TrainConfig.betas must be two numbers in [0, 1), got betas={self.betas!r}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(
                f"TrainConfig.max_minutes must be > 0 or None (no time limit), "
                f"got max_minutes={self.max_minutes!r}"
            )
        if self.budget_minutes is not None and not (
                math.isfinite(self.budget_minutes) and self.budget_minutes > 0):
            raise ValueError(
                f"TrainConfig.budget_minutes must be > 0 or None (schedule by steps), "
                f"got budget_minutes={self.budget_minutes!r}"
            )
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(
                f"TrainConfig.grad_clip must be > 0 or None (no clipping), got grad_clip={self.grad_clip!r}"
            )

    def to_dict(self) -> dict:
        """JSON-ready fields (``betas`` as a list)."""
        data = asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """The inverse of :meth:`to_dict`; an unknown field raises ``ValueError`` naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    def resume_conflicts(self, saved: TrainConfig) -> list[str]:
        """``"name: saved -> now"`` for each field that differs from ``saved`` and would change
        what the resumed steps compute (fields outside :data:`RESUMABLE_CHANGES`)."""
        return [
            f"{f.name}: {getattr(saved, f.name)!r} -> {getattr(self, f.name)!r}"
            for f in fields(self)
            if f.name not in RESUMABLE_CHANGES and getattr(saved, f.name) != getattr(self, f.name)
        ]
