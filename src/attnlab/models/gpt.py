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

:data:`GPT_PRESETS` names model sizes with training settings (:class:`GPTPreset`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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


@dataclass
class GPTPreset:
    """A named GPT with its tokenizer and training settings.

    ``model`` holds :class:`GPTConfig` fields except ``vocab_size`` (which the tokenizer fixes);
    ``tokenizer`` is ``"char"`` or ``"bpe"`` (then ``bpe_vocab_size`` tokens are trained);
    ``train`` holds ``attnlab.train.TrainConfig`` fields.
    """

    name: str
    description: str
    model: dict
    tokenizer: str
    bpe_vocab_size: int | None = None
    train: dict = field(default_factory=dict)

    def config(self, vocab_size: int) -> GPTConfig:
        """The model's :class:`GPTConfig` for a tokenizer of ``vocab_size`` tokens."""
        return GPTConfig(vocab_size=vocab_size, **self.model)


# Settings every preset shares; each preset below gives only what is its own.
_COMMON_TRAIN = {"weight_decay": 0.1, "grad_clip": 1.0, "keep_last": 3, "log_every": 10}

# Sizes were chosen by measurement on the project's 2-core CPU (AMD EPYC, torch 2.13): training
# tokens/s with 2 threads, and paired runs of equal wall time scored on the held-out works.
# - shakespeare-char-tiny: 300 steps of 1 k tokens at 55-80 k tokens/s, about 5 s.
# - shakespeare-char: 4 x 128 trains at 19.5 k tokens/s (6 x 128: 13.3 k, 4 x 192: 10.7 k). In
#   paired runs of equal time it reached a lower validation loss than 6 x 128 (1.567 vs 1.599
#   nats/char after 10 one-thread minutes) and than 4 x 192 (1.94 vs 2.05 after 5, batch 32); batches
#   of 16 beat batches of 32 (1.80 vs 1.94: twice the optimizer steps). The training loop runs
#   ~9.7 steps/s, so 8000 steps take about 14 of the 15 minutes.
# - shakespeare-bpe: 2048 tokens of ~2.7 characters; the corpus is only 1.7 M tokens, seen ~4.5
#   times in 15 minutes at 8.4 k tokens/s, so the model is wider to make use of repeated data.
GPT_PRESETS: dict[str, GPTPreset] = {
    preset.name: preset
    for preset in (
        GPTPreset(
            name="shakespeare-char-tiny",
            description="2 layers x 64 wide, characters, 64-character context; trains in seconds",
            model={"max_positions": 64, "num_layers": 2, "num_heads": 4, "embed_dim": 64},
            tokenizer="char",
            train={**_COMMON_TRAIN, "batch_size": 16, "block_size": 64, "lr": 3e-3, "min_lr": 3e-4,
                   "warmup_steps": 20, "max_steps": 300, "max_minutes": 2.0, "eval_every": 100,
                   "eval_batches": 4, "checkpoint_every": 100},
        ),
        GPTPreset(
            name="shakespeare-char",
            description="4 layers x 128 wide, characters, 128-character context; 15 minutes on 2 CPU cores",
            model={"max_positions": 128, "num_layers": 4, "num_heads": 4, "embed_dim": 128},
            tokenizer="char",
            train={**_COMMON_TRAIN, "batch_size": 16, "block_size": 128, "lr": 3e-3, "min_lr": 3e-4,
                   "warmup_steps": 200, "max_steps": 8000, "max_minutes": 15.0, "eval_every": 500,
                   "eval_batches": 40, "checkpoint_every": 500},
        ),
        GPTPreset(
            name="shakespeare-bpe",
            description="4 layers x 192 wide, 2048 byte-level BPE tokens, 128-token context; 15 minutes",
            model={"max_positions": 128, "num_layers": 4, "num_heads": 6, "embed_dim": 192},
            tokenizer="bpe",
            bpe_vocab_size=2048,
            train={**_COMMON_TRAIN, "batch_size": 16, "block_size": 128, "lr": 2e-3, "min_lr": 2e-4,
                   "warmup_steps": 200, "max_steps": 3200, "max_minutes": 15.0, "eval_every": 400,
                   "eval_batches": 40, "checkpoint_every": 400},
        ),
    )
}
