"""A LLaMA decoder (SmolLM2's architecture) built on :class:`attnlab.attention.MultiHeadAttention`.

Plainly, for token ids ``(batch, seq)``::

    x = embed[ids]                                    (batch, seq, embed_dim)
    for block in layers:                              pre-norm blocks
        x = x + Attention(RMSNorm(x))                 causal, grouped-query, RoPE on q and k
        x = x + SwiGLU(RMSNorm(x))                    down(silu(gate(h)) * up(h))
    logits = RMSNorm(x) @ embed.T                     (batch, seq, vocab) when tied, else lm_head

The attention of every layer is attnlab's own, with one :class:`RotaryEmbedding` shared by all
layers, so the explainer's traces and the KV cache work here as in every other attnlab model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attnlab.attention import KVCache, MultiHeadAttention, RotaryEmbedding
from attnlab.models.blocks import RMSNorm, SwiGLU, TokenEmbedding
from attnlab.models.checkpoint import SafetensorsModel
from attnlab.models.config_check import check_config_fields
from attnlab.models.decoder import DecoderMixin


@dataclass
class LlamaConfig:
    """Sizes of a LLaMA decoder; the defaults are SmolLM2-135M's.

    The variants of the family: ``qkv_bias`` and ``out_bias`` put biases on the query/key/value
    and the output projections (Qwen2 has the first only); ``window`` (Mistral's
    ``sliding_window``) lets each position attend to itself and the ``window - 1`` positions
    before it; None sees the whole past.
    """

    vocab_size: int = 49152
    embed_dim: int = 576
    num_layers: int = 30
    num_heads: int = 9
    num_kv_heads: int = 3
    ffn_dim: int = 1536
    max_positions: int = 8192
    rope_theta: float = 100000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    qkv_bias: bool = False
    out_bias: bool = False
    window: int | None = None

    def __post_init__(self) -> None:
        check_config_fields(self)
        sizes = ("vocab_size", "embed_dim", "num_layers", "num_heads", "num_kv_heads", "ffn_dim",
                 "max_positions", "rope_theta", "norm_eps")
        bad = {name: getattr(self, name) for name in sizes if not getattr(self, name) > 0}
        if self.window is not None and self.window <= 0:
            bad["window"] = self.window
        if bad:
            raise ValueError(f"LlamaConfig values must be positive, got {bad}")
        if self.embed_dim % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"need embed_dim % num_heads == 0 and num_heads % num_kv_heads == 0, got "
                f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got head_dim={self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


class LlamaBlock(nn.Module):
    """``x + Attention(RMSNorm(x))`` then ``x + SwiGLU(RMSNorm(x))``, causal self-attention."""

    def __init__(self, config: LlamaConfig, rope: RotaryEmbedding) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.embed_dim, config.norm_eps)
        # A window of w positions: the key w - 1 places back is the oldest one seen.
        window = None if config.window is None else (config.window - 1, 0)
        self.attn = MultiHeadAttention(config.embed_dim, config.num_heads,
                                       num_kv_heads=config.num_kv_heads, bias=config.qkv_bias,
                                       out_bias=config.out_bias, rope=rope, window=window)
        self.ffn_norm = RMSNorm(config.embed_dim, config.norm_eps)
        self.ffn = SwiGLU(config.embed_dim, config.ffn_dim)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """``x`` ``(batch, seq, embed_dim)`` -> same shape."""
        x = x + self.attn(self.attn_norm(x), is_causal=True, cache=cache)
        return x + self.ffn(self.ffn_norm(x))


class LlamaDecoder(DecoderMixin, SafetensorsModel, nn.Module):
    """A causal language model: token ids ``(batch, seq)`` -> next-token logits ``(batch, seq, vocab)``.

    With ``config.tie_embeddings`` the output projection is the embedding matrix itself (there is
    no ``lm_head``), as in SmolLM2. ``tokenizer`` is set by
    :func:`attnlab.models.pretrained.smollm2.load_smollm2`; a model built otherwise has none.
    """

    config_class = LlamaConfig

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = TokenEmbedding(config.vocab_size, config.embed_dim)
        # One rotary table for all layers: the angles depend only on positions, not on the layer.
        self.rope = RotaryEmbedding(config.head_dim, base=config.rope_theta)
        self.layers = nn.ModuleList(LlamaBlock(config, self.rope) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.embed_dim, config.norm_eps)
        self.lm_head = (
            None if config.tie_embeddings else nn.Linear(config.embed_dim, config.vocab_size, bias=False)
        )
        self.tokenizer = None

    @classmethod
    def from_config(cls, config: LlamaConfig) -> LlamaDecoder:
        """A randomly initialised decoder (the ``nn`` modules' default initialisation)."""
        return cls(config)

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        caches: list[KVCache] | None = None,
    ) -> torch.Tensor:
        """Next-token logits for every position.

        Args:
            input_ids: ``(batch, seq)`` long token ids.
            caches: from :meth:`new_caches`; the new tokens take positions
                ``cache.length .. cache.length + seq - 1`` and are appended to the caches.

        Returns:
            ``(batch, seq, vocab)`` logits. (Attention is recorded with
            :func:`attnlab.attention.record`: one trace per layer per call.)

        Raises:
            ValueError: ids not ``(batch, seq)`` long, more positions than ``max_positions``,
                or more tokens than the caches have room for.
        """
        self._check_inputs(input_ids, caches)
        x = self.embed(input_ids)  # (batch, seq, embed_dim)
        for index, layer in enumerate(self.layers):
            x = layer(x, None if caches is None else caches[index])
        x = self.norm(x)
        weight = self.embed.weight if self.lm_head is None else self.lm_head.weight
        return x @ weight.T  # (batch, seq, vocab)
