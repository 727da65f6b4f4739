"""An LSTM encoder-decoder with additive attention: the recurrent baseline for translation.

Bahdanau, Cho & Bengio (2015), "Neural Machine Translation by Jointly Learning to Align and
Translate", on ``torch.nn.LSTM``. For source ids ``(batch, Ls)`` and target ids ``(batch, Lt)``::

    h = BiLSTM(embed[src])                              (batch, Ls, enc_dim); packed, so padding is skipped
    s = tanh(bridge(final encoder states))              decoder's first (hidden, cell), per layer
    for each target step t, token y:
        e_j = v . tanh(W s_top + U h_j)                 additive score of every source position j
        a = softmax(e masked at source padding)         (batch, Ls)
        ctx = sum_j a_j h_j                             (batch, enc_dim)
        s = LSTM([embed[y]; ctx], s)                    input feeding: the context enters the LSTM
        out = tanh(combine([s_top; ctx; embed[y]]))     (batch, embed_dim)
        logits = out @ embed.T + bias                   (batch, vocab): output tied to the embedding

``enc_dim`` is ``2 * hidden_dim`` with a bidirectional encoder, else ``hidden_dim``. Attention
uses the decoder's top-layer state *before* the step (``s_{t-1}`` in the paper). ``combine``
projects into ``embed_dim``, so the output layer can always share the embedding matrix whatever
``hidden_dim`` is. Source and target share one vocabulary.

With ``attention="luong"`` the decoder is Luong, Pham & Manning's (2015, "Effective Approaches to
Attention-based Neural Machine Translation": global attention, "general" score, no input feeding)::

    s = LSTM(embed[y], s)                               the LSTM sees only the tokens ...
    a = softmax(s_top . U h_j masked at padding)        ... and attention reads its new state
    ctx = sum_j a_j h_j;  out, logits as above

Its decoder LSTM does not wait for the attention, so training runs it over the whole target in
one ``nn.LSTM`` call and computes every position's attention at once: several times faster per
step on a CPU than Bahdanau's step-by-step loop, which matters at a fixed time budget.

The API mirrors :class:`attnlab.models.seq2seq.Seq2SeqTransformer`: :meth:`LSTMSeq2Seq.encode`,
:meth:`~LSTMSeq2Seq.decode_step` and :meth:`~LSTMSeq2Seq.reorder_state` plug into
:func:`attnlab.models.decoding.greedy_decode` and :func:`~attnlab.models.decoding.beam_search`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from attnlab.models.checkpoint import SafetensorsModel
from attnlab.models.config_check import check_config_fields
from attnlab.models.seq2seq import check_translation_fields

ATTENTION_KINDS = ("bahdanau", "luong")


@dataclass
class LSTMSeq2SeqConfig:
    """Sizes of an :class:`LSTMSeq2Seq`.

    ``vocab_size`` is shared by source and target. ``dropout`` applies to embeddings, between
    LSTM layers and before the output layer, in training mode only. ``max_positions`` bounds
    decoding length (the model itself has no positional limit). ``teacher_forcing`` is the
    chance, per target position and row, that training feeds the decoder the reference token; the
    rest of the time it feeds the model's own most likely token from the step before (scheduled
    sampling, Bengio et al. 2015), so that training sees the model's mistakes as decoding will.
    1.0, the default, is plain teacher forcing; evaluation mode always feeds the reference.
    ``attention`` is ``"bahdanau"`` (additive, before the LSTM step, input feeding) or ``"luong"``
    (multiplicative, after it; see the module docstring).
    """

    vocab_size: int
    embed_dim: int
    hidden_dim: int
    num_layers: int
    pad_id: int
    bos_id: int
    eos_id: int
    max_positions: int
    dropout: float = 0.1
    bidirectional_encoder: bool = True
    label_smoothing: float = 0.1
    teacher_forcing: float = 1.0
    attention: str = "bahdanau"

    def __post_init__(self):
        check_config_fields(self)
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got attention={self.attention!r}")
        if not 0.0 <= self.teacher_forcing <= 1.0:
            raise ValueError(f"teacher_forcing must be in [0, 1], got teacher_forcing={self.teacher_forcing}")
        for name in ("vocab_size", "embed_dim", "hidden_dim", "num_layers", "max_positions"):
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {name}={value}")
        check_translation_fields(self)


@dataclass
class LSTMState:
    """Everything one decoder step needs; every tensor has the batch in the dimension noted.

    ``memory`` ``(batch, Ls, enc_dim)`` encoder states; ``keys`` ``(batch, Ls, hidden_dim)`` their
    projection ``U h`` (computed once per source); ``padding_mask`` ``(batch, Ls)`` True at
    padding; ``hidden``, ``cell`` ``(layers, batch, hidden_dim)`` the decoder LSTM's state.
    """

    memory: torch.Tensor
    keys: torch.Tensor
    padding_mask: torch.Tensor
    hidden: torch.Tensor
    cell: torch.Tensor


class LSTMSeq2Seq(SafetensorsModel, nn.Module):
    """Bidirectional LSTM encoder, LSTM decoder with additive attention (see the module docstring).

    Masks follow :class:`attnlab.attention.MultiHeadAttention`'s ``key_padding_mask``: True marks
    padding. Where a mask is not given it is ``src_ids == pad_id``. Sources must be right-padded
    and have at least one real token.
    """

    config_class = LSTMSeq2SeqConfig

    def __init__(self, config: LSTMSeq2SeqConfig):
        super().__init__()
        self.config = config
        c = config
        layer_dropout = c.dropout if c.num_layers > 1 else 0.0  # nn.LSTM warns on dropout with one layer
        directions = 2 if c.bidirectional_encoder else 1
        enc_dim = directions * c.hidden_dim
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim)
        # Small embeddings: they are also the output matrix, and N(0, 1) rows give huge first logits.
        nn.init.normal_(self.embed.weight, std=c.embed_dim ** -0.5)
        self.dropout = nn.Dropout(c.dropout)
        self.encoder = nn.LSTM(c.embed_dim, c.hidden_dim, c.num_layers, batch_first=True,
                               dropout=layer_dropout, bidirectional=c.bidirectional_encoder)
        self.bridge_hidden = nn.Linear(enc_dim, c.hidden_dim)
        self.bridge_cell = nn.Linear(enc_dim, c.hidden_dim)
        self.key_proj = nn.Linear(enc_dim, c.hidden_dim)  # U (its bias stands for the score's bias)
        if c.attention == "bahdanau":
            self.query_proj = nn.Linear(c.hidden_dim, c.hidden_dim, bias=False)  # W
            self.score = nn.Linear(c.hidden_dim, 1, bias=False)  # v
        # Bahdanau feeds the context into the LSTM (input feeding); Luong reads it after the step.
        decoder_in = c.embed_dim + (enc_dim if c.attention == "bahdanau" else 0)
        self.decoder = nn.LSTM(decoder_in, c.hidden_dim, c.num_layers, batch_first=True,
                               dropout=layer_dropout)
        self.combine = nn.Linear(c.hidden_dim + enc_dim + c.embed_dim, c.embed_dim)
        self.output_bias = nn.Parameter(torch.zeros(c.vocab_size))

    def num_parameters(self) -> int:
        """Number of parameters (the output layer shares the embedding, counted once)."""
        return sum(p.numel() for p in self.parameters())

    def _padding_mask(self, src_ids: torch.Tensor, src_padding: torch.Tensor | None) -> torch.Tensor:
        mask = src_ids == self.config.pad_id if src_padding is None else src_padding.bool()
        if mask.shape != src_ids.shape:
            raise ValueError(f"src_padding must have the shape of src_ids {tuple(src_ids.shape)}, "
                             f"got {tuple(mask.shape)}")
        return mask

    def encode(self, src_ids: torch.Tensor, src_padding: torch.Tensor | None = None) -> LSTMState:
        """Run the encoder over ``src_ids`` ``(batch, Ls)``; returns the decoder's start state.

        ``src_padding`` ``(batch, Ls)`` is True at padding (default ``src_ids == pad_id``).
        """
        if src_ids.dim() != 2:
            raise ValueError(f"src_ids must be (batch, Ls), got shape {tuple(src_ids.shape)}")
        padding_mask = self._padding_mask(src_ids, src_padding)
        lengths = (~padding_mask).sum(dim=1)
        if (lengths == 0).any():
            raise ValueError(f"every source needs a real token, got lengths {lengths.tolist()}")
        x = self.dropout(self.embed(src_ids))
        # Packing makes the LSTM stop at each row's length, so padding never reaches the states.
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, (h_n, c_n) = self.encoder(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=src_ids.shape[1])

        def per_layer(state: torch.Tensor) -> torch.Tensor:
            # (layers * directions, batch, hidden) -> (layers, batch, directions * hidden)
            layers = self.config.num_layers
            state = state.view(layers, -1, *state.shape[1:])
            return state.permute(0, 2, 1, 3).reshape(layers, state.shape[2], -1)

        return LSTMState(
            memory=memory,
            keys=self.key_proj(memory),
            padding_mask=padding_mask,
            hidden=torch.tanh(self.bridge_hidden(per_layer(h_n))),
            cell=torch.tanh(self.bridge_cell(per_layer(c_n))),
        )

    def start_decoding(self, src_ids: torch.Tensor, max_len: int | None = None) -> LSTMState:
        """The decoder's start state for ``src_ids`` ``(batch, Ls)``: :meth:`encode` with the default
        padding mask. ``max_len`` is there to match ``Seq2SeqTransformer.start_decoding`` (which sizes
        its caches with it); an LSTM state does not depend on it."""
        return self.encode(src_ids)

    def step_with_attention(
        self, token_ids: torch.Tensor, state: LSTMState,
    ) -> tuple[torch.Tensor, LSTMState, torch.Tensor]:
        """One decoder step: ``(logits (batch, vocab), new state, attention weights (batch, Ls))``."""
        embedded = self.dropout(self.embed(token_ids))  # (batch, embed_dim)
        if self.config.attention == "luong":
            out, (hidden, cell) = self.decoder(embedded[:, None, :], (state.hidden, state.cell))
            query = out[:, 0]  # (batch, hidden): the state after this step asks
            scores = torch.bmm(state.keys, query[:, :, None]).squeeze(-1)  # (batch, Ls)
        else:
            query = self.query_proj(state.hidden[-1])  # (batch, hidden): the state before it
            scores = self.score(torch.tanh(query[:, None, :] + state.keys)).squeeze(-1)  # (batch, Ls)
        weights = scores.masked_fill(state.padding_mask, float("-inf")).softmax(dim=-1)
        context = torch.bmm(weights[:, None, :], state.memory).squeeze(1)  # (batch, enc_dim)
        if self.config.attention == "bahdanau":
            lstm_in = torch.cat([embedded, context], dim=-1)[:, None, :]
            out, (hidden, cell) = self.decoder(lstm_in, (state.hidden, state.cell))
        combined = torch.tanh(self.combine(torch.cat([out[:, 0], context, embedded], dim=-1)))
        logits = F.linear(self.dropout(combined), self.embed.weight, self.output_bias)
        new_state = LSTMState(state.memory, state.keys, state.padding_mask, hidden, cell)
        return logits, new_state, weights

    def decode_step(self, token_ids: torch.Tensor, state: LSTMState) -> tuple[torch.Tensor, LSTMState]:
        """Feed ``token_ids`` ``(batch,)``; returns next-token ``logits`` ``(batch, vocab)`` and the
        new state (``state`` itself is left unchanged)."""
        logits, new_state, _ = self.step_with_attention(token_ids, state)
        return logits, new_state

    @staticmethod
    def reorder_state(state: LSTMState, indices: torch.Tensor) -> LSTMState:
        """The state of batch rows ``indices`` ``(new_batch,)``, in that order (beam search)."""
        return LSTMState(
            memory=state.memory.index_select(0, indices),
            keys=state.keys.index_select(0, indices),
            padding_mask=state.padding_mask.index_select(0, indices),
            hidden=state.hidden.index_select(1, indices),
            cell=state.cell.index_select(1, indices),
        )

    def _teacher_forced(self, src: torch.Tensor, tgt_in: torch.Tensor,
                        src_padding: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if tgt_in.dim() != 2 or tgt_in.shape[0] != src.shape[0]:
            raise ValueError(f"tgt_in must be (batch={src.shape[0]}, Lt), got shape {tuple(tgt_in.shape)}")
        state = self.encode(src, src_padding)
        sampling = self.training and self.config.teacher_forcing < 1.0
        if self.config.attention == "luong" and not sampling:
            return self._luong_all_at_once(tgt_in, state)
        all_logits, all_weights = [], []
        # Attention at step t needs the decoder state of step t - 1, so the steps run one by one.
        for t in range(tgt_in.shape[1]):
            tokens = tgt_in[:, t]
            if sampling and t > 0:
                # The model's own guess, detached: gradients flow through the state, not the choice.
                own = all_logits[-1].detach().argmax(dim=-1)
                use_own = torch.rand(tokens.shape, device=tokens.device) >= self.config.teacher_forcing
                tokens = torch.where(use_own & (tokens != self.config.pad_id), own, tokens)
            logits, state, weights = self.step_with_attention(tokens, state)
            all_logits.append(logits)
            all_weights.append(weights)
        return torch.stack(all_logits, dim=1), torch.stack(all_weights, dim=1)

    def _luong_all_at_once(self, tgt_in: torch.Tensor,
                           state: LSTMState) -> tuple[torch.Tensor, torch.Tensor]:
        """What stepping :meth:`step_with_attention` through ``tgt_in`` gives, for Luong attention
        with the reference fed: the LSTM runs over the whole target, then every position attends."""
        embedded = self.dropout(self.embed(tgt_in))  # (batch, Lt, embed_dim)
        out, _ = self.decoder(embedded, (state.hidden, state.cell))  # (batch, Lt, hidden)
        scores = torch.bmm(out, state.keys.transpose(1, 2))  # (batch, Lt, Ls)
        weights = scores.masked_fill(state.padding_mask[:, None, :], float("-inf")).softmax(dim=-1)
        context = torch.bmm(weights, state.memory)  # (batch, Lt, enc_dim)
        combined = torch.tanh(self.combine(torch.cat([out, context, embedded], dim=-1)))
        return F.linear(self.dropout(combined), self.embed.weight, self.output_bias), weights

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor,
                src_padding: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher forcing: ``src`` ``(batch, Ls)``, ``tgt_in`` ``(batch, Lt)`` (BOS first) ->
        logits ``(batch, Lt, vocab)``, row ``t`` predicting ``tgt_in[:, t + 1]``."""
        return self._teacher_forced(src, tgt_in, src_padding)[0]

    def loss(self, src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor,
             src_padding: torch.Tensor | None = None) -> torch.Tensor:
        """Mean label-smoothed cross-entropy of ``tgt_out`` ``(batch, Lt)``, ignoring ``pad_id``."""
        logits = self(src, tgt_in, src_padding)
        return F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=self.config.pad_id,
                               label_smoothing=self.config.label_smoothing)

    @torch.no_grad()
    def attention_weights(self, src: torch.Tensor, tgt: torch.Tensor,
                          src_padding: torch.Tensor | None = None) -> torch.Tensor:
        """Alignment for a heatmap: ``(Lt, Ls)`` for one example (1-D ``src``, ``tgt``), or
        ``(batch, Lt, Ls)``. ``tgt`` is the decoder input (BOS first): row ``t`` is the attention
        used to predict target token ``t + 1``. Rows sum to 1 over real source tokens, 0 at padding.
        """
        if src.dim() == 1 and tgt.dim() == 1:
            mask = None if src_padding is None else src_padding[None]
            return self._teacher_forced(src[None], tgt[None], mask)[1][0]
        return self._teacher_forced(src, tgt, src_padding)[1]
