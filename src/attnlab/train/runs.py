"""The trained models of ``attnlab train``, read back for use: a GPT, a translator, a ViT.

Each loader takes what a user names: a checkpoint folder, or a run's ``--out`` folder (then its
latest complete checkpoint, see :func:`attnlab.train.checkpoint.load_checkpoint`), and checks
that it holds the kind of run asked for. Every problem is a :class:`CheckpointError` (an
:class:`attnlab.errors.AttnlabError`), one line naming the folder: no such folder, a damaged
checkpoint, another kind of run, a file missing beside the model.
"""

from __future__ import annotations

import os

from attnlab.train.checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint


def load_gpt_run(path: str | os.PathLike) -> LoadedCheckpoint:
    """The checkpoint of an ``attnlab train gpt`` run, with the tokenizer saved beside its GPT.

    Raises :class:`CheckpointError` for anything else: no such folder, a damaged checkpoint,
    another kind of model, a saved model that is not a training checkpoint, no tokenizer.
    """
    from attnlab.models.gpt import GPT

    return check_gpt_run(load_checkpoint(path, model_class=GPT))


def check_gpt_run(loaded: LoadedCheckpoint) -> LoadedCheckpoint:
    """``loaded`` when it is a GPT run with its tokenizer, else :class:`CheckpointError`."""
    if type(loaded.model).__name__ != "GPT" or loaded.meta.get("task", "gpt") != "gpt":
        raise CheckpointError(f"{loaded.folder} holds a {loaded.meta.get('task')!r} run, not a GPT "
                              "(train one with `attnlab train gpt`)")
    if loaded.tokenizer is None:
        raise CheckpointError(f"{loaded.folder} has no tokenizer beside its GPT")
    return loaded


def load_translator(path: str | os.PathLike) -> LoadedCheckpoint:
    """The checkpoint of an ``attnlab train translate`` run (Transformer or LSTM), with its
    tokenizer. Raises :class:`CheckpointError` for a missing folder, a damaged checkpoint,
    another task's checkpoint or a missing tokenizer."""
    return check_translator(load_checkpoint(path))


def check_translator(loaded: LoadedCheckpoint) -> LoadedCheckpoint:
    """``loaded`` when it is a translation run with its tokenizer, else :class:`CheckpointError`."""
    if loaded.meta.get("task") != "translate":
        raise CheckpointError(f"{loaded.folder} holds a {loaded.meta.get('task')!r} run, not a translator "
                              "(train one with `attnlab train translate`)")
    if loaded.tokenizer is None:
        raise CheckpointError(f"{loaded.folder} has no tokenizer beside its model")
    return loaded


def load_classifier(path: str | os.PathLike) -> tuple:
    """``(LoadedCheckpoint, dataset, classes, normalization)`` of an ``attnlab train vit`` run:
    the ViT, the name of the dataset it learned (one of :data:`attnlab.data.images.DATASETS`),
    its class names by label and the :class:`attnlab.train.vit_task.Normalization` its pictures
    need, from the run's ``preprocessing.json``.

    Raises :class:`CheckpointError` for a missing folder, a damaged checkpoint, another kind of
    model, and a ``preprocessing.json`` that is missing, damaged, names an unknown dataset or
    another number of classes than the model has.
    """
    from attnlab.models.vit import ViT

    loaded = load_checkpoint(path, model_class=ViT)
    return (loaded, *classifier_preprocessing(loaded))


def classifier_preprocessing(loaded: LoadedCheckpoint) -> tuple:
    """``(dataset, classes, normalization)`` of a loaded ViT run (see :func:`load_classifier`),
    checked against its model; :class:`CheckpointError` otherwise."""
    from attnlab.data.images import DATASETS
    from attnlab.train.vit_task import load_preprocessing

    if type(loaded.model).__name__ != "ViT":
        raise CheckpointError(f"{loaded.folder} holds a {type(loaded.model).__name__}, not a ViT "
                              "(train one with `attnlab train vit`)")
    try:
        dataset, classes, normalization = load_preprocessing(loaded.folder)
    except (OSError, ValueError) as err:  # load_preprocessing's own: each names the file
        raise CheckpointError(str(err)) from None
    if dataset not in DATASETS:
        raise CheckpointError(f"{loaded.folder}: preprocessing.json names the dataset {dataset!r:.60}, "
                              f"not one of {', '.join(DATASETS)}")
    if len(classes) != loaded.model.config.num_classes:
        raise CheckpointError(f"{loaded.folder}: preprocessing.json names {len(classes)} classes, the model "
                              f"has {loaded.model.config.num_classes}")
    return dataset, classes, normalization
