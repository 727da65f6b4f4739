"""Character and byte-level BPE tokenizers: training, round trips, saving, bad input."""

import json

import pytest
import torch

from attnlab.data.tokenizers import EOS_TOKEN, META_FILE, BPETokenizer, CharTokenizer, load_tokenizer

TEXT = (
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n"
) * 20


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(TEXT, 330)


def test_char_vocabulary_is_the_sorted_characters_of_the_text():
    tokenizer = CharTokenizer.train("hello world")
    assert tokenizer.vocab == [" ", "d", "e", "h", "l", "o", "r", "w"]
    assert tokenizer.vocab_size == 8
    assert tokenizer.encode("hello") == [3, 2, 4, 4, 5]
    assert CharTokenizer.train("world hello").vocab == tokenizer.vocab


def test_char_round_trip_and_no_special_tokens():
    tokenizer = CharTokenizer.train(TEXT)
    ids = tokenizer.encode(TEXT)
    assert len(ids) == len(TEXT)
    assert tokenizer.decode(ids) == TEXT
    assert tokenizer.decode(torch.tensor(ids)) == TEXT
    assert tokenizer.eos_token_id is None and tokenizer.special_ids == frozenset()
    assert tokenizer.max_length is None


def test_char_unknown_characters_are_named_with_positions_in_one_line():
    tokenizer = CharTokenizer.train("abc ")
    with pytest.raises(ValueError) as error:
        tokenizer.encode("abé c€é")
    message = str(error.value)
    assert "\n" not in message
    assert "characters not in this model's vocabulary: 'é' (position 2), '€' (position 5)" in message
    assert "training text" in message


def test_char_rejects_ids_outside_the_vocabulary():
    with pytest.raises(ValueError, match=r"token ids \[3\] are outside the vocabulary of 3"):
        CharTokenizer.train("abc").decode([0, 3])


def test_char_tokens_and_words():
    tokenizer = CharTokenizer.train(TEXT + "Hi, you")
    ids = tokenizer.encode("Hi, you")
    assert tokenizer.token_strings(ids) == list("Hi, you")
    assert tokenizer.word_ids(ids) == [0, 0, 1, 2, 2, 2, 2]


def test_char_save_and_load_give_identical_ids(tmp_path):
    tokenizer = CharTokenizer.train(TEXT)
    tokenizer.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, CharTokenizer)
    assert loaded.vocab == tokenizer.vocab
    assert loaded.encode(TEXT) == tokenizer.encode(TEXT)
    assert json.loads((tmp_path / META_FILE).read_text()) == {"kind": "char"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json", "tokenizer_meta.json"]


def test_bpe_learns_the_vocabulary_size_with_an_end_token(bpe):
    assert bpe.vocab_size == 330
    assert bpe.special_ids == frozenset({bpe.eos_token_id})
    assert bpe.token_strings([bpe.eos_token_id]) == [EOS_TOKEN]
    assert bpe.max_length is None
    # Merges learned from the text: frequent words are one token each.
    assert bpe.token_strings(bpe.encode("To be or")) == ["To", " be", " or"]


def test_bpe_round_trips_any_text_through_bytes(bpe):
    for text in (TEXT, "Ünïcödé ✓ never seen in training", "  spaces\n\n\ttabs"):
        assert bpe.decode(bpe.encode(text)) == text
    assert len(bpe.encode(TEXT)) < len(TEXT) / 2


def test_bpe_end_token_is_skipped_on_decoding(bpe):
    ids = [*bpe.encode("To be"), bpe.eos_token_id]
    assert bpe.decode(ids) == "To be"
    assert bpe.decode(ids, skip_special_tokens=False) == "To be" + EOS_TOKEN


def test_bpe_words_are_gpt2_pieces(bpe):
    ids = bpe.encode("To be, or nothing")
    strings = bpe.token_strings(ids)
    assert strings[:4] == ["To", " be", ",", " or"] and len(strings) > 5  # " nothing" is cut
    assert bpe.word_ids(ids) == [0, 1, 2, 3] + [4] * (len(ids) - 4)


def test_bpe_save_and_load_give_identical_ids(tmp_path, bpe):
    bpe.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, BPETokenizer)
    assert loaded.encode(TEXT) == bpe.encode(TEXT)
    assert loaded.eos_token_id == bpe.eos_token_id and loaded.vocab_size == 330
    assert json.loads((tmp_path / META_FILE).read_text()) == {"kind": "bpe"}


def test_bpe_training_is_deterministic(bpe):
    assert BPETokenizer.train(TEXT, 330).encode(TEXT) == bpe.encode(TEXT)


def test_bpe_rejects_a_vocabulary_too_small_for_the_bytes():
    with pytest.raises(ValueError, match=r"vocab_size must be a whole number >= 258 .* got 100"):
        BPETokenizer.train(TEXT, 100)


def test_loading_a_folder_without_a_tokenizer_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"tokenizer_meta\.json not found"):
        load_tokenizer(tmp_path)


def test_loading_an_unknown_kind_names_it(tmp_path):
    CharTokenizer.train("ab").save(tmp_path)
    (tmp_path / META_FILE).write_text('{"kind": "wordpiece"}')
    with pytest.raises(ValueError, match="kind 'wordpiece'"):
        load_tokenizer(tmp_path)
