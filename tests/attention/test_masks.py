"""masks.py: the boolean convention (True = may attend), builders, combining, windows."""

import math
import re

import pytest
import torch

from attnlab.attention import attention
from attnlab.attention.masks import (
    causal_mask,
    combine_masks,
    lengths_to_padding_mask,
    normalize_window,
    padding_mask,
    to_float_mask,
    window_mask,
)


@pytest.mark.parametrize(("q_len", "k_len"), [(1, 1), (5, 5), (3, 7), (7, 3)])
def test_causal_mask_is_lower_triangular_top_left_aligned(q_len, k_len):
    mask = causal_mask(q_len, k_len)
    assert mask.dtype == torch.bool
    assert torch.equal(mask, torch.ones(q_len, k_len, dtype=torch.bool).tril())


def _window_by_hand(q_len, k_len, left, right, offset=0):
    """Key j is allowed for query i (at absolute position i + offset) within [-left, +right]."""
    return torch.tensor([[(left is None or j >= i + offset - left) and
                          (right is None or j <= i + offset + right)
                          for j in range(k_len)] for i in range(q_len)])


@pytest.mark.parametrize(
    ("window", "sides"),
    [((2, 1), (2, 1)), (3, (3, 3)), ((0, 0), (0, 0)), ((None, 2), (None, 2)), ((-1, 0), (None, 0)),
     ((4, -1), (4, None))],
)
@pytest.mark.parametrize(("q_len", "k_len"), [(6, 6), (4, 9), (9, 4)])
def test_window_mask_allows_keys_from_i_minus_left_to_i_plus_right(q_len, k_len, window, sides):
    assert torch.equal(window_mask(q_len, k_len, window), _window_by_hand(q_len, k_len, *sides))


def test_window_mask_offset_shifts_the_queries_to_their_absolute_positions():
    assert torch.equal(window_mask(2, 9, (3, 0), offset=7), _window_by_hand(2, 9, 3, 0, offset=7))


def test_window_mask_with_both_sides_unlimited_allows_everything():
    assert window_mask(3, 5, (-1, None)).all()


def test_causal_mask_with_offset_window_is_the_bottom_right_aligned_causal_mask():
    assert torch.equal(window_mask(3, 8, (None, 0), offset=5), torch.ones(3, 8, dtype=torch.bool).tril(5))


def test_padding_mask_turns_true_at_padding_into_false_may_not_attend():
    key_padding = torch.tensor([[False, False, True], [False, True, True]])
    mask = padding_mask(key_padding)
    assert mask.shape == (2, 1, 1, 3)
    assert torch.equal(mask[:, 0, 0], ~key_padding)


@pytest.mark.parametrize("bad", [torch.zeros(2, 3), torch.zeros(2, 1, 3, dtype=torch.bool)])
def test_padding_mask_rejects_non_bool_or_non_2d_input_naming_dtype_and_shape(bad):
    shape = re.escape(str(tuple(bad.shape)))
    with pytest.raises(ValueError, match=f"key_padding_mask.*{bad.dtype}.*{shape}"):
        padding_mask(bad)


def test_lengths_to_padding_mask_marks_positions_past_each_length():
    assert torch.equal(lengths_to_padding_mask(torch.tensor([1, 3])),
                       torch.tensor([[False, True, True], [False, False, False]]))
    assert lengths_to_padding_mask(torch.tensor([1, 3]), max_len=5).shape == (2, 5)


def test_padding_mask_in_attention_equals_dropping_the_padded_keys():
    query, key, value = torch.randn(2, 2, 4, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    lengths = torch.tensor([6, 3])
    mask = padding_mask(lengths_to_padding_mask(lengths))
    out = attention(query, key, value, attn_mask=mask, backend="reference")
    for b, length in enumerate(lengths.tolist()):
        alone = attention(query[b], key[b, :, :length], value[b, :, :length], backend="reference")
        torch.testing.assert_close(out[b], alone)


def test_causal_mask_as_attn_mask_equals_is_causal():
    query, key, value = torch.randn(2, 2, 5, 8), torch.randn(2, 2, 7, 8), torch.randn(2, 2, 7, 8)
    torch.testing.assert_close(attention(query, key, value, attn_mask=causal_mask(5, 7), backend="reference"),
                               attention(query, key, value, is_causal=True, backend="reference"))


def test_window_mask_as_attn_mask_equals_the_window_argument():
    query, key, value = torch.randn(2, 2, 9, 8), torch.randn(2, 2, 9, 8), torch.randn(2, 2, 9, 8)
    as_mask = attention(query, key, value, attn_mask=window_mask(9, 9, (2, 1)), backend="tiled")
    torch.testing.assert_close(as_mask, attention(query, key, value, window=(2, 1), backend="tiled"))


def test_to_float_mask_gives_zero_where_allowed_and_minus_inf_elsewhere():
    mask = torch.tensor([[True, False], [False, True]])
    expected = torch.tensor([[0.0, -math.inf], [-math.inf, 0.0]], dtype=torch.float64)
    result = to_float_mask(mask, torch.float64)
    assert result.dtype == torch.float64
    assert torch.equal(result, expected)


def test_to_float_mask_passes_float_masks_through_in_the_requested_dtype():
    mask = torch.tensor([0.5, -math.inf])
    assert torch.equal(to_float_mask(mask, torch.float64), mask.double())


def test_combine_masks_of_booleans_is_their_logical_and():
    a = torch.tensor([[True, True], [False, True]])
    b = torch.tensor([True, False])
    result = combine_masks(a, None, b)
    assert result.dtype == torch.bool
    assert torch.equal(result, a & b)


def test_combine_masks_with_a_float_mask_sums_the_additive_masks():
    allowed = torch.tensor([[True, False], [True, True]])
    bias = torch.tensor([[0.5, 1.0], [-2.0, 0.0]])
    result = combine_masks(allowed, bias, bias)
    assert result.dtype == torch.float32
    assert torch.equal(result, torch.tensor([[1.0, -math.inf], [-4.0, 0.0]]))


def test_combine_masks_uses_the_requested_float_dtype():
    assert combine_masks(torch.zeros(2), dtype=torch.float64).dtype == torch.float64


def test_combine_masks_of_nothing_is_none():
    assert combine_masks() is None
    assert combine_masks(None, None) is None


@pytest.mark.parametrize(
    ("window", "expected"),
    [(None, None), (3, (3, 3)), (0, (0, 0)), ((2, 5), (2, 5)), ([2, 5], (2, 5)), ((-1, 4), (None, 4)),
     ((4, None), (4, None)), ((-1, -1), None), ((None, None), None), (-1, None)],
)
def test_normalize_window_gives_left_right_with_none_for_unlimited(window, expected):
    assert normalize_window(window) == expected


@pytest.mark.parametrize("window", [(-2, 0), (0, -3), -5, (1.5, 2), (True, 1)])
def test_normalize_window_rejects_negative_or_non_integer_sides(window):
    with pytest.raises(ValueError, match=r"window (left|right) side must be >= 0"):
        normalize_window(window)


@pytest.mark.parametrize("window", [True, (1, 2, 3), "2", 2.0])
def test_normalize_window_rejects_what_is_not_an_int_or_a_pair(window):
    with pytest.raises(TypeError, match="window must be an int or a pair"):
        normalize_window(window)
