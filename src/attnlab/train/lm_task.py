"""The language-modelling task: next-token prediction on text, for :func:`attnlab.train.train`.

:class:`LanguageModelTask` is the :class:`attnlab.train.Task` a GPT trains on. It encodes the
training and validation text once, then::

    train_batch(step, rank, world_size)   random windows (x, y), each (batch, block); the start
                                          positions come from a generator seeded with
                                          (seed, step, rank): a resumed run draws the same
                                          windows for the same step, and ranks draw different ones
    val_batches()                         eval_batches fixed windows of the validation text, the
                                          same for every seed and every run
    loss(model, batch)                    mean cross-entropy of model(x) against y, in nats/token
    count(batch)                          tokens in the batch (for tokens/s)
    save_assets(folder)                   the tokenizer, so a checkpoint is self-contained

Losses are in nats per *token*. Bits per character compare tokenizers fairly: a BPE token
covers several characters, so its loss per token is larger for the same text. They are the
total nats of the text divided by its characters and by ln 2::

    bits/char = nats/token * tokens / characters / ln 2       (= nats/token / ln 2 for characters)
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from attnlab.data.lm import encode_corpus, lm_batch

# Validation windows come from this seed, not the run's: runs with different seeds are scored
# on the same text.
VALIDATION_SEED = 20240601


def bits_per_char(nats_per_token: float, tokens: int, characters: int) -> float:
    """Bits per character of a text of ``characters`` characters encoded as ``tokens`` tokens,
    from its mean loss in nats per token: ``nats_per_token * tokens / characters / ln 2``."""
    if tokens <= 0 or characters <= 0:
        raise ValueError(f"tokens and characters must be > 0, got {tokens=}, {characters=}")
    return nats_per_token * tokens / characters / math.log(2)


def batch_seed(seed: int, step: int, rank: int) -> int:
    """A 63-bit generator seed for the batch of ``step`` on ``rank`` of a run seeded ``seed``.

    numpy's ``SeedSequence`` mixes the three numbers (a plain formula such as ``seed + step``
    would give step 1 of seed 0 the data of step 0 of seed 1).
    """
    words = np.random.SeedSequence([seed, step, rank]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def build_tokenizer(kind: str, text: str, bpe_vocab_size: int | None = None):
    """A tokenizer of ``kind`` (``"char"`` or ``"bpe"``, then ``bpe_vocab_size`` tokens) trained
    on ``text``."""
    from attnlab.data.tokenizers import BPETokenizer, CharTokenizer

    if kind == "char":
        return CharTokenizer.train(text)
    if kind == "bpe":
        if bpe_vocab_size is None:
            raise ValueError("a 'bpe' tokenizer needs bpe_vocab_size")
        return BPETokenizer.train(text, bpe_vocab_size)
    raise ValueError(f"tokenizer kind must be 'char' or 'bpe', got {kind!r}")


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


class LanguageModelTask:
    """Next-token prediction on ``train_text``, validated on ``val_text`` (see the module docstring).

    Args:
        tokenizer: a trained tokenizer (``encode``, ``vocab_size``, ``save``).
        train_text, val_text: the two parts of the corpus; each must encode to more than
            ``block_size`` tokens.
        batch_size: windows per training batch (per process).
        block_size: tokens per window.
        eval_batches: how many fixed validation batches :meth:`val_batches` gives.
        seed: the run's seed, from which every training batch is drawn.
    """

    def __init__(self, tokenizer, train_text: str, val_text: str, *, batch_size: int, block_size: int,
                 eval_batches: int, seed: int = 0) -> None:
        self.tokenizer = tokenizer
        self.batch_size, self.block_size, self.seed = batch_size, block_size, seed
        self.train_tokens = encode_corpus(tokenizer, train_text)  # (train_tokens,)
        self.val_tokens = encode_corpus(tokenizer, val_text)  # (val_tokens,)
        self.val_characters = len(val_text)
        for name, tokens in (("train_text", self.train_tokens), ("val_text", self.val_tokens)):
            if tokens.numel() <= block_size:
                raise ValueError(f"{name} encodes to {tokens.numel()} tokens, "
                                 f"not more than block_size={block_size}")
        generator = torch.Generator().manual_seed(VALIDATION_SEED)
        self._val = [lm_batch(self.val_tokens, batch_size, block_size, generator)
                     for _ in range(eval_batches)]

    @classmethod
    def from_preset(cls, preset, config, tokenizer=None) -> LanguageModelTask:
        """The task of a GPT preset on the Shakespeare split (:mod:`attnlab.data.shakespeare`).

        ``preset`` is a :class:`GPTPreset`, ``config`` the run's
        :class:`attnlab.train.TrainConfig`. The tokenizer is trained on the training works as
        the preset says, unless one is given (a resumed run passes its checkpoint's).
        Raises ``MissingPackageError`` when the corpus package is not installed.
        """
        from attnlab.data.shakespeare import load_works, split_works

        train_text, val_text = split_works(load_works())
        if tokenizer is None:
            tokenizer = build_tokenizer(preset.tokenizer, train_text, preset.bpe_vocab_size)
        return cls(tokenizer, train_text, val_text, batch_size=config.batch_size,
                   block_size=config.block_size, eval_batches=config.eval_batches, seed=config.seed)

    def train_batch(self, step: int, rank: int, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``, each ``(batch_size, block_size)`` int64: the windows of ``step`` on ``rank``."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got rank={rank}")
        generator = torch.Generator().manual_seed(batch_seed(self.seed, step, rank))
        return lm_batch(self.train_tokens, self.batch_size, self.block_size, generator)

    def val_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The fixed validation batches, ``eval_batches`` pairs ``(x, y)`` like :meth:`train_batch`'s."""
        return self._val

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy (nats/token) of ``model(x)`` ``(batch, block, vocab)`` against ``y``."""
        device = _model_device(model)
        x, y = (t.to(device) for t in batch)
        logits = model(x)
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())

    def count(self, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        """Tokens predicted in ``batch``."""
        return batch[1].numel()

    def save_assets(self, folder: str | os.PathLike) -> None:
        """Write the tokenizer into ``folder``."""
        self.tokenizer.save(folder)

    def bits_per_char(self, nats_per_token: float) -> float:
        """``nats_per_token`` on the validation text, in bits per character."""
        return bits_per_char(nats_per_token, self.val_tokens.numel(), self.val_characters)


def _windows(tokens: torch.Tensor, block_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive ``(x, y)`` windows, each ``(block,)``, covering ``tokens[1:]`` once as targets;
    the last one is shorter when ``block_size`` does not divide ``len(tokens) - 1``."""
    for start in range(0, tokens.numel() - 1, block_size):
        window = tokens[start:start + block_size + 1]
        yield window[:-1], window[1:]


def spread_windows(tokens: torch.Tensor, block_size: int,
                   max_tokens: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The ``(x, y)`` windows of ``tokens`` :func:`text_loss` scores: all of them, or about
    ``max_tokens`` targets' worth spread evenly from the start of the text to its end (so that
    every part of it, e.g. every held-out work, is sampled)."""
    windows = list(_windows(tokens, block_size))
    if max_tokens is None or max_tokens >= tokens.numel() - 1:
        return windows
    wanted = max(1, max_tokens // block_size)
    picks = torch.linspace(0, len(windows) - 1, wanted).round().long().unique()
    return [windows[i] for i in picks.tolist()]


@torch.inference_mode()
def text_loss(model: torch.nn.Module, windows: list[tuple[torch.Tensor, torch.Tensor]],
              batch_size: int = 32) -> tuple[float, int]:
    """``(total nats, tokens predicted)`` of ``model`` on ``windows`` (from :func:`spread_windows`).

    Each window is read without context from the one before (as in training).
    """
    device = _model_device(model)
    total, predicted = 0.0, 0
    for first in range(0, len(windows), batch_size):
        group = windows[first:first + batch_size]
        # Windows of one length per forward pass: only the text's last window can be shorter.
        for length in sorted({x.numel() for x, _ in group}, reverse=True):
            x = torch.stack([x for x, _ in group if x.numel() == length]).to(device)
            y = torch.stack([y for _, y in group if y.numel() == length]).to(device)
            logits = model(x)  # (windows, length, vocab)
            total += float(F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum"))
            predicted += y.numel()
    return total, predicted


@dataclass
class GPTPreset:
    """A named GPT training run: the model's size, its tokenizer and training settings (as
    :data:`attnlab.train.translate_task.TRANSLATE_PRESETS` and
    :data:`attnlab.train.vit_task.VIT_TRAIN_PRESETS` are for the other tasks).

    ``model`` holds :class:`~attnlab.models.gpt.GPTConfig` fields except ``vocab_size`` (which the
    tokenizer fixes);
    ``tokenizer`` is ``"char"`` or ``"bpe"`` (then ``bpe_vocab_size`` tokens are trained);
    ``train`` holds ``attnlab.train.TrainConfig`` fields.
    """

    name: str
    description: str
    model: dict
    tokenizer: str
    bpe_vocab_size: int | None = None
    train: dict = field(default_factory=dict)

    def config(self, vocab_size: int):
        """The model's :class:`~attnlab.models.gpt.GPTConfig` for a tokenizer of ``vocab_size`` tokens."""
        from attnlab.models.gpt import GPTConfig

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
# - shakespeare-bpe: 2048 tokens of ~2.7 characters; the corpus is only 1.7 M tokens, seen ~2.9
#   times in 15 minutes at 5.6 k tokens/s with Muon (about 2,370 steps of 2,048 tokens), so the
#   model is wider to make use of repeated data.
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
            # Chosen by benchmarks/gpt_sweep.py (docs/benchmarks.md, issue 24): Muon for the
            # matrices beat every AdamW setting tried by 0.06 nats/char at 5 minutes, despite
            # ~30% fewer steps; the schedule follows the 15-minute budget, so it ends at its floor.
            train={**_COMMON_TRAIN, "batch_size": 16, "block_size": 128, "optimizer": "muon",
                   "lr": 1.2e-2, "min_lr": 1.2e-4, "warmup_steps": 200, "max_steps": 10**6,
                   "budget_minutes": 15.0, "eval_every": 500, "eval_batches": 40,
                   "checkpoint_every": 500},
        ),
        GPTPreset(
            name="shakespeare-bpe",
            description="4 layers x 192 wide, 2048 byte-level BPE tokens, 128-token context; 15 minutes",
            model={"max_positions": 128, "num_layers": 4, "num_heads": 6, "embed_dim": 192},
            tokenizer="bpe",
            bpe_vocab_size=2048,
            # Chosen by benchmarks/gpt_sweep.py (bpe-round1.json, docs/benchmarks.md): Muon at
            # 6e-3 beat AdamW by 0.045 nats/char at 5 minutes; the schedule follows the budget.
            train={**_COMMON_TRAIN, "batch_size": 16, "block_size": 128, "optimizer": "muon",
                   "lr": 6e-3, "min_lr": 6e-5, "warmup_steps": 200, "max_steps": 10**6,
                   "budget_minutes": 15.0, "eval_every": 400, "eval_batches": 40,
                   "checkpoint_every": 400},
        ),
    )
}
