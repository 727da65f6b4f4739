"""The shared building blocks, and the options the model folders added to the models."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from attnlab.attention import MultiHeadAttention
from attnlab.models import llama
from attnlab.models.blocks import FeedForward, TokenEmbedding
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.models.llama import LlamaConfig


def test_token_embedding_keeps_its_old_import_path():
    assert llama.TokenEmbedding is TokenEmbedding


def test_feed_forward_tanh_gelu_is_gpt2s():
    torch.manual_seed(0)
    ffn = FeedForward(8, 16, activation="gelu_tanh", bias=False)
    x = torch.randn(3, 8)
    assert ffn.up.bias is None and ffn.down.bias is None
    torch.testing.assert_close(ffn(x), ffn.down(F.gelu(ffn.up(x), approximate="tanh")), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"activation must be one of \('gelu', 'gelu_tanh'\), got 'relu'"):
        FeedForward(8, 16, activation="relu")


def test_out_bias_can_differ_from_the_query_key_value_biases():
    attn = MultiHeadAttention(8, 2, bias=True, out_bias=False)
    assert attn.q_proj.bias is not None and attn.v_proj.bias is not None and attn.out_proj.bias is None
    assert MultiHeadAttention(8, 2, bias=False).out_proj.bias is None


def test_llama_config_refuses_an_empty_window():
    with pytest.raises(ValueError, match=r"'window': 0"):
        LlamaConfig(vocab_size=10, embed_dim=8, num_layers=1, num_heads=2, num_kv_heads=1, ffn_dim=8,
                    max_positions=8, window=0)


def test_gpt_saved_before_the_ffn_fields_still_loads(tmp_path):
    config = GPTConfig(vocab_size=11, max_positions=16, num_layers=1, num_heads=2, embed_dim=8)
    model = GPT(config).eval()
    model.save(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    for field in ("ffn_dim", "ffn_activation", "norm_eps"):
        del saved[field]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = GPT.load(tmp_path)
    assert loaded.config == config
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)
