"""Image classification for :func:`attnlab.train.train`: a :class:`~attnlab.models.vit.ViT` on
Fashion-MNIST or MNIST-5k.

:class:`ImageClassificationTask` is the :class:`attnlab.train.Task`. Each training batch is::

    images = the next batch_size pictures of this epoch's shuffled order    (batch, 1, 28, 28) uint8
    images = random_crop(images, crop_padding)                              shifted a few pixels
    images = Normalization(images)                                          float, ~zero mean, unit std
    labels                                                                  (batch,) int64

The epoch order is a permutation seeded by (seed, epoch) and the crops by (seed, step, rank), so
a batch depends on the step alone and a resumed run sees the same data. With several processes,
rank ``r`` takes the ``r``-th ``batch_size`` slice of each global batch.
Validation batches are the whole validation split, unaugmented; besides the loss the task reports
``val_accuracy`` (see :meth:`ImageClassificationTask.val_metrics`). The normalisation and class
names are saved beside every checkpoint (``preprocessing.json``) so ``attnlab classify`` prepares
a user's picture exactly as training did.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from attnlab.data.images import ImageDataset, Normalization, dataset_splits, random_crop
from attnlab.files import write_text
from attnlab.train.lm_task import batch_seed

PREPROCESSING_FILE = "preprocessing.json"
#: The "rank" argument of :func:`batch_seed` for epoch orders, which no process uses as a rank.
_ORDER_STREAM = 2 ** 31 - 1


@dataclass(frozen=True)
class ViTPreset:
    """A ViT training run: ``dataset`` (``"fashion-mnist"`` or ``"mnist-5k"``), ``model`` (a key
    of :data:`attnlab.models.vit.VIT_PRESETS`, with ``model_overrides``), ``val_fraction`` of the
    training data held out for validation, ``crop_padding`` pixels of random shift,
    ``label_smoothing``, and the :class:`attnlab.train.TrainConfig` fields ``train``."""

    name: str
    dataset: str
    model: str
    val_fraction: float
    crop_padding: int
    label_smoothing: float
    train: dict
    model_overrides: dict = field(default_factory=dict)

    def model_config(self, num_classes: int):
        from attnlab.models.vit import ViTConfig

        return ViTConfig.from_preset(self.model, num_classes=num_classes, **self.model_overrides)


#: ``tiny`` trains on MNIST-5k in about a minute on 2 CPU cores (for tests); ``fashion-mnist``
#: is sized for 20 minutes.
VIT_TRAIN_PRESETS: dict[str, ViTPreset] = {
    preset.name: preset for preset in (
        ViTPreset(
            name="tiny", dataset="mnist-5k", model="tiny", val_fraction=0.1, crop_padding=1,
            label_smoothing=0.0,
            train={"batch_size": 64, "lr": 2e-3, "min_lr": 2e-4, "warmup_steps": 40, "max_steps": 800,
                   "max_minutes": 1.0, "eval_every": 200, "eval_batches": 7, "checkpoint_every": 200,
                   "log_every": 20, "weight_decay": 0.05, "block_size": 1},
        ),
        ViTPreset(
            name="fashion-mnist", dataset="fashion-mnist", model="fashion-mnist", val_fraction=0.1,
            crop_padding=1, label_smoothing=0.1,
            # Chosen by validation accuracy over 41 runs on a borrowed GPU (benchmarks/vit_sweep.py;
            # 5 seeds of the first preset: 89.62% mean, 89.28-90.03%; see docs/benchmarks.md): 6x6
            # windows (patch_overlap 1, in VIT_PRESETS), peak learning rate 1.4e-3 instead of 2e-3
            # and shifts of 1 pixel instead of 2 each helped; together they reached 91.48%.
            # The schedule runs on a 20-minute time budget rather than a step count: the 2-core
            # machine's speed swings by +-15% within an hour, and a step count sized for its slow
            # hours left minutes unused in its fast ones (6,200 steps took 16.1 min). max_steps
            # only caps a much faster machine, and the decay then ends there (12,400 steps, twice
            # that run, reached 92.5%). bf16 autocast makes a step 1.47-1.61x faster on a CPU with
            # AVX-512 BF16, so 20 minutes hold about 10,500 steps instead of 6,600; `attnlab train`
            # falls back to fp32 where bf16 is not native (attnlab.train.precision).
            train={"batch_size": 128, "lr": 1.4e-3, "min_lr": 1e-5, "warmup_steps": 300,
                   "max_steps": 12400, "budget_minutes": 20.0, "eval_every": 620, "eval_batches": 47,
                   "checkpoint_every": 620, "log_every": 50, "weight_decay": 0.05, "block_size": 1,
                   "bf16": True},
        ),
    )
}


class ImageClassificationTask:
    """Classify ``train``'s pictures (see the module docstring).

    Args:
        train, val: :class:`~attnlab.data.images.ImageDataset` splits.
        batch_size: pictures per training batch (per process).
        eval_batches: how many validation batches :meth:`val_batches` gives (of ``batch_size``;
            fewer when the split is smaller).
        seed: the run's seed, from which every batch is drawn.
        crop_padding: random shift of up to this many pixels (0: none).
        label_smoothing: for the cross-entropy.
        normalization: default: fitted on ``train``.
    """

    count_unit = "img"  # what count() counts, for the progress display

    def __init__(self, train: ImageDataset, val: ImageDataset, *, batch_size: int, eval_batches: int,
                 seed: int = 0, crop_padding: int = 0, label_smoothing: float = 0.0,
                 normalization: Normalization | None = None, dataset: str = "") -> None:
        if len(train) == 0 or len(val) == 0:
            raise ValueError(f"need training and validation pictures, got {len(train)} and {len(val)}")
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        self.train, self.val, self.dataset = train, val, dataset
        self.batch_size, self.seed = batch_size, seed
        self.crop_padding, self.label_smoothing = crop_padding, label_smoothing
        self.normalization = normalization or Normalization.fit(train.images)
        self._epoch, self._order = -1, None
        count = min(len(val), batch_size * eval_batches)
        self._val = [(self.normalization(val.images[start:start + batch_size]),
                      val.labels[start:start + batch_size]) for start in range(0, count, batch_size)]

    @classmethod
    def from_preset(cls, preset: ViTPreset, config) -> ImageClassificationTask:
        """The task of ``preset`` (raises :class:`attnlab.data.images.ImageDataError` without the data)."""
        train, val, _ = dataset_splits(preset.dataset, preset.val_fraction, seed=config.seed)
        return cls(train, val, batch_size=config.batch_size, eval_batches=config.eval_batches,
                   seed=config.seed, crop_padding=preset.crop_padding,
                   label_smoothing=preset.label_smoothing, dataset=preset.dataset)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.train.classes

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        """The shuffled order of the training pictures in ``epoch`` (cached for the current one)."""
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(batch_seed(self.seed, epoch, _ORDER_STREAM))
            self._epoch, self._order = epoch, torch.randperm(len(self.train), generator=generator)
        return self._order

    def train_batch(self, step: int, rank: int, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, labels)`` of ``step`` on ``rank``: ``(batch, C, H, W)`` float, ``(batch,)``."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got rank={rank}")
        size = len(self.train)
        first = (step * world_size + rank) * self.batch_size
        indices = []
        for position in range(first, first + self.batch_size):  # may run over into the next epoch
            indices.append(int(self._epoch_order(position // size)[position % size]))
        indices = torch.tensor(indices)
        generator = torch.Generator().manual_seed(batch_seed(self.seed, step, rank))
        images = random_crop(self.train.images[indices], self.crop_padding, generator)
        return self.normalization(images), self.train.labels[indices]

    def val_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The fixed validation batches: the validation split in order, normalised, unaugmented."""
        return self._val

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Mean (label-smoothed) cross-entropy of the batch's labels."""
        images, labels = batch
        return F.cross_entropy(model(images).float(), labels, label_smoothing=self.label_smoothing)

    def count(self, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        """Pictures in ``batch``."""
        return int(batch[1].numel())

    @torch.no_grad()
    def val_metrics(self, model: torch.nn.Module, batches: list) -> dict[str, tuple[float, int]]:
        """``{"val_accuracy": (correct fraction, pictures)}`` over ``batches`` (the loop sums the
        pairs across processes and logs the fraction)."""
        correct = total = 0
        for images, labels in batches:
            correct += int((model(images).argmax(dim=-1) == labels).sum())
            total += int(labels.numel())
        return {"val_accuracy": (correct / max(total, 1), total)}

    def save_assets(self, folder: str | os.PathLike) -> None:
        """Write ``preprocessing.json``: dataset, class names, normalisation."""
        save_preprocessing(folder, dataset=self.dataset, classes=self.classes,
                           normalization=self.normalization)


def save_preprocessing(folder: str | os.PathLike, *, dataset: str, classes,
                       normalization: Normalization) -> None:
    """Write ``preprocessing.json`` into ``folder`` (atomically: :func:`attnlab.files.write_text`)."""
    data = {"dataset": dataset, "classes": list(classes), "mean": list(normalization.mean),
            "std": list(normalization.std)}
    write_text(Path(folder) / PREPROCESSING_FILE, json.dumps(data, indent=2) + "\n")


def load_preprocessing(folder: str | os.PathLike) -> tuple[str, tuple[str, ...], Normalization]:
    """``(dataset, classes, normalization)`` saved by :meth:`ImageClassificationTask.save_assets`.
    Raises ``FileNotFoundError`` or ``ValueError`` naming the file."""
    path = Path(folder) / PREPROCESSING_FILE
    try:
        data = json.loads(path.read_text())
        return (str(data["dataset"]), tuple(data["classes"]),
                Normalization(tuple(data["mean"]), tuple(data["std"])))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing (not a ViT training checkpoint?)") from None
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is damaged: {err}") from None
