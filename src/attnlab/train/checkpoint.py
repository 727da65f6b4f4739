"""Training checkpoints that survive crashes: written aside, renamed into place, verified on load.

One checkpoint is the folder ``<out_dir>/checkpoints/step-00000123/`` holding::

    model.safetensors, config.json   the weights and model config (``SafetensorsModel.save``)
    optimizer.safetensors            AdamW moments and step counts, one tensor per (param, key)
    rng_state.safetensors            torch CPU (and CUDA) generator states, uint8, per rank
    trainer_state.json               step, TrainConfig, meta, metrics summary, optimizer param
                                     groups, Python ``random`` and numpy RNG states per rank
    <task assets>                    e.g. ``tokenizer.json``, from ``task.save_assets(folder)``
    manifest.json                    size and sha256 of every other file; written last

The folder is built under a hidden temporary name (``.tmp-step-...``) and renamed into place
with ``os.replace``, so a ``step-*`` folder only ever appears complete; its manifest then lets
a reader prove that nothing in it was truncated or altered since. Nothing is ever pickled and
nothing is read with ``torch.load``: tensors are safetensors, everything else is JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from attnlab.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from attnlab.train.config import TrainConfig

CHECKPOINTS_DIR = "checkpoints"
MANIFEST_FILE = "manifest.json"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng_state.safetensors"
STATE_FILE = "trainer_state.json"
TOKENIZER_FILE = "tokenizer.json"
FORMAT = "attnlab-checkpoint/1"
REQUIRED_FILES = (WEIGHTS_FILE, CONFIG_FILE, OPTIMIZER_FILE, RNG_FILE, STATE_FILE)
PARTIAL_PREFIX = ".tmp-"
_STEP_FOLDER = re.compile(r"step-(\d+)")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged, or does not fit the run that wants to use it."""


class CheckpointWarning(UserWarning):
    """A partial or damaged checkpoint folder was found and skipped."""


# ---------------------------------------------------------------------------------------------
# RNG states


@dataclass
class RngState:
    """Every random stream a training process draws from.

    ``torch_cpu`` and ``torch_cuda`` (one per visible GPU) are the generators' uint8 state
    tensors; ``python`` and ``numpy`` are JSON-ready forms of ``random.getstate()`` and
    ``numpy.random.get_state()``.
    """

    torch_cpu: torch.Tensor
    torch_cuda: list[torch.Tensor]
    python: list
    numpy: dict


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and every GPU), Python's ``random`` and numpy's global generator."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def capture_rng() -> RngState:
    """The current state of every generator :func:`seed_everything` seeds."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return RngState(
        torch_cpu=torch.get_rng_state(),
        torch_cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        python=[version, list(internal), gauss],
        numpy={"kind": kind, "keys": keys.tolist(), "pos": pos, "has_gauss": has_gauss,
               "cached_gaussian": cached},
    )


def restore_rng(state: RngState) -> None:
    """Put every generator back to ``state`` (CUDA only when the GPU counts match)."""
    version, internal, gauss = state.python
    random.setstate((version, tuple(internal), gauss))
    np_state = state.numpy
    np.random.set_state((np_state["kind"], np.array(np_state["keys"], dtype=np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state.torch_cpu)
    if state.torch_cuda and torch.cuda.is_available() and len(state.torch_cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state.torch_cuda)


# ---------------------------------------------------------------------------------------------
# Optimizer state as tensors + JSON

# Implementation switches describe this machine, not the training state: a checkpoint written on
# a GPU with the fused kernel must resume on a CPU with the plain loop, so they are not restored.
_MACHINE_OPTIONS = ("foreach", "fused", "capturable", "differentiable")


def _optimizer_parts(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """``optimizer.state_dict()`` split into safetensors tensors ``"state.<param>.<key>"`` and
    a JSON part (param groups and any non-tensor state values)."""
    state_dict = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()}
              for g in state_dict["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], saved: dict) -> None:
    state: dict[int, dict] = {}
    for name, tensor in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = tensor
    for index, values in saved["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    groups = []
    for group, current in zip(saved["param_groups"], optimizer.param_groups, strict=True):
        group = {k: tuple(v) if k == "betas" else v for k, v in group.items()}
        group.update({k: current[k] for k in _MACHINE_OPTIONS if k in current})
        groups.append(group)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# ---------------------------------------------------------------------------------------------
# Writing


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def model_config(model: nn.Module) -> dict:
    """``config.json``'s content for ``model``, as JSON would give it back (tuples as lists)."""
    return json.loads(json.dumps({"model_type": type(model).__name__, **asdict(model.config)}))


def checkpoint_folder(out_dir: str | os.PathLike, step: int) -> Path:
    """Where the checkpoint of ``step`` lives: ``<out_dir>/checkpoints/step-<8 digits>``."""
    return Path(out_dir) / CHECKPOINTS_DIR / f"step-{step:08d}"


def save_checkpoint(
    out_dir: str | os.PathLike,
    *,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_config: TrainConfig,
    rng_states: list[RngState],
    meta: dict | None = None,
    metrics: dict | None = None,
    task=None,
    keep_last: int | None = None,
) -> Path:
    """Write the checkpoint of ``step`` and return its folder (see the module docstring).

    ``model`` is the bare model (not a DDP wrapper) and must be a ``SafetensorsModel``;
    ``rng_states`` holds one :class:`RngState` per process rank; ``task.save_assets(folder)``
    adds the task's files. A checkpoint already at this step is replaced. With ``keep_last``,
    older checkpoints beyond the newest ``keep_last`` are deleted afterwards.
    """
    target = checkpoint_folder(out_dir, step)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f"{PARTIAL_PREFIX}{target.name}-"))
    try:
        from safetensors.torch import save_file

        if task is not None:
            task.save_assets(staging)
            clashes = sorted({*REQUIRED_FILES, MANIFEST_FILE} & {p.name for p in staging.iterdir()})
            if clashes:
                raise ValueError(f"{type(task).__name__}.save_assets wrote {clashes}, names that the "
                                 "checkpoint itself uses")
        model.save(staging)
        tensors, optimizer_json = _optimizer_parts(optimizer)
        save_file(tensors, staging / OPTIMIZER_FILE)
        rng_tensors = {}
        for rank, rng in enumerate(rng_states):
            rng_tensors[f"rank{rank}.torch_cpu"] = rng.torch_cpu
            rng_tensors.update({f"rank{rank}.torch_cuda.{i}": t for i, t in enumerate(rng.torch_cuda)})
        save_file(rng_tensors, staging / RNG_FILE)
        trainer_state = {
            "format": FORMAT,
            "step": step,
            "model_type": type(model).__name__,
            "world_size": len(rng_states),
            "train_config": train_config.to_dict(),
            "meta": meta or {},
            "metrics": metrics or {},
            "optimizer": optimizer_json,
            "rng": [{"python": rng.python, "numpy": rng.numpy} for rng in rng_states],
        }
        (staging / STATE_FILE).write_text(json.dumps(trainer_state, indent=1) + "\n")
        _write_manifest(staging, step)
        _install(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if keep_last is not None:
        prune_checkpoints(out_dir, keep_last, newest=step)
    return target


def _write_manifest(folder: Path, step: int) -> None:
    """Fsync every file, then record its size and sha256 in ``manifest.json`` (fsynced too)."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        _fsync(path)
        files[path.relative_to(folder).as_posix()] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    manifest = folder / MANIFEST_FILE
    manifest.write_text(json.dumps({"format": FORMAT, "step": step, "files": files}, indent=1) + "\n")
    _fsync(manifest)
    _fsync(folder)


def _install(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target`` atomically, replacing an existing ``target``."""
    replaced = None
    if target.exists():
        # os.replace cannot overwrite a non-empty folder: move the old one aside first, under a
        # partial name so that a crash right here leaves nothing that looks complete twice.
        replaced = Path(tempfile.mkdtemp(dir=target.parent, prefix=f"{PARTIAL_PREFIX}replaced-"))
        os.replace(target, replaced / target.name)
    os.replace(staging, target)
    _fsync(target.parent)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Finding and verifying


def checkpoint_problem(folder: str | os.PathLike, *, check_hashes: bool = True) -> str | None:
    """Why ``folder`` is not a complete, intact checkpoint, or None when it is.

    Checks that ``manifest.json`` exists and lists the required files, and that every listed
    file exists with the recorded size (and, with ``check_hashes``, sha256).
    """
    folder = Path(folder)
    try:
        files = json.loads((folder / MANIFEST_FILE).read_text())["files"]
        expected = {name: (int(entry["bytes"]), str(entry["sha256"])) for name, entry in files.items()}
    except FileNotFoundError:
        return f"no {MANIFEST_FILE} (its save did not finish)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return f"{MANIFEST_FILE} is unreadable ({type(error).__name__}: {error})"
    missing = [name for name in REQUIRED_FILES if name not in expected]
    if missing:
        return f"{MANIFEST_FILE} does not list {', '.join(missing)}"
    for name, (size, digest) in expected.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {MANIFEST_FILE} says {size}"
        if check_hashes and _sha256(path) != digest:
            return f"{name} does not match its sha256 in {MANIFEST_FILE}"
    return None


def checkpoint_folders(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, folder)`` for every ``step-*`` folder, newest first."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(int(match.group(1)), path) for path in root.iterdir()
             if path.is_dir() and (match := _STEP_FOLDER.fullmatch(path.name))]
    return sorted(found, reverse=True)


def partial_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """Leftovers of saves that were interrupted (hidden ``.tmp-*`` folders)."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    return sorted(root.glob(f"{PARTIAL_PREFIX}*")) if root.is_dir() else []


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint under ``<out_dir>/checkpoints`` that verifies against its manifest.

    Partial folders and newer damaged checkpoints are skipped with a :class:`CheckpointWarning`
    naming the folder and the problem; they are never loaded. None when no checkpoint verifies.
    """
    for partial in partial_checkpoints(out_dir):
        warnings.warn(f"ignoring partial checkpoint {partial} (its save was interrupted)",
                      CheckpointWarning, stacklevel=2)
    for _, folder in checkpoint_folders(out_dir):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        warnings.warn(f"ignoring damaged checkpoint {folder}: {problem}", CheckpointWarning, stacklevel=2)
    return None


def prune_checkpoints(out_dir: str | os.PathLike, keep_last: int, *, newest: int) -> list[Path]:
    """Delete checkpoints older than the ``keep_last`` newest complete ones up to step ``newest``.

    Folders after ``newest`` (left by an earlier run that went further before it crashed) are
    not touched: the resumed run overwrites them when it gets there. Returns the deleted folders.
    """
    kept, deleted = 0, []
    for step, folder in checkpoint_folders(out_dir):
        if step > newest:
            continue
        if kept < keep_last and checkpoint_problem(folder, check_hashes=False) is None:
            kept += 1
            continue
        if kept >= keep_last:
            shutil.rmtree(folder, ignore_errors=True)
            deleted.append(folder)
    return deleted


def remove_partial_checkpoints(out_dir: str | os.PathLike) -> None:
    """Delete the leftovers of interrupted saves (only the process that writes may call this)."""
    for partial in partial_checkpoints(out_dir):
        shutil.rmtree(partial, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Reading


def _verified(folder: Path) -> Path:
    problem = checkpoint_problem(folder)
    if problem is not None:
        raise CheckpointError(f"checkpoint {folder} is damaged and will not be loaded: {problem}")
    return folder


def read_trainer_state(folder: str | os.PathLike) -> dict:
    """``trainer_state.json`` of a checkpoint folder (not verified: call after verifying)."""
    return json.loads((Path(folder) / STATE_FILE).read_text())


def restore_training_state(
    folder: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_config: TrainConfig,
    *,
    rank: int,
    world_size: int,
) -> dict:
    """Load a verified checkpoint into ``model``, ``optimizer`` and this rank's RNGs.

    Everything is checked before anything changes: a model of another type or config, a
    ``train_config`` that differs in a field that changes what a step computes (see
    :data:`attnlab.train.config.RESUMABLE_CHANGES`), or another number of processes raises
    :class:`CheckpointError` listing the differences. Returns ``trainer_state.json``'s content.
    """
    from safetensors.torch import load_file

    folder = _verified(Path(folder))
    state = read_trainer_state(folder)
    saved_model = json.loads((folder / CONFIG_FILE).read_text())
    current = model_config(model)
    if saved_model != current:
        changed = sorted(k for k in saved_model | current if saved_model.get(k) != current.get(k))
        diffs = ", ".join(f"{k}: {saved_model.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise CheckpointError(f"cannot resume from {folder}: it holds a different model ({diffs})")
    conflicts = train_config.resume_conflicts(TrainConfig.from_dict(state["train_config"]))
    if conflicts:
        raise CheckpointError(f"cannot resume from {folder}: the training config changed "
                              f"({'; '.join(conflicts)}); use a new out_dir to train with it")
    if state["world_size"] != world_size:
        raise CheckpointError(f"cannot resume from {folder}: it was written by {state['world_size']} "
                              f"process(es) and this run has {world_size} (the data order depends on it)")
    model.load_state_dict(load_file(folder / WEIGHTS_FILE), strict=True)
    _load_optimizer(optimizer, load_file(folder / OPTIMIZER_FILE), state["optimizer"])
    rng_tensors = load_file(folder / RNG_FILE)
    cuda = sorted((k for k in rng_tensors if k.startswith(f"rank{rank}.torch_cuda.")),
                  key=lambda k: int(k.rsplit(".", 1)[1]))
    restore_rng(RngState(torch_cpu=rng_tensors[f"rank{rank}.torch_cpu"],
                         torch_cuda=[rng_tensors[k] for k in cuda], **state["rng"][rank]))
    return state


@dataclass
class LoadedCheckpoint:
    """A checkpoint read for use: ``model`` (eval mode, on CPU), the ``tokenizer`` saved beside
    it (None when there is none), and the run's ``step``, ``train_config``, ``meta`` and last
    ``metrics`` (``loss``, ``val_loss``, ``elapsed_s``)."""

    folder: Path
    step: int
    model: nn.Module
    tokenizer: object | None
    train_config: TrainConfig
    meta: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)


def load_checkpoint(folder: str | os.PathLike, model_class: type | None = None) -> LoadedCheckpoint:
    """Load a checkpoint folder, or the latest complete checkpoint of a training ``out_dir``.

    The model class is ``model_class`` when given (e.g. a model outside :mod:`attnlab.models`),
    else ``getattr(attnlab.models, model_type)`` with ``model_type`` from ``config.json``.
    Raises :class:`CheckpointError` when the folder is not a checkpoint, fails verification,
    or holds a model of another class than ``model_class``.
    """
    folder = Path(folder)
    if not (folder / MANIFEST_FILE).is_file() and (folder / CHECKPOINTS_DIR).is_dir():
        latest = latest_checkpoint(folder)
        if latest is None:
            raise CheckpointError(f"{folder / CHECKPOINTS_DIR} holds no complete checkpoint")
        folder = latest
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    if not (folder / MANIFEST_FILE).is_file() and not (folder / STATE_FILE).is_file():
        raise CheckpointError(f"{folder} is not a training checkpoint (no {MANIFEST_FILE} or "
                              f"{CHECKPOINTS_DIR}/ in it)")
    _verified(folder)
    model_type = json.loads((folder / CONFIG_FILE).read_text()).get("model_type")
    if model_class is None:
        import attnlab.models

        model_class = getattr(attnlab.models, str(model_type), None)
        if model_class is None:
            raise CheckpointError(f"checkpoint {folder} holds a {model_type!r} model, "
                                  "which attnlab.models does not provide")
    elif model_class.__name__ != model_type:
        raise CheckpointError(f"checkpoint {folder} holds a {model_type}, not a {model_class.__name__}")
    tokenizer = None
    if (folder / TOKENIZER_FILE).is_file():
        from attnlab.data.tokenizers import load_tokenizer

        tokenizer = load_tokenizer(folder)
    state = read_trainer_state(folder)
    return LoadedCheckpoint(
        folder=folder,
        step=state["step"],
        model=model_class.load(folder),
        tokenizer=tokenizer,
        train_config=TrainConfig.from_dict(state["train_config"]),
        meta=state["meta"],
        metrics=state["metrics"],
    )
