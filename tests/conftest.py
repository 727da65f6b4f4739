"""Shared test configuration: the ``cuda`` marker's auto-skip and tiled block-size fixtures."""

import pytest
import torch

from attnlab.attention import tiled


def pytest_collection_modifyitems(config, items):
    """Tests marked ``@pytest.mark.cuda`` skip when no CUDA GPU is present (the only skip)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def set_blocks(monkeypatch):
    """``set_blocks(block_q, block_k)`` makes the tiled backend use tiles of that size (clipped
    to the sequence lengths) for the rest of the test.

    With a one-element tile budget :func:`tiled.choose_blocks` falls to its lower bound, so
    ``MIN_BLOCK_Q`` becomes the query block size exactly.
    """

    def set_(block_q: int, block_k: int) -> None:
        monkeypatch.setattr(tiled, "TILE_ELEMENTS", 1)
        monkeypatch.setattr(tiled, "MIN_BLOCK_Q", block_q)
        monkeypatch.setattr(tiled, "BLOCK_K", block_k)

    return set_


@pytest.fixture
def small_blocks(set_blocks):
    """8-query x 16-key tiles: short sequences already take the tiled backend's multi-block,
    partial-block and skipped-block paths."""
    set_blocks(8, 16)
