"""Hugging Face model folders loaded into attnlab's own modules, never into ``transformers``.

A folder holds ``config.json``, weights in ``*.safetensors`` (one file, or shards listed by
``model.safetensors.index.json``) and ``tokenizer.json``; optionally ``tokenizer_config.json``
(special tokens, chat template) and sentence-transformers' ``modules.json`` / ``1_Pooling``.
:func:`load_folder` checks it in this order, each step before the work the next would make
expensive::

    config.json       bounded JSON, no remote code, a supported model_type, every value typed
                      and bounded by the config class (check_config_fields) -> attnlab config
    the model         built on the meta device (no memory), at most MAX_PARAMETERS
    weight headers    every tensor the config implies, by name and shape, nothing unknown
    weights           read, converted (renamed; GPT-2's Conv1D transposed and split), assigned
    tokenizer         tokenizer.json no larger than the vocabulary, chat template compiled

Supported ``model_type``\\ s: :data:`ARCHITECTURES`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from attnlab.models.checkpoint import empty_model
from attnlab.models.hf.architecture import Architecture
from attnlab.models.hf.bert import BERT
from attnlab.models.hf.files import CONFIG_FILE, ModelFolderError, WeightFiles, named, read_config
from attnlab.models.hf.gpt2 import GPT2
from attnlab.models.hf.llama import LLAMA
from attnlab.models.hf.tokenizer import decoder_tokenizer, encoder_tokenizer, pooling

#: ``model_type`` -> how its folders load.
ARCHITECTURES: dict[str, Architecture] = {
    "bert": BERT,
    "gpt2": GPT2,
    "llama": LLAMA,
    "mistral": LLAMA,
    "qwen2": LLAMA,
}


def load_folder(path: str | os.PathLike):
    """``(model, tokenizer)`` from a Hugging Face model folder: float32, eval mode,
    ``model.tokenizer`` set (and ``model.pooling`` for an encoder).

    ``bert`` folders give a :class:`~attnlab.models.bert.BertEncoder`, ``llama``/``qwen2``/
    ``mistral`` a :class:`~attnlab.models.llama.LlamaDecoder`, ``gpt2`` a
    :class:`~attnlab.models.gpt.GPT`.

    Raises :class:`ModelFolderError`, one line naming the file, for: a path that is not a
    folder; a missing ``config.json``, weights or ``tokenizer.json``; weights only in pickle
    form; a config asking for remote code, of another ``model_type``, with a value of the wrong
    type, out of bounds or unsupported; tensors missing, unknown, of the wrong shape or dtype;
    a damaged safetensors file; a tokenizer that does not fit the model.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ModelFolderError(f"{folder} is not a folder: a model folder holds {CONFIG_FILE}, *.safetensors "
                               f"weights and tokenizer.json")
    hf = read_config(folder)
    source = folder / CONFIG_FILE
    model_type = hf.get("model_type")
    architecture = ARCHITECTURES.get(model_type) if isinstance(model_type, str) else None
    if architecture is None:
        raise ModelFolderError(f"{source}: model_type {model_type!r:.60} is not supported; attnlab loads "
                               f"{', '.join(sorted(ARCHITECTURES))}")
    config = architecture.config(hf, source, model_type)
    model = empty_model(architecture.model_class, config, source, ModelFolderError)

    weights = WeightFiles(folder)
    expected = architecture.tensors(config)
    rename = _match_names(weights, architecture, config, expected)
    weights.check(expected, rename)
    state = architecture.convert(weights.read(rename), config)
    model.load_state_dict(state, strict=True, assign=True)

    if architecture.encoder:
        tokenizer = encoder_tokenizer(folder, config.vocab_size, config.max_positions)
        model.pooling = pooling(folder)
    else:
        tokenizer = decoder_tokenizer(folder, hf, config.vocab_size, config.max_positions)
    model.tokenizer = tokenizer
    return model.eval(), tokenizer


def _match_names(weights: WeightFiles, architecture: Architecture, config,
                 expected: dict[str, tuple[int, ...]]) -> dict[str, str]:
    """``{file name: expected name}`` for every expected tensor; ``ModelFolderError`` when one is
    missing or the file holds a tensor that is neither expected nor deliberately ignored.

    A task model nests the base model's tensors under a prefix (``model.``, ``transformer.``,
    ``bert.``): the first of the architecture's prefixes under which its marker tensor sits.
    """
    names = weights.file_of
    prefix = next((p for p in architecture.prefixes if p + architecture.marker in names), "")
    local = {name[len(prefix):] if name.startswith(prefix) else name: name for name in names}
    missing = sorted(set(expected) - set(local))
    if missing:
        missing = named([prefix + name for name in missing])
        raise ModelFolderError(f"{weights.source}: the weights lack tensor(s) {missing} that config.json "
                               f"implies")
    ignored = re.compile(architecture.ignored(config))
    unknown = sorted(local[n] for n in local if n not in expected and not ignored.fullmatch(n))
    if unknown:
        raise ModelFolderError(f"{weights.source}: the weights hold tensor(s) {named(unknown)} that a "
                               f"{type(config).__name__} model does not have")
    return {local[name]: name for name in expected}


__all__ = ["ARCHITECTURES", "ModelFolderError", "load_folder"]
