"""The translation task: English -> Spanish Bible verses, for :func:`attnlab.train.train`.

:class:`TranslationTask` is the :class:`attnlab.train.Task` a translator (a
:class:`~attnlab.models.seq2seq.Seq2SeqTransformer` or an :class:`~attnlab.models.lstm_seq2seq.LSTMSeq2Seq`)
trains on. One byte-level BPE is shared by both languages (trained on the English and the Spanish
side of the training verses). Its ``<|endoftext|>`` ends every sequence and also starts the
decoder's input (BOS = EOS, as GPT-2 does); padding is one extra id *after* the tokenizer's
vocabulary, so the model's vocabulary is ``tokenizer.vocab_size + 1`` (see :func:`special_ids`)::

    src     = encode(en) + [eos]                 (batch, Ls) padded with pad_id
    tgt_in  = [bos] + encode(es)                 (batch, Lt) padded with pad_id
    tgt_out = encode(es) + [eos]                 (batch, Lt) padded with pad_id (ignored by the loss)

Pairs whose source or target (with its EOS) is longer than ``max_tokens`` are *dropped* from
training and validation (truncating a verse would teach the model to stop translating midway);
at inference the source is truncated to the model's length instead (see :func:`translate`).

Batches: ``train_batch(step, rank, world_size)`` draws ``POOL_FACTOR * batch_size`` candidate
pairs from a generator seeded with (seed, step, rank), sorts them by length and returns one of the
``POOL_FACTOR`` consecutive slices at random, so pairs of similar length share a batch (little
padding) while every pair stays equally likely. Each batch is padded to its longest sequence.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from attnlab.train.lm_task import batch_seed

#: Candidates drawn per training batch, in batches: sorting them by length groups similar lengths.
POOL_FACTOR = 8


@dataclass(frozen=True)
class TranslatePreset:
    """A translation run: the model size (``model``, a key of
    :data:`attnlab.models.seq2seq.SEQ2SEQ_PRESETS`, and ``lstm`` sizes for ``--arch lstm``), the
    shared BPE's ``bpe_vocab_size``, ``max_tokens`` per side (EOS included), ``train_pairs`` (use
    that many training pairs spread over the training books, or all when None) and the
    :class:`attnlab.train.TrainConfig` fields ``train``, with ``lstm_train`` overriding some of them
    for ``--arch lstm`` (its steps are slower, so fewer fit the same wall-clock budget)."""

    name: str
    model: str
    lstm: dict
    bpe_vocab_size: int
    max_tokens: int
    train: dict
    train_pairs: int | None = None
    lstm_train: dict = field(default_factory=dict)

    def train_fields(self, arch: str) -> dict:
        """The TrainConfig fields of ``arch``: ``train``, updated by ``lstm_train`` for the LSTM."""
        if arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")
        return {**self.train, **self.lstm_train} if arch == "lstm" else dict(self.train)


#: ``tiny`` trains in about a minute on 2 CPU cores (for tests; it does not translate well);
#: ``base`` is sized for 30 minutes of each architecture.
TRANSLATE_PRESETS: dict[str, TranslatePreset] = {
    preset.name: preset for preset in (
        TranslatePreset(
            name="tiny", model="tiny", lstm={"embed_dim": 64, "hidden_dim": 64, "num_layers": 1},
            bpe_vocab_size=512, max_tokens=64, train_pairs=3000,
            train={"batch_size": 16, "block_size": 64, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 10,
                   "max_steps": 300, "max_minutes": 1.0, "eval_every": 100, "eval_batches": 2,
                   "checkpoint_every": 100, "log_every": 10, "weight_decay": 0.01},
        ),
        TranslatePreset(
            name="base", model="base",
            lstm={"embed_dim": 256, "hidden_dim": 256, "num_layers": 2},
            bpe_vocab_size=8000, max_tokens=96,
            # Both architectures get the same 30 minutes and learning-rate schedule shape. Measured
            # on 2 quiet cores: 0.70 s per Transformer step, 1.15 s per LSTM step, so the step
            # counts below end the cosine schedule close to the time limit.
            train={"batch_size": 32, "block_size": 96, "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 150,
                   "max_steps": 2600, "max_minutes": 30.0, "eval_every": 200, "eval_batches": 10,
                   "checkpoint_every": 200, "log_every": 20, "weight_decay": 0.01},
            lstm_train={"max_steps": 1600, "eval_every": 125, "checkpoint_every": 125},
        ),
    )
}

ARCHITECTURES = ("transformer", "lstm")


def special_ids(tokenizer) -> dict[str, int]:
    """``vocab_size``, ``pad_id``, ``bos_id``, ``eos_id`` of a translator over ``tokenizer``:
    EOS and BOS are ``<|endoftext|>``, padding the extra id ``tokenizer.vocab_size``."""
    eos = tokenizer.eos_token_id
    return {"vocab_size": tokenizer.vocab_size + 1, "pad_id": tokenizer.vocab_size, "bos_id": eos,
            "eos_id": eos}


def build_model(arch: str, preset: TranslatePreset, tokenizer) -> torch.nn.Module:
    """A new translator of ``arch`` (``"transformer"`` or ``"lstm"``) sized by ``preset``."""
    from attnlab.models.lstm_seq2seq import LSTMSeq2Seq, LSTMSeq2SeqConfig
    from attnlab.models.seq2seq import SEQ2SEQ_PRESETS, Seq2SeqConfig, Seq2SeqTransformer

    ids = special_ids(tokenizer)
    if arch == "transformer":
        return Seq2SeqTransformer(Seq2SeqConfig.from_preset(preset.model, **ids))
    if arch == "lstm":
        max_positions = SEQ2SEQ_PRESETS[preset.model]["max_positions"]
        return LSTMSeq2Seq(LSTMSeq2SeqConfig(**preset.lstm, **ids, max_positions=max_positions))
    raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")


def spread(items: Sequence, count: int | None) -> list:
    """``count`` items picked evenly from the first to the last (all of them when ``count`` is None
    or not smaller)."""
    if count is None or count >= len(items):
        return list(items)
    picks = torch.linspace(0, len(items) - 1, count).round().long().unique()
    return [items[i] for i in picks.tolist()]


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """``(len(rows), longest)`` int64, each row left-aligned and padded with ``pad_id``."""
    out = torch.full((len(rows), max(len(row) for row in rows)), pad_id, dtype=torch.long)
    for index, row in enumerate(rows):
        out[index, :len(row)] = torch.tensor(row, dtype=torch.long)
    return out


class TranslationTask:
    """English -> Spanish translation of verse pairs (see the module docstring).

    Args:
        tokenizer: the shared BPE (``encode``, ``vocab_size``, ``eos_token_id``, ``save``).
        train_pairs, val_pairs: :class:`attnlab.data.bible.VersePair` lists (anything with
            ``en`` and ``es``).
        batch_size: pairs per training batch (per process).
        max_tokens: longest source or target kept, EOS included.
        eval_batches: how many fixed validation batches :meth:`val_batches` gives.
        seed: the run's seed, from which every training batch is drawn.
    """

    def __init__(self, tokenizer, train_pairs: Sequence, val_pairs: Sequence, *, batch_size: int,
                 max_tokens: int, eval_batches: int, seed: int = 0) -> None:
        self.tokenizer = tokenizer
        self.batch_size, self.max_tokens, self.seed = batch_size, max_tokens, seed
        ids = special_ids(tokenizer)
        self.pad_id, self.bos_id, self.eos_id = ids["pad_id"], ids["bos_id"], ids["eos_id"]
        self.train_examples = self._encode(train_pairs)
        val_examples = self._encode(val_pairs)
        for name, examples in (("train_pairs", self.train_examples), ("val_pairs", val_examples)):
            if not examples:
                raise ValueError(f"{name} has no pair of at most max_tokens={max_tokens} tokens per side")
        # Fixed validation batches: pairs spread over the validation books, in book order.
        picked = spread(val_examples, batch_size * eval_batches)
        self._val = [self._collate(picked[start:start + batch_size])
                     for start in range(0, len(picked), batch_size)]

    @classmethod
    def from_preset(cls, preset: TranslatePreset, config, tokenizer=None) -> TranslationTask:
        """The task of ``preset`` on the Bible split (:func:`attnlab.data.bible.split_pairs`), the
        BPE trained on its training pairs unless ``tokenizer`` is given (a resumed run passes its
        checkpoint's). Raises :class:`attnlab.data.bible.BibleDataError` without the corpus."""
        from attnlab.data.bible import split_pairs, verse_pairs
        from attnlab.data.tokenizers import BPETokenizer

        train_pairs, val_pairs, _ = split_pairs(verse_pairs())
        train_pairs = spread(train_pairs, preset.train_pairs)
        if tokenizer is None:
            texts = [text for pair in train_pairs for text in (pair.en, pair.es)]
            tokenizer = BPETokenizer.train(texts, preset.bpe_vocab_size)
        return cls(tokenizer, train_pairs, val_pairs, batch_size=config.batch_size,
                   max_tokens=preset.max_tokens, eval_batches=config.eval_batches, seed=config.seed)

    def _encode(self, pairs: Sequence) -> list[tuple[list[int], list[int]]]:
        """``(source + [eos], target)`` token lists of the pairs that fit ``max_tokens``."""
        examples = []
        for pair in pairs:
            src = [*self.tokenizer.encode(pair.en), self.eos_id]
            tgt = self.tokenizer.encode(pair.es)
            if len(src) <= self.max_tokens and len(tgt) + 1 <= self.max_tokens:
                examples.append((src, tgt))
        return examples

    def _collate(self, examples: Sequence[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, ...]:
        """``(src, tgt_in, tgt_out)``: ``(batch, Ls)``, ``(batch, Lt)``, ``(batch, Lt)``, padded."""
        src = pad_rows([s for s, _ in examples], self.pad_id)
        tgt_in = pad_rows([[self.bos_id, *t] for _, t in examples], self.pad_id)
        tgt_out = pad_rows([[*t, self.eos_id] for _, t in examples], self.pad_id)
        return src, tgt_in, tgt_out

    def train_batch(self, step: int, rank: int, world_size: int) -> tuple[torch.Tensor, ...]:
        """``(src, tgt_in, tgt_out)`` of ``step`` on ``rank``, ``batch_size`` rows each."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got rank={rank}")
        generator = torch.Generator().manual_seed(batch_seed(self.seed, step, rank))
        pool = torch.randint(len(self.train_examples), (POOL_FACTOR * self.batch_size,),
                             generator=generator).tolist()
        # Stable sort by (source, target) length, ties by draw order: deterministic.
        pool.sort(key=lambda i: (len(self.train_examples[i][0]), len(self.train_examples[i][1])))
        chunk = int(torch.randint(POOL_FACTOR, (1,), generator=generator))
        chosen = pool[chunk * self.batch_size:(chunk + 1) * self.batch_size]
        return self._collate([self.train_examples[i] for i in chosen])

    def val_batches(self) -> list[tuple[torch.Tensor, ...]]:
        """The fixed validation batches, like :meth:`train_batch`'s (the last may be smaller)."""
        return self._val

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """``model.loss(src, tgt_in, tgt_out)``: mean label-smoothed nats per target token."""
        device = next(model.parameters()).device
        src, tgt_in, tgt_out = (t.to(device) for t in batch)
        return model.loss(src, tgt_in, tgt_out)

    def count(self, batch: tuple[torch.Tensor, ...]) -> int:
        """Target tokens (EOS included, padding not) in ``batch``."""
        return int((batch[2] != self.pad_id).sum())

    def save_assets(self, folder: str | os.PathLike) -> None:
        """Write the tokenizer into ``folder``."""
        self.tokenizer.save(folder)


@torch.no_grad()
def translate(model: torch.nn.Module, tokenizer, texts: Sequence[str], *, beam: int = 4,
              length_penalty: float = 1.0, greedy: bool = False, batch_size: int = 16) -> list[str]:
    """Spanish translations of the English ``texts`` by a trained translator, ``batch_size`` at a
    time: greedy decoding, or beam search with ``beam`` beams and GNMT ``length_penalty``.

    Sources longer than the model's ``max_positions`` are truncated (keeping their EOS); outputs
    stop at EOS or after ``min(max_positions, 2 * source tokens + 10)`` tokens.
    """
    from attnlab.models.decoding import beam_search, greedy_decode

    config = model.config
    limit = config.max_positions
    sources = [[*tokenizer.encode(text)[:limit - 1], config.eos_id] for text in texts]
    results: list[str] = []
    for start in range(0, len(sources), batch_size):
        group = sources[start:start + batch_size]
        src = pad_rows(group, config.pad_id).to(next(model.parameters()).device)
        max_len = min(limit, 2 * src.shape[1] + 10)
        state = model.start_decoding(src, max_len)
        common = {"bos_id": config.bos_id, "eos_id": config.eos_id, "max_len": max_len,
                  "batch_size": len(group), "device": src.device}
        if greedy:
            outputs = greedy_decode(model.decode_step, state, **common)
        else:
            hypotheses = beam_search(model.decode_step, state, beam_size=beam, length_penalty=length_penalty,
                                     reorder=model.reorder_state, **common)
            outputs = [hypothesis.tokens for hypothesis in hypotheses]
        # Padding is outside the tokenizer's vocabulary: a poorly trained model may still emit it.
        results += [tokenizer.decode([t for t in tokens if t < tokenizer.vocab_size]).strip()
                    for tokens in outputs]
    return results
