"""An encoder-decoder Transformer for translation, trained from scratch, on attnlab's attention.

Plainly, for source ids ``(batch, Ls)`` and target ids ``(batch, Lt)`` (the target starts with BOS)::

    e = sqrt(D) * embed[src] + sinusoid[0..Ls)                    (batch, Ls, D)
    for block in encoder:                                         pre-LayerNorm
        e = e + SelfAttention(LN(e), source padding masked)
        e = e + FFN(LN(e))
    memory = LN(e)
    d = sqrt(D) * embed[tgt] + sinusoid[0..Lt)
    for block in decoder:
        d = d + CausalSelfAttention(LN(d))
        d = d + CrossAttention(LN(d), memory, source padding masked)
        d = d + FFN(LN(d))
    logits = LN(d) @ embed.T                                      (batch, Lt, vocab)

One embedding matrix serves source, target and output (the vocabulary is shared, as a joint BPE
gives). Positions are sinusoidal, not learned: they need no parameters, so a small corpus spends
no data learning them, and they are defined for any length. The embeddings start with std
``D ** -0.5`` and are scaled by ``sqrt(D)`` so that tokens and the unit-amplitude sinusoids start
at the same scale, while the tied output layer starts with small logits.

:data:`SEQ2SEQ_PRESETS` names model sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.attention import KVCache, MultiHeadAttention, record, sinusoidal_positions
from attnlab.models.blocks import FeedForward
from attnlab.models.checkpoint import SafetensorsModel
from attnlab.models.config_check import check_config_fields
from attnlab.models.llama import TokenEmbedding

#: Model sizes (everything but the vocabulary and special ids) by name. ``tiny`` learns toy tasks
#: in about a minute on 2 CPU cores; ``base`` is a guess, unmeasured, at a model that trains on the
#: Bible corpus in about 30 minutes on this machine.
SEQ2SEQ_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"num_encoder_layers": 2, "num_decoder_layers": 2, "num_heads": 4, "embed_dim": 64,
             "ffn_dim": 128, "max_positions": 128},
    "base": {"num_encoder_layers": 3, "num_decoder_layers": 3, "num_heads": 4, "embed_dim": 256,
             "ffn_dim": 1024, "max_positions": 256},
}


def check_translation_fields(config) -> None:
    """Checks every translation model config needs: ``pad_id``, ``bos_id``, ``eos_id`` inside
    ``[0, vocab_size)``, ``dropout`` and ``label_smoothing`` in ``[0, 1)``. Raises ``ValueError``."""
    ids = {"pad_id": config.pad_id, "bos_id": config.bos_id, "eos_id": config.eos_id}
    bad = {name: value for name, value in ids.items() if not 0 <= value < config.vocab_size}
    if bad:
        raise ValueError(f"special ids must lie in [0, vocab_size={config.vocab_size}), got {bad}")
    for name in ("dropout", "label_smoothing"):
        value = getattr(config, name)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {name}={value}")


@dataclass
class Seq2SeqConfig:
    """Sizes and special ids of a :class:`Seq2SeqTransformer`.

    ``vocab_size`` counts the shared source/target vocabulary. ``max_positions`` bounds source and
    target lengths. ``dropout`` applies to embeddings, residual branches and attention weights in
    training mode. ``label_smoothing`` is used by :meth:`Seq2SeqTransformer.loss`.
    """

    vocab_size: int
    max_positions: int
    num_encoder_layers: int
    num_decoder_layers: int
    num_heads: int
    embed_dim: int
    ffn_dim: int
    pad_id: int
    bos_id: int
    eos_id: int
    dropout: float = 0.1
    tie_embeddings: bool = True
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        check_config_fields(self)
        sizes = ("vocab_size", "max_positions", "num_encoder_layers", "num_decoder_layers",
                 "num_heads", "embed_dim", "ffn_dim")
        bad = {name: getattr(self, name) for name in sizes if not getattr(self, name) > 0}
        if bad:
            raise ValueError(f"Seq2SeqConfig sizes must be positive, got {bad}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        check_translation_fields(self)

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> Seq2SeqConfig:
        """The config of :data:`SEQ2SEQ_PRESETS` ``name`` plus ``kwargs`` (vocabulary and ids)."""
        if name not in SEQ2SEQ_PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(SEQ2SEQ_PRESETS)}")
        return cls(**{**SEQ2SEQ_PRESETS[name], **kwargs})

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


class EncoderBlock(nn.Module):
    """``x + SelfAttention(LN(x))`` then ``x + FFN(LN(x))``, padding keys masked."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.embed_dim)
        self.attn = MultiHeadAttention(config.embed_dim, config.num_heads, dropout=config.dropout)
        self.ffn_norm = nn.LayerNorm(config.embed_dim)
        self.ffn = FeedForward(config.embed_dim, config.ffn_dim)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, src_padding: torch.Tensor) -> torch.Tensor:
        """``x`` ``(batch, Ls, D)``, ``src_padding`` ``(batch, Ls)`` True at padding -> ``(batch, Ls, D)``."""
        x = x + self.dropout(self.attn(self.attn_norm(x), key_padding_mask=src_padding))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class DecoderBlock(nn.Module):
    """Causal self-attention, cross-attention to the encoder output, FFN; each pre-LN residual."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        dim, heads = config.embed_dim, config.num_heads
        self.self_norm = nn.LayerNorm(dim)
        self.self_attn = MultiHeadAttention(dim, heads, dropout=config.dropout)
        self.cross_norm = nn.LayerNorm(dim)
        self.cross_attn = MultiHeadAttention(dim, heads, dropout=config.dropout)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, config.ffn_dim)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, src_padding: torch.Tensor,
        caches: tuple[KVCache, KVCache] | None = None,
    ) -> torch.Tensor:
        """``x`` ``(batch, Lt, D)``, ``memory`` ``(batch, Ls, D)`` -> ``(batch, Lt, D)``.

        ``caches``: ``(self-attention cache, cross-attention cache)``.
        """
        self_cache, cross_cache = caches if caches is not None else (None, None)
        x = x + self.dropout(self.self_attn(self.self_norm(x), is_causal=True, cache=self_cache))
        x = x + self.dropout(self.cross_attn(self.cross_norm(x), memory, key_padding_mask=src_padding,
                                             cache=cross_cache))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


@dataclass
class DecoderState:
    """What incremental decoding carries between steps, one row per beam or batch item.

    ``caches``: per decoder layer ``(self-attention, cross-attention)`` caches; ``memory``
    ``(rows, Ls, D)`` and ``src_padding`` ``(rows, Ls)`` from the encoder.
    """

    caches: list[tuple[KVCache, KVCache]]
    memory: torch.Tensor
    src_padding: torch.Tensor


class Seq2SeqTransformer(SafetensorsModel, nn.Module):
    """Encoder-decoder Transformer: ``src (batch, Ls)``, ``tgt_in (batch, Lt)`` -> ``(batch, Lt, vocab)``.

    Built randomly initialised; :meth:`load` reads a saved one. Decode with
    :func:`attnlab.models.decoding.greedy_decode` / :func:`~attnlab.models.decoding.beam_search`
    through :meth:`start_decoding`, :meth:`decode_step` and :meth:`reorder_state`.
    """

    config_class = Seq2SeqConfig

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = TokenEmbedding(config.vocab_size, config.embed_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.encoder = nn.ModuleList(EncoderBlock(config) for _ in range(config.num_encoder_layers))
        self.encoder_norm = nn.LayerNorm(config.embed_dim)
        self.decoder = nn.ModuleList(DecoderBlock(config) for _ in range(config.num_decoder_layers))
        self.decoder_norm = nn.LayerNorm(config.embed_dim)
        self.lm_head = (None if config.tie_embeddings
                        else nn.Linear(config.embed_dim, config.vocab_size, bias=False))
        if not self.embed.weight.is_meta:  # on the meta device every weight comes from a file
            nn.init.normal_(self.embed.weight, std=config.embed_dim ** -0.5)

    def _embed(self, ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """``ids`` ``(batch, L)`` at positions ``offset..offset+L-1`` -> ``(batch, L, D)``."""
        if ids.dim() != 2 or ids.dtype != torch.long:
            raise ValueError(f"token ids must be (batch, seq) long, got {tuple(ids.shape)} {ids.dtype}")
        end = offset + ids.shape[1]
        if end > self.config.max_positions:
            raise ValueError(f"sequence reaches position {end} > max_positions={self.config.max_positions}")
        positions = sinusoidal_positions(end, self.config.embed_dim, device=ids.device,
                                         dtype=self.embed.weight.dtype)[offset:]
        return self.dropout(self.embed(ids) * math.sqrt(self.config.embed_dim) + positions)

    def source_padding(self, src_ids: torch.Tensor) -> torch.Tensor:
        """``(batch, Ls)`` bool, True where ``src_ids`` is ``pad_id``."""
        return src_ids == self.config.pad_id

    def encode(self, src_ids: torch.Tensor, src_padding: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder output ``memory`` ``(batch, Ls, D)`` for ``src_ids`` ``(batch, Ls)``.

        ``src_padding`` ``(batch, Ls)`` True at padding (default: where ids equal ``pad_id``).
        Rows at padding positions are computed but meaningless; nothing attends to them.
        """
        if src_padding is None:
            src_padding = self.source_padding(src_ids)
        x = self._embed(src_ids)
        for block in self.encoder:
            x = block(x, src_padding)
        return self.encoder_norm(x)

    def new_decoder_caches(self, batch: int, max_len: int, source_len: int) -> list[tuple[KVCache, KVCache]]:
        """Empty ``(self-attention, cross-attention)`` caches per decoder layer.

        Self-attention caches hold ``max_len`` target steps; cross-attention caches hold the
        ``source_len`` encoder steps, filled on the first decoding step.
        """
        param = self.embed.weight
        heads, head_dim = self.config.num_heads, self.config.head_dim

        def cache(length: int) -> KVCache:
            return KVCache(batch, heads, length, head_dim, device=param.device, dtype=param.dtype)

        return [(cache(max_len), cache(source_len)) for _ in self.decoder]

    def decode(
        self, tgt_ids: torch.Tensor, memory: torch.Tensor, src_padding: torch.Tensor, *,
        caches: list[tuple[KVCache, KVCache]] | None = None,
    ) -> torch.Tensor:
        """Next-token logits ``(batch, Lt, vocab)`` for ``tgt_ids`` ``(batch, Lt)``.

        ``memory`` ``(batch, Ls, D)`` from :meth:`encode`; ``src_padding`` ``(batch, Ls)``. With
        ``caches`` (from :meth:`new_decoder_caches`) the tokens continue after the cached ones.
        """
        offset = 0 if caches is None else caches[0][0].length
        x = self._embed(tgt_ids, offset)
        for index, block in enumerate(self.decoder):
            x = block(x, memory, src_padding, None if caches is None else caches[index])
        x = self.decoder_norm(x)
        return x @ self.embed.weight.T if self.lm_head is None else self.lm_head(x)

    def forward(self, src_ids: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``(batch, Lt, vocab)``: ``tgt_in`` is the target after BOS shifted in."""
        src_padding = self.source_padding(src_ids)
        return self.decode(tgt_in, self.encode(src_ids, src_padding), src_padding)

    def loss(self, src_ids: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor) -> torch.Tensor:
        """Mean label-smoothed cross-entropy of ``tgt_out`` ``(batch, Lt)`` over non-pad positions."""
        logits = self(src_ids, tgt_in)
        return F.cross_entropy(logits.flatten(0, 1).float(), tgt_out.flatten(),
                               ignore_index=self.config.pad_id, label_smoothing=self.config.label_smoothing)

    @torch.no_grad()
    def cross_attention_weights(self, src_ids: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Cross-attention weights ``(layers, heads, Lt, Ls)`` for one pair: ``src_ids`` ``(Ls,)``,
        ``tgt_in`` ``(Lt,)`` (the decoder input, starting with BOS). Row ``t`` is where the
        decoder looked while predicting target token ``t + 1``."""
        if src_ids.dim() != 1 or tgt_in.dim() != 1:
            raise ValueError(f"expected 1-D src_ids and tgt_in, got {tuple(src_ids.shape)} "
                             f"and {tuple(tgt_in.shape)}")
        src, tgt = src_ids[None], tgt_in[None]
        src_padding = self.source_padding(src)
        memory = self.encode(src, src_padding)
        with record(self, modules=lambda name, _: name.endswith(".cross_attn")) as recording:
            self.decode(tgt, memory, src_padding)
        return torch.stack([trace.attention.weights[0] for trace in recording.traces])

    @torch.no_grad()
    def start_decoding(self, src_ids: torch.Tensor, max_len: int) -> DecoderState:
        """Encode ``src_ids`` ``(batch, Ls)`` and make empty caches for ``max_len`` target tokens."""
        src_padding = self.source_padding(src_ids)
        memory = self.encode(src_ids, src_padding)
        caches = self.new_decoder_caches(src_ids.shape[0], max_len, src_ids.shape[1])
        return DecoderState(caches, memory, src_padding)

    @torch.no_grad()
    def decode_step(self, tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """One decoding step: ``tokens`` ``(rows,)`` -> next-token logits ``(rows, vocab)``."""
        logits = self.decode(tokens[:, None], state.memory, state.src_padding, caches=state.caches)
        return logits[:, -1], state

    @staticmethod
    def reorder_state(state: DecoderState, indices: torch.Tensor) -> DecoderState:
        """The state of rows ``indices`` ``(new_rows,)``: every cache, memory row and mask selected."""
        for pair in state.caches:
            for cache in pair:
                cache.reorder(indices)
        return DecoderState(state.caches, state.memory.index_select(0, indices),
                            state.src_padding.index_select(0, indices))
