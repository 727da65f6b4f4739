"""ImageClassificationTask: epoch order, determinism, ranks, augmentation, validation accuracy
through the training loop, preprocessing saved beside checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from attnlab.data.images import ImageDataset, Normalization
from attnlab.models.vit import ViT, ViTConfig
from attnlab.train import TrainConfig, train
from attnlab.train.vit_task import (
    PREPROCESSING_FILE,
    VIT_TRAIN_PRESETS,
    ImageClassificationTask,
    load_preprocessing,
)

CLASSES = ("a", "b", "c", "d")


def _dataset(count: int, seed: int = 0) -> ImageDataset:
    """Pictures whose top-left pixel holds their index (to identify them in batches) and a
    bright square whose quadrant is the label."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 4
    images = torch.randint(0, 40, (count, 1, 28, 28), dtype=torch.uint8, generator=generator)
    for i, label in enumerate(labels.tolist()):
        top, left = 14 * (label // 2) + 4, 14 * (label % 2) + 4
        images[i, 0, top:top + 6, left:left + 6] = 250
    images[:, 0, 0, 0] = torch.arange(count, dtype=torch.uint8)
    return ImageDataset(images, labels, CLASSES)


def _task(batch_size=8, crop_padding=0, seed=0, train_count=40) -> ImageClassificationTask:
    return ImageClassificationTask(_dataset(train_count), _dataset(16, seed=1), batch_size=batch_size,
                                   eval_batches=2, seed=seed, crop_padding=crop_padding)


def _ids(task: ImageClassificationTask, images: torch.Tensor) -> list[int]:
    """The index written into each picture's top-left pixel, undoing the normalisation."""
    mean, std = task.normalization.mean[0], task.normalization.std[0]
    return [round((float(pixel) * std + mean) * 255) for pixel in images[:, 0, 0, 0]]


def test_each_epoch_shows_every_picture_once():
    task = _task(batch_size=8)
    seen = [i for step in range(5) for i in _ids(task, task.train_batch(step, 0, 1)[0])]
    assert sorted(seen) == list(range(40))
    second = [i for step in range(5, 10) for i in _ids(task, task.train_batch(step, 0, 1)[0])]
    assert sorted(second) == list(range(40)) and second != seen  # reshuffled


def test_batches_depend_only_on_seed_step_and_rank():
    a, b = _task(crop_padding=2), _task(crop_padding=2)
    b.train_batch(7, 0, 1)  # another order of calls must not change anything
    for step in (3, 0, 9):
        for x, y in zip(a.train_batch(step, 0, 1), b.train_batch(step, 0, 1), strict=True):
            assert torch.equal(x, y)
    assert not torch.equal(a.train_batch(3, 0, 1)[0], _task(crop_padding=2, seed=1).train_batch(3, 0, 1)[0])


def test_ranks_split_each_global_batch():
    task = _task(batch_size=4)
    rank0 = _ids(task, task.train_batch(2, 0, 2)[0])
    rank1 = _ids(task, task.train_batch(2, 1, 2)[0])
    assert not set(rank0) & set(rank1)
    with pytest.raises(ValueError, match="rank must be in"):
        task.train_batch(0, 2, 2)


def test_validation_is_unaugmented():
    task = _task(crop_padding=3)
    images, labels = task.train_batch(1, 0, 1)
    assert images.dtype == torch.float32 and images.shape == (8, 1, 28, 28) and labels.shape == (8,)
    val_images, val_labels = task.val_batches()[0]
    expected = task.normalization(_dataset(16, seed=1).images[:8])
    assert torch.equal(val_images, expected) and val_labels.tolist() == [0, 1, 2, 3] * 2


def test_labels_match_pictures_without_crops():
    task = _task(crop_padding=0)
    images, labels = task.train_batch(4, 0, 1)
    assert labels.tolist() == [i % 4 for i in _ids(task, images)]


def test_normalization_is_fitted_on_training_pictures():
    task = _task()
    expected = Normalization.fit(_dataset(40).images)
    assert task.normalization == expected


def test_training_logs_validation_accuracy_and_saves_preprocessing(tmp_path):
    torch.manual_seed(0)
    task = _task(batch_size=16, crop_padding=1, train_count=160)
    model = ViT(ViTConfig.from_preset("tiny", num_classes=4))
    config = TrainConfig(batch_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=10, max_steps=150, eval_every=75,
                         eval_batches=2, checkpoint_every=75, log_every=10, weight_decay=0.0)
    result = train(model, task, config, tmp_path, meta={"task": "vit", "preset": "test"})
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    accuracies = [r["val_accuracy"] for r in records if "val_accuracy" in r]
    assert len(accuracies) == 2 and accuracies[-1] >= 0.9
    manual = task.val_metrics(model.eval(), task.val_batches())["val_accuracy"][0]
    assert accuracies[-1] == pytest.approx(manual)
    _, classes, normalization = load_preprocessing(result.checkpoint)
    assert classes == CLASSES and normalization == task.normalization
    assert (tmp_path / "loss.png").stat().st_size > 0


def test_damaged_preprocessing_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a ViT training checkpoint"):
        load_preprocessing(tmp_path)
    (tmp_path / PREPROCESSING_FILE).write_text("{}")
    with pytest.raises(ValueError, match="damaged"):
        load_preprocessing(tmp_path)


def test_presets_build_models_for_their_datasets():
    for preset in VIT_TRAIN_PRESETS.values():
        config = preset.model_config(10)
        assert config.image_size == 28 and config.num_classes == 10
        TrainConfig(**preset.train)  # valid
