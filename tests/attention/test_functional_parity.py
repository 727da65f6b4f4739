"""``attention`` equals PyTorch's ``scaled_dot_product_attention`` for every argument they share.

The reference is PyTorch itself, run in float64 on 4-D views of the very same (already rounded)
inputs, so the only differences left are the backend's own rounding errors. Forward and the
gradients of query, key and value are compared on every backend.
"""

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from attnlab.attention import attention, choose_backend, native
from attnlab.attention.functional import NATIVE_MIN_QUERIES, SHORT_CPU_LENGTH

BACKENDS = ("reference", "tiled", "torch", "native", "auto")
# What `auto` picks on the CPU for float32 without dropout: the native kernel wherever it is
# built (tests/attention/test_native.py checks the fallback to the rule without it).
CPU = "native" if native.available() else None

# Forward / gradient tolerances per dtype, against float64 PyTorch on the same rounded inputs.
FORWARD_TOL = {
    torch.float64: dict(atol=1e-11, rtol=1e-9),
    torch.float32: dict(atol=2e-5, rtol=1e-4),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}
GRAD_TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-8),
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.bfloat16: dict(atol=6e-2, rtol=3e-2),
}


@dataclass(frozen=True)
class Case:
    """One request: shapes (``batch`` are the leading dims) and the shared arguments."""

    batch: tuple[int, ...] = (2,)
    hq: int = 2
    hk: int = 2
    lq: int = 7
    lk: int = 7
    d: int = 8
    dv: int = 8
    mask: str | None = None  # kind of attn_mask, see _make_mask
    is_causal: bool = False
    scale: float | None = None
    enable_gqa: bool = False
    seq_major: bool = False  # inputs are (..., seq, heads, dim) tensors transposed: not contiguous


CASES = [
    pytest.param(Case(lq=1, lk=1), id="seq1"),
    pytest.param(Case(lq=7, lk=7), id="seq7"),
    pytest.param(Case(lq=129, lk=129), id="seq129"),
    pytest.param(Case(lq=129, lk=129, is_causal=True), id="seq129-causal"),
    pytest.param(Case(lq=1, lk=129), id="one-query-many-keys"),
    pytest.param(Case(lq=129, lk=1), id="many-queries-one-key"),
    pytest.param(Case(lq=7, lk=129), id="lq<lk"),
    pytest.param(Case(lq=129, lk=7), id="lq>lk"),
    pytest.param(Case(lq=7, lk=129, is_causal=True), id="lq<lk-causal"),
    pytest.param(Case(lq=129, lk=7, is_causal=True), id="lq>lk-causal"),
    pytest.param(Case(lq=1, lk=1, is_causal=True), id="seq1-causal"),
    pytest.param(Case(scale=0.3), id="scale"),
    pytest.param(Case(lq=20, lk=33, scale=2.5, is_causal=True), id="large-scale-causal"),
    pytest.param(Case(hq=8, hk=2, enable_gqa=True), id="gqa-8q-2kv"),
    pytest.param(Case(hq=8, hk=1, enable_gqa=True), id="mqa-8q-1kv"),
    pytest.param(Case(hq=8, hk=2, lq=33, lk=40, is_causal=True, enable_gqa=True), id="gqa-causal"),
    pytest.param(Case(hq=8, hk=2, mask="bool-full", enable_gqa=True), id="gqa-per-head-mask"),
    pytest.param(Case(hq=4, hk=1, mask="float-heads", enable_gqa=True), id="mqa-float-head-mask"),
    pytest.param(Case(enable_gqa=True), id="gqa-flag-equal-heads"),
    pytest.param(Case(batch=()), id="batch-rank0"),
    pytest.param(Case(batch=(3,)), id="batch-rank1"),
    pytest.param(Case(batch=(2, 3)), id="batch-rank2"),
    pytest.param(Case(batch=(), lq=20, lk=9, is_causal=True), id="batch-rank0-causal"),
    pytest.param(Case(batch=(2, 3), mask="bool-padding"), id="batch-rank2-padding-mask"),
    pytest.param(Case(batch=(2, 3), hq=4, hk=2, mask="float-full", enable_gqa=True),
                 id="batch-rank2-gqa-float-mask"),
    pytest.param(Case(dv=5), id="value-dim-differs"),
    pytest.param(Case(lq=20, lk=33, is_causal=True, seq_major=True), id="non-contiguous"),
    pytest.param(Case(hq=4, hk=2, lq=20, lk=33, mask="bool-padding", enable_gqa=True, seq_major=True),
                 id="non-contiguous-gqa-mask"),
    pytest.param(Case(d=3, dv=11, lq=9, lk=20, is_causal=True), id="value-dim-differs-causal"),
    pytest.param(Case(lq=33, lk=40, mask="bool-2d"), id="bool-mask-2d"),
    pytest.param(Case(lq=33, lk=40, mask="bool-padding"), id="bool-mask-padding"),
    pytest.param(Case(lq=33, lk=40, mask="bool-full"), id="bool-mask-full"),
    pytest.param(Case(lq=33, lk=40, mask="float-2d"), id="float-mask-2d"),
    pytest.param(Case(lq=33, lk=40, mask="float-heads"), id="float-mask-heads"),
    pytest.param(Case(lq=33, lk=40, mask="float-full", scale=0.7), id="float-mask-full-scale"),
]


def _make_mask(case: Case, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor | None:
    """A mask of ``case.mask``'s kind; every query keeps key 0, so no row is empty (PyTorch's
    own results for empty rows differ between its kernels; attnlab's are tested elsewhere)."""
    if case.mask is None:
        return None
    kind, layout = case.mask.split("-")
    shape = {
        "2d": (case.lq, case.lk),
        "padding": (*case.batch, 1, 1, case.lk),
        "heads": (case.hq, 1, case.lk),
        "full": (*case.batch, case.hq, case.lq, case.lk),
    }[layout]
    keep = torch.rand(shape, generator=gen) > 0.4
    keep[..., 0] = True
    if kind == "bool":
        return keep
    values = 2 * torch.randn(shape, generator=gen, dtype=torch.float64)
    return values.masked_fill(~keep, float("-inf")).to(dtype)


def _make_inputs(case: Case, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        if case.seq_major:
            swapped = torch.randn((*shape[:-3], shape[-2], shape[-3], shape[-1]), generator=gen,
                                  dtype=torch.float64)
            return swapped.to(dtype).transpose(-3, -2)
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)

    query = randn(*case.batch, case.hq, case.lq, case.d)
    key = randn(*case.batch, case.hk, case.lk, case.d)
    value = randn(*case.batch, case.hk, case.lk, case.dv)
    grad_out = randn(*case.batch, case.hq, case.lq, case.dv)
    return query, key, value, _make_mask(case, dtype, gen), grad_out


def _sdpa_float64(query, key, value, attn_mask=None, **kwargs):
    """PyTorch's SDPA in float64 on 4-D views (batch dims flattened), reshaped back."""
    full = (*query.shape[:-1], key.shape[-2])
    q, k, v = (t.double().reshape(-1, *t.shape[-3:]) for t in (query, key, value))
    if attn_mask is not None:
        attn_mask = attn_mask.expand(full).reshape(-1, *full[-3:])
        if attn_mask.is_floating_point():
            attn_mask = attn_mask.double()
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, **kwargs)
    return out.reshape(*query.shape[:-1], value.shape[-1])


def _assert_matches_sdpa(case: Case, backend: str, dtype: torch.dtype, seed: int = 0) -> None:
    query, key, value, mask, grad_out = _make_inputs(case, dtype, seed)
    shared = dict(dropout_p=0.0, is_causal=case.is_causal, scale=case.scale,
                  enable_gqa=case.enable_gqa)
    ours_in = [t.clone().requires_grad_() for t in (query, key, value)]  # keeps the strides
    ours = attention(*ours_in, attn_mask=mask, backend=backend, **shared)
    ours.backward(grad_out)
    ref_in = [t.double().requires_grad_() for t in (query, key, value)]
    ref = _sdpa_float64(*ref_in, attn_mask=mask, **shared)
    ref.backward(grad_out.double())

    assert ours.dtype == dtype
    assert ours.shape == ref.shape == (*case.batch, case.hq, case.lq, case.dv)
    assert_close(ours.double(), ref, **FORWARD_TOL[dtype])
    for name, mine, theirs in zip(("query", "key", "value"), ours_in, ref_in, strict=True):
        assert mine.grad.dtype == dtype
        assert_close(mine.grad.double(), theirs.grad, **GRAD_TOL[dtype], msg=f"grad of {name}")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_forward_and_grads_match_pytorch(backend, case, small_blocks):
    _assert_matches_sdpa(case, backend, torch.float32)


DTYPE_CASES = [
    pytest.param(Case(lq=129, lk=129, is_causal=True), id="seq129-causal"),
    pytest.param(Case(lq=7, lk=129, is_causal=True), id="lq<lk-causal"),
    pytest.param(Case(hq=8, hk=2, lq=33, lk=40, is_causal=True, enable_gqa=True), id="gqa-causal"),
    pytest.param(Case(batch=(2, 3), lq=33, lk=40, mask="float-full"), id="batch-rank2-float-mask"),
    pytest.param(Case(batch=(), lq=33, lk=40, mask="bool-2d"), id="batch-rank0-bool-mask"),
    pytest.param(Case(d=3, dv=11, lq=9, lk=20, scale=0.5), id="value-dim-differs-scale"),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=["fp64", "bf16"])
@pytest.mark.parametrize("case", DTYPE_CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_and_grads_match_pytorch_in_dtype(backend, case, dtype, small_blocks):
    _assert_matches_sdpa(case, backend, dtype)


@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_seq_1000_with_default_blocks_matches_pytorch(backend, is_causal):
    case = Case(batch=(1,), hq=2, hk=2, lq=1000, lk=1000, d=16, dv=16, is_causal=is_causal)
    _assert_matches_sdpa(case, backend, torch.float32)


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(Case(lq=33, lk=40), id="plain"),
        pytest.param(Case(lq=33, lk=40, is_causal=True, mask="bool-2d"), id="mask-and-causal"),
        pytest.param(Case(dv=5), id="value-dim-differs"),
    ],
)
def test_auto_output_equals_the_chosen_backends_output(case, small_blocks):
    query, key, value, mask, _ = _make_inputs(case, torch.float32)
    kwargs = dict(attn_mask=mask, is_causal=case.is_causal, enable_gqa=case.enable_gqa)
    chosen = choose_backend(query, key, value, **kwargs)
    assert torch.equal(attention(query, key, value, backend="auto", **kwargs),
                       attention(query, key, value, backend=chosen, **kwargs))


def _plain_inputs(dtype=torch.float32, dv=8, seq=80):
    """Inputs longer than SHORT_CPU_LENGTH unless ``seq`` is small."""
    return torch.randn(2, 4, seq, 8, dtype=dtype), torch.randn(2, 4, seq, 8, dtype=dtype), \
        torch.randn(2, 4, seq, dv, dtype=dtype)


def test_choose_backend_picks_the_native_kernel_from_its_measured_lengths_on():
    from attnlab.attention.functional import NATIVE_CAUSAL_KEYS, NATIVE_KEYS

    assert (NATIVE_CAUSAL_KEYS, NATIVE_KEYS) == (128, 512)  # the lengths below straddle them
    for dtype in (torch.float32, torch.bfloat16):
        assert choose_backend(*_plain_inputs(dtype, seq=511)) == "torch"
        assert choose_backend(*_plain_inputs(dtype, seq=512)) == (CPU or "torch")
        assert choose_backend(*_plain_inputs(dtype, seq=127), is_causal=True) == "torch"
        assert choose_backend(*_plain_inputs(dtype, seq=128), is_causal=True) == (CPU or "torch")
    padding = torch.ones(512, dtype=torch.bool)
    assert choose_backend(*_plain_inputs(seq=512), attn_mask=padding) == (CPU or "torch")
    assert choose_backend(*_plain_inputs(seq=511), attn_mask=padding[:511]) == "torch"
    # float64 goes to the native kernel only by name (for gradcheck): auto keeps PyTorch's.
    assert choose_backend(*_plain_inputs(torch.float64, seq=512)) == "torch"


def test_choose_backend_keeps_pytorchs_kernel_for_short_causal_and_masked_requests():
    for seq in (16, 80):
        q, k, v = _plain_inputs(seq=seq)
        assert choose_backend(q, k, v, is_causal=True) == "torch"
        assert choose_backend(q, k, v, attn_mask=torch.ones(seq, seq, dtype=torch.bool)) == "torch"


@pytest.mark.parametrize(("lq", "lk", "expected"), [
    (16, 16, "reference"), (64, 64, "reference"), (1, 64, "reference"), (50, 33, "reference"),
    (65, 64, "torch"), (64, 65, "torch"), (80, 80, "torch"), (1, 200, "torch"),
    (1, 600, "torch"), (15, 600, "torch"), (16, 600, "fused"),  # decoding keeps PyTorch's kernel
])
def test_choose_backend_picks_the_plain_formula_for_short_unmasked_cpu_requests(lq, lk, expected):
    assert (max(lq, lk) <= SHORT_CPU_LENGTH) == (expected == "reference")
    assert NATIVE_MIN_QUERIES == 16  # the rows above straddle it
    expected = (CPU or "torch") if expected == "fused" else expected
    q, k, v = torch.randn(3, 4, lq, 8), torch.randn(3, 4, lk, 8), torch.randn(3, 4, lk, 8)
    assert choose_backend(q, k, v) == expected
    # Short requests the fused kernel cannot run (dropout, value head_dim != key head_dim) too.
    if expected == "reference":
        assert choose_backend(q, k, v, dropout_p=0.1) == "reference"
        assert choose_backend(q, k, v[..., :5]) == "reference"


def test_the_plain_formula_path_matches_pytorch_with_gradients():
    generator = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(4, 4, 50, 24, generator=generator, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    assert choose_backend(q, k, v) == "reference"
    ours = attention(q, k, v)
    expected = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(ours, expected)
    grad = torch.randn_like(ours)
    torch.testing.assert_close(torch.autograd.grad(ours, (q, k, v), grad),
                               torch.autograd.grad(expected, (q, k, v), grad))


@pytest.mark.parametrize(
    "extra",
    [dict(window=(4, 0)), dict(window=3), dict(alibi_slopes=torch.ones(4)), dict(softcap=30.0)],
    ids=["window-pair", "window-int", "alibi", "softcap"],
)
def test_choose_backend_picks_native_or_tiled_for_extras_pytorch_lacks(extra):
    assert choose_backend(*_plain_inputs(), **extra) == (CPU or "tiled")


def test_choose_backend_picks_tiled_for_dropout_on_cpu():
    # Neither PyTorch's fused CPU kernel nor the native one has dropout: PyTorch would fall back
    # to the n x n math path.
    assert choose_backend(*_plain_inputs(), dropout_p=0.1) == "tiled"


def test_choose_backend_picks_native_or_tiled_for_attn_mask_with_is_causal():
    mask = torch.ones(80, 80, dtype=torch.bool)
    assert choose_backend(*_plain_inputs(), attn_mask=mask, is_causal=True) == (CPU or "tiled")
    assert choose_backend(*_plain_inputs(), is_causal=True, query_offset=3) == (CPU or "tiled")


def test_a_few_queries_after_cached_keys_keep_pytorchs_kernel_with_a_small_mask():
    q, k, v = torch.randn(1, 4, 8, 16), torch.randn(1, 4, 600, 16), torch.randn(1, 4, 600, 16)
    assert choose_backend(q, k, v, is_causal=True, query_offset=592) == "torch"
    torch.testing.assert_close(attention(q, k, v, is_causal=True, query_offset=590),
                               attention(q, k, v, is_causal=True, query_offset=590, backend="reference"))


def test_choose_backend_picks_native_or_tiled_when_value_head_dim_differs():
    assert choose_backend(*_plain_inputs(dv=5)) == (CPU or "tiled")


CUDA_CASES = [
    pytest.param(dict(), id="plain"),
    pytest.param(dict(is_causal=True), id="causal"),
    pytest.param(dict(window=(5, 3)), id="window"),
    pytest.param(dict(is_causal=True, softcap=5.0, alibi_slopes=torch.tensor([0.5, 0.25])),
                 id="causal-softcap-alibi"),
]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kwargs", CUDA_CASES)
@pytest.mark.parametrize("backend", ["tiled", "auto"])
def test_cuda_matches_the_reference_backend(backend, kwargs, dtype):
    device = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(2, 2, 70, 16, generator=gen).to(device, dtype) for _ in range(3)]
    grad_out = torch.randn(2, 2, 70, 16, generator=gen).to(device, dtype)
    kwargs = {name: arg.to(device) if isinstance(arg, torch.Tensor) else arg
              for name, arg in kwargs.items()}
    ours_in = [t.clone().requires_grad_() for t in inputs]
    ours = attention(*ours_in, backend=backend, **kwargs)
    ours.backward(grad_out)
    ref_in = [t.double().requires_grad_() for t in inputs]
    ref = attention(*ref_in, backend="reference", **kwargs)
    ref.backward(grad_out.double())
    assert ours.device.type == "cuda" and ours.dtype == dtype
    assert_close(ours.double(), ref, **FORWARD_TOL[dtype])
    for mine, theirs in zip(ours_in, ref_in, strict=True):
        assert_close(mine.grad.double(), theirs.grad, **GRAD_TOL[dtype])
