"""What `attnlab eval translate` reports beside the corpus scores: BLEU and chrF by source length
and the best and worst verses, on sets small enough to score by hand."""

from __future__ import annotations

import pytest

from attnlab.data.bible import VersePair
from attnlab.train.evaluate import best_and_worst, bucket_label, scores_by_length

REF = "the cat sat on the mat"
LONGER = "the cat sat on the mat today"  # REF and one more word
DISJOINT = "xyz qwv"  # no word and no character in common with REF


def words(count: int) -> str:
    return " ".join(["word"] * count)


@pytest.mark.parametrize(("count", "label"), [(1, "1-15"), (15, "1-15"), (16, "16-25"), (25, "16-25"),
                                              (26, "26-35"), (50, "36-50"), (51, "51+"), (400, "51+")])
def test_a_source_falls_in_the_bucket_of_its_word_count(count, label):
    assert bucket_label(count) == label


def test_each_bucket_is_scored_on_its_own_verses_shortest_first():
    # Given longest first and interleaved, so neither input order nor one corpus score passes.
    sources = [words(60), words(3), words(20), words(15)]
    hypotheses = [DISJOINT, REF, LONGER, LONGER]
    references = [REF, REF, REF, REF]
    rows = scores_by_length(sources, hypotheses, references)
    assert [(row["bucket"], row["sentences"]) for row in rows] == [("1-15", 2), ("16-25", 1), ("51+", 1)]
    short, middle, long = rows
    # 1-15: REF exactly (6/6 unigrams, 5/5 bigrams, 4/4, 3/3) and LONGER (6/7, 5/6, 4/5, 3/4),
    # counts pooled: 12/13, 10/11, 8/9, 6/7; 13 words against 12, so no brevity penalty.
    assert short["bleu"] == pytest.approx(100 * (12 / 13 * 10 / 11 * 8 / 9 * 6 / 7) ** 0.25)
    # 16-25: LONGER alone, the geometric mean of 6/7, 5/6, 4/5, 3/4 is (3/7)^(1/4).
    assert middle["bleu"] == pytest.approx(100 * (3 / 7) ** 0.25)
    assert 0 < middle["chrf"] < short["chrf"] < 100
    # 51+: nothing in common.
    assert long["bleu"] == 0 and long["chrf"] == 0


def test_identical_translations_score_100_in_every_bucket():
    sources = [words(4), words(30)]
    rows = scores_by_length(sources, [REF, LONGER], [REF, LONGER])
    assert [(row["bucket"], row["bleu"], row["chrf"]) for row in rows] == [
        ("1-15", pytest.approx(100), pytest.approx(100)), ("26-35", pytest.approx(100), pytest.approx(100))]


def pair(verse: int, en: str, es: str) -> VersePair:
    return VersePair(book="Mark", chapter=4, verse=verse, en=en, es=es)


def test_best_and_worst_rank_long_verses_by_sentence_chrf():
    pairs = [pair(1, words(8), REF), pair(2, words(9), REF), pair(3, words(12), REF),
             pair(4, words(7), REF), pair(5, words(10), REF)]
    hypotheses = [LONGER, REF, DISJOINT, REF, "the dog sat on a mat"]
    result = best_and_worst(pairs, hypotheses, count=2)
    # verse 4 has 7 English words: too short to rank, though its translation is perfect
    assert [(row["ref"], row["hypothesis"]) for row in result["best"]] == [("Mark 4:2", REF),
                                                                           ("Mark 4:1", LONGER)]
    assert [(row["ref"], row["hypothesis"]) for row in result["worst"]] == [
        ("Mark 4:3", DISJOINT), ("Mark 4:5", "the dog sat on a mat")]
    assert result["best"][0]["chrf"] == pytest.approx(100) and result["worst"][0]["chrf"] == 0
    assert result["best"][1]["chrf"] > result["worst"][1]["chrf"] > 0
    assert result["best"][0] == {"ref": "Mark 4:2", "chrf": pytest.approx(100), "en": words(9),
                                 "reference": REF, "hypothesis": REF}


def test_best_and_worst_are_empty_without_a_long_enough_verse():
    assert best_and_worst([pair(1, words(7), REF)], [REF]) == {"best": [], "worst": []}
