"""Saving and loading a model as a folder: ``model.safetensors`` + ``config.json``.

Every attnlab model class mixes in :class:`SafetensorsModel` and names its dataclass config in
``config_class``; ``model.save(folder)`` and ``Class.load(folder)`` then work the same way for
all of them. Never a pickle: weights are safetensors, the config is JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


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
        """A model from a folder written by :meth:`save`, in eval mode.

        Raises ``FileNotFoundError`` naming a missing file, ``ValueError`` when the folder holds
        another model type, and ``RuntimeError`` (from ``load_state_dict``) or a safetensors error
        when the weights are damaged or do not match the config.
        """
        from safetensors.torch import load_file

        folder = Path(path)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name} not found (is {folder} a saved {cls.__name__}?)")
        config = json.loads((folder / CONFIG_FILE).read_text())
        model_type = config.pop("model_type", None)
        if model_type != cls.__name__:
            raise ValueError(f"{folder} holds a {model_type or 'model of unknown type'}, "
                             f"not a {cls.__name__}")
        with torch.device("meta"):  # skip random initialisation: every weight comes from the file
            model = cls(cls.config_class(**config))
        model.load_state_dict(load_file(folder / WEIGHTS_FILE), strict=True, assign=True)
        return model.eval()
