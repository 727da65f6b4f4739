"""LanguageModelTask: data order fixed by (seed, step, rank), fixed validation, losses, bits/char."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from attnlab.data.tokenizers import CharTokenizer, load_tokenizer
from attnlab.train.lm_task import (
    LanguageModelTask,
    batch_seed,
    bits_per_char,
    build_tokenizer,
    spread_windows,
    text_loss,
)

ALPHABET = "abcdefgh \n"


def random_text(length: int, seed: int) -> str:
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(ALPHABET), (length,), generator=generator)
    return "".join(ALPHABET[i] for i in picks.tolist())


TRAIN_TEXT = random_text(5000, seed=1)
VAL_TEXT = random_text(1200, seed=2)


def make_task(seed: int = 0, eval_batches: int = 3) -> LanguageModelTask:
    return LanguageModelTask(CharTokenizer.train(TRAIN_TEXT), TRAIN_TEXT, VAL_TEXT, batch_size=4,
                             block_size=16, eval_batches=eval_batches, seed=seed)


class UniformModel(nn.Module):
    """Logits all zero: every next token has probability 1 / vocab, a loss of ln(vocab) nats."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.anchor = nn.Parameter(torch.zeros(()))  # the task reads the device from a parameter

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*ids.shape, self.vocab) + 0 * self.anchor


def same(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_a_training_batch_is_windows_of_the_text_and_their_next_tokens():
    task = make_task()
    x, y = task.train_batch(step=0, rank=0, world_size=1)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert all(task.tokenizer.decode(row.tolist()) in TRAIN_TEXT for row in x)


def test_the_batch_of_a_step_and_rank_is_the_same_in_a_new_task():
    # A resumed run builds a new task: it must draw exactly the windows of the interrupted one.
    first, resumed = make_task(seed=3), make_task(seed=3)
    for step in (0, 1, 57):
        assert same(first.train_batch(step, 1, 2), resumed.train_batch(step, 1, 2))


def test_steps_ranks_and_seeds_draw_different_batches():
    task, other_seed = make_task(seed=0), make_task(seed=1)
    base = task.train_batch(5, 0, 2)
    assert not same(base, task.train_batch(6, 0, 2))
    assert not same(base, task.train_batch(5, 1, 2))
    assert not same(base, other_seed.train_batch(5, 0, 2))


def test_batch_seeds_do_not_collide_when_the_numbers_swap_places():
    seeds = {batch_seed(*triple) for triple in [(0, 1, 0), (1, 0, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1)]}
    assert len(seeds) == 5 and all(0 <= s < 2**63 for s in seeds)


def test_a_rank_outside_the_world_is_refused():
    with pytest.raises(ValueError, match=r"rank must be in \[0, world_size=2\), got rank=2"):
        make_task().train_batch(0, 2, 2)


def test_validation_batches_are_fixed_whatever_the_seed_and_the_training_draws():
    task = make_task(seed=0)
    before = [tuple(t.clone() for t in batch) for batch in task.val_batches()]
    task.train_batch(0, 0, 1)
    assert len(before) == 3
    for batch, again, other_seed in zip(before, task.val_batches(), make_task(seed=9).val_batches(),
                                        strict=True):
        assert same(batch, again) and same(batch, other_seed)
        assert all(task.tokenizer.decode(row.tolist()) in VAL_TEXT for row in batch[0])


def test_the_loss_is_cross_entropy_and_count_is_the_tokens_predicted():
    task = make_task()
    batch = task.train_batch(0, 0, 1)
    vocab = task.tokenizer.vocab_size
    assert task.loss(UniformModel(vocab), batch).item() == pytest.approx(math.log(vocab))
    assert task.count(batch) == 4 * 16

    torch.manual_seed(0)
    logits = torch.randn(4, 16, vocab)
    model = UniformModel(vocab)
    model.forward = lambda ids: logits
    expected = -logits.log_softmax(-1).gather(-1, batch[1][..., None]).mean()
    assert task.loss(model, batch).item() == pytest.approx(expected.item(), rel=1e-6)


def test_bits_per_char_is_total_nats_over_characters_over_ln2():
    # Four equally likely characters: 2 bits each.
    assert bits_per_char(math.log(4), tokens=10, characters=10) == pytest.approx(2.0)
    # 300 characters in 100 tokens at 3 ln 2 nats/token: 300 ln 2 nats in all, 1 bit per character.
    assert bits_per_char(3 * math.log(2), tokens=100, characters=300) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="characters=0"):
        bits_per_char(1.0, tokens=1, characters=0)


def test_a_character_task_reports_nats_per_token_over_ln2_as_bits_per_char():
    task = make_task()
    assert task.val_tokens.numel() == task.val_characters == len(VAL_TEXT)
    assert task.bits_per_char(1.5) == pytest.approx(1.5 / math.log(2))


def test_a_bpe_task_counts_the_characters_of_its_tokens():
    tokenizer = build_tokenizer("bpe", TRAIN_TEXT * 4, bpe_vocab_size=300)
    task = LanguageModelTask(tokenizer, TRAIN_TEXT, VAL_TEXT, batch_size=2, block_size=8, eval_batches=1)
    tokens = task.val_tokens.numel()
    assert tokens < len(VAL_TEXT)  # merges make tokens longer than one character
    assert task.bits_per_char(2.0) == pytest.approx(2.0 * tokens / len(VAL_TEXT) / math.log(2))


def test_build_tokenizer_refuses_an_unknown_kind():
    with pytest.raises(ValueError, match="tokenizer kind must be 'char' or 'bpe', got 'word'"):
        build_tokenizer("word", TRAIN_TEXT)


def test_the_windows_of_a_text_predict_every_token_but_the_first_once():
    tokens = torch.arange(101)  # 100 targets: 6 windows of 16 and one of 4
    windows = spread_windows(tokens, block_size=16)
    assert [x.numel() for x, _ in windows] == [16] * 6 + [4]
    assert torch.equal(torch.cat([x for x, _ in windows]), tokens[:-1])
    assert torch.equal(torch.cat([y for _, y in windows]), tokens[1:])


def test_a_sample_of_windows_is_spread_from_the_start_of_the_text_to_its_end():
    tokens = torch.arange(1601)  # 100 windows of 16
    sample = spread_windows(tokens, block_size=16, max_tokens=16 * 5)
    assert [int(x[0]) for x, _ in sample] == [0, 400, 800, 1184, 1584]
    assert len(spread_windows(tokens, block_size=16, max_tokens=5000)) == 100  # more than there is: all


def test_text_loss_sums_the_nats_of_every_target():
    task = make_task()
    windows = spread_windows(task.val_tokens[:101], block_size=16)
    total, predicted = text_loss(UniformModel(task.tokenizer.vocab_size), windows, batch_size=4)
    assert predicted == 100
    assert total == pytest.approx(100 * math.log(task.tokenizer.vocab_size))


def test_text_loss_matches_the_loss_of_explicit_windows():
    task = make_task()
    torch.manual_seed(0)
    table = torch.randn(task.tokenizer.vocab_size, task.tokenizer.vocab_size)
    model = UniformModel(task.tokenizer.vocab_size)
    model.forward = lambda ids: table[ids]  # a bigram model
    tokens = task.val_tokens[:41]
    total, predicted = text_loss(model, spread_windows(tokens, block_size=16), batch_size=2)
    expected = nn.functional.cross_entropy(table[tokens[:-1]], tokens[1:], reduction="sum")
    assert predicted == 40 and total == pytest.approx(expected.item(), rel=1e-5)


def test_save_assets_writes_the_tokenizer(tmp_path):
    task = make_task()
    task.save_assets(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.vocab == task.tokenizer.vocab


def test_text_too_short_for_a_window_is_refused():
    with pytest.raises(ValueError, match="val_text encodes to 5 tokens, not more than block_size=16"):
        LanguageModelTask(CharTokenizer.train(TRAIN_TEXT), TRAIN_TEXT, "abcde", batch_size=4, block_size=16,
                          eval_batches=1)
