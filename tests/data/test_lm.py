"""Encoding a corpus and drawing language-model batches from it."""

import pytest
import torch

from attnlab.data.lm import encode_corpus, lm_batch
from attnlab.data.tokenizers import CharTokenizer


def test_encode_corpus_is_a_1d_int64_tensor_of_the_ids():
    tokenizer = CharTokenizer.train("abcab")
    tokens = encode_corpus(tokenizer, "abcab")
    assert tokens.dtype == torch.int64
    assert tokens.tolist() == [0, 1, 2, 0, 1]


def test_targets_are_the_inputs_shifted_by_one():
    tokens = torch.arange(1000)
    x, y = lm_batch(tokens, 8, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 16)
    assert x.dtype == y.dtype == torch.int64
    # With tokens[i] == i each row is a run of consecutive ids, and y continues x by one.
    torch.testing.assert_close(x[:, 1:], x[:, :-1] + 1)
    torch.testing.assert_close(y, x + 1)


def test_same_seed_same_batch_other_seed_other_batch():
    tokens = torch.arange(10_000)
    first = lm_batch(tokens, 4, 32, torch.Generator().manual_seed(7))
    again = lm_batch(tokens, 4, 32, torch.Generator().manual_seed(7))
    other = lm_batch(tokens, 4, 32, torch.Generator().manual_seed(8))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_windows_never_run_past_the_end_and_reach_it():
    tokens = torch.arange(10, dtype=torch.int32)
    x, y = lm_batch(tokens, 500, 8, torch.Generator().manual_seed(0))
    assert int(y.max()) == 9  # the last id is a target...
    assert int(x.min()) == 0  # ...and the first an input
    assert set(x[:, 0].tolist()) == {0, 1}  # the only starts that leave room for 8 + 1 ids


def test_a_corpus_no_longer_than_the_block_is_refused():
    with pytest.raises(ValueError, match="longer than block_size=8"):
        lm_batch(torch.arange(8), 2, 8, torch.Generator())
