"""Session fixtures for the explain tests: real models and their explanations, loaded once.

``minilm_explanation`` is :func:`build_explanation` of :data:`EXAMPLE` with the ``minilm``
fixture (tests/conftest.py); ``smollm2_explanation`` the same for SmolLM2 and :data:`SHORT`.
``browser`` (tests/conftest.py) is Debian's Chromium driven by Playwright. ``tiny_decoder`` is
a two-layer causal GQA model with RoPE built from :class:`MultiHeadAttention` plus a word
tokenizer, honouring the models' contract, for fast tests of everything decoder-specific.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from attnlab.attention import MultiHeadAttention, RotaryEmbedding

EXAMPLE = "The animal didn't cross the street because it was too tired."
SHORT = "The cat sat because it was tired."


def _explain(loaded, text: str, name: str) -> dict:
    from attnlab.explain.collect import build_explanation

    model, tokenizer = loaded
    return build_explanation(model, tokenizer, text, model_name=name)


@pytest.fixture(scope="session")
def minilm_explanation(minilm):
    return _explain(minilm, EXAMPLE, "minilm")


@pytest.fixture(scope="session")
def smollm2_explanation(smollm2):
    return _explain(smollm2, SHORT, "smollm2")


@dataclass
class TinyConfig:
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    embed_dim: int = 16

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


class TinyDecoder(nn.Module):
    """Embedding, then pre-norm causal attention layers; logits like LlamaDecoder."""

    is_causal = True

    def __init__(self, config: TinyConfig, vocab: int) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(vocab, config.embed_dim)
        rope = RotaryEmbedding(config.head_dim)
        self.norms = nn.ModuleList(nn.LayerNorm(config.embed_dim) for _ in range(config.num_layers))
        self.attns = nn.ModuleList(
            MultiHeadAttention(config.embed_dim, config.num_heads, num_kv_heads=config.num_kv_heads,
                               rope=rope)
            for _ in range(config.num_layers)
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for norm, attn in zip(self.norms, self.attns, strict=True):
            x = x + attn(norm(x), is_causal=True)
        return x @ self.embed.weight.T


class WordTokenizer:
    """``<s>`` then each space-separated word in pieces of at most 4 letters, later pieces marked
    ``##`` as in WordPiece: ``"<s> sleep ##ing"``. Grows its vocabulary as it meets pieces."""

    max_length = 16

    def __init__(self) -> None:
        self.vocab = ["<s>"]
        self.special_ids = {0}

    def encode(self, text: str) -> list[int]:
        ids = [0]
        for word in text.split():
            for start in range(0, len(word), 4):
                piece = ("##" if start else "") + word[start:start + 4]
                if piece not in self.vocab:
                    self.vocab.append(piece)
                ids.append(self.vocab.index(piece))
        return ids

    def token_strings(self, ids: list[int]) -> list[str]:
        return [self.vocab[i] for i in ids]

    def word_ids(self, ids: list[int]) -> list[int | None]:
        words, word = [], -1
        for token in self.token_strings(ids):
            if token == "<s>":
                words.append(None)
                continue
            word += not token.startswith("##")
            words.append(word)
        return words


@pytest.fixture(scope="session")
def tiny_decoder():
    """``(TinyDecoder, WordTokenizer)`` with fixed random weights (vocabulary of 64)."""
    torch.manual_seed(0)
    return TinyDecoder(TinyConfig(), vocab=64).eval(), WordTokenizer()
