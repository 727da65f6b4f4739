"""TranslationTask: special ids, dropping long pairs, deterministic length-sorted batches, padding,
and translate() on both architectures."""

import pytest
import torch

from attnlab.data.bible import VersePair
from attnlab.data.tokenizers import BPETokenizer
from attnlab.train.translate_task import (
    TRANSLATE_PRESETS,
    TranslationTask,
    build_model,
    special_ids,
    translate,
)

WORDS_EN = ["the", "light", "God", "said", "and", "was", "good", "earth", "heaven", "water", "day", "night"]
WORDS_ES = ["la", "luz", "Dios", "dijo", "y", "fue", "buena", "tierra", "cielo", "agua", "día", "noche"]


def _pairs(count: int, offset: int = 0) -> list[VersePair]:
    pairs = []
    for i in range(count):
        length = 1 + (i * 7 + offset) % 9
        en = " ".join(WORDS_EN[(i + k) % len(WORDS_EN)] for k in range(length))
        es = " ".join(WORDS_ES[(i + k) % len(WORDS_ES)] for k in range(length))
        pairs.append(VersePair("Genesis", 1, i + 1, en=en, es=es))
    return pairs


@pytest.fixture(scope="module")
def tokenizer():
    return BPETokenizer.train([t for p in _pairs(60) for t in (p.en, p.es)], 300)


def _task(tokenizer, seed=0, max_tokens=40, train=None):
    return TranslationTask(tokenizer, train or _pairs(60), _pairs(20, offset=3), batch_size=4,
                           max_tokens=max_tokens, eval_batches=3, seed=seed)


def test_special_ids_put_padding_after_the_tokenizer_vocabulary(tokenizer):
    ids = special_ids(tokenizer)
    assert ids == {"vocab_size": tokenizer.vocab_size + 1, "pad_id": tokenizer.vocab_size,
                   "bos_id": tokenizer.eos_token_id, "eos_id": tokenizer.eos_token_id}


def test_batches_are_deterministic_per_seed_step_and_rank(tokenizer):
    task, again, other_seed = _task(tokenizer), _task(tokenizer), _task(tokenizer, seed=1)
    for a, b in zip(task.train_batch(5, 0, 2), again.train_batch(5, 0, 2), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(task.train_batch(5, 0, 2)[0], task.train_batch(5, 1, 2)[0])
    assert not torch.equal(task.train_batch(5, 0, 1)[0], task.train_batch(6, 0, 1)[0])
    assert not torch.equal(task.train_batch(5, 0, 1)[0], other_seed.train_batch(5, 0, 1)[0])
    with pytest.raises(ValueError, match="rank must be in"):
        task.train_batch(0, 2, 2)


def test_batch_layout_and_padding(tokenizer):
    task = _task(tokenizer)
    src, tgt_in, tgt_out = task.train_batch(3, 0, 1)
    assert src.shape[0] == tgt_in.shape[0] == 4 and tgt_in.shape == tgt_out.shape
    pad, eos = task.pad_id, task.eos_id
    # Padded to the longest row: some row has no padding at all.
    assert (src != pad).all(dim=1).any() and (tgt_out != pad).all(dim=1).any()
    for row in range(4):
        real = int((tgt_out[row] != pad).sum())
        assert tgt_in[row, 0] == task.bos_id
        assert tgt_out[row, real - 1] == eos
        assert torch.equal(tgt_in[row, 1:real], tgt_out[row, :real - 1])  # shifted by one
        assert (tgt_out[row, real:] == pad).all() and (tgt_in[row, real:] == pad).all()
        src_real = int((src[row] != pad).sum())
        assert src[row, src_real - 1] == eos and (src[row, src_real:] == pad).all()
    assert task.count((src, tgt_in, tgt_out)) == int((tgt_out != pad).sum())


def test_long_pairs_are_dropped_and_validation_is_fixed(tokenizer):
    long_pair = VersePair("Genesis", 2, 1, en=" ".join(WORDS_EN * 5), es="luz")
    task = _task(tokenizer, max_tokens=12, train=[*_pairs(60), long_pair])
    assert all(len(s) <= 12 and len(t) + 1 <= 12 for s, t in task.train_examples)
    assert len(task.train_examples) < 61
    batches, again = task.val_batches(), _task(tokenizer, seed=7, max_tokens=12).val_batches()
    assert len(batches) == 3
    for a, b in zip(batches, again, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="max_tokens=1"):
        _task(tokenizer, max_tokens=1)


@pytest.mark.parametrize("arch", ["transformer", "lstm"])
def test_translate_runs_greedy_and_beam(tokenizer, arch):
    torch.manual_seed(0)
    model = build_model(arch, TRANSLATE_PRESETS["tiny"], tokenizer).eval()
    task = _task(tokenizer)
    loss = task.loss(model, task.train_batch(0, 0, 1))
    assert loss.ndim == 0 and loss.item() > 0
    texts = ["the light", "God said and was good"]
    greedy = translate(model, tokenizer, texts, greedy=True)
    beam_one = translate(model, tokenizer, texts, beam=1, length_penalty=0.0)
    assert greedy == beam_one  # beam search of width 1 without length penalty is greedy
    assert len(translate(model, tokenizer, texts, beam=3)) == 2
    with pytest.raises(ValueError, match="arch must be one of"):
        build_model("rnn", TRANSLATE_PRESETS["tiny"], tokenizer)


def test_lstm_gets_its_own_step_budget_in_the_same_time():
    preset = TRANSLATE_PRESETS["base"]
    transformer, lstm = preset.train_fields("transformer"), preset.train_fields("lstm")
    assert transformer["max_minutes"] == lstm["max_minutes"] == 30.0
    assert transformer["lr"] == lstm["lr"] and transformer["batch_size"] == lstm["batch_size"]
    assert lstm["max_steps"] < transformer["max_steps"]  # its steps are slower
    with pytest.raises(ValueError, match="arch must be one of"):
        preset.train_fields("gru")
