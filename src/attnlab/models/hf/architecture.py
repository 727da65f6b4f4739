"""What attnlab needs to know of one family of Hugging Face models to load it into its own modules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Architecture:
    """How the folders of some ``model_type``s map onto one attnlab model class.

    ``config(hf, source, model_type)`` builds the attnlab config from ``config.json``'s dict
    (``source`` is its path, for messages) or raises ``ModelFolderError``. ``tensors(config)``
    gives every tensor the file must hold, ``{name: shape}``, with names as in the base model
    (``layers.0.self_attn.q_proj.weight``): a task model (``LlamaForCausalLM``) nests them under
    one of ``prefixes`` (``"model."``), found by where ``marker`` is. ``ignored(config)`` is a
    regular expression of names the file may hold that attnlab deliberately leaves unused (a
    pooler, a tied copy of the embeddings). ``convert(tensors, config)`` turns the file's tensors,
    by those names, into the attnlab model's ``state_dict``.
    """

    model_class: type
    config: Callable[[dict, Path, str], object]
    tensors: Callable[[object], dict[str, tuple[int, ...]]]
    convert: Callable[[dict[str, torch.Tensor], object], dict[str, torch.Tensor]]
    prefixes: tuple[str, ...]
    marker: str
    ignored: Callable[[object], str]
    encoder: bool = False
