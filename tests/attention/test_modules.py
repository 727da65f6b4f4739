"""MultiHeadAttention vs torch.nn.MultiheadAttention, a float64 formula, and KV-cache decoding."""

import math

import pytest
import torch
from torch import nn

from attnlab.attention.cache import KVCache
from attnlab.attention.modules import MultiHeadAttention
from attnlab.attention.positions import RotaryEmbedding
from attnlab.attention.record import record

E, H = 16, 4


def _torch_mha_with_our_weights(ours: MultiHeadAttention) -> nn.MultiheadAttention:
    """A batch-first ``nn.MultiheadAttention`` holding ``ours``'s projection weights."""
    ref = nn.MultiheadAttention(
        ours.embed_dim, ours.num_heads, kdim=ours.kdim, vdim=ours.vdim, batch_first=True,
        dtype=torch.float64,
    )
    with torch.no_grad():
        if ref._qkv_same_embed_dim:
            ref.in_proj_weight.copy_(
                torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight])
            )
        else:
            ref.q_proj_weight.copy_(ours.q_proj.weight)
            ref.k_proj_weight.copy_(ours.k_proj.weight)
            ref.v_proj_weight.copy_(ours.v_proj.weight)
        ref.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    return ref


def _close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-10)


def test_self_attention_matches_torch_multihead_attention():
    ours = MultiHeadAttention(E, H).double()
    ref = _torch_mha_with_our_weights(ours)
    x = torch.randn(3, 7, E, dtype=torch.float64)
    _close(ours(x), ref(x, x, x, need_weights=False)[0])


def test_cross_attention_with_kdim_vdim_matches_torch():
    ours = MultiHeadAttention(E, H, kdim=6, vdim=10).double()
    ref = _torch_mha_with_our_weights(ours)
    x = torch.randn(2, 5, E, dtype=torch.float64)
    key_source = torch.randn(2, 9, 6, dtype=torch.float64)
    value_source = torch.randn(2, 9, 10, dtype=torch.float64)
    expected = ref(x, key_source, value_source, need_weights=False)[0]
    _close(ours(x, (key_source, value_source)), expected)


def test_cross_attention_with_one_context_matches_torch():
    ours = MultiHeadAttention(E, H, kdim=6, vdim=6).double()
    ref = _torch_mha_with_our_weights(ours)
    x = torch.randn(2, 5, E, dtype=torch.float64)
    context = torch.randn(2, 9, 6, dtype=torch.float64)
    _close(ours(x, context), ref(x, context, context, need_weights=False)[0])


def test_key_padding_mask_matches_torch():
    ours = MultiHeadAttention(E, H).double()
    ref = _torch_mha_with_our_weights(ours)
    x = torch.randn(2, 6, E, dtype=torch.float64)
    padding = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    expected = ref(x, x, x, key_padding_mask=padding, need_weights=False)[0]
    _close(ours(x, key_padding_mask=padding), expected)


@pytest.mark.parametrize("backend", ["auto", "reference", "tiled", "torch"])
def test_causal_with_padding_matches_torch(backend):
    ours = MultiHeadAttention(E, H, backend=backend).double()
    ref = _torch_mha_with_our_weights(ours)
    x = torch.randn(2, 6, E, dtype=torch.float64)
    padding = torch.tensor([[False] * 6, [False] * 3 + [True] * 3])
    future = torch.ones(6, 6, dtype=torch.bool).triu(1)  # torch's convention: True = blocked
    expected = ref(x, x, x, attn_mask=future, key_padding_mask=padding, need_weights=False)[0]
    _close(ours(x, is_causal=True, key_padding_mask=padding), expected)


def test_bool_attn_mask_means_may_attend_unlike_torch():
    ours = MultiHeadAttention(E, H).double()
    ref = _torch_mha_with_our_weights(ours)
    x = torch.randn(2, 5, E, dtype=torch.float64)
    allowed = torch.rand(5, 5) > 0.4
    allowed[:, 0] = True  # every query keeps a key: torch gives NaN for empty rows
    expected = ref(x, x, x, attn_mask=~allowed, need_weights=False)[0]
    _close(ours(x, attn_mask=allowed), expected)


def _float64_formula(module, x, *, causal=False, window=None, alibi=None, global_tokens=0):
    """Attention written out in float64 with key/value heads repeated for their query groups."""
    batch, seq, _ = x.shape
    heads, kv_heads, d = module.num_heads, module.num_kv_heads, module.head_dim
    q = module.q_proj(x).view(batch, seq, heads, d).transpose(1, 2)
    k = module.k_proj(x).view(batch, seq, kv_heads, d).transpose(1, 2)
    v = module.v_proj(x).view(batch, seq, kv_heads, d).transpose(1, 2)
    if module.rope is not None:
        q, k = module.rope(q), module.rope(k)
    k = k.repeat_interleave(heads // kv_heads, dim=1)
    v = v.repeat_interleave(heads // kv_heads, dim=1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # (batch, heads, seq, seq)
    i = torch.arange(seq)[:, None]
    j = torch.arange(seq)[None, :]
    if alibi is not None:
        scores = scores - alibi[:, None, None] * (i - j).abs()
    allowed = torch.ones(seq, seq, dtype=torch.bool)
    if window is not None:
        allowed &= (j >= i - window[0]) & (j <= i + window[1])
    allowed |= (i < global_tokens) | (j < global_tokens)
    if causal:
        allowed &= j <= i
    weights = scores.masked_fill(~allowed, -math.inf).softmax(dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(batch, seq, heads * d)
    return module.out_proj(out)


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])
def test_grouped_query_attention_matches_float64_formula(num_kv_heads):
    module = MultiHeadAttention(E, H, num_kv_heads=num_kv_heads).double()
    assert module.k_proj.out_features == num_kv_heads * module.head_dim
    x = torch.randn(2, 7, E, dtype=torch.float64)
    _close(module(x, is_causal=True), _float64_formula(module, x, causal=True))


def test_rope_alibi_window_match_float64_formula():
    module = MultiHeadAttention(E, H, num_kv_heads=2, rope=True, alibi=True, window=(2, 1))
    module = module.double()
    x = torch.randn(2, 9, E, dtype=torch.float64)
    expected = _float64_formula(
        module, x, window=(2, 1), alibi=torch.tensor([2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8])
    )
    _close(module(x), expected)


@pytest.mark.parametrize("causal", [False, True])
def test_window_with_global_tokens_matches_float64_formula(causal):
    module = MultiHeadAttention(E, H, num_kv_heads=2, window=(1, 1), global_tokens=2).double()
    x = torch.randn(2, 9, E, dtype=torch.float64)
    expected = _float64_formula(module, x, causal=causal, window=(1, 1), global_tokens=2)
    _close(module(x, is_causal=causal), expected)


def test_cached_decoding_with_window_and_global_tokens_equals_full_forward():
    module = MultiHeadAttention(E, H, window=(2, 0), global_tokens=3).double()
    x = torch.randn(2, 10, E, dtype=torch.float64)
    full = module(x, is_causal=True)
    assert not torch.allclose(full, _without_globals(module)(x, is_causal=True))  # globals matter
    _close(_decode_in_pieces(module, x, [2, 1, 3, 1, 1, 2], is_causal=True), full)


def _without_globals(module):
    plain = MultiHeadAttention(E, H, window=(2, 0)).double()
    plain.load_state_dict(module.state_dict())
    return plain


def _decode_in_pieces(module, x, pieces, **kwargs):
    """Feed ``x`` through ``module`` in chunks of the given lengths, sharing one KV cache."""
    cache = KVCache(x.shape[0], module.num_kv_heads, x.shape[1], module.head_dim, dtype=x.dtype)
    outputs, start = [], 0
    for length in pieces:
        outputs.append(module(x[:, start : start + length], cache=cache, **kwargs))
        start += length
    assert cache.length == x.shape[1]
    return torch.cat(outputs, dim=1)


@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])
def test_cached_decoding_equals_full_causal_forward(rope, num_kv_heads):
    module = MultiHeadAttention(E, H, num_kv_heads=num_kv_heads, rope=rope).double()
    x = torch.randn(3, 9, E, dtype=torch.float64)
    full = module(x, is_causal=True)
    # A prompt, single tokens, then a multi-token chunk whose queries sit after the cache.
    _close(_decode_in_pieces(module, x, [4, 1, 1, 3], is_causal=True), full)


@pytest.mark.parametrize("window", [None, (2, 0), (3, 2)])
def test_cached_decoding_with_alibi_and_window_equals_full_forward(window):
    module = MultiHeadAttention(E, H, num_kv_heads=2, alibi=True, window=window).double()
    x = torch.randn(2, 8, E, dtype=torch.float64)
    _close(_decode_in_pieces(module, x, [3, 1, 2, 1, 1], is_causal=True),
           module(x, is_causal=True))


def test_cached_decoding_with_padding_equals_full_forward():
    module = MultiHeadAttention(E, H, rope=True).double()
    x = torch.randn(2, 6, E, dtype=torch.float64)
    padding = torch.tensor([[False] * 6, [True, True] + [False] * 4])  # row 1 is left-padded
    full = module(x, is_causal=True, key_padding_mask=padding)
    cache = KVCache(2, H, 6, module.head_dim, dtype=torch.float64)
    steps = [module(x[:, :4], is_causal=True, key_padding_mask=padding[:, :4], cache=cache)]
    for t in (4, 5):
        steps.append(
            module(x[:, t : t + 1], is_causal=True, key_padding_mask=padding[:, : t + 1],
                   cache=cache)
        )
    # Row 1's padded queries see no key in either run (zeros before out_proj); compare the rest.
    _close(torch.cat(steps, dim=1)[:, 2:], full[:, 2:])


def test_cross_attention_cache_is_filled_once_and_reused():
    module = MultiHeadAttention(E, H, num_kv_heads=2, kdim=6, vdim=6).double()
    x = torch.randn(2, 4, E, dtype=torch.float64)
    context = torch.randn(2, 5, 6, dtype=torch.float64)
    cache = KVCache(2, 2, 5, module.head_dim, dtype=torch.float64)
    first = module(x[:, :1], context, cache=cache)
    key_ptr = cache.key.data_ptr()
    rest = [module(x[:, t : t + 1], context, cache=cache) for t in range(1, 4)]
    assert cache.length == 5 and cache.key.data_ptr() == key_ptr
    _close(torch.cat([first, *rest], dim=1), module(x, context))


def test_recorded_output_equals_forward_output():
    module = MultiHeadAttention(E, H, num_kv_heads=2, rope=True, alibi=True)
    x = torch.randn(2, 5, E)
    with record(module) as recording:
        out = module(x, is_causal=True)
    torch.testing.assert_close(out, module(x, is_causal=True))
    (trace,) = recording.traces
    assert trace.attention.weights.shape == (2, H, 5, 5)
    torch.testing.assert_close(trace.attention.weights.sum(-1), torch.ones(2, H, 5))


def test_dropout_only_in_training():
    torch.manual_seed(0)
    module = MultiHeadAttention(E, H, dropout=0.5)
    without = MultiHeadAttention(E, H)
    without.load_state_dict(module.state_dict())
    x = torch.randn(1, 6, E)
    expected = without(x)
    torch.testing.assert_close(module.eval()(x), expected)  # eval: as if there were no dropout
    module.train()
    assert not torch.allclose(module(x), expected)
    # training: weights dropped with p = 0.5 and the rest doubled, so the mean over many
    # independent draws is again the output without dropout
    draws = module(x.expand(4000, 6, E))
    torch.testing.assert_close(draws.mean(dim=0), expected[0], rtol=0, atol=0.05)


def test_shared_rotary_embedding_is_used():
    rope = RotaryEmbedding(E // H)
    module = MultiHeadAttention(E, H, rope=rope)
    assert module.rope is rope


def test_alibi_slopes_stay_out_of_state_dict():
    module = MultiHeadAttention(E, H, alibi=True)
    assert module.alibi_slopes.shape == (H,)
    assert set(module.state_dict()) == {
        f"{name}.{p}" for name in ("q_proj", "k_proj", "v_proj", "out_proj")
        for p in ("weight", "bias")
    }


def test_no_bias_projections():
    module = MultiHeadAttention(E, H, bias=False)
    assert all(
        getattr(module, name).bias is None for name in ("q_proj", "k_proj", "v_proj", "out_proj")
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"embed_dim": 10, "num_heads": 3}, ValueError,
         "embed_dim=10 is not divisible by num_heads=3"),
        ({"embed_dim": 16, "num_heads": 4, "num_kv_heads": 3}, ValueError,
         "num_heads=4 is not divisible by num_kv_heads=3"),
        ({"embed_dim": 16, "num_heads": 0}, ValueError, "num_heads=0"),
        ({"embed_dim": 16, "num_heads": 4, "dropout": 1.0}, ValueError, "dropout=1.0"),
        ({"embed_dim": 16, "num_heads": 4, "rope": RotaryEmbedding(8)}, ValueError,
         r"rope.head_dim=8 does not match head_dim=4"),
        ({"embed_dim": 16, "num_heads": 4, "rope": "yes"}, TypeError, "rope must be"),
        ({"embed_dim": 16, "num_heads": 4, "window": (-2, 0)}, ValueError, "window left"),
        ({"embed_dim": 16, "num_heads": 4, "global_tokens": 2}, ValueError, "pass window="),
        ({"embed_dim": 16, "num_heads": 4, "window": 2, "global_tokens": -1}, ValueError,
         "global_tokens must be"),
    ],
)
def test_bad_constructor_arguments_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        MultiHeadAttention(**kwargs)


def test_bad_inputs_are_named():
    module = MultiHeadAttention(E, H, rope=True)
    with pytest.raises(ValueError, match=r"x must be shaped \(batch, seq, 16\), got \(2, 3, 8\)"):
        module(torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="rope applies to self-attention only"):
        module(torch.randn(2, 3, E), torch.randn(2, 4, E))
    cross = MultiHeadAttention(E, H, kdim=6)
    with pytest.raises(ValueError, match="self-attention needs kdim == vdim == embed_dim"):
        cross(torch.randn(2, 3, E))


def test_cache_overflow_through_module():
    module = MultiHeadAttention(E, H)
    cache = KVCache(1, H, 3, E // H)
    module(torch.randn(1, 3, E), cache=cache)
    with pytest.raises(ValueError, match="KVCache overflow"):
        module(torch.randn(1, 1, E), cache=cache)


@pytest.mark.cuda
def test_cached_decoding_on_cuda_equals_full_forward():
    module = MultiHeadAttention(E, H, num_kv_heads=2, rope=True).cuda()
    x = torch.randn(2, 6, E, device="cuda")
    cache = KVCache(2, 2, 6, E // H, device="cuda")
    steps = [module(x[:, :3], is_causal=True, cache=cache)]
    steps += [module(x[:, t : t + 1], is_causal=True, cache=cache) for t in range(3, 6)]
    torch.testing.assert_close(torch.cat(steps, 1), module(x, is_causal=True), rtol=1e-4,
                               atol=1e-4)


@pytest.fixture
def attention_calls(monkeypatch):
    """The keyword arguments of every attention() call MultiHeadAttention makes, in order."""
    import attnlab.attention.modules as modules

    seen, real = [], modules.attention

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(modules, "attention", spy)
    return seen


def test_single_token_decoding_needs_no_mask(attention_calls):
    seen = attention_calls
    module = MultiHeadAttention(E, H)
    cache = KVCache(1, H, 4, E // H)
    module(torch.randn(1, 3, E), is_causal=True, cache=cache)
    module(torch.randn(1, 1, E), is_causal=True, cache=cache)
    # The prompt is causal as is; the new token sits after the cached keys: the module passes
    # its position (query_offset) and never builds a mask.
    assert seen[0]["is_causal"] and seen[0]["attn_mask"] is None and seen[0]["query_offset"] == 0
    assert seen[1]["is_causal"] and seen[1]["attn_mask"] is None and seen[1]["query_offset"] == 3


def test_window_and_alibi_decoding_pass_the_offset_instead_of_a_dense_mask(attention_calls):
    seen = attention_calls
    module = MultiHeadAttention(E, H, window=(2, 0), alibi=True).eval()
    x = torch.randn(1, 6, E)
    cache = KVCache(1, H, 6, E // H)
    steps = [module(x[:, :4], is_causal=True, cache=cache)]
    steps += [module(x[:, t : t + 1], is_causal=True, cache=cache) for t in (4, 5)]
    assert [kwargs["query_offset"] for kwargs in seen] == [0, 4, 5]
    assert all(kwargs["attn_mask"] is None and kwargs["window"] == (2, 0) for kwargs in seen)
    torch.testing.assert_close(torch.cat(steps, 1), module(x, is_causal=True), rtol=1e-5, atol=1e-5)
