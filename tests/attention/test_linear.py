"""Linear attention (elu + 1 feature map) against its formula written out in float64."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import attention, linear_attention


def _formula(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """out_i = Σ_j φ(q_i)·φ(k_j) v_j / Σ_j φ(q_i)·φ(k_j), j over all keys (or j <= i), float64
    loops; key/value head h // group serves query head h."""
    phi = lambda x: torch.where(x > 0, x + 1, torch.exp(x))  # noqa: E731  elu(x) + 1, written out
    q, k, v = q.double(), k.double(), v.double()
    batch, heads, length, _ = q.shape
    group = heads // k.shape[1]
    out = torch.zeros(batch, heads, length, v.shape[-1], dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            for i in range(length):
                keys = range(i + 1) if causal else range(k.shape[2])
                weights = torch.stack([phi(q[b, h, i]) @ phi(k[b, h // group, j]) for j in keys])
                values = torch.stack([v[b, h // group, j] for j in keys])
                out[b, h, i] = (weights[:, None] * values).sum(0) / weights.sum()
    return out


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_matches_formula(causal, kv_heads):
    torch.manual_seed(0)
    q = torch.randn(2, 4, 13, 8)
    k, v = torch.randn(2, kv_heads, 13, 8), torch.randn(2, kv_heads, 13, 5)
    out = linear_attention(q, k, v, is_causal=causal, chunk_size=4, eps=0.0)
    assert out.shape == (2, 4, 13, 5)
    torch.testing.assert_close(out.double(), _formula(q, k, v, causal), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 3, 16, 100])
def test_causal_result_does_not_depend_on_chunk_size(chunk_size):
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 2, 37, 16, dtype=torch.float64) for _ in range(3))
    reference = linear_attention(q, k, v, is_causal=True, chunk_size=37)
    torch.testing.assert_close(linear_attention(q, k, v, is_causal=True, chunk_size=chunk_size), reference)


def test_causal_query_ignores_later_keys():
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, 1, 10, 4) for _ in range(3))
    out = linear_attention(q, k, v, is_causal=True, chunk_size=3)
    k2, v2 = k.clone(), v.clone()
    k2[..., 6:, :] += 5.0
    v2[..., 6:, :] -= 3.0
    changed = linear_attention(q, k2, v2, is_causal=True, chunk_size=3)
    torch.testing.assert_close(changed[..., :6, :], out[..., :6, :])
    assert not torch.allclose(changed[..., 6:, :], out[..., 6:, :])


@pytest.mark.parametrize("causal", [False, True])
def test_gradients_pass_gradcheck(causal):
    torch.manual_seed(3)
    q, k, v = (torch.randn(1, 2, 7, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(
        lambda a, b, c: linear_attention(a, b, c, is_causal=causal, chunk_size=3), (q, k, v))


def test_it_is_not_softmax_attention():
    torch.manual_seed(4)
    q, k, v = (torch.randn(1, 1, 16, 8) for _ in range(3))
    assert not torch.allclose(linear_attention(q, k, v), attention(q, k, v), atol=1e-2)


@pytest.mark.parametrize(("shapes", "kwargs", "message"), [
    (((1, 4, 5, 8), (1, 3, 5, 8), (1, 3, 5, 8)), {}, "must divide"),
    (((1, 2, 5, 8), (1, 2, 5, 4), (1, 2, 5, 8)), {}, "head_dim differ"),
    (((1, 2, 5, 8), (1, 2, 6, 8), (1, 2, 6, 8)), {"is_causal": True}, "as many queries as keys"),
    (((1, 2, 5, 8), (1, 2, 5, 8), (1, 2, 4, 8)), {}, "must agree"),
    (((1, 2, 5, 8), (1, 2, 5, 8), (1, 2, 5, 8)), {"chunk_size": 0}, "chunk_size"),
])
def test_bad_inputs_are_refused(shapes, kwargs, message):
    q, k, v = (torch.randn(*shape) for shape in shapes)
    with pytest.raises(ValueError, match=message):
        linear_attention(q, k, v, **kwargs)


@pytest.mark.parametrize("causal", [False, True])
def test_multi_head_attention_linear_option(causal):
    from attnlab.attention import MultiHeadAttention

    torch.manual_seed(5)
    module = MultiHeadAttention(16, 4, num_kv_heads=2, linear=True)
    x = torch.randn(2, 9, 16)
    q = module.q_proj(x).unflatten(-1, (4, 4)).transpose(1, 2)
    k = module.k_proj(x).unflatten(-1, (2, 4)).transpose(1, 2)
    v = module.v_proj(x).unflatten(-1, (2, 4)).transpose(1, 2)
    expected = module.out_proj(_formula(q, k, v, causal).float().transpose(1, 2).reshape(2, 9, 16))
    torch.testing.assert_close(module(x, is_causal=causal), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="is_causal only"):
        module(x, key_padding_mask=torch.zeros(2, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="no window, ALiBi or dropout"):
        MultiHeadAttention(16, 4, linear=True, window=(4, 0))
