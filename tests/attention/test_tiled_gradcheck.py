"""``torch.autograd.gradcheck`` (float64 finite differences) on the tiled and native backends'
backward.

Tiles are forced down to 2 queries x 3 keys (the native kernel rounds 3 keys up to its vector
width: 4 or 8 doubles), so these small inputs still cross many tiles, partial tiles at both ends
and tiles that masks, causality or the window skip.
"""

import math

import pytest
import torch

from attnlab.attention import attention, tiled

BATCH, LQ, LK, D, DV = 2, 7, 9, 3, 2


@pytest.fixture(autouse=True)
def tiny_blocks(set_blocks):
    set_blocks(2, 3)


def test_forced_block_sizes_reach_the_tiled_backend():
    assert tiled.choose_blocks(BATCH * 4, LQ, LK) == (2, 3)


def _inputs(hq=2, hk=2, lq=LQ, lk=LK, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(
        torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
        for shape in ((BATCH, hq, lq, D), (BATCH, hk, lk, D), (BATCH, hk, lk, DV))
    )


def _bool_mask(lq=LQ, lk=LK):
    """Random keep pattern that also empties query row 1 and key column 4."""
    mask = torch.rand(lq, lk, generator=torch.Generator().manual_seed(1)) < 0.7
    mask[1] = False
    mask[:, 4] = False
    return mask


def _float_mask(hq=2):
    values = torch.randn(BATCH, hq, LQ, LK, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return values.masked_fill(~_bool_mask(), -math.inf)


GRADCHECK_CASES = [
    pytest.param(dict(), {}, id="plain"),
    pytest.param(dict(), dict(attn_mask=_bool_mask()), id="bool-mask"),
    pytest.param(dict(), dict(attn_mask=_float_mask()), id="float-mask"),
    pytest.param(dict(), dict(is_causal=True), id="causal"),
    pytest.param(dict(lq=LK, lk=LQ), dict(is_causal=True), id="causal-lq>lk"),
    pytest.param(dict(), dict(window=(2, 1)), id="window"),
    pytest.param(dict(), dict(window=(0, 0)), id="window-diagonal-only"),
    pytest.param(dict(lq=3, lk=LK), dict(is_causal=True, query_offset=6), id="query-offset-causal"),
    pytest.param(dict(lq=4, lk=LK), dict(window=(2, 1), global_tokens=2, query_offset=3),
                 id="query-offset-window-global-tokens"),
    pytest.param(dict(), dict(alibi_slopes=torch.tensor([0.5, 0.25], dtype=torch.float64)), id="alibi"),
    pytest.param(dict(), dict(softcap=0.8, scale=1.0), id="softcap"),
    pytest.param(dict(hq=4, hk=2), dict(enable_gqa=True), id="gqa"),
    pytest.param(dict(hq=4, hk=1), dict(enable_gqa=True, is_causal=True), id="mqa-causal"),
    pytest.param(dict(), dict(attn_mask=_bool_mask(), is_causal=True), id="bool-mask-and-causal"),
    pytest.param(
        dict(hq=4, hk=2),
        dict(enable_gqa=True, attn_mask=_float_mask(hq=4), is_causal=True, window=(3, 0), softcap=2.0,
             alibi_slopes=torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64), scale=0.8),
        id="everything",
    ),
]


@pytest.mark.parametrize(("shapes", "kwargs"), GRADCHECK_CASES)
@pytest.mark.parametrize("backend", ["tiled", "native"])
def test_backward_passes_gradcheck(backend, shapes, kwargs):
    def fn(query, key, value):
        return attention(query, key, value, backend=backend, **kwargs)

    assert torch.autograd.gradcheck(fn, _inputs(**shapes))


def test_tiled_backward_with_dropout_passes_gradcheck_under_a_fixed_seed():
    """With the RNG reset before every call, dropout is a fixed function of the inputs, so the
    backward's regenerated keep-masks must be the forward's for finite differences to agree."""

    def fn(query, key, value):
        torch.manual_seed(0)
        return attention(query, key, value, dropout_p=0.4, is_causal=True, backend="tiled")

    assert torch.autograd.gradcheck(fn, _inputs())
