"""attnlab's own semantics, beyond PyTorch's: ``window``, ``alibi_slopes``, ``softcap``,
``attn_mask`` together with ``is_causal``, fully masked rows, bf16 at large logits and dropout.

Everything is checked against :func:`formula`, a float64 transcription of the definition in
DESIGN.md written here independently of attnlab's own ``reference`` backend.
"""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from attnlab.attention import attention

BACKENDS = ("reference", "tiled", "native", "auto")
ALL_BACKENDS = ("reference", "tiled", "torch", "native", "auto")
DROPOUT_BACKENDS = ("reference", "tiled", "torch", "auto")  # the native kernel has no dropout
TOL = {torch.float64: dict(atol=1e-10, rtol=1e-8), torch.float32: dict(atol=1e-4, rtol=1e-4)}


def formula(query, key, value, attn_mask=None, is_causal=False, scale=None, window=None,
            alibi_slopes=None, softcap=None, global_tokens=0, query_offset=0):
    """DESIGN.md's definition in float64, one line per clause.

    s_ij = softcap·tanh(scale·q_i·k_j / softcap) - slope_h·|i-j| + float_mask_ij, and -inf where
    the bool mask is False, j > i (causal), j < i - left or j > i + right (window) unless
    i < global_tokens or j < global_tokens;
    output_i = softmax_j(s_ij) @ v, and 0 for a row with no allowed key.
    """
    q, k, v = (t.double() for t in (query, key, value))
    groups = q.shape[-3] // k.shape[-3]  # query head h reads key/value head h // groups
    k, v = k.repeat_interleave(groups, dim=-3), v.repeat_interleave(groups, dim=-3)
    lq, lk = q.shape[-2], k.shape[-2]
    i = torch.arange(lq).unsqueeze(-1) + query_offset  # (Lq, 1) query positions
    j = torch.arange(lk)  # (Lk,) key positions
    s = q @ k.transpose(-2, -1) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    if alibi_slopes is not None:
        s = s - alibi_slopes.double()[:, None, None] * (i - j).abs()
    in_window = torch.ones(lq, lk, dtype=torch.bool)
    if isinstance(window, int):
        window = (window, window)
    if window is not None:
        left, right = window
        if left not in (None, -1):
            in_window &= j >= i - left
        if right not in (None, -1):
            in_window &= j <= i + right
    allowed = in_window | (i < global_tokens) | (j < global_tokens)
    if is_causal:
        allowed &= j <= i
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        allowed = allowed & attn_mask
    elif attn_mask is not None:
        s = s + attn_mask.double()
    s = s.masked_fill(~allowed, -math.inf)
    empty = (s == -math.inf).all(dim=-1, keepdim=True)
    weights = torch.softmax(s.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)
    return weights @ v


def _randn(gen, *shape, dtype=torch.float64):
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


def _bool_mask(gen, shape, p_keep=0.7):
    return torch.rand(shape, generator=gen) < p_keep


def _float_mask(gen, shape, p_keep=0.7):
    values = 2 * torch.randn(shape, generator=gen, dtype=torch.float64)
    return values.masked_fill(~_bool_mask(gen, shape, p_keep), -math.inf)


def _assert_matches_formula(query, key, value, grad_out, backend, tol, **kwargs):
    """Forward and query/key/value gradients of ``attention`` against :func:`formula`."""
    ours_in = [t.clone().requires_grad_() for t in (query, key, value)]
    ours = attention(*ours_in, backend=backend, **kwargs)
    ours.backward(grad_out)
    ref_in = [t.double().requires_grad_() for t in (query, key, value)]
    kwargs.pop("enable_gqa", None)
    ref = formula(*ref_in, **kwargs)
    ref.backward(grad_out.double())
    assert ours.shape == ref.shape and ours.dtype == query.dtype
    assert_close(ours.double(), ref, **tol)
    for name, mine, theirs in zip(("query", "key", "value"), ours_in, ref_in, strict=True):
        assert_close(mine.grad.double(), theirs.grad, **tol, msg=f"grad of {name}")


def _extras_case(batch=(2,), hq=2, hk=2, lq=20, lk=20, d=6, dv=6, mask=None, **kwargs):
    """Inputs for a case; ``mask`` names a mask kind and its shape, e.g. ``("bool", (lq, lk))``."""
    gen = torch.Generator().manual_seed(0)
    query = _randn(gen, *batch, hq, lq, d)
    key = _randn(gen, *batch, hk, lk, d)
    value = _randn(gen, *batch, hk, lk, dv)
    grad_out = _randn(gen, *batch, hq, lq, dv)
    if mask is not None:
        kind, shape = mask
        kwargs["attn_mask"] = (_bool_mask if kind == "bool" else _float_mask)(gen, shape)
    if hq != hk:
        kwargs["enable_gqa"] = True
    return (query, key, value, grad_out), kwargs


EXTRAS_CASES = {
    "window-pair": dict(window=(2, 3)),
    "window-int": dict(window=3),
    "window-zero": dict(window=(0, 0)),
    "window-left-only": dict(window=(4, -1)),
    # Longformer-style global tokens: fewer than, and more than, one 8-query / 16-key tile.
    "window-global-tokens": dict(window=(2, 1), global_tokens=3),
    "window-causal-global-tokens": dict(window=(3, 0), is_causal=True, global_tokens=3),
    "window-global-tokens-over-a-tile": dict(lk=40, lq=40, window=(2, 2), global_tokens=17),
    "window-causal-global-tokens-over-a-tile-lq<lk": dict(lq=30, lk=45, window=(4, 0),
                                                          is_causal=True, global_tokens=10),
    "window-global-tokens-gqa-bool-mask": dict(hq=4, hk=2, window=(1, 1), global_tokens=2,
                                               mask=("bool", (20, 20))),
    "window-right-only-none": dict(window=(None, 2)),
    "window-right-only-minus-one": dict(window=(-1, 2)),
    "window-lq<lk": dict(lq=9, lk=40, window=(3, 5)),
    "window-lq>lk": dict(lq=40, lk=9, window=(3, 5)),
    "window-wider-than-blocks": dict(lq=40, lk=40, window=(30, 17)),
    "window-and-causal": dict(window=(1, 5), is_causal=True),
    # Queries after cached keys (decoding): positions query_offset + i.
    "offset-causal": dict(lq=5, lk=40, is_causal=True, query_offset=35),
    "offset-causal-window-alibi": dict(lq=12, lk=40, is_causal=True, window=(9, 0), query_offset=28,
                                       alibi_slopes=torch.tensor([0.5, 0.25])),
    "offset-causal-global-tokens-gqa": dict(hq=4, hk=2, lq=7, lk=40, is_causal=True, window=(5, 0),
                                            global_tokens=3, query_offset=33),
    "offset-one-query-bool-mask": dict(lq=1, lk=40, is_causal=True, query_offset=39,
                                       mask=("bool", (1, 40))),
    "offset-window-both-sides": dict(lq=10, lk=40, window=(4, 6), query_offset=15),
    "alibi": dict(hq=4, alibi_slopes=torch.tensor([0.5, 0.25, 0.125, 0.0625])),
    "alibi-gqa-causal": dict(hq=4, hk=2, alibi_slopes=torch.tensor([1.0, 0.5, 0.2, 0.1]), is_causal=True),
    "softcap": dict(softcap=2.0, scale=1.0),
    "softcap-causal-alibi-bool-mask": dict(softcap=1.5, is_causal=True, alibi_slopes=torch.tensor([0.3, 0.1]),
                                           mask=("bool", (20, 20))),
    "float-mask-window": dict(mask=("float", (2, 2, 20, 20)), window=(6, 2)),
    # attn_mask with is_causal: PyTorch refuses the pair, so the 'torch' backend is tested here too.
    "bool-mask-and-causal": dict(mask=("bool", (20, 20)), is_causal=True),
    "float-mask-and-causal": dict(mask=("float", (2, 1, 20, 20)), is_causal=True),
    "bool-mask-and-causal-lq<lk": dict(lq=9, lk=30, mask=("bool", (9, 30)), is_causal=True),
    "float-mask-and-causal-lq>lk-gqa": dict(lq=30, lk=9, hq=4, mask=("float", (4, 30, 9)), is_causal=True),
    "batch-rank2-gqa-window-padding-mask": dict(batch=(2, 3), hq=4, hk=2, window=(5, 5),
                                                mask=("bool", (2, 3, 1, 1, 20))),
    "everything": dict(batch=(), hq=4, hk=1, lq=25, lk=31, d=5, dv=3, scale=0.9, softcap=3.0, window=(7, 2),
                       is_causal=True, alibi_slopes=torch.tensor([0.4, 0.3, 0.2, 0.1]),
                       mask=("float", (4, 25, 31))),
}


def _backends_for(case: dict) -> tuple[str, ...]:
    """Every backend that runs the case: 'torch' only without the extras PyTorch lacks."""
    has_extras = {"window", "alibi_slopes", "softcap"} & case.keys()
    return BACKENDS if has_extras else (*BACKENDS, "torch")


EXTRAS_PARAMS = [
    pytest.param(backend, case, id=f"{backend}-{name}")
    for name, case in EXTRAS_CASES.items()
    for backend in _backends_for(case)
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize(("backend", "case"), EXTRAS_PARAMS)
def test_extras_forward_and_grads_match_the_formula(backend, case, dtype, small_blocks):
    tensors, kwargs = _extras_case(**case)
    query, key, value, grad_out = (t.to(dtype) for t in tensors)
    if "attn_mask" in kwargs and kwargs["attn_mask"].is_floating_point():
        kwargs["attn_mask"] = kwargs["attn_mask"].to(dtype)
    _assert_matches_formula(query, key, value, grad_out, backend, TOL[dtype], **kwargs)


@st.composite
def configurations(draw):
    """A random request: shapes, GQA, causal, window, mask, softcap, ALiBi, scale, tile sizes."""
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    hk = draw(st.integers(1, 2))
    hq = hk * draw(st.integers(1, 3))
    lq, lk = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    side = st.one_of(st.none(), st.just(-1), st.integers(0, 12))
    mask_shape = draw(st.sampled_from([(lq, lk), (*batch, 1, 1, lk), (*batch, hq, lq, lk),
                                       (hq, lq, 1)]))
    return dict(
        batch=batch, hq=hq, hk=hk, lq=lq, lk=lk, d=draw(st.integers(1, 8)), dv=draw(st.integers(1, 8)),
        is_causal=draw(st.booleans()),
        window=draw(st.one_of(st.none(), st.tuples(side, side))),
        mask=draw(st.one_of(st.none(), st.tuples(st.sampled_from(["bool", "float"]), st.just(mask_shape)))),
        softcap=draw(st.one_of(st.none(), st.floats(0.5, 10.0))),
        alibi=draw(st.booleans()),
        scale=draw(st.one_of(st.none(), st.floats(0.1, 2.0))),
        query_offset=draw(st.sampled_from([0, 0, 1, 7, 30])),
        blocks=(draw(st.sampled_from([1, 2, 4, 8, 16])), draw(st.sampled_from([1, 3, 4, 16]))),
        seed=draw(st.integers(0, 2**31)),
    )


@pytest.mark.parametrize("backend", ["tiled", "native"])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=configurations())
def test_blocked_backends_match_the_formula_on_random_configurations(backend, config, set_blocks):
    set_blocks(*config.pop("blocks"))
    gen = torch.Generator().manual_seed(config.pop("seed"))
    if config.pop("alibi"):
        config["alibi_slopes"] = torch.rand(config["hq"], generator=gen, dtype=torch.float64)
    tensors, kwargs = _extras_case(**config)
    _assert_matches_formula(*tensors, backend, TOL[torch.float64], **kwargs)


def _empty_row_case(how: str):
    """Inputs and kwargs where some query rows can attend to nothing; returns the empty rows."""
    gen = torch.Generator().manual_seed(1)
    lq, lk = (12, 5) if how == "window-past-the-keys" else (12, 10)
    query, key, value = _randn(gen, 2, 2, lq, 4), _randn(gen, 2, 2, lk, 4), _randn(gen, 2, 2, lk, 3)
    empty = torch.zeros(lq, dtype=torch.bool)
    kwargs = {}
    if how == "bool-mask":
        mask = _bool_mask(gen, (lq, lk), p_keep=1.0)
        mask[[2, 7]] = False
        empty[[2, 7]] = True
        kwargs["attn_mask"] = mask
    elif how == "float-mask":
        mask = torch.zeros(lq, lk, dtype=torch.float64)
        mask[[0, 11]] = -math.inf
        empty[[0, 11]] = True
        kwargs["attn_mask"] = mask
    elif how == "causal-and-mask":
        mask = torch.ones(lq, lk, dtype=torch.bool)
        mask[:, :3] = False  # with causality, queries 0..2 see only keys 0..2: nothing
        empty[:3] = True
        kwargs.update(attn_mask=mask, is_causal=True)
    elif how == "window-past-the-keys":
        kwargs["window"] = (0, 0)  # query i sees only key i: queries 5.. see nothing
        empty[lk:] = True
    elif how == "all-masked":
        kwargs["attn_mask"] = torch.zeros(lq, lk, dtype=torch.bool)
        empty[:] = True
    return (query.float(), key.float(), value.float()), kwargs, empty


EMPTY_ROW_CASES = [
    (backend, how)
    for how in ("bool-mask", "float-mask", "causal-and-mask", "window-past-the-keys", "all-masked")
    for backend in ALL_BACKENDS
    if not (backend == "torch" and how.startswith("window"))  # 'torch' has no window
]


@pytest.mark.parametrize(("backend", "how"), EMPTY_ROW_CASES)
def test_fully_masked_rows_output_zero_and_get_zero_grads(backend, how, small_blocks):
    (query, key, value), kwargs, empty = _empty_row_case(how)
    if "attn_mask" in kwargs and kwargs["attn_mask"].is_floating_point():
        kwargs["attn_mask"] = kwargs["attn_mask"].float()
    leaves = [t.clone().requires_grad_() for t in (query, key, value)]
    out = attention(*leaves, backend=backend, **kwargs)
    out.backward(torch.ones_like(out))
    assert torch.equal(out[..., empty, :], torch.zeros_like(out[..., empty, :]))
    assert torch.equal(leaves[0].grad[..., empty, :], torch.zeros_like(leaves[0].grad[..., empty, :]))
    ref_in = [t.double().requires_grad_() for t in (query, key, value)]
    ref = formula(*ref_in, **kwargs)
    ref.backward(torch.ones_like(ref))
    assert_close(out.double(), ref, **TOL[torch.float32])
    for mine, theirs in zip(leaves, ref_in, strict=True):
        assert mine.grad.isfinite().all()
        assert_close(mine.grad.double(), theirs.grad, **TOL[torch.float32])


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_no_keys_at_all_outputs_zeros_with_zero_grads(backend):
    query = torch.randn(2, 2, 5, 4, requires_grad=True)
    key, value = torch.randn(2, 2, 0, 4), torch.randn(2, 2, 0, 3)
    out = attention(query, key, value, backend=backend)
    out.backward(torch.ones_like(out))
    assert torch.equal(out, torch.zeros(2, 2, 5, 3))
    assert torch.equal(query.grad, torch.zeros_like(query))


@pytest.mark.parametrize(
    ("q_shape", "kv_len"),
    [pytest.param((2, 2, 0, 4), 6, id="no-queries"), pytest.param((0, 2, 5, 4), 6, id="empty-batch")],
)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_empty_queries_or_batch_give_an_empty_output(backend, q_shape, kv_len):
    query = torch.randn(q_shape)
    key, value = torch.randn(q_shape[0], 2, kv_len, 4), torch.randn(q_shape[0], 2, kv_len, 3)
    assert attention(query, key, value, backend=backend).shape == (*q_shape[:-1], 3)


LARGE_LOGIT_CASES = [
    pytest.param("tiled", {}, id="tiled"),
    pytest.param("tiled", dict(is_causal=True), id="tiled-causal"),
    pytest.param("native", {}, id="native"),
    pytest.param("native", dict(is_causal=True), id="native-causal"),
    pytest.param("auto", {}, id="auto"),
    pytest.param("auto", dict(window=(16, 16)), id="auto-window"),
]


@pytest.mark.parametrize(("backend", "kwargs"), LARGE_LOGIT_CASES)
def test_bf16_at_large_logits_is_nan_free_and_close_to_full_precision(backend, kwargs):
    """q and k of size ~100 give logits ~1e4: the softmax is nearly one-hot, and its winner must
    be the one full precision picks from the same bf16 inputs (scores kept beyond bf16)."""
    gen = torch.Generator().manual_seed(0)
    query, key = (100 * _randn(gen, 2, 4, 64, 16, dtype=torch.bfloat16) for _ in range(2))
    value, grad_out = (_randn(gen, 2, 4, 64, 16, dtype=torch.bfloat16) for _ in range(2))
    leaves = [t.clone().requires_grad_() for t in (query, key, value)]
    out = attention(*leaves, backend=backend, **kwargs)
    out.backward(grad_out)
    ref_in = [t.double().requires_grad_() for t in (query, key, value)]
    ref = formula(*ref_in, **kwargs)
    ref.backward(grad_out.double())
    assert out.isfinite().all()
    assert all(leaf.grad.isfinite().all() for leaf in leaves)
    assert_close(out.double(), ref, atol=2e-2, rtol=2e-2)
    assert_close(leaves[2].grad.double(), ref_in[2].grad, atol=6e-2, rtol=3e-2, msg="grad of value")
    # bf16 rounding of dS times keys of size ~100 allows errors of order 1 in dq and dk, not 100.
    for name, mine, theirs in zip(("query", "key"), leaves, ref_in, strict=False):
        assert_close(mine.grad.double(), theirs.grad, atol=2.0, rtol=0.0, msg=f"grad of {name}")


def _dropout_run(backend, seed):
    """Output and query/key/value grads of one dropout call after ``torch.manual_seed(seed)``."""
    gen = torch.Generator().manual_seed(3)
    leaves = [_randn(gen, 2, 2, 16, 8, dtype=torch.float32).requires_grad_() for _ in range(3)]
    torch.manual_seed(seed)
    out = attention(*leaves, dropout_p=0.3, is_causal=True, backend=backend)
    out.sum().backward()
    return out.detach(), [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("backend", DROPOUT_BACKENDS)
def test_dropout_with_the_same_seed_gives_the_same_output_and_grads(backend, small_blocks):
    out_a, grads_a = _dropout_run(backend, seed=11)
    out_b, grads_b = _dropout_run(backend, seed=11)
    assert torch.equal(out_a, out_b)
    for grad_a, grad_b in zip(grads_a, grads_b, strict=True):
        assert torch.equal(grad_a, grad_b)


@pytest.mark.parametrize("backend", DROPOUT_BACKENDS)
def test_dropout_with_another_seed_gives_another_output(backend, small_blocks):
    assert not torch.equal(_dropout_run(backend, seed=11)[0], _dropout_run(backend, seed=12)[0])


def _dropped_weights(backend, p, copies=1, lq=40, lk=40, causal=True):
    """(weights without dropout, the dropped and rescaled weights of ``copies`` batch copies).

    With one-hot values (value = identity) the output row i *is* the row of attention weights.
    """
    gen = torch.Generator().manual_seed(5)
    query, key = (_randn(gen, 1, 2, length, 8, dtype=torch.float32) for length in (lq, lk))
    value = torch.eye(lk).expand(1, 2, lk, lk)
    weights = attention(query, key, value, is_causal=causal, backend="reference")
    torch.manual_seed(0)
    expand = (copies, 2, -1, -1)
    dropped = attention(query.expand(expand), key.expand(expand), value.expand(expand),
                        dropout_p=p, is_causal=causal, backend=backend)
    return weights, dropped


@pytest.mark.parametrize("backend", DROPOUT_BACKENDS)
def test_dropout_drops_about_p_of_the_weights_and_rescales_the_rest(backend, small_blocks):
    p = 0.25
    weights, dropped = _dropped_weights(backend, p, copies=16)
    allowed = (weights > 0).expand_as(dropped)
    kept = allowed & (dropped != 0)
    assert torch.equal(dropped[~allowed], torch.zeros_like(dropped[~allowed]))
    assert abs(1 - kept.sum() / allowed.sum() - p) < 0.01  # ~25k weights: std of the rate ~0.003
    assert_close(dropped[kept], (weights.expand_as(dropped) / (1 - p))[kept], atol=1e-6, rtol=1e-5)


def test_tiled_dropout_masks_differ_between_batch_heads_and_tiles(small_blocks):
    _, dropped = _dropped_weights("tiled", 0.5, copies=2, lq=16, lk=32, causal=False)
    keep = dropped != 0  # (2 copies, 2 heads, 16, 32), identical inputs in every copy and tile
    patterns = [keep[0, 0], keep[1, 0], keep[0, 1], keep[1, 1]]
    tiles = [keep[0, 0, :8, :16], keep[0, 0, 8:, :16], keep[0, 0, :8, 16:], keep[0, 0, 8:, 16:]]
    for group in (patterns, tiles):
        for a in range(len(group)):
            for b in range(a):
                assert not torch.equal(group[a], group[b])


@pytest.mark.parametrize("backend", DROPOUT_BACKENDS)
def test_dropout_output_averages_to_the_output_without_dropout(backend):
    weights, dropped = _dropped_weights(backend, 0.3, copies=2000, lq=12, lk=12)
    # Each weight's mean over 2000 draws has std <= sqrt(0.3 / 0.7 / 2000) ~ 0.015.
    assert_close(dropped.mean(0, keepdim=True), weights, atol=0.08, rtol=0.0)
