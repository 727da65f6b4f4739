"""The learning-rate schedule: linear warmup, then cosine decay to a floor.

A pure function of the step (:func:`lr_at`), so a resumed run needs no scheduler state: the step
alone decides the learning rate. Runs with a time budget (``TrainConfig.budget_minutes``) decay
over the training time spent instead (:func:`lr_at_time`), which the checkpoints record.
"""

from __future__ import annotations

import math


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Learning rate for optimizer update ``step`` (0-based: the first update is step 0).

    Plainly::

        step < warmup_steps:        lr * (step + 1) / warmup_steps      rises to lr at warmup_steps - 1
        warmup_steps <= step:       progress = (step - warmup_steps) / (max_steps - 1 - warmup_steps)
                                    min_lr + (lr - min_lr) * (1 + cos(pi * progress)) / 2

    so the first update after warmup uses ``lr`` and the last one (``max_steps - 1``) uses
    ``min_lr`` exactly; steps past it stay at ``min_lr``. When warmup leaves fewer than two
    steps there is no decay and every step after warmup uses ``lr``.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = max_steps - 1 - warmup_steps
    if decay_steps <= 0:
        return lr
    return _cosine(min(1.0, (step - warmup_steps) / decay_steps), lr=lr, min_lr=min_lr)


def lr_at_time(step: int, elapsed_s: float, *, lr: float, min_lr: float, warmup_steps: int,
               budget_s: float, max_steps: int | None = None) -> float:
    """Learning rate for update ``step`` of a run with a time budget, after ``elapsed_s`` of its
    ``budget_s`` seconds of training. Warmup is as in :func:`lr_at`; after it the cosine follows
    the time spent, or the steps when ``max_steps`` would end the run first::

        progress = max(elapsed_s / budget_s, (step - warmup_steps) / (max_steps - 1 - warmup_steps))
        min_lr + (lr - min_lr) * (1 + cos(pi * min(1, progress))) / 2

    so the learning rate reaches ``min_lr`` at whichever limit comes first, however fast the
    machine. (Warmup takes a few percent of a budget, so the first update after it starts just
    below ``lr``: no extra state is needed to resume.)
    """
    if budget_s <= 0:
        raise ValueError(f"budget_s must be > 0, got {budget_s!r}")
    if step < warmup_steps:
        return lr_at(step, lr=lr, min_lr=min_lr, warmup_steps=warmup_steps, max_steps=warmup_steps)
    by_time = _cosine(min(1.0, max(0.0, elapsed_s / budget_s)), lr=lr, min_lr=min_lr)
    if max_steps is None:
        return by_time
    # The cosine falls as progress grows, so the further-along limit gives the smaller rate.
    return min(by_time, lr_at(step, lr=lr, min_lr=min_lr, warmup_steps=warmup_steps,
                              max_steps=max_steps))


def _cosine(progress: float, *, lr: float, min_lr: float) -> float:
    """From ``lr`` at progress 0 down to ``min_lr`` at progress 1, along half a cosine."""
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
