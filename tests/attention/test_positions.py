"""Sinusoidal, learned, rotary (RoPE) position embeddings and ALiBi slopes."""

import math

import pytest
import torch

from attnlab.attention.positions import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    alibi_slopes,
    rotate_half,
    sinusoidal_positions,
    sinusoidal_positions_2d,
)


@pytest.mark.parametrize("dim", [16, 7])
def test_sinusoidal_matches_paper_formula_in_float64(dim):
    table = sinusoidal_positions(300, dim, dtype=torch.float64)
    expected = torch.empty(300, dim, dtype=torch.float64)
    for pos in range(300):
        for col in range(dim):
            angle = pos / 10000 ** (2 * (col // 2) / dim)
            expected[pos, col] = math.sin(angle) if col % 2 == 0 else math.cos(angle)
    assert table.shape == (300, dim)
    torch.testing.assert_close(table, expected, rtol=0, atol=1e-12)


def test_sinusoidal_2d_matches_row_and_column_formula():
    height, width, dim = 3, 5, 12
    table = sinusoidal_positions_2d(height, width, dim, dtype=torch.float64)
    half = dim // 2

    def one_d(pos: int, col: int) -> float:
        angle = pos / 10000 ** (2 * (col // 2) / half)
        return math.sin(angle) if col % 2 == 0 else math.cos(angle)

    assert table.shape == (height * width, dim)
    for row in range(height):
        for column in range(width):
            expected = [one_d(row, c) for c in range(half)] + [one_d(column, c) for c in range(half)]
            torch.testing.assert_close(table[row * width + column],
                                       torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)


def test_sinusoidal_2d_rejects_odd_dim():
    with pytest.raises(ValueError, match="even dim"):
        sinusoidal_positions_2d(2, 2, 7)


def test_sinusoidal_defaults_to_default_dtype():
    assert sinusoidal_positions(4, 8).dtype == torch.get_default_dtype()
    assert sinusoidal_positions(4, 8, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_sinusoidal_rejects_bad_sizes():
    with pytest.raises(ValueError, match="dim=0"):
        sinusoidal_positions(4, 0)


def test_learned_embedding_returns_rows_from_offset():
    emb = LearnedPositionalEmbedding(10, 4)
    assert emb(3).shape == (3, 4)
    torch.testing.assert_close(emb(3, offset=5), emb.weight[5:8])


def test_learned_embedding_takes_per_row_positions():
    emb = LearnedPositionalEmbedding(10, 4)
    positions = torch.tensor([[0, 1, 2], [4, 5, 6]])
    out = emb(positions=positions)
    assert out.shape == (2, 3, 4)
    torch.testing.assert_close(out[1], emb.weight[4:7])


def test_learned_embedding_out_of_range_names_positions():
    emb = LearnedPositionalEmbedding(8, 4)
    with pytest.raises(ValueError, match=r"positions 6..9 .* max_seq_len=8"):
        emb(4, offset=6)


def _rope_float64_formula(x, positions, base=10000.0):
    """Rotate pair (d, d + D/2) by position * base^(-2d/D), element by element in float64."""
    x = x.double()
    out = torch.empty_like(x)
    half = x.shape[-1] // 2
    for s, pos in enumerate(positions):
        for d in range(half):
            angle = pos * base ** (-2 * d / x.shape[-1])
            a, b = x[..., s, d], x[..., s, d + half]
            out[..., s, d] = a * math.cos(angle) - b * math.sin(angle)
            out[..., s, d + half] = b * math.cos(angle) + a * math.sin(angle)
    return out


def test_rope_matches_float64_formula():
    rope = RotaryEmbedding(8, base=500.0)
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    torch.testing.assert_close(
        rope(x, offset=11), _rope_float64_formula(x, range(11, 16), 500.0), rtol=0, atol=1e-12
    )


def test_rope_float32_is_close_to_float64_formula():
    rope = RotaryEmbedding(16)
    x = torch.randn(3, 4, 16)
    expected = _rope_float64_formula(x, range(40, 44)).float()
    torch.testing.assert_close(rope(x, offset=40), expected, rtol=0, atol=2e-5)


def test_rope_preserves_norms():
    rope = RotaryEmbedding(32)
    x = torch.randn(2, 4, 50, 32, dtype=torch.float64)
    torch.testing.assert_close(rope(x).norm(dim=-1), x.norm(dim=-1), rtol=1e-12, atol=0)


def test_rope_dot_product_depends_only_on_relative_offset():
    rope = RotaryEmbedding(16)
    q = torch.randn(16, dtype=torch.float64).expand(1, 1, 1, 16)
    k = torch.randn(16, dtype=torch.float64).expand(1, 1, 1, 16)

    def score(m, n):
        return (rope(q, offset=m) * rope(k, offset=n)).sum()

    for m, n in [(5, 2), (9, 9), (0, 7)]:
        for shift in (1, 13, 1000):
            torch.testing.assert_close(score(m + shift, n + shift), score(m, n))
    assert not torch.allclose(score(5, 2), score(5, 3))


def test_rope_offset_equals_slice_of_full_sequence():
    rope = RotaryEmbedding(8, max_seq_len=4)
    x = torch.randn(2, 3, 10, 8)
    full = rope(x)
    torch.testing.assert_close(rope(x[..., 6:, :], offset=6), full[..., 6:, :])


def test_rope_cache_grows_past_max_seq_len():
    rope = RotaryEmbedding(8, max_seq_len=4)
    x = torch.randn(1, 1, 3, 8, dtype=torch.float64)
    expected = _rope_float64_formula(x, range(100, 103))
    torch.testing.assert_close(rope(x, offset=100), expected, rtol=0, atol=1e-12)
    cos, _ = rope.cos_sin(3, offset=100)
    assert cos.shape == (3, 8)


def test_rope_per_row_positions_match_offsets():
    rope = RotaryEmbedding(8)
    x = torch.randn(2, 3, 4, 8)
    positions = torch.tensor([[0, 1, 2, 3], [7, 8, 9, 10]])
    expected = torch.stack([rope(x[0], offset=0), rope(x[1], offset=7)])
    torch.testing.assert_close(rope(x, positions=positions), expected)


def test_rope_keeps_input_dtype():
    rope = RotaryEmbedding(8)
    assert rope(torch.randn(1, 2, 3, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_rotate_half_swaps_halves_with_sign():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert rotate_half(x).tolist() == [-3.0, -4.0, 1.0, 2.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_matches_transformers_llama(dtype):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import (
        LlamaRotaryEmbedding,
        apply_rotary_pos_emb,
    )

    config = LlamaConfig(
        hidden_size=128,
        num_attention_heads=2,
        max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
    )
    q = torch.randn(2, 2, 5, 64).to(dtype)
    k = torch.randn(2, 2, 5, 64).to(dtype)
    # Row 1 sits far past the cache's initial size, as in long cached decoding.
    positions = torch.tensor([[0, 1, 2, 3, 4], [3000, 3001, 3002, 3003, 3004]])
    cos, sin = LlamaRotaryEmbedding(config)(q, positions)
    q_ref, k_ref = apply_rotary_pos_emb(q, k, cos, sin)

    rope = RotaryEmbedding(64, base=100000.0, max_seq_len=64)
    q_ours = torch.stack([rope(q[0], offset=0), rope(q[1], offset=3000)])
    k_ours = rope(k, positions=positions)
    torch.testing.assert_close(q_ours, q_ref, rtol=0, atol=0)
    torch.testing.assert_close(k_ours, k_ref, rtol=0, atol=0)


def test_rope_rejects_odd_head_dim_and_wrong_input():
    with pytest.raises(ValueError, match="head_dim=7"):
        RotaryEmbedding(7)
    with pytest.raises(ValueError, match=r"head_dim=8.*\(1, 2, 3, 6\)"):
        RotaryEmbedding(8)(torch.randn(1, 2, 3, 6))


def test_alibi_slopes_for_eight_heads_are_powers_of_two():
    expected = torch.tensor([2.0**-i for i in range(1, 9)])
    torch.testing.assert_close(alibi_slopes(8), expected, rtol=0, atol=0)


def test_alibi_slopes_for_twelve_heads_follow_the_paper():
    # 8 heads' slopes, then every other slope of the 16-head sequence 2^-0.5, 2^-1, ...
    exponents = [1, 2, 3, 4, 5, 6, 7, 8, 0.5, 1.5, 2.5, 3.5]
    expected = torch.tensor([2.0**-e for e in exponents], dtype=torch.float64)
    torch.testing.assert_close(alibi_slopes(12, dtype=torch.float64), expected)


def test_alibi_slopes_match_transformers_bloom_for_any_head_count():
    from transformers.models.bloom.modeling_bloom import _get_alibi_slopes

    for heads in range(1, 40):
        torch.testing.assert_close(
            alibi_slopes(heads), _get_alibi_slopes(heads, torch.device("cpu"))
        )


def test_alibi_slopes_rejects_zero_heads():
    with pytest.raises(ValueError, match="num_heads=0"):
        alibi_slopes(0)
