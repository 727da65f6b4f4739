"""The terminal summary: words from word pieces, where each word looks, the printed lines."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from attnlab.explain.summary import print_summary, shown_token, summary_json, text_words, word_links

TOKENS = ["[CLS]", "ti", "##red", "dog", "ran", "[SEP]"]
SPECIAL = [True, False, False, False, False, True]
WORD_IDS = [None, 0, 0, 1, 2, None]
#            [CLS] ti   ##red dog  ran  [SEP]
ATTENTION = [[1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
             [0.3, 0.0, 0.0, 0.5, 0.2, 0.0],  # ti
             [0.0, 0.2, 0.1, 0.3, 0.0, 0.4],  # ##red
             [0.0, 0.25, 0.25, 0.4, 0.1, 0.0],  # dog
             [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],  # ran: only the marker
             [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]]


def _data(causal: bool = False, attention=ATTENTION, tokens=TOKENS, special=SPECIAL, word_ids=WORD_IDS):
    return {
        "text": "tired dog ran", "tokens": tokens, "special": special, "word_ids": word_ids,
        "attention": [[attention]],
        "model": {"name": "toy", "title": "Toy", "description": "A toy.", "causal": causal},
        "selected": {"layer": 0, "head": 0, "reason": "you chose layer 0, head 0"},
    }


def test_word_pieces_merge_into_words_and_repeats_are_numbered():
    words = text_words(["[CLS]", "the", "ti", "##red", "the", "."], [True] + [False] * 5,
                       [None, 0, 1, 1, 2, 3])
    assert [(w.label, w.tokens) for w in words] == [
        ("the (1st)", [1]), ("tired", [2, 3]), ("the (2nd)", [4]), (".", [5])]


def test_a_word_looks_with_the_mean_of_its_pieces_at_the_sum_of_the_others_pieces():
    tired, dog, ran = word_links(_data(), 0, 0)
    assert tired["word"] == "tired"
    # queries ti and ##red averaged: dog (0.5 + 0.3) / 2, ran 0.2 / 2
    assert tired["targets"] == [{"word": "dog", "weight": 0.4}, {"word": "ran", "weight": 0.1}]
    assert tired["itself"] == pytest.approx(0.15) and tired["markers"] == pytest.approx(0.35)
    # keys ti and ##red summed: 0.25 + 0.25
    assert dog["targets"][0] == {"word": "tired", "weight": 0.5}
    assert ran["targets"] == [] and ran["markers"] == 1.0


def test_decoder_first_word_has_no_earlier_word():
    attention = [[1.0, 0.0, 0.0], [0.6, 0.4, 0.0], [0.1, 0.7, 0.2]]
    data = _data(True, attention, ["The", "cat", "sat"], [False] * 3, [0, 1, 2])
    first, cat, sat = word_links(data, 0, 0)
    assert not first["others_allowed"] and first["targets"] == []
    assert cat["targets"] == [{"word": "The", "weight": 0.6}]  # never the future 'sat'
    assert sat["targets"] == [{"word": "cat", "weight": 0.7}, {"word": "The", "weight": 0.1}]


def _printed(data: dict, pngs=()) -> str:
    console = Console(file=io.StringIO(), width=300)
    print_summary(data, "/tmp/out/attention.html", list(pngs), console)
    return console.file.getvalue()


def test_printed_summary_speaks_plainly():
    lines = _printed(_data(), ["/tmp/out/toy_layer0_head0.png"]).splitlines()
    assert lines[0] == "Toy: A toy."
    assert lines[1] == "6 tokens:"
    assert lines[2].split() == TOKENS
    assert "Head shown: you chose layer 0, head 0" in lines
    assert "  'tired' looks most at 'dog' (40%) and 'ran' (10%)" in lines
    assert "  'dog' looks most at 'tired' (50%) and 'ran' (10%)" in lines
    assert "  'ran' hardly looks at other words (itself 0%, markers 100%)" in lines
    assert any("to the markers [CLS], [SEP]" in line for line in lines)
    assert lines[-2:] == ["Heatmap: /tmp/out/toy_layer0_head0.png",
                          "Open the interactive page: /tmp/out/attention.html"]


def test_printed_summary_of_a_decoder_without_markers():
    attention = [[1.0, 0.0], [0.7, 0.3]]
    out = _printed(_data(True, attention, ["Hi", "'s"], [False] * 2, [0, 1]))
    assert "  'Hi' has no earlier word to look at (itself 100%)" in out
    assert "  \"'s\" looks most at 'Hi' (70%)" in out
    assert "markers" not in out


def test_real_coreference_head_says_it_looks_at_animal(minilm_explanation):
    """In MiniLM's layer 3, head 1, 'it' looks mostly at 'animal' (68%)."""
    links = {link["word"]: link for link in word_links(minilm_explanation, 3, 1)}
    assert links["it"]["targets"][0]["word"] == "animal"
    assert links["it"]["targets"][0]["weight"] == pytest.approx(0.68, abs=0.01)


def test_a_repeated_word_reads_its_own_row_of_the_attention(minilm_explanation):
    """'the (1st)' and 'the (2nd)' are tokens 1 and 7 of EXAMPLE: each one's links are that token's
    row of the head's weights, and the other 'the' is one of the other words it may look at."""
    data, layer, head = minilm_explanation, 3, 1
    tokens, word_ids, weights = data["tokens"], data["word_ids"], data["attention"][layer][head]
    assert [i for i, token in enumerate(tokens) if token == "the"] == [1, 7]
    # words of one token that occurs once: their label is the token
    whole = {tokens[i]: i for i, word in enumerate(word_ids)
             if word is not None and word_ids.count(word) == 1 and tokens.count(tokens[i]) == 1}
    links = {link["word"]: link for link in word_links(data, layer, head)}
    checked = 0
    for label, own, other_label, other in (("the (1st)", 1, "the (2nd)", 7),
                                           ("the (2nd)", 7, "the (1st)", 1)):
        row, link = weights[own], links[label]
        assert link["itself"] == pytest.approx(row[own], abs=1e-4)
        assert link["markers"] == pytest.approx(row[0] + row[-1], abs=1e-4)  # [CLS] and [SEP]
        expected = {other_label: row[other], **{word: row[i] for word, i in whole.items()}}
        for target in link["targets"]:
            if target["word"] in expected:
                assert target["weight"] == pytest.approx(expected[target["word"]], abs=1e-4)
                checked += 1
        weights_shown = [target["weight"] for target in link["targets"]]
        assert weights_shown == sorted(weights_shown, reverse=True)
    assert checked >= 2


def test_summary_json_has_everything_a_script_needs(minilm_explanation):
    summary = summary_json(minilm_explanation, "/x/attention.html", ["/x/a.png"])
    selected = minilm_explanation["selected"]
    assert summary["tokens"] == minilm_explanation["tokens"]
    assert (summary["layer"], summary["head"], summary["reason"]) == (
        selected["layer"], selected["head"], selected["reason"])
    assert summary["page"] == "/x/attention.html" and summary["pngs"] == ["/x/a.png"]
    assert [w["word"] for w in summary["words"]][:3] == ["the (1st)", "animal", "didn"]


@pytest.mark.parametrize(("token", "shown"), [("\n", "↵"), (" ", "␣"), ("", "∅"), ("a b", "a b")])
def test_whitespace_tokens_are_visible(token, shown):
    assert shown_token(token) == shown
