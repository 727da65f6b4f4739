"""The learning-rate schedule: linear warmup, then cosine decay to a floor.

A pure function of the step, so a resumed run needs no scheduler state: the step alone decides
the learning rate.
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
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
