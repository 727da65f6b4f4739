"""A NaN or inf in query, key or value has one meaning on every backend and at every length:
it turns exactly the output rows it reaches into NaN rows, and no other row changes.

The expected rows are derived here from an explicit ``(Lq, Lk)`` matrix of allowed pairs, not
from attnlab's own masking code."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.attention import attention

BACKENDS = ("reference", "tiled", "torch", "auto")
LENGTHS = (1, 7, 65, 130, 300)  # auto runs the reference formula up to 64, PyTorch's kernel above
SETUPS = ("none", "causal", "bool_mask", "float_mask", "gqa", "window")
PATTERNS = {  # tensor, row as a fraction of the length, value planted in one of its entries
    "nan_query": ("query", 1 / 3, math.nan),
    "-inf_key": ("key", 1 / 2, -math.inf),
    "inf_value": ("value", 1.0, math.inf),
}
HEADS, HEAD_DIM = 4, 8


def _request(n: int, setup: str, seed: int = 0):
    """Finite ``(query, key, value)``, the attention kwargs for ``setup`` and the ``(n, n)`` bool
    matrix of the pairs that setup allows, spelled out with plain comparisons."""
    gen = torch.Generator().manual_seed(seed)
    kv_heads = 2 if setup == "gqa" else HEADS
    query = torch.randn(2, HEADS, n, HEAD_DIM, generator=gen)
    key = torch.randn(2, kv_heads, n, HEAD_DIM, generator=gen)
    value = torch.randn(2, kv_heads, n, HEAD_DIM, generator=gen)
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    allowed, kwargs = torch.ones(n, n, dtype=torch.bool), {}
    if setup == "causal":
        allowed, kwargs = j <= i, dict(is_causal=True)
    elif setup == "bool_mask":
        allowed = torch.rand(n, n, generator=gen) > 0.4
        kwargs = dict(attn_mask=allowed)
    elif setup == "float_mask":
        allowed = torch.rand(n, n, generator=gen) > 0.4
        bias = torch.randn(n, n, generator=gen).masked_fill(~allowed, -math.inf)
        kwargs = dict(attn_mask=bias)
    elif setup == "gqa":
        kwargs = dict(enable_gqa=True)
    elif setup == "window":
        allowed, kwargs = (j >= i - 5) & (j <= i + 2), dict(window=(5, 2))
    return (query, key, value), kwargs, allowed


def _expected_nan_rows(query, key, value, allowed) -> torch.Tensor:
    """``(B, Hq, Lq)``: rows with a bad query row and some allowed key, or an allowed bad key."""
    groups = query.shape[1] // key.shape[1]
    bad_q = ~query.isfinite().all(-1)
    bad_kv = ~(key.isfinite().all(-1) & value.isfinite().all(-1)).repeat_interleave(groups, dim=1)
    reaches = (allowed & bad_kv[..., None, :]).any(-1)  # (B, Hq, Lq)
    return (bad_q & allowed.any(-1)) | reaches


def _replaced(tensors, value: float):
    """The tensors with every NaN/inf replaced by ``value``."""
    return [torch.where(t.isfinite(), t, value) for t in tensors]


def _assert_follows_the_rule(out, tensors, kwargs, allowed):
    expected = _expected_nan_rows(*tensors, allowed)
    assert torch.equal(out.isnan().all(-1), expected), "NaN rows differ from the rule"
    assert out[~expected].isfinite().all(), "a row the bad value cannot reach is not finite"
    # Unreached rows do not depend on what the bad entries were.
    clean = attention(*_replaced(tensors, 3.0), backend="reference", **kwargs)
    torch.testing.assert_close(out[~expected], clean[~expected], atol=1e-5, rtol=1e-5)
    return expected


CASES = [(b, n, s, p) for b in BACKENDS for n in LENGTHS for s in SETUPS for p in PATTERNS
         if not (b == "torch" and s == "window")]  # the torch backend refuses windows


@pytest.mark.parametrize(("backend", "n", "setup", "pattern"), CASES)
def test_nonfinite_input_makes_exactly_the_rows_it_reaches_nan(backend, n, setup, pattern):
    tensors, kwargs, allowed = _request(n, setup)
    name, where, bad = PATTERNS[pattern]
    target = dict(zip(("query", "key", "value"), tensors, strict=True))[name]
    target[0, 1 if name == "query" else 0, min(int(where * n), n - 1), 2] = bad
    out = attention(*tensors, backend=backend, **kwargs)
    expected = _assert_follows_the_rule(out, tensors, kwargs, allowed)
    assert expected.any() or setup in ("bool_mask", "float_mask")  # the rule did mark a row


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [7, 130])
def test_nan_query_row_with_no_allowed_key_stays_zeros(backend, n):
    (query, key, value), _, _ = _request(n, "none")
    allowed = torch.ones(n, n, dtype=torch.bool)
    allowed[3] = False
    query[:, :, 3:5] = math.nan  # row 3 has no key, row 4 has all of them
    out = attention(query, key, value, attn_mask=allowed, backend=backend)
    assert torch.equal(out[:, :, 3], torch.zeros_like(out[:, :, 3]))
    assert out[:, :, 4].isnan().all()
    assert out[:, :, [0, 1, 2, 5, 6]].isfinite().all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_a_masked_value_leaves_every_row_finite(backend):
    # 0 * NaN is NaN, so a weights @ value product would spread it to every row.
    (query, key, value), kwargs, _ = _request(130, "causal")
    value[:, :, -1] = math.nan  # only the last query may see the last key
    out = attention(query, key, value, backend=backend, **kwargs)
    assert out[:, :, :-1].isfinite().all()
    assert out[:, :, -1].isnan().all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_of_unreached_rows_are_finite_and_bad_entries_get_none(backend):
    tensors, kwargs, allowed = _request(65, "causal")
    tensors[1][0, 0, 40, 1] = math.nan
    leaves = [t.clone().requires_grad_() for t in tensors]
    out = attention(*leaves, backend=backend, **kwargs)
    expected = _expected_nan_rows(*tensors, allowed)
    out[~expected].sum().backward()
    assert all(leaf.grad.isfinite().all() for leaf in leaves)
    assert torch.equal(leaves[1].grad[0, 0, 40], torch.zeros(HEAD_DIM))  # seen only by NaN rows
    clean = [t.clone().requires_grad_() for t in _replaced(tensors, 0.0)]
    attention(*clean, backend="reference", **kwargs)[~expected].sum().backward()
    for leaf, ref in zip(leaves, clean, strict=True):
        torch.testing.assert_close(leaf.grad, ref.grad, atol=1e-5, rtol=1e-5)


def test_nan_query_without_any_key_gives_zeros():
    query = torch.full((1, 2, 3, 4), math.nan)
    out = attention(query, torch.randn(1, 2, 0, 4), torch.randn(1, 2, 0, 4), backend="tiled")
    assert torch.equal(out, torch.zeros(1, 2, 3, 4))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 90),
    setup=st.sampled_from(["none", "causal", "bool_mask", "gqa"]),
    bad=st.lists(st.tuples(st.sampled_from(["query", "key", "value"]), st.floats(0, 1),
                           st.sampled_from([math.nan, math.inf, -math.inf])), min_size=1, max_size=4),
)
def test_every_backend_gives_the_same_nan_rows_and_the_same_numbers(n, setup, bad):
    tensors, kwargs, allowed = _request(n, setup, seed=n)
    named = dict(zip(("query", "key", "value"), tensors, strict=True))
    for name, where, value in bad:
        named[name][1, 0, min(int(where * n), n - 1), 5] = value
    outs = [attention(*tensors, backend=backend, **kwargs) for backend in BACKENDS]
    _assert_follows_the_rule(outs[0], tensors, kwargs, allowed)
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], atol=1e-5, rtol=1e-5, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_rule_holds_in_every_floating_dtype(backend, dtype):
    tensors, kwargs, allowed = _request(130, "causal")
    tensors = [t.to(dtype) for t in tensors]
    tensors[0][0, 2, 10, 0] = math.inf
    tensors[1][1, 3, 90, 4] = math.nan
    out = attention(*tensors, backend=backend, **kwargs)
    expected = _expected_nan_rows(*tensors, allowed)
    assert out.dtype == dtype
    assert torch.equal(out.isnan().all(-1), expected)
    assert out[~expected].isfinite().all()
