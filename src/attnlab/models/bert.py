"""A BERT encoder built on :class:`attnlab.attention.MultiHeadAttention`, and sentence embeddings.

Plainly, for token ids ``(batch, seq)``::

    x = LayerNorm(token_embed[ids] + position_embed[0..seq-1] + type_embed[0])
    for block in layers:                     # post-LayerNorm blocks, see attnlab.models.blocks
        x = LayerNorm(x + Attention(x))      # bidirectional; padding keys masked out
        x = LayerNorm(x + FeedForward(x))
    embed(sentences) = normalize(mean of x over each sentence's real tokens)    (the default Pooling)
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.attention import LearnedPositionalEmbedding
from attnlab.models.blocks import PostNormEncoderBlock
from attnlab.models.checkpoint import SafetensorsModel
from attnlab.models.config_check import check_config_fields


@dataclass
class BertConfig:
    """Sizes of a BERT encoder. ``num_kv_heads`` defaults to ``num_heads`` (BERT has no GQA)."""

    vocab_size: int = 30522
    embed_dim: int = 384
    num_layers: int = 6
    num_heads: int = 12
    num_kv_heads: int | None = None
    ffn_dim: int = 1536
    max_positions: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    def __post_init__(self) -> None:
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        check_config_fields(self)
        sizes = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "layer_norm_eps"}
        bad = {name: value for name, value in sizes.items() if not value > 0}
        if bad:
            raise ValueError(f"BertConfig sizes must be positive, got {bad}")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


POOLING_MODES = ("mean", "cls", "max")


@dataclass(frozen=True)
class Pooling:
    """How :meth:`BertEncoder.embed` turns a sentence's last hidden states into one vector.

    ``mode``: ``"mean"`` (over the real tokens), ``"cls"`` (the first token's) or ``"max"``
    (per feature, over the real tokens), as sentence-transformers' ``Pooling`` module; then
    ``normalize`` scales it to unit length (its ``Normalize`` module).
    """

    mode: str = "mean"
    normalize: bool = True

    def __post_init__(self) -> None:
        if self.mode not in POOLING_MODES:
            raise ValueError(f"pooling mode must be one of {POOLING_MODES}, got {self.mode!r}")

    def __call__(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``hidden`` ``(b, seq, D)``, ``mask`` ``(b, seq)`` 1 at real tokens -> ``(b, D)``."""
        real = mask.unsqueeze(-1).to(hidden.dtype)  # (b, seq, 1): 1 at real tokens
        if self.mode == "cls":
            pooled = hidden[:, 0]
        elif self.mode == "max":
            # Padding set far below any activation, as sentence-transformers does.
            pooled = hidden.masked_fill(real == 0, -1e9).max(dim=1).values
        else:
            pooled = (hidden * real).sum(dim=1) / real.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=-1) if self.normalize else pooled


@dataclass
class BertOutput:
    """``last_hidden_state`` ``(batch, seq, embed_dim)``.

    ``hidden_states``: the embeddings' output followed by every layer's output, ``num_layers + 1``
    tensors like ``last_hidden_state`` (as Hugging Face's ``output_hidden_states``), or None.
    (Attention is recorded with :func:`attnlab.attention.record`.)
    """

    last_hidden_state: torch.Tensor
    hidden_states: list[torch.Tensor] | None = None


class BertEncoder(SafetensorsModel, nn.Module):
    """BERT's encoder stack (no pooler or heads) with sentence :meth:`embed`.

    ``tokenizer`` (set by :func:`attnlab.models.pretrained.load_pretrained`) turns text into
    ids for :meth:`embed`; a model built or loaded otherwise has none until it is assigned.
    ``pooling`` (a :class:`Pooling`, mean to unit length unless a model folder's
    sentence-transformers files say otherwise) is how :meth:`embed` pools.
    """

    is_causal = False
    config_class = BertConfig

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embed = nn.Embedding(config.vocab_size, config.embed_dim)
        self.position_embed = LearnedPositionalEmbedding(config.max_positions, config.embed_dim)
        self.type_embed = nn.Embedding(config.type_vocab_size, config.embed_dim)
        self.embed_norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(
            PostNormEncoderBlock(config.embed_dim, config.num_heads, config.ffn_dim,
                                 num_kv_heads=config.num_kv_heads, eps=config.layer_norm_eps)
            for _ in range(config.num_layers)
        )
        self.tokenizer = None
        self.pooling = Pooling()

    @classmethod
    def from_config(cls, config: BertConfig) -> BertEncoder:
        """A randomly initialised encoder (the ``nn`` modules' default initialisation)."""
        return cls(config)

    def _check_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.long, torch.int32):
            raise ValueError(
                f"input_ids must be an integer (batch, seq) tensor, got dtype {input_ids.dtype} "
                f"and shape {tuple(input_ids.shape)}"
            )
        if input_ids.shape[1] > self.config.max_positions:
            raise ValueError(
                f"input_ids has {input_ids.shape[1]} tokens per row, more than "
                f"max_positions={self.config.max_positions}"
            )
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} does not match input_ids "
                f"shape {tuple(input_ids.shape)}"
            )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        output_hidden_states: bool = False,
    ) -> BertOutput:
        """Encode ``input_ids`` ``(batch, seq)``.

        ``attention_mask`` ``(batch, seq)`` is 1 (or True) at real tokens and 0 at padding; padding
        keys get no attention weight. Rows at padding positions are computed but meaningless.
        Every token has token type 0 (single sentences).
        """
        self._check_inputs(input_ids, attention_mask)
        seq = input_ids.shape[1]
        # (batch, seq, D) + (seq, D) + (D,): the position and type rows broadcast over the batch
        x = self.token_embed(input_ids) + self.position_embed(seq) + self.type_embed.weight[0]
        x = self.embed_norm(x)
        padding = None if attention_mask is None else attention_mask == 0  # (batch, seq)

        hidden_states = [x] if output_hidden_states else None
        for block in self.layers:
            x = block(x, padding)
            if output_hidden_states:
                hidden_states.append(x)
        return BertOutput(last_hidden_state=x, hidden_states=hidden_states)

    @torch.no_grad()
    def embed(self, sentences: str | list[str], batch_size: int = 32) -> torch.Tensor:
        """Sentence embeddings ``(n, embed_dim)``: the last hidden states pooled by
        ``self.pooling`` (by default their mean over each sentence's real tokens, L2-normalised:
        sentence-transformers' mean pooling).

        Sentences are encoded longest first, so each batch pads to similar lengths; the rows
        come back in input order. A str gives a ``(1, embed_dim)`` result.

        Raises ``RuntimeError`` if no tokenizer is set and ``ValueError`` for an empty list, a
        non-positive ``batch_size`` or a sentence longer than ``max_positions`` tokens (no
        silent truncation).
        """
        if self.tokenizer is None:
            raise RuntimeError(
                "BertEncoder.embed needs a tokenizer: use attnlab.models.pretrained."
                "load_pretrained(), or set model.tokenizer"
            )
        if isinstance(sentences, str):
            sentences = [sentences]
        if not sentences:
            raise ValueError("sentences is empty; pass a str or a non-empty list of str")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got batch_size={batch_size}")
        device = self.token_embed.weight.device
        order = sorted(range(len(sentences)), key=lambda i: -len(sentences[i]))
        out = torch.empty(len(sentences), self.config.embed_dim, device=device)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            ids, mask = self.tokenizer.encode_batch([sentences[i] for i in rows])
            if ids.shape[1] > self.config.max_positions:
                longest = rows[int(mask.sum(dim=1).argmax())]
                raise ValueError(
                    f"sentence {longest} has {ids.shape[1]} tokens, more than "
                    f"max_positions={self.config.max_positions}; shorten it"
                )
            ids, mask = ids.to(device), mask.to(device)
            hidden = self(ids, mask).last_hidden_state  # (b, seq, D)
            out[rows] = self.pooling(hidden, mask).to(out.dtype)
        return out
