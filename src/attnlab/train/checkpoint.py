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

from attnlab.errors import AttnlabError
from attnlab.files import fsync
from attnlab.models.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    SavedFileError,
    one_line,
    read_json_object,
    read_weights,
)
from attnlab.models.config_check import is_finite_number
from attnlab.train.config import TrainConfig

CHECKPOINTS_DIR = "checkpoints"
MANIFEST_FILE = "manifest.json"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng_state.safetensors"
STATE_FILE = "trainer_state.json"
# trainer_state.json holds the RNG states of every rank (~20 KB each) besides small settings.
MAX_STATE_BYTES = 64 << 20
TOKENIZER_FILE = "tokenizer.json"
FORMAT = "attnlab-checkpoint/1"
REQUIRED_FILES = (WEIGHTS_FILE, CONFIG_FILE, OPTIMIZER_FILE, RNG_FILE, STATE_FILE)
PARTIAL_PREFIX = ".tmp-"
_STEP_FOLDER = re.compile(r"step-(\d+)")


class CheckpointError(AttnlabError, RuntimeError):
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


def _python_and_numpy_states(state: RngState) -> tuple[tuple, tuple]:
    """``state.python`` and ``state.numpy`` as ``random.setstate`` and ``np.random.set_state`` take
    them (``TypeError``, ``KeyError`` or ``ValueError`` when they are malformed)."""
    version, internal, gauss = state.python
    np_state = state.numpy
    return (version, tuple(internal), gauss), (
        np_state["kind"], np.array(np_state["keys"], dtype=np.uint32), np_state["pos"],
        np_state["has_gauss"], np_state["cached_gaussian"])


def restore_rng(state: RngState) -> None:
    """Put every generator back to ``state`` (CUDA only when the GPU counts match)."""
    python_state, numpy_state = _python_and_numpy_states(state)
    random.setstate(python_state)
    np.random.set_state(numpy_state)
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
        fsync(path)
        files[path.relative_to(folder).as_posix()] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    manifest = folder / MANIFEST_FILE
    manifest.write_text(json.dumps({"format": FORMAT, "step": step, "files": files}, indent=1) + "\n")
    fsync(manifest)
    fsync(folder)


def _install(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target`` atomically, replacing an existing ``target``."""
    replaced = None
    if target.exists():
        # os.replace cannot overwrite a non-empty folder: move the old one aside first, under a
        # partial name so that a crash right here leaves nothing that looks complete twice.
        replaced = Path(tempfile.mkdtemp(dir=target.parent, prefix=f"{PARTIAL_PREFIX}replaced-"))
        os.replace(target, replaced / target.name)
    os.replace(staging, target)
    fsync(target.parent)
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
        files = read_json_object(folder / MANIFEST_FILE)["files"]
        expected = {name: (int(entry["bytes"]), str(entry["sha256"])) for name, entry in files.items()}
    except FileNotFoundError:
        return f"no {MANIFEST_FILE} (its save did not finish)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return f"{MANIFEST_FILE} is unreadable ({type(error).__name__}: {one_line(error)})"
    missing = [name for name in REQUIRED_FILES if name not in expected]
    if missing:
        return f"{MANIFEST_FILE} does not list {', '.join(missing)}"
    # A hostile manifest could send the hashing anywhere ("/dev/zero", "../../big-file").
    outside = [name for name in expected if Path(name).is_absolute() or ".." in Path(name).parts]
    if outside:
        return f"{MANIFEST_FILE} lists {outside[0]!r:.80}, a path outside the checkpoint"
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
    not touched: the resumed run overwrites them when it gets there. Nor is a ``step-*`` folder
    that holds no attnlab manifest or trainer state: it is not one of ours. Returns the deleted
    folders.
    """
    kept, deleted = 0, []
    for step, folder in checkpoint_folders(out_dir):
        if step > newest:
            continue
        if not (folder / MANIFEST_FILE).is_file() and not (folder / STATE_FILE).is_file():
            continue
        if kept < keep_last and checkpoint_problem(folder, check_hashes=False) is None:
            kept += 1
            continue
        if kept >= keep_last:
            shutil.rmtree(folder, ignore_errors=True)
            deleted.append(folder)
    return deleted



# ---------------------------------------------------------------------------------------------
# Reading


def _verified(folder: Path) -> Path:
    problem = checkpoint_problem(folder)
    if problem is not None:
        raise CheckpointError(f"checkpoint {folder} is damaged and will not be loaded: {problem}")
    return folder


# trainer_state.json's fields, each with the type it must have.
_STATE_FIELDS = {"step": int, "world_size": int, "train_config": dict, "meta": dict, "metrics": dict,
                 "optimizer": dict, "rng": list}
_JSON_KINDS = {int: "a whole number", dict: "an object", list: "a list"}


def read_trainer_state(folder: str | os.PathLike) -> dict:
    """``trainer_state.json`` of a checkpoint folder (not verified against the manifest: call
    after verifying), its fields checked for type.

    Raises :class:`CheckpointError`, one line naming the file, when it is missing, not a JSON
    object of this format, or lacks a field of :data:`_STATE_FIELDS`' type (``step`` >= 0,
    ``world_size`` >= 1).
    """
    path = Path(folder) / STATE_FILE
    try:
        state = read_json_object(path, max_bytes=MAX_STATE_BYTES)
    except (OSError, ValueError) as error:
        raise CheckpointError(one_line(error)) from None
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {state.get('format')!r:.40}, not {FORMAT!r}")
    for name, kind in _STATE_FIELDS.items():
        value = state.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CheckpointError(f"{path}: {name} must be {_JSON_KINDS[kind]}, got {value!r:.60}")
    if state["step"] < 0 or state["world_size"] < 1:
        raise CheckpointError(f"{path}: need step >= 0 and world_size >= 1, got step={state['step']}, "
                              f"world_size={state['world_size']}")
    return state


def _saved_train_config(folder: Path, state: dict) -> TrainConfig:
    """The :class:`TrainConfig` in ``state`` (read from ``folder``), or :class:`CheckpointError`."""
    try:
        return TrainConfig.from_dict(state["train_config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{folder / STATE_FILE}: train_config: {one_line(error)}") from None


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of safetensors file ``path``, or :class:`CheckpointError` naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file ({one_line(error)})") from None


def _json_object(path: Path) -> dict:
    """The JSON object in ``path``, or :class:`CheckpointError` naming it."""
    try:
        return read_json_object(path)
    except (OSError, ValueError) as error:
        raise CheckpointError(one_line(error)) from None


def _check_optimizer_tensors(path: Path, tensors: dict[str, torch.Tensor],
                             optimizer: torch.optim.Optimizer) -> None:
    """Every tensor is ``state.<param index>.<key>`` of an existing parameter and, unless it is a
    scalar (a step count), shaped like that parameter: AdamW would fail only at its next step."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for name, tensor in tensors.items():
        parts = name.split(".", 2)
        if len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit() or int(parts[1]) >= len(params):
            raise CheckpointError(f"{path} holds tensor {name!r:.60}, not the state of one of the "
                                  f"optimizer's {len(params)} parameters")
        param = params[int(parts[1])]
        if tensor.dim() and tensor.shape != param.shape:
            raise CheckpointError(f"{path}: tensor {name} has shape {list(tensor.shape)}, its parameter "
                                  f"{list(param.shape)}")


def _same_kind(saved, current) -> bool:
    """Whether JSON value ``saved`` can stand for optimizer setting ``current``: a flag for a
    flag, a finite number for a number, a list of as many for a tuple, equal for anything else."""
    if isinstance(current, bool) or current is None or isinstance(current, str):
        return type(saved) is type(current)
    if isinstance(current, (int, float)):
        return is_finite_number(saved)
    if isinstance(current, (tuple, list)):
        return (isinstance(saved, list) and len(saved) == len(current)
                and all(_same_kind(s, c) for s, c in zip(saved, current, strict=True)))
    return saved == current


def _check_param_groups(path: Path, saved: dict, optimizer: torch.optim.Optimizer) -> None:
    """The saved groups are the optimizer's: as many, each with every setting of the optimizer's
    group in a value of its kind and as many parameters. torch takes any values and would fail
    only inside the next step."""
    groups = saved.get("param_groups")
    if not (isinstance(groups, list) and len(groups) == len(optimizer.param_groups)
            and all(isinstance(g, dict) for g in groups) and isinstance(saved.get("scalars"), dict)):
        raise CheckpointError(f"{path}: optimizer must hold {len(optimizer.param_groups)} parameter "
                              "group objects and a scalars object")
    for index, (group, current) in enumerate(zip(groups, optimizer.param_groups, strict=True)):
        params = group.get("params")
        if not (isinstance(params, list) and len(params) == len(current["params"])
                and all(isinstance(i, int) and not isinstance(i, bool) for i in params)):
            raise CheckpointError(f"{path}: optimizer group {index} must list the ids of its "
                                  f"{len(current['params'])} parameters")
        for key, value in current.items():
            if key not in (*_MACHINE_OPTIONS, "params") and not _same_kind(group.get(key), value):
                raise CheckpointError(f"{path}: optimizer group {index} has {key}={group.get(key)!r:.40}, "
                                      f"this optimizer needs a value like {value!r:.40}")


def _rank_rng(folder: Path, state: dict, rank: int) -> RngState:
    """This rank's saved :class:`RngState`, proven restorable on throwaway generators first."""
    tensors = _read_tensors(folder / RNG_FILE)
    cpu = tensors.get(f"rank{rank}.torch_cpu")
    saved = state["rng"][rank] if rank < len(state["rng"]) else None
    if cpu is None or not isinstance(saved, dict) or set(saved) != {"python", "numpy"}:
        raise CheckpointError(f"{folder} holds no RNG state for rank {rank} ({RNG_FILE}, {STATE_FILE})")
    cuda = sorted((k for k in tensors if k.startswith(f"rank{rank}.torch_cuda.")),
                  key=lambda k: int(k.rsplit(".", 1)[1]) if k.rsplit(".", 1)[1].isdigit() else -1)
    rng = RngState(torch_cpu=cpu, torch_cuda=[tensors[k] for k in cuda], **saved)
    try:
        python_state, numpy_state = _python_and_numpy_states(rng)
        random.Random().setstate(python_state)
        np.random.RandomState().set_state(numpy_state)
        torch.Generator().set_state(rng.torch_cpu)
    except (TypeError, ValueError, KeyError, IndexError, OverflowError, RuntimeError) as error:
        raise CheckpointError(f"{folder}: the RNG state of rank {rank} cannot be restored "
                              f"({one_line(error)})") from None
    return rng


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
    :data:`attnlab.train.config.RESUMABLE_CHANGES`), another number of processes, or a file
    whose content is malformed (tensors of other names or shapes, RNG states the generators
    refuse) raises :class:`CheckpointError` saying which. Returns ``trainer_state.json``'s content.
    """
    folder = _verified(Path(folder))
    state = read_trainer_state(folder)
    saved_model = _json_object(folder / CONFIG_FILE)
    current = model_config(model)
    if saved_model != current:
        changed = sorted(k for k in saved_model | current if saved_model.get(k) != current.get(k))
        diffs = ", ".join(f"{k}: {saved_model.get(k)!r:.40} -> {current.get(k)!r}" for k in changed)
        raise CheckpointError(f"cannot resume from {folder}: it holds a different model ({diffs:.400})")
    conflicts = train_config.resume_conflicts(_saved_train_config(folder, state))
    if conflicts:
        raise CheckpointError(f"cannot resume from {folder}: the training config changed "
                              f"({'; '.join(conflicts)}); use a new out_dir to train with it")
    if state["world_size"] != world_size:
        raise CheckpointError(f"cannot resume from {folder}: it was written by {state['world_size']} "
                              f"process(es) and this run has {world_size} (the data order depends on it)")
    try:
        weights = read_weights(folder / WEIGHTS_FILE, model.state_dict())
    except SavedFileError as error:
        raise CheckpointError(str(error)) from None
    optimizer_tensors = _read_tensors(folder / OPTIMIZER_FILE)
    _check_optimizer_tensors(folder / OPTIMIZER_FILE, optimizer_tensors, optimizer)
    _check_param_groups(folder / STATE_FILE, state["optimizer"], optimizer)
    rng = _rank_rng(folder, state, rank)
    # The optimizer first: the one step left that can fail (on checks of torch's own, which it
    # makes before it changes anything).
    try:
        _load_optimizer(optimizer, optimizer_tensors, state["optimizer"])
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as error:
        raise CheckpointError(f"{folder / STATE_FILE}: its optimizer state does not fit this optimizer "
                              f"({one_line(error)})") from None
    model.load_state_dict(weights, strict=True)
    restore_rng(rng)
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
    Every file is checked before it is used (see :meth:`SafetensorsModel.load` and
    :func:`attnlab.data.tokenizers.load_tokenizer`); the tokenizer's ids must fit the model's
    vocabulary. Raises :class:`CheckpointError`, one line naming the folder or file, when the
    folder is not a checkpoint, fails verification, holds a model of another class than
    ``model_class``, or holds a file that is malformed or asks for too much, and when the
    system refuses to read it (e.g. a file without read permission).
    """
    try:
        return _read_checkpoint(Path(folder), model_class)
    except OSError as error:  # raised by the system, not by a check: say which folder it was
        raise CheckpointError(f"cannot read checkpoint {folder}: {one_line(error)}") from None


def _read_checkpoint(folder: Path, model_class: type | None) -> LoadedCheckpoint:
    """:func:`load_checkpoint`, less the system's own errors (``OSError``) it reports."""
    import attnlab.models
    from attnlab.models.checkpoint import SafetensorsModel

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
    model_type = _json_object(folder / CONFIG_FILE).get("model_type")
    if model_class is None:
        found = getattr(attnlab.models, model_type, None) if isinstance(model_type, str) else None
        if not (isinstance(found, type) and issubclass(found, SafetensorsModel)):
            raise CheckpointError(f"checkpoint {folder} holds a {model_type!r:.60} model, "
                                  "which attnlab.models does not provide")
        model_class = found
    elif model_class.__name__ != model_type:
        raise CheckpointError(f"checkpoint {folder} holds a {model_type!s:.60}, not a {model_class.__name__}")
    state = read_trainer_state(folder)
    train_config = _saved_train_config(folder, state)
    try:
        model = model_class.load(folder)
        tokenizer = None
        if (folder / TOKENIZER_FILE).is_file():
            from attnlab.data.tokenizers import load_tokenizer

            tokenizer = load_tokenizer(folder)
    except (OSError, ValueError) as error:  # SavedFileError and FileNotFoundError name the file
        raise CheckpointError(one_line(error)) from None
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if tokenizer is not None and isinstance(vocab, int) and tokenizer.vocab_size > vocab:
        raise CheckpointError(f"{folder / TOKENIZER_FILE} has {tokenizer.vocab_size} tokens, more than "
                              f"the vocab_size={vocab} of the model beside it")
    return LoadedCheckpoint(
        folder=folder,
        step=state["step"],
        model=model,
        tokenizer=tokenizer,
        train_config=train_config,
        meta=state["meta"],
        metrics=state["metrics"],
    )
