"""Saving and loading a model as a folder: ``model.safetensors`` + ``config.json``.

Every attnlab model class mixes in :class:`SafetensorsModel` and names its dataclass config in
``config_class``; ``model.save(folder)`` and ``Class.load(folder)`` then work the same way for
all of them. Never a pickle: weights are safetensors, the config is JSON.

A folder to load is untrusted input, so :meth:`SafetensorsModel.load` checks it in this order,
each step before any work that the next one would make expensive:

1. ``config.json`` is a JSON object of at most 1 MiB with the model's type and exactly the
   config's fields, each of the right type and size (:mod:`attnlab.models.config_check`);
2. the model is built on the meta device (no memory) and has at most ``MAX_PARAMETERS``;
3. the safetensors header names exactly the model's tensors, with its shapes and floating
   dtypes; only then are the tensors read.

Every failure is one :class:`SavedFileError` line naming the file (a missing file is a
``FileNotFoundError``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from attnlab.errors import AttnlabError
from attnlab.models.config_check import MAX_PARAMETERS, check_config_fields

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
#: Bound on a JSON file read from a saved folder (configs and states are a few KiB).
MAX_JSON_BYTES = 1 << 20
#: safetensors dtype names of floating tensors: every weight of a model is one of these.
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
# Enough names in a list of missing or unexpected tensors to see the pattern, on one line.
_MAX_NAMED = 4


class SavedFileError(AttnlabError, ValueError):
    """A file of a saved model or tokenizer is damaged, malformed, or asks for too much.

    The message is one line and starts with the file's path.
    """


def one_line(error: BaseException) -> str:
    """``str(error)`` on one line (third-party messages sometimes span several)."""
    return " ".join(str(error).split()) or type(error).__name__


def read_json(path: str | os.PathLike, *, max_bytes: int = MAX_JSON_BYTES):
    """The JSON value in file ``path``, read only when it holds at most ``max_bytes``.

    Raises ``FileNotFoundError`` when there is no such file and :class:`SavedFileError` when it
    is too large, not UTF-8, not JSON, or nested too deeply to parse.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (or not a file)")
    with open(path, "rb") as file:
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise SavedFileError(f"{path} is larger than {max_bytes} bytes, too large for this file")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise SavedFileError(f"{path} is not valid JSON ({one_line(error)})") from None


def read_json_object(path: str | os.PathLike, *, max_bytes: int = MAX_JSON_BYTES) -> dict:
    """:func:`read_json`, which must give a JSON object (a dict)."""
    value = read_json(path, max_bytes=max_bytes)
    if not isinstance(value, dict):
        raise SavedFileError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


def config_from_dict(config_class: type, data: dict, *, source: Path):
    """``config_class(**data)`` after checking ``data``'s field names and every value.

    ``source`` (the file ``data`` came from) starts every error message. Raises
    :class:`SavedFileError` for unknown or missing fields and for any value the class or
    :func:`~attnlab.models.config_check.check_config_fields` refuses.
    """
    fields = dataclasses.fields(config_class)
    known = sorted(f.name for f in fields)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise SavedFileError(f"{source}: {config_class.__name__} has no field(s) {unknown!r:.120}; "
                             f"its fields are {known}")
    required = {f.name for f in fields if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING}
    missing = sorted(required - set(data))
    if missing:
        raise SavedFileError(f"{source}: {config_class.__name__} needs field(s) {missing}")
    try:
        config = config_class(**data)
        check_config_fields(config)  # again for config classes whose __post_init__ does not
    except (TypeError, ValueError) as error:
        raise SavedFileError(f"{source}: {one_line(error)}") from None
    return config


def read_weights(path: Path, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of safetensors file ``path``, which must be exactly ``expected``'s.

    ``expected`` maps names to tensors (meta tensors will do) with the shapes and dtypes wanted.
    The header is checked before any tensor is read: the same names, the same shapes, a floating
    dtype where a floating tensor is expected (else the same dtype). Floating tensors come back
    in the expected dtype (a float64 or bfloat16 file loads into a float32 model). Raises
    :class:`SavedFileError` naming ``path``.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as file:
            names = set(file.keys())
            missing, unexpected = sorted(expected.keys() - names), sorted(names - expected.keys())
            if missing or unexpected:
                raise SavedFileError(
                    f"{path} does not hold the tensors its config describes: missing "
                    f"{missing[:_MAX_NAMED]}{'...' * (len(missing) > _MAX_NAMED)}, unexpected "
                    f"{unexpected[:_MAX_NAMED]!r:.200}{'...' * (len(unexpected) > _MAX_NAMED)}")
            for name, want in expected.items():
                piece = file.get_slice(name)
                shape, dtype = tuple(piece.get_shape()), piece.get_dtype()
                if shape != tuple(want.shape):
                    raise SavedFileError(f"{path}: tensor {name} has shape {list(shape)}, its config "
                                         f"needs {list(want.shape)}")
                if want.is_floating_point() and dtype not in FLOAT_DTYPES:
                    raise SavedFileError(f"{path}: tensor {name} has dtype {dtype}, not a floating "
                                         f"one ({', '.join(sorted(FLOAT_DTYPES))})")
            tensors = {name: file.get_tensor(name) for name in expected}
    except SafetensorError as error:
        raise SavedFileError(f"{path} is not a readable safetensors file ({one_line(error)})") from None
    except OSError as error:
        raise SavedFileError(f"{path} cannot be read ({one_line(error)})") from None
    for name, tensor in tensors.items():
        if tensor.dtype != expected[name].dtype:
            if not tensor.is_floating_point():
                raise SavedFileError(f"{path}: tensor {name} has dtype {tensor.dtype}, its model "
                                     f"needs {expected[name].dtype}")
            tensors[name] = tensor.to(expected[name].dtype)
    return tensors


def empty_model(model_class: type, config, source: Path, error: type[Exception]) -> torch.nn.Module:
    """``model_class(config)`` on the meta device (no memory, no random initialisation: every
    weight comes from a file), refused with ``error`` (one line naming ``source``) when the
    config is a combination the class cannot build or the model has more than
    ``MAX_PARAMETERS`` parameters."""
    try:
        with torch.device("meta"):
            model = model_class(config)
    except (TypeError, ValueError, RuntimeError) as problem:  # a combination the config allowed
        raise error(f"{source}: cannot build a {model_class.__name__} from it "
                    f"({one_line(problem)})") from None
    count = sum(t.numel() for t in model.state_dict().values())
    if count > MAX_PARAMETERS:
        raise error(f"{source} describes a model of {count:,} parameters, above the limit of "
                    f"{MAX_PARAMETERS:,}")
    return model


class SafetensorsModel:
    """Mixin for ``nn.Module`` subclasses with a dataclass ``self.config`` of type ``config_class``.

    ``config.json`` holds ``{"model_type": <class name>, **asdict(config)}``, so loading a folder
    written by another model class fails with a message that says which class wrote it.
    """

    config_class: type

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into folder ``path`` (created if needed).

        Both files are written to a temporary folder inside ``path`` and then renamed into place
        (``os.replace``), so a crash never leaves a half-written file. Returns the folder.
        """
        from safetensors.torch import save_file

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder, prefix=".saving-"))
        try:
            state = {name: t.detach().contiguous() for name, t in self.state_dict().items()}
            save_file(state, staging / WEIGHTS_FILE)
            config = {"model_type": type(self).__name__, **asdict(self.config)}
            (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
            for name in (WEIGHTS_FILE, CONFIG_FILE):
                os.replace(staging / name, folder / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike):
        """A model from a folder written by :meth:`save`, in eval mode, checked as the module
        docstring says before its weights are read.

        Raises ``FileNotFoundError`` naming a missing file and :class:`SavedFileError` (a
        ``ValueError``), one line naming the file, when the folder holds another model type, a
        config that is malformed or too large, or weights that are damaged or do not match it.
        """
        folder = Path(path)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name} not found (is {folder} a saved {cls.__name__}?)")
        config_path = folder / CONFIG_FILE
        data = read_json_object(config_path)
        model_type = data.pop("model_type", None)
        if model_type != cls.__name__:
            raise SavedFileError(f"{folder} holds a {model_type or 'model of unknown type'!s:.60}, "
                                 f"not a {cls.__name__}")
        config = config_from_dict(cls.config_class, data, source=config_path)
        model = empty_model(cls, config, config_path, SavedFileError)
        weights = read_weights(folder / WEIGHTS_FILE, model.state_dict())
        model.load_state_dict(weights, strict=True, assign=True)
        return model.eval()
