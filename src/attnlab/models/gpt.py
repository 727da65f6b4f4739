"""A GPT: a small decoder-only language model to train from scratch, built on attnlab's attention.

Plainly, for token ids ``(batch, seq)``::

    x = dropout(embed[ids] (+ pos_embed[positions]))      (batch, seq, embed_dim); learned positions
    for block in layers:                                   pre-LayerNorm blocks
        x = x + dropout(Attention(LayerNorm(x)))           causal; RoPE on q and k when positions="rope"
        x = x + dropout(MLP(LayerNorm(x)))                 MLP(h) = down(gelu(up(h))), 4 x embed_dim wide
    logits = LayerNorm(x) @ embed.T                        (batch, seq, vocab): output tied to the input

As in GPT-2 the weights start normal with std 0.02, and the two projections that write into the
residual stream (``attn.out_proj``, ``mlp.down``) with std ``0.02 / sqrt(2 * num_layers)``: the
stream adds two of them per layer, and this keeps its variance independent of depth.

The named training runs (model size, tokenizer, settings) are
:data:`attnlab.train.lm_task.GPT_PRESETS`, beside the other tasks' presets in :mod:`attnlab.train`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.attention import (
    BACKENDS,
    KVCache,
    LearnedPositionalEmbedding,
    MultiHeadAttention,
    RotaryEmbedding,
)
from attnlab.models.blocks import ACTIVATIONS, FeedForward, TokenEmbedding
from attnlab.models.checkpoint import SafetensorsModel
from attnlab.models.config_check import check_config_fields
from attnlab.models.decoder import DecoderMixin

POSITIONS = ("rope", "learned")
INIT_STD = 0.02


@dataclass
class GPTConfig:
    """Sizes of a GPT.

    ``positions``: ``"rope"`` (rotary, one table shared by all layers) or ``"learned"`` (a trained
    vector per position added to the token embeddings, as in GPT-2). ``bias``: biases in the
    linear layers and LayerNorms. ``backend``: the attention backend (see
    :func:`attnlab.attention.attention`). ``dropout`` applies to embeddings, residual branches and
    attention weights, in training mode only. ``ffn_dim`` (default ``4 * embed_dim``),
    ``ffn_activation`` (``"gelu"`` exact or ``"gelu_tanh"``, GPT-2's) and ``norm_eps`` (the
    LayerNorms') describe the MLP and norms; a pretrained GPT-2 needs ``"gelu_tanh"``.
    """

    vocab_size: int
    max_positions: int
    num_layers: int
    num_heads: int
    embed_dim: int
    dropout: float = 0.0
    positions: str = "rope"
    bias: bool = False
    backend: str = "auto"
    ffn_dim: int | None = None
    ffn_activation: str = "gelu"
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        check_config_fields(self)
        sizes = ("vocab_size", "max_positions", "num_layers", "num_heads", "embed_dim", "norm_eps")
        bad = {name: getattr(self, name) for name in sizes if not getattr(self, name) > 0}
        if self.ffn_dim is not None and self.ffn_dim <= 0:
            bad["ffn_dim"] = self.ffn_dim
        if bad:
            raise ValueError(f"GPTConfig sizes must be positive, got {bad}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got dropout={self.dropout}")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.positions == "rope" and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got head_dim={self.head_dim}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.ffn_activation not in ACTIVATIONS:
            raise ValueError(f"ffn_activation must be one of {ACTIVATIONS}, got {self.ffn_activation!r}")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def num_kv_heads(self) -> int:
        """Every head has its own keys and values (the explainer reads this of any decoder)."""
        return self.num_heads


class GPTBlock(nn.Module):
    """``x + dropout(Attention(LayerNorm(x)))`` then ``x + dropout(MLP(LayerNorm(x)))``."""

    def __init__(self, config: GPTConfig, rope: RotaryEmbedding | None) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.embed_dim, eps=config.norm_eps, bias=config.bias)
        self.attn = MultiHeadAttention(config.embed_dim, config.num_heads, bias=config.bias,
                                       dropout=config.dropout, rope=rope, backend=config.backend)
        self.mlp_norm = nn.LayerNorm(config.embed_dim, eps=config.norm_eps, bias=config.bias)
        ffn_dim = 4 * config.embed_dim if config.ffn_dim is None else config.ffn_dim
        self.mlp = FeedForward(config.embed_dim, ffn_dim, bias=config.bias, activation=config.ffn_activation)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """``x`` ``(batch, seq, embed_dim)`` -> same shape."""
        x = x + self.dropout(self.attn(self.attn_norm(x), is_causal=True, cache=cache))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


class GPT(DecoderMixin, SafetensorsModel, nn.Module):
    """A causal language model: token ids ``(batch, seq)`` -> next-token logits ``(batch, seq, vocab)``.

    The output projection is the token embedding matrix itself (weight tying): there is no
    separate ``lm_head`` parameter. Built randomly initialised (GPT-2's scheme, see the module
    docstring); :meth:`load` reads a saved one.
    """

    config_class = GPTConfig

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = TokenEmbedding(config.vocab_size, config.embed_dim)
        learned = config.positions == "learned"
        self.pos_embed = (LearnedPositionalEmbedding(config.max_positions, config.embed_dim) if learned
                          else None)
        # Every layer's attention rotates with this one module (angles depend on position only).
        self.rope = None if learned else RotaryEmbedding(config.head_dim, max_seq_len=config.max_positions)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(GPTBlock(config, self.rope) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.embed_dim, eps=config.norm_eps, bias=config.bias)
        if not self.embed.weight.is_meta:  # on the meta device every weight comes from a file
            self.reset_parameters()

    @classmethod
    def from_config(cls, config: GPTConfig) -> GPT:
        """A randomly initialised GPT."""
        return cls(config)

    def reset_parameters(self) -> None:
        """GPT-2's initialisation: normal(0, 0.02), residual-stream projections scaled down."""
        residual_std = INIT_STD / math.sqrt(2 * self.config.num_layers)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=INIT_STD)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.embed.weight, std=INIT_STD)
        if self.pos_embed is not None:
            self.pos_embed.reset_parameters()
        for layer in self.layers:
            nn.init.normal_(layer.attn.out_proj.weight, std=residual_std)
            nn.init.normal_(layer.mlp.down.weight, std=residual_std)

    def num_parameters(self) -> int:
        """Number of parameters, the tied embedding counted once."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        caches: list[KVCache] | None = None,
    ) -> torch.Tensor:
        """Next-token logits ``(batch, seq, vocab)`` for ``input_ids`` ``(batch, seq)`` (long).

        The decoder contract of :meth:`LlamaDecoder.forward`: with ``caches`` (from
        :meth:`new_caches`) the new tokens take the positions after the cached ones and are
        appended. ``ValueError`` for ids that are not ``(batch, seq)`` long, more positions than
        ``max_positions`` or more tokens than the caches hold.
        """
        self._check_inputs(input_ids, caches)
        past = 0 if caches is None else caches[0].length
        x = self.embed(input_ids)  # (batch, seq, embed_dim)
        if self.pos_embed is not None:
            x = x + self.pos_embed(input_ids.shape[1], offset=past)  # (seq, embed_dim) broadcast
        x = self.dropout(x)
        for index, layer in enumerate(self.layers):
            x = layer(x, None if caches is None else caches[index])
        return F.linear(self.norm(x), self.embed.weight)  # (batch, seq, vocab)
