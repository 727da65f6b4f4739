"""Reading a Hugging Face model folder as untrusted input: ``config.json`` and the safetensors.

Every check runs before the work it protects: JSON files are read only when small; the weights'
headers (names, shapes, dtypes) are read before any tensor, and only the tensors asked for are
read. Pickled weights (``pytorch_model.bin``, ``*.pt``) are never opened. Every refusal is one
:class:`ModelFolderError` line that names the file.
"""

from __future__ import annotations

from pathlib import Path

import torch

from attnlab.errors import AttnlabError
from attnlab.models.checkpoint import FLOAT_DTYPES, SavedFileError, one_line, read_json_object

CONFIG_FILE = "config.json"
SINGLE_WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
#: Weights in pickle form: named in the refusal, never opened (unpickling runs arbitrary code).
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
#: Keys with which a config asks ``transformers`` to import Python code shipped with the model.
REMOTE_CODE_KEYS = ("auto_map", "trust_remote_code")
#: A shard index lists each tensor once: a few hundred KiB for the largest models.
MAX_INDEX_BYTES = 8 << 20
MAX_SHARDS = 1024
# Enough names in a list of missing or unexpected tensors to see the pattern, on one line.
_MAX_NAMED = 4


class ModelFolderError(AttnlabError, ValueError):
    """A model folder is incomplete, inconsistent, unsupported or asks for too much.

    The message is one line and starts with the path of the file at fault.
    """


def read_json_file(path: Path, *, max_bytes: int | None = None, required: bool = True) -> dict | None:
    """The JSON object in ``path``, bounded as :func:`attnlab.models.checkpoint.read_json` does;
    None for a missing optional file. :class:`ModelFolderError` for a missing required one, a
    file too large, or anything but a JSON object."""
    if not path.is_file():
        if required:
            raise ModelFolderError(f"{path} not found: a model folder needs {CONFIG_FILE}, weights in "
                                   f"*.safetensors and tokenizer.json")
        return None
    try:
        return read_json_object(path) if max_bytes is None else read_json_object(path, max_bytes=max_bytes)
    except SavedFileError as error:
        raise ModelFolderError(str(error)) from None


def read_config(folder: Path) -> dict:
    """``config.json`` of ``folder`` as a dict, refused when it asks for remote code."""
    path = folder / CONFIG_FILE
    config = read_json_file(path)
    remote = [key for key in REMOTE_CODE_KEYS if key in config]
    if remote:
        raise ModelFolderError(f"{path} asks for remote code ({remote[0]}); attnlab never runs code from a "
                               f"model folder, it builds the architectures it knows with its own modules")
    return config


def refuse_other_values(hf: dict, source: Path, model_type: str, rules: dict[str, tuple]) -> None:
    """``ModelFolderError`` when a key of ``rules`` has a value outside its allowed ones.

    ``rules`` maps a config key to ``(default, *allowed)``: the default stands for a missing key,
    and the first allowed value is the one named in the message.
    """
    for key, (default, *allowed) in rules.items():
        value = hf.get(key, default)
        if not any(value == ok and type(value) is type(ok) for ok in allowed):
            raise ModelFolderError(f"{source}: {key}={value!r:.60} is not supported for {model_type} "
                                   f"(attnlab implements {key}={allowed[0]!r})")


def required(hf: dict, key: str, source: Path, model_type: str):
    """``hf[key]``; ``ModelFolderError`` naming the key when the config lacks it."""
    if key not in hf:
        raise ModelFolderError(f"{source} has no {key!r}, which a {model_type} config needs")
    return hf[key]


def build_config(config_class: type, values: dict[str, tuple[str, object]], source: Path):
    """``config_class(**{field: value})`` for ``values`` ``{field: (config.json key, value)}``.

    The class runs :func:`attnlab.models.config_check.check_config_fields` (types and sizes,
    before anything is allocated) and its own rules; a refusal is a ``ModelFolderError`` naming
    the file and the config.json key of the field at fault.
    """
    try:
        return config_class(**{field: value for field, (_, value) in values.items()})
    except (TypeError, ValueError) as error:
        message = one_line(error)
        keys = [key for field, (key, _) in values.items() if f".{field}" in message or f"{field}=" in message]
        origin = f" (config.json's {', '.join(dict.fromkeys(keys))})" if keys else ""
        raise ModelFolderError(f"{source}: {message}{origin}") from None


class WeightFiles:
    """The safetensors weights of a folder with their headers read: no tensor data yet.

    One ``model.safetensors``, or shards listed by ``model.safetensors.index.json``, or a single
    other ``*.safetensors`` file (``source``: the index or that file). ``file_of``, ``shapes``
    and ``dtypes`` map every tensor name to its file, shape and safetensors dtype name;
    :meth:`read` loads the tensors asked for.

    Raises ``ModelFolderError`` when there are no safetensors (naming any pickle files instead),
    several without an index, an index that is malformed or names files outside the folder or
    tensors its shards lack, or a file whose header safetensors cannot read (truncated, damaged).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.file_of: dict[str, Path] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, str] = {}
        index = folder / INDEX_FILE
        if index.is_file():
            self.source = index
            self._read_index(index)
            return
        files = sorted(folder.glob("*.safetensors"))
        if (folder / SINGLE_WEIGHTS_FILE).is_file():
            files = [folder / SINGLE_WEIGHTS_FILE]
        if not files:
            pickles = sorted(p.name for pattern in PICKLE_PATTERNS for p in folder.glob(pattern))
            if pickles:
                raise ModelFolderError(f"{folder / pickles[0]} holds weights in pickle form, which attnlab "
                                       f"never unpickles (it can run code); safetensors weights are needed "
                                       f"({SINGLE_WEIGHTS_FILE})")
            raise ModelFolderError(f"{folder / SINGLE_WEIGHTS_FILE} not found: the folder has no "
                                   f"*.safetensors weights")
        if len(files) > 1:
            raise ModelFolderError(f"{folder / INDEX_FILE} not found: {len(files)} *.safetensors files and "
                                   f"no index saying which tensor each holds")
        self.source = files[0]
        self.file_of = dict.fromkeys(self._read_header(files[0]), files[0])

    def _read_index(self, index: Path) -> None:
        weight_map = read_json_file(index, max_bytes=MAX_INDEX_BYTES).get("weight_map")
        if not isinstance(weight_map, dict) or not all(
            isinstance(name, str) and isinstance(file, str) for name, file in weight_map.items()
        ):
            raise ModelFolderError(f"{index} must hold a \"weight_map\" object of tensor name -> file name")
        shards = sorted(set(weight_map.values()))
        if len(shards) > MAX_SHARDS:
            raise ModelFolderError(f"{index} lists {len(shards)} files, more than the {MAX_SHARDS} attnlab "
                                   f"reads")
        for shard in shards:
            # A bare file name: the index cannot point outside the folder.
            if Path(shard).name != shard or not shard.endswith(".safetensors") or shard.startswith("."):
                raise ModelFolderError(f"{index} names {shard!r:.80}, not a .safetensors file of the folder")
            path = self.folder / shard
            if not path.is_file():
                raise ModelFolderError(f"{path} not found, but {index.name} lists it")
            held = self._read_header(path)
            listed = sorted(name for name, file in weight_map.items() if file == shard)
            absent = [name for name in listed if name not in held]
            if absent:
                raise ModelFolderError(f"{path} lacks tensor(s) {absent[:_MAX_NAMED]} that {index.name} "
                                       f"places in it")
            self.file_of.update(dict.fromkeys(listed, path))
        # Tensors a shard holds beyond the index are not part of the model.
        self.shapes = {name: self.shapes[name] for name in self.file_of}
        self.dtypes = {name: self.dtypes[name] for name in self.file_of}

    def _read_header(self, path: Path) -> set[str]:
        """The names in ``path``'s header; their shapes and dtypes go to ``shapes``/``dtypes``."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(path, framework="pt") as file:
                names = set(file.keys())
                for name in names:
                    piece = file.get_slice(name)
                    self.shapes[name], self.dtypes[name] = tuple(piece.get_shape()), piece.get_dtype()
        except SafetensorError as error:
            raise ModelFolderError(f"{path} is not a readable safetensors file ({one_line(error)})") from None
        except OSError as error:
            raise ModelFolderError(f"{path} cannot be read ({one_line(error)})") from None
        return names

    def check(self, expected: dict[str, tuple[int, ...]], rename: dict[str, str]) -> None:
        """``ModelFolderError`` unless the file tensors ``rename`` maps to ``expected``'s names
        have exactly its shapes and floating dtypes. ``rename``: file name -> expected name."""
        for file_name, name in rename.items():
            shape, dtype = self.shapes[file_name], self.dtypes[file_name]
            path = self.file_of[file_name]
            if shape != expected[name]:
                raise ModelFolderError(f"{path}: tensor {file_name} has shape {list(shape)}, config.json "
                                       f"needs {list(expected[name])}")
            if dtype not in FLOAT_DTYPES:
                raise ModelFolderError(f"{path}: tensor {file_name} has dtype {dtype}, not a floating one "
                                       f"({', '.join(sorted(FLOAT_DTYPES))})")

    def read(self, rename: dict[str, str]) -> dict[str, torch.Tensor]:
        """The tensors ``rename`` names (file name -> the name to return them under), float32."""
        from safetensors import SafetensorError, safe_open

        tensors = {}
        for path in sorted(set(self.file_of[name] for name in rename)):
            try:
                with safe_open(path, framework="pt") as file:
                    for file_name, name in rename.items():
                        if self.file_of[file_name] == path:
                            tensors[name] = file.get_tensor(file_name).float()
            except SafetensorError as error:
                raise ModelFolderError(f"{path} is not a readable safetensors file "
                                       f"({one_line(error)})") from None
            except OSError as error:
                raise ModelFolderError(f"{path} cannot be read ({one_line(error)})") from None
        return tensors


def named(names: list[str]) -> str:
    """Up to a few of ``names``, on one line."""
    return f"{names[:_MAX_NAMED]!r:.200}{'...' * (len(names) > _MAX_NAMED)}"
