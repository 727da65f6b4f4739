"""``attention_trace``: every step of the formula, consistent with ``attention``."""

import math

import pytest
import torch
from torch.testing import assert_close

from attnlab.attention import AttentionTrace, attention, attention_trace

B, HQ, HK, LQ, LK, D, DV = 2, 4, 2, 6, 9, 8, 5


def _qkv(hk=HQ, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(shape, generator=gen).to(dtype)
                 for shape in ((B, HQ, LQ, D), (B, hk, LK, D), (B, hk, LK, DV)))


def _keep(seed=1):
    return torch.rand(LQ, LK, generator=torch.Generator().manual_seed(seed)) < 0.6


CONFIGS = [
    pytest.param(dict(), id="plain"),
    pytest.param(dict(is_causal=True, scale=0.3), id="causal-scale"),
    pytest.param(dict(attn_mask=_keep()), id="bool-mask"),
    pytest.param(dict(attn_mask=torch.randn(LQ, LK, generator=torch.Generator().manual_seed(2))
                      .masked_fill(~_keep(), -math.inf)), id="float-mask"),
    pytest.param(dict(window=(1, 2), alibi_slopes=torch.tensor([0.5, 0.4, 0.3, 0.2]), softcap=2.0),
                 id="window-alibi-softcap"),
    pytest.param(dict(attn_mask=_keep(), is_causal=True, enable_gqa=True), id="gqa-mask-and-causal"),
]


def _kv_heads(kwargs):
    return HK if kwargs.get("enable_gqa") else HQ


def _float64_attention(query, key, value, attn_mask=None, is_causal=False, scale=None,
                       enable_gqa=False, window=None, alibi_slopes=None, softcap=None):
    """``(weights, output)`` in float64, entry by entry from the definition: what may query ``i``
    see of key ``j``, then an explicit softmax over the keys it may see (none: all zeros)."""
    q, k, v = (t.double() for t in (query, key, value))
    heads, lq, lk = q.shape[1], q.shape[2], k.shape[2]
    if enable_gqa:  # query head h reads key/value head h // (heads per key head)
        shared = [h // (heads // k.shape[1]) for h in range(heads)]
        k, v = k[:, shared], v[:, shared]
    logits = torch.einsum("bhid,bhjd->bhij", q, k) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    left, right = (None if side == -1 else side for side in (window or (None, None)))
    may_see = torch.ones(lq, lk, dtype=torch.bool)
    for i in range(lq):
        for j in range(lk):
            too_far_back = left is not None and j < i - left
            too_far_ahead = (is_causal and j > i) or (right is not None and j > i + right)
            may_see[i, j] = not (too_far_back or too_far_ahead)
            if alibi_slopes is not None:
                logits[:, :, i, j] -= alibi_slopes.double() * abs(i - j)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        may_see = may_see & attn_mask
    elif attn_mask is not None:
        logits = logits + attn_mask.double()
    may_see = may_see & ~torch.isneginf(logits)
    top = logits.masked_fill(~may_see, -math.inf).amax(-1, keepdim=True).nan_to_num(neginf=0.0)
    numerators = torch.where(may_see, torch.exp(logits - top), 0.0)
    totals = numerators.sum(-1, keepdim=True)
    weights = torch.where(totals > 0, numerators / totals.clamp(min=1e-300), 0.0)
    return weights, weights @ v


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_trace_weights_and_output_equal_the_float64_definition(kwargs):
    query, key, value = _qkv(_kv_heads(kwargs))
    trace = attention_trace(query, key, value, **kwargs)
    assert isinstance(trace, AttentionTrace)
    weights, output = _float64_attention(query, key, value, **kwargs)
    assert_close(trace.weights.double(), weights, rtol=1e-5, atol=1e-6)
    assert_close(trace.output.double(), output, rtol=1e-5, atol=1e-5)
    for backend in ("reference", "tiled", "auto"):
        assert_close(attention(query, key, value, backend=backend, **kwargs).double(), output,
                     rtol=1e-5, atol=1e-5)


def test_trace_scores_are_the_raw_query_key_products_per_query_head():
    query, key, value = _qkv(HK)
    trace = attention_trace(query, key, value, enable_gqa=True, scale=0.7)
    shared_key = key.repeat_interleave(HQ // HK, dim=1)  # query head h reads key head h // 2
    assert_close(trace.scores, query @ shared_key.transpose(-2, -1))


@pytest.mark.parametrize("scale", [None, 0.3])
def test_trace_scaled_is_scores_times_scale(scale):
    trace = attention_trace(*_qkv(), scale=scale)
    expected_scale = 1 / math.sqrt(D) if scale is None else scale
    assert trace.scale == pytest.approx(expected_scale)
    assert_close(trace.scaled, trace.scores * expected_scale)


def test_trace_scaled_applies_the_softcap_after_the_scale():
    trace = attention_trace(*_qkv(), scale=1.5, softcap=2.0)
    assert_close(trace.scaled, 2.0 * torch.tanh(trace.scores * 1.5 / 2.0))


def test_trace_masked_is_minus_inf_exactly_where_attending_is_not_allowed():
    keep = _keep()
    trace = attention_trace(*_qkv(), attn_mask=keep, is_causal=True, window=(2, None))
    i, j = torch.arange(LQ)[:, None], torch.arange(LK)
    allowed = keep & (j <= i) & (j >= i - 2)
    assert torch.equal(torch.isneginf(trace.masked), (~allowed).expand_as(trace.masked))
    assert torch.equal(trace.masked[..., allowed], trace.scaled[..., allowed])


def test_trace_masked_adds_alibi_and_the_float_mask_to_the_scaled_scores():
    bias = torch.randn(LQ, LK)
    slopes = torch.tensor([0.5, 0.4, 0.3, 0.2])
    trace = attention_trace(*_qkv(), attn_mask=bias, alibi_slopes=slopes)
    distance = (torch.arange(LQ)[:, None] - torch.arange(LK)).abs()
    assert_close(trace.masked, trace.scaled - slopes[:, None, None] * distance + bias)


def test_trace_weights_rows_sum_to_one_and_empty_rows_to_zero():
    keep = _keep()
    keep[3] = False
    trace = attention_trace(*_qkv(), attn_mask=keep)
    sums = trace.weights.sum(-1)
    assert_close(sums[..., 3], torch.zeros(B, HQ))
    assert_close(sums[..., [0, 1, 2, 4, 5]], torch.ones(B, HQ, LQ - 1))
    assert torch.equal(trace.weights[..., ~keep], torch.zeros_like(trace.weights[..., ~keep]))
    assert not trace.output.isnan().any()


def test_trace_weights_are_the_softmax_of_masked():
    trace = attention_trace(*_qkv(), is_causal=True)
    assert_close(trace.weights, torch.softmax(trace.masked, dim=-1))


def test_trace_tensors_use_query_heads_under_gqa():
    trace = attention_trace(*_qkv(HK), enable_gqa=True)
    for name in ("scores", "scaled", "masked", "weights"):
        assert getattr(trace, name).shape == (B, HQ, LQ, LK), name
    assert trace.output.shape == (B, HQ, LQ, DV)


def test_trace_records_the_arguments_used():
    query, key, value = _qkv()
    slopes, keep = torch.full((HQ,), 0.1), _keep()
    trace = attention_trace(query, key, value, attn_mask=keep, is_causal=True, window=(3, -1),
                            alibi_slopes=slopes, softcap=4.0)
    assert trace.query is query and trace.key is key and trace.value is value
    assert trace.attn_mask is keep and trace.alibi_slopes is slopes
    assert trace.is_causal is True
    assert trace.window == (3, None)
    assert trace.softcap == 4.0
    assert trace.dropout_p == 0.0
    assert trace.scale == pytest.approx(1 / math.sqrt(D))


def test_trace_output_keeps_the_input_dtype():
    query, key, value = _qkv(dtype=torch.bfloat16)
    trace = attention_trace(query, key, value)
    assert trace.output.dtype == torch.bfloat16
    # computed from the bf16 inputs in float32, then rounded once to bf16 (8 bits of mantissa)
    assert_close(trace.output.double(), _float64_attention(query, key, value)[1], rtol=1e-2, atol=1e-2)
