"""The explorer's "Recognise a picture" part: a ViT trained with ``attnlab train vit``.
Placeholder: routes come with issue 22."""

from __future__ import annotations


def routes(explorer) -> list:
    """``[(path, endpoint, methods), ...]`` this part adds to the app."""
    return []


def classifier_part(folder, loaded, taken: set[str]):
    """The explorer part for a checkpoint ``loaded`` from ``folder``."""
    from attnlab.serve.models import LoadError

    raise LoadError(f"--checkpoint {folder}: this part of the explorer is not built yet")
