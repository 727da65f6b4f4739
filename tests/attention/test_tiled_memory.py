"""The tiled backend never holds an n x n tensor, in forward or backward, at n = 4096, and
skips the work that windows, causality and masks make empty.

Two independent witnesses for memory, each with a control proving it would have seen an n x n
tensor: ``saved_tensors_hooks`` sees every tensor autograd keeps for backward, and a
``TorchDispatchMode`` sees every tensor any operation produces (temporaries included).
Work is measured with PyTorch's ``FlopCounterMode``, relative to the same count for full attention.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from attnlab.attention import attention

N, D = 4096, 16
CONFIGS = [
    pytest.param(dict(), id="full"),
    pytest.param(dict(is_causal=True), id="causal"),
    pytest.param(dict(window=(256, 0)), id="window"),
]


def _inputs(heads: int):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(1, heads, N, D, generator=gen, requires_grad=True) for _ in range(3)]


def _forward_saving(backend: str, heads: int, **kwargs):
    """Run the forward, recording the numel of every tensor saved for backward."""
    saved: list[int] = []

    def pack(tensor):
        saved.append(tensor.numel())
        return tensor

    leaves = _inputs(heads)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = attention(*leaves, backend=backend, **kwargs)
    return out, leaves, saved


class LargestAllocation(TorchDispatchMode):
    """Records the largest storage (in elements) produced by any operation while active."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(result):
            if isinstance(tensor, torch.Tensor):
                size = tensor.untyped_storage().nbytes() // tensor.element_size()
                self.largest = max(self.largest, size)
        self.ops += 1
        return result


def _largest_allocations(backend: str, heads: int, **kwargs) -> tuple[LargestAllocation, ...]:
    """(forward's, backward's) largest allocations; also checks the grads are finite."""
    leaves = _inputs(heads)
    with LargestAllocation() as forward:
        out = attention(*leaves, backend=backend, **kwargs)
    with LargestAllocation() as backward:
        out.backward(torch.ones_like(out))
    assert all(leaf.grad.isfinite().all() for leaf in leaves)
    return forward, backward


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_tiled_saves_no_n_by_n_tensor_for_backward(kwargs):
    heads = 2
    out, leaves, saved = _forward_saving("tiled", heads, **kwargs)
    assert saved, "the hook saw nothing: the tiled forward recorded no autograd graph"
    assert max(saved) < N * N
    assert sum(saved) <= 8 * heads * N * D  # a few (n x D) tensors: q, k, v, output, lse
    out.backward(torch.ones_like(out))
    assert all(leaf.grad is not None and leaf.grad.isfinite().all() for leaf in leaves)


def test_control_the_reference_backend_saves_an_n_by_n_tensor():
    _, _, saved = _forward_saving("reference", heads=1)
    assert max(saved) >= N * N


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_tiled_allocates_no_n_by_n_tensor_in_forward_or_backward(kwargs):
    forward, backward = _largest_allocations("tiled", 2, **kwargs)
    assert forward.ops > 0 and backward.ops > 0
    assert forward.largest < N * N
    assert backward.largest < N * N


def test_control_the_reference_backend_allocates_n_by_n_in_forward_and_backward():
    forward, backward = _largest_allocations("reference", 1)
    assert forward.largest >= N * N
    assert backward.largest >= N * N


def _matmul_flops(heads: int, n: int, **kwargs) -> tuple[int, int]:
    """(forward, backward) matmul FLOPs of one tiled call, as PyTorch's flop counter sees them."""
    gen = torch.Generator().manual_seed(0)
    leaves = [torch.randn(1, heads, n, D, generator=gen, requires_grad=True) for _ in range(3)]
    with FlopCounterMode(display=False) as forward:
        out = attention(*leaves, backend="tiled", **kwargs)
    with FlopCounterMode(display=False) as backward:
        out.backward(torch.ones_like(out))
    return forward.get_total_flops(), backward.get_total_flops()


WORK_CASES = [
    # (kwargs, largest fraction of full attention's work; 64 x 64 tiles at n = 1024, 16 x 16 tiles)
    pytest.param(dict(window=(64, 0)), 0.2, id="window-of-64"),  # 2 of 16 key tiles per row
    pytest.param(dict(window=(64, 64)), 0.25, id="window-of-64-both-sides"),  # 3 of 16
    pytest.param(dict(is_causal=True), 0.6, id="causal"),  # 136 of 256 tiles
    # the first row of tiles (holding the 16 global queries) sees all 16 key tiles, every other
    # row its 2 window tiles and a quarter tile of global keys: (16 + 15 * 2.25) / 256 = 0.194
    pytest.param(dict(window=(64, 0), global_tokens=16), 0.2, id="window-of-64-16-global-tokens"),
    pytest.param(dict(attn_mask=torch.arange(1024) < 100), 0.2, id="mask-emptying-key-tiles"),  # 2 of 16
]


@pytest.mark.parametrize(("kwargs", "fraction"), WORK_CASES)
def test_tiled_skips_the_tiles_windows_causality_and_masks_make_empty(kwargs, fraction, set_blocks):
    n, heads = 1024, 1
    full_forward, full_backward = _matmul_flops(heads, n)
    set_blocks(64, 64)
    forward, backward = _matmul_flops(heads, n, **kwargs)
    assert 0 < forward <= fraction * full_forward
    assert 0 < backward <= fraction * full_backward
