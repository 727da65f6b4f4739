"""Bad input raises ``TypeError``/``ValueError`` naming the argument and the shapes, dtypes or
values seen, on every backend (validation happens before dispatch)."""

import re

import pytest
import torch

from attnlab.attention import attention, attention_trace

BACKENDS = ("reference", "tiled", "torch", "auto")


def _qkv(q_shape=(2, 4, 5, 8), k_shape=(2, 4, 6, 8), v_shape=None, dtype=torch.float32):
    v_shape = k_shape if v_shape is None else v_shape
    return tuple(torch.randn(shape, dtype=dtype) for shape in (q_shape, k_shape, v_shape))


def _raises(exception, *fragments):
    """``pytest.raises`` whose message must contain every fragment, in order."""
    return pytest.raises(exception, match=".*".join(re.escape(fragment) for fragment in fragments))


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_tensor_query_is_a_type_error(backend):
    _, key, value = _qkv()
    with _raises(TypeError, "query must be a torch.Tensor", "list"):
        attention([[1.0]], key, value, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_key_is_a_type_error_naming_the_dtype(backend):
    query, key, value = _qkv()
    with _raises(TypeError, "key", "floating-point", "torch.int64"):
        attention(query, key.long(), value, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_value_of_rank_below_3_is_rejected_with_its_shape(backend):
    query, key, _ = _qkv()
    with _raises(ValueError, "value", "(..., heads, seq, head_dim)", "(6, 8)"):
        attention(query, key, torch.randn(6, 8), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mismatched_dtypes_are_rejected_naming_each_dtype(backend):
    query, key, value = _qkv()
    with _raises(TypeError, "dtype", "torch.float32", "torch.float64", "torch.float32"):
        attention(query, key.double(), value, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mismatched_batch_dims_are_rejected_with_the_shapes(backend):
    query, key, value = _qkv(q_shape=(2, 4, 5, 8), k_shape=(3, 4, 6, 8))
    with _raises(ValueError, "batch dims", "query (2, 4, 5, 8)", "key (3, 4, 6, 8)", "value (3, 4, 6, 8)"):
        attention(query, key, value, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mismatched_ranks_are_rejected_with_the_shapes(backend):
    query, key, value = _qkv(q_shape=(2, 4, 5, 8), k_shape=(4, 6, 8))
    with _raises(ValueError, "rank", "query (2, 4, 5, 8)", "key (4, 6, 8)"):
        attention(query, key, value, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_key_and_value_of_different_lengths_are_rejected(backend):
    query, key, value = _qkv(k_shape=(2, 4, 6, 8), v_shape=(2, 4, 7, 8))
    with _raises(ValueError, "key and value", "seq length", "key (2, 4, 6, 8)", "value (2, 4, 7, 8)"):
        attention(query, key, value, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_query_and_key_head_dims_must_match(backend):
    query, key, value = _qkv(q_shape=(2, 4, 5, 8), k_shape=(2, 4, 6, 7))
    with _raises(ValueError, "head_dim", "query (2, 4, 5, 8)", "key (2, 4, 6, 7)"):
        attention(query, key, value, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fewer_key_heads_without_enable_gqa_are_rejected(backend):
    query, key, value = _qkv(q_shape=(2, 4, 5, 8), k_shape=(2, 2, 6, 8))
    with _raises(ValueError, "query has 4 heads", "key/value have 2", "enable_gqa=True", "(2, 2, 6, 8)"):
        attention(query, key, value, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gqa_with_key_heads_not_dividing_query_heads_is_rejected(backend):
    query, key, value = _qkv(q_shape=(2, 4, 5, 8), k_shape=(2, 3, 6, 8))
    with _raises(ValueError, "enable_gqa", "(3)", "(4)", "query (2, 4, 5, 8)", "key (2, 3, 6, 8)"):
        attention(query, key, value, enable_gqa=True, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_that_does_not_broadcast_is_rejected_with_both_shapes(backend):
    with _raises(ValueError, "attn_mask", "(5, 3)", "(2, 4, 5, 6)"):
        attention(*_qkv(), attn_mask=torch.ones(5, 3, dtype=torch.bool), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_larger_than_the_scores_is_rejected(backend):
    with _raises(ValueError, "attn_mask", "(3, 2, 4, 5, 6)", "(2, 4, 5, 6)"):
        attention(*_qkv(), attn_mask=torch.ones(3, 2, 4, 5, 6, dtype=torch.bool), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_mask_is_a_type_error_naming_its_dtype(backend):
    with _raises(TypeError, "attn_mask", "bool or floating point", "torch.int64"):
        attention(*_qkv(), attn_mask=torch.ones(5, 6, dtype=torch.long), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_tensor_mask_is_a_type_error(backend):
    with _raises(TypeError, "attn_mask", "torch.Tensor", "list"):
        attention(*_qkv(), attn_mask=[[True]], backend=backend)


@pytest.mark.parametrize(("window", "side", "bad"), [((-2, 0), "left", "-2"), ((3, -5), "right", "-5")])
@pytest.mark.parametrize("backend", ["reference", "tiled", "auto"])
def test_negative_window_other_than_minus_one_is_rejected(backend, window, side, bad):
    with _raises(ValueError, f"window {side}", "-1", f"got {bad}"):
        attention(*_qkv(), window=window, backend=backend)


@pytest.mark.parametrize("window", [(1, 2, 3), "wide", True])
def test_window_that_is_not_an_int_or_a_pair_is_a_type_error(window):
    with _raises(TypeError, "window", repr(window)):
        attention(*_qkv(), window=window, backend="tiled")


@pytest.mark.parametrize("global_tokens", [-1, 2.0, True, "4"])
@pytest.mark.parametrize("backend", ["reference", "tiled", "auto"])
def test_global_tokens_must_be_a_whole_number(backend, global_tokens):
    with _raises(ValueError, "global_tokens", ">= 0", repr(global_tokens)):
        attention(*_qkv(), window=(2, 2), global_tokens=global_tokens, backend=backend)


def test_global_tokens_without_a_window_says_to_pass_one():
    with _raises(ValueError, "global_tokens", "window=(left, right)"):
        attention(*_qkv(), global_tokens=2, backend="tiled")


def test_torch_backend_refuses_global_tokens_with_the_window():
    with _raises(ValueError, "backend='torch' does not support window"):
        attention(*_qkv(), window=(2, 2), global_tokens=2, backend="torch")


@pytest.mark.parametrize("dropout_p", [1.0, -0.1, 1.5, True, "0.1"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_outside_zero_one_is_rejected(backend, dropout_p):
    with _raises(ValueError, "dropout_p", "[0, 1)", repr(dropout_p)):
        attention(*_qkv(), dropout_p=dropout_p, backend=backend)


@pytest.mark.parametrize("softcap", [0, 0.0, -1.0, float("nan")])
@pytest.mark.parametrize("backend", ["reference", "tiled", "auto"])
def test_softcap_must_be_positive(backend, softcap):
    with _raises(ValueError, "softcap", "positive", repr(softcap)):
        attention(*_qkv(), softcap=softcap, backend=backend)


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -float("inf"), "0.5"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_scale_must_be_a_finite_number(backend, scale):
    with _raises(ValueError, "scale must be a finite number", repr(scale)):
        attention(*_qkv(), scale=scale, backend=backend)


@pytest.mark.parametrize(("bad", "counts"), [(float("nan"), "1 NaN and 0 +inf"),
                                             (float("inf"), "0 NaN and 1 +inf")])
@pytest.mark.parametrize("backend", BACKENDS)
def test_float_mask_holding_nan_or_plus_inf_is_rejected(backend, bad, counts):
    mask = torch.zeros(5, 6)
    mask[2, 3] = bad
    with _raises(ValueError, "attn_mask holds", counts, "(5, 6)", "-inf to forbid a key"):
        attention(*_qkv(), attn_mask=mask, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float_mask_with_minus_inf_is_accepted(backend):
    mask = torch.zeros(5, 6)
    mask[:, 0] = -float("inf")
    out = attention(*_qkv(), attn_mask=mask, backend=backend)
    assert out.isfinite().all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_on_another_device_than_the_query_is_rejected(backend):
    mask = torch.ones(5, 6, dtype=torch.bool, device="meta")
    with _raises(ValueError, "attn_mask must be on the query's device (cpu)", "got meta"):
        attention(*_qkv(), attn_mask=mask, backend=backend)


@pytest.mark.parametrize("backend", ["reference", "tiled", "auto"])
def test_alibi_slopes_on_another_device_than_the_query_are_rejected(backend):
    with _raises(ValueError, "alibi_slopes must be on the query's device (cpu)", "got meta"):
        attention(*_qkv(), alibi_slopes=torch.ones(4, device="meta"), backend=backend)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("backend", ["reference", "tiled", "auto"])
def test_non_finite_alibi_slopes_are_rejected(backend, bad):
    slopes = torch.tensor([0.5, bad, 0.25, 0.125])
    with _raises(ValueError, "alibi_slopes must be finite", str(bad)):
        attention(*_qkv(), alibi_slopes=slopes, backend=backend)


@pytest.mark.parametrize("slopes", [torch.ones(2), torch.ones(1, 4), torch.ones(4, 1)])
@pytest.mark.parametrize("backend", ["reference", "tiled", "auto"])
def test_alibi_slopes_of_the_wrong_shape_are_rejected(backend, slopes):
    with _raises(ValueError, "alibi_slopes", "(4,)", str(tuple(slopes.shape))):
        attention(*_qkv(), alibi_slopes=slopes, backend=backend)


def test_alibi_slopes_that_are_not_a_tensor_are_a_type_error():
    with _raises(TypeError, "alibi_slopes", "torch.Tensor", "list"):
        attention(*_qkv(), alibi_slopes=[0.5] * 4, backend="tiled")


def test_unknown_backend_is_rejected_listing_the_known_ones():
    with _raises(ValueError, "backend", "'reference'", "'tiled'", "'torch'", "'flash'"):
        attention(*_qkv(), backend="flash")


@pytest.mark.parametrize(
    ("extra", "name"),
    [(dict(window=(4, 0)), "window"), (dict(alibi_slopes=torch.ones(4)), "alibi_slopes"),
     (dict(softcap=30.0), "softcap")],
)
def test_torch_backend_rejects_extras_it_cannot_run(extra, name):
    with _raises(ValueError, "backend='torch'", name, "'tiled'"):
        attention(*_qkv(), backend="torch", **extra)


def test_attention_trace_rejects_a_backend_other_than_the_reference():
    with _raises(ValueError, "attention_trace", "'tiled'"):
        attention_trace(*_qkv(), backend="tiled")


def test_attention_trace_validates_its_inputs_like_attention():
    query, key, value = _qkv(q_shape=(2, 4, 5, 8), k_shape=(2, 4, 6, 7))
    with _raises(ValueError, "head_dim", "query (2, 4, 5, 8)", "key (2, 4, 6, 7)"):
        attention_trace(query, key, value)


def test_expanded_float_mask_counts_each_bad_entry_once():
    mask = torch.zeros(5, 6)
    mask[1, 1] = float("nan")
    with _raises(ValueError, "attn_mask holds 1 NaN and 0 +inf", "(2, 4, 5, 6)"):
        attention(*_qkv(), attn_mask=mask.expand(2, 4, 5, 6), backend="tiled")
