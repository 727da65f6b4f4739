"""build_explanation: the data matches the model (and Hugging Face's reference), the schema holds,
bad input is refused; choose_head picks the head we know is informative."""

from __future__ import annotations

import json
import math
import os
import re

import pytest
import torch

from attnlab.explain.collect import build_explanation, default_max_tokens, round_significant
from attnlab.explain.heads import choose_head, head_scores

EXAMPLE = "The animal didn't cross the street because it was too tired."  # as in conftest.py


@pytest.fixture(scope="module")
def hf_minilm():
    """``(attentions, hidden_states, model)`` of the transformers reference on EXAMPLE."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import transformers

    from attnlab.models.pretrained.minilm import minilm_folder

    folder = minilm_folder()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    ids = tokenizer(EXAMPLE, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model(ids, output_attentions=True, output_hidden_states=True)
    return out.attentions, out.hidden_states, model, tokenizer.convert_ids_to_tokens(ids[0])


# --- the numbers are the model's ---------------------------------------------------------------


def test_attention_equals_hugging_face_eager_attention(minilm_explanation, hf_minilm):
    attentions = hf_minilm[0]
    ours = torch.tensor(minilm_explanation["attention"], dtype=torch.float64)  # (L, H, n, n)
    theirs = torch.stack([a[0] for a in attentions]).double()
    assert ours.shape == theirs.shape == (6, 12, 16, 16)
    assert (ours - theirs).abs().max() < 1e-5


def test_page_embeds_the_model_attention_weights(minilm_explanation, hf_minilm, tmp_path):
    from attnlab.explain.page import write_page

    page = write_page(minilm_explanation, tmp_path / "attention.html").read_text(encoding="utf-8")
    match = re.search(r'<script type="application/json" id="attnlab-data">(.*?)</script>', page, re.S)
    embedded = json.loads(match.group(1))
    ours = torch.tensor(embedded["attention"], dtype=torch.float64)
    theirs = torch.stack([a[0] for a in hf_minilm[0]]).double()
    assert (ours - theirs).abs().max() < 1e-5
    assert embedded["tokens"] == minilm_explanation["tokens"]


def test_tokens_match_both_tokenizers(minilm, minilm_explanation, hf_minilm):
    _, tokenizer = minilm
    assert minilm_explanation["tokens"] == tokenizer.token_strings(tokenizer.encode(EXAMPLE))
    assert minilm_explanation["tokens"] == hf_minilm[3]
    assert minilm_explanation["special"] == [True] + [False] * 14 + [True]
    assert minilm_explanation["word_ids"][0] is None and minilm_explanation["word_ids"][-1] is None


def test_walkthrough_vectors_are_the_layer_input_and_its_projections(minilm_explanation, hf_minilm):
    _, hidden_states, hf_model, _ = hf_minilm
    layer, head, dims = 3, 7, minilm_explanation["dims_shown"]
    step = minilm_explanation["walkthrough"][layer][head]
    x = hidden_states[layer][0]  # post-norm BERT: the layer reads the previous layer's output
    attn = hf_model.encoder.layer[layer].attention.self
    columns = slice(head * 32, head * 32 + dims)  # head_dim 32: this head's first dims
    with torch.no_grad():
        expected = {"input": x[:, :dims], "query": attn.query(x)[:, columns],
                    "key": attn.key(x)[:, columns], "value": attn.value(x)[:, columns]}
    for name, tensor in expected.items():
        assert torch.allclose(torch.tensor(step[name]), tensor, rtol=1e-4, atol=1e-5), name


def test_scaled_is_scores_times_scale(minilm_explanation):
    assert minilm_explanation["scale"] == pytest.approx(1 / math.sqrt(32))
    step = minilm_explanation["walkthrough"][2][5]
    scores, scaled = torch.tensor(step["scores"]), torch.tensor(step["scaled"])
    assert torch.allclose(scaled, scores * minilm_explanation["scale"], rtol=1e-5, atol=1e-6)


def test_softmax_of_scaled_rows_is_the_attention(minilm_explanation):
    for layer, head in [(0, 0), (5, 11)]:
        scaled = torch.tensor(minilm_explanation["walkthrough"][layer][head]["scaled"], dtype=torch.float64)
        weights = torch.tensor(minilm_explanation["attention"][layer][head], dtype=torch.float64)
        assert (torch.softmax(scaled, dim=-1) - weights).abs().max() < 2e-6


def test_weights_times_values_give_the_output(minilm_explanation):
    step = minilm_explanation["walkthrough"][4][2]
    weights = torch.tensor(minilm_explanation["attention"][4][2], dtype=torch.float64)
    value, output = (torch.tensor(step[k], dtype=torch.float64) for k in ("value", "output"))
    assert (weights @ value - output).abs().max() < 1e-4


# --- the schema --------------------------------------------------------------------------------


def test_schema_of_the_encoder_explanation(minilm_explanation):
    data = minilm_explanation
    assert data["version"] == 1 and data["text"] == EXAMPLE
    assert data["model"] == {
        "name": "minilm", "title": "all-MiniLM-L6-v2", "kind": "encoder",
        "description": data["model"]["description"], "num_layers": 6, "num_heads": 12,
        "num_kv_heads": 12, "head_dim": 32, "embed_dim": 384, "causal": False, "rope": False,
    }
    assert data["kv_head_of"] == list(range(12))
    assert data["dims_shown"] == 8
    n = len(data["tokens"])
    step = data["walkthrough"][0][0]
    assert {k: (len(v), len(v[0])) for k, v in step.items()} == {
        "input": (n, 8), "query": (n, 8), "key": (n, 8), "value": (n, 8), "output": (n, 8),
        "scores": (n, n), "scaled": (n, n)}
    assert data["cost"] == {"tokens": n, "scores_per_head": n * n, "scores_total": 72 * n * n,
                            "examples": [{"tokens": t, "scores_total": 72 * t * t}
                                         for t in (100, 1000, 10000)]}
    json.dumps(data, allow_nan=False)  # plain JSON, no NaN or infinity


def test_numbers_are_rounded_short(minilm_explanation):
    weights = [w for row in minilm_explanation["attention"][1][1] for w in row]
    assert all(round(w, 6) == w for w in weights)
    scores = [s for row in minilm_explanation["walkthrough"][1][1]["scores"] for s in row]
    assert all(len(repr(abs(s)).replace(".", "").lstrip("0")) <= 6 for s in scores if "e" not in repr(s))


def test_round_significant_keeps_six_digits():
    values = torch.tensor([123456.789, -0.000123456789, 0.0, 1.5, 9999995.0], dtype=torch.float64)
    assert round_significant(values).tolist() == [123457.0, -0.000123457, 0.0, 1.5, 1e7]


def test_selected_head_is_chosen_automatically_with_a_reason(minilm_explanation):
    selected = minilm_explanation["selected"]
    layer, head = selected["layer"], selected["head"]
    assert selected["reason"].startswith(f"layer {layer}, head {head}: of all 72 heads")
    # the chosen head's words look at other words: its attention is not on itself or the markers
    weights = torch.tensor(minilm_explanation["attention"][layer][head], dtype=torch.float64)
    words = torch.tensor([w is not None for w in minilm_explanation["word_ids"]])
    on_other_words = (weights[words][:, words] * (1 - torch.eye(int(words.sum())))).sum(-1).mean()
    assert on_other_words > 0.5


class _HandBuiltEncoder(torch.nn.Module):
    """What explanation_from_traces reads of a model: 2 layers of 3 heads of 6 dims, no mask."""

    is_causal = False

    def __init__(self) -> None:
        super().__init__()
        self.config = type("Config", (), {"num_layers": 2, "num_heads": 3, "num_kv_heads": 3,
                                          "head_dim": 6, "embed_dim": 18})()


class _SixTokens:
    """[CLS] a b c d [SEP], one token per word."""

    special_ids = frozenset({0, 5})

    def token_strings(self, ids):
        return [["[CLS]", "a", "b", "c", "d", "[SEP]"][i] for i in ids]

    def word_ids(self, ids):
        return [None, 0, 1, 2, 3, None]


def _layer_looking_at(layer: int, targets_per_head: list[list[int]]):
    """A recorded layer whose head h sends query i (almost) all its attention to key
    targets_per_head[h][i]: the keys are one-hot, each query a large multiple of its target's key."""
    from attnlab.attention import attention_trace
    from attnlab.attention.record import LayerTrace

    key = torch.eye(6).expand(1, 3, 6, 6)  # (batch, heads, seq, head_dim)
    query = 60 * torch.stack([torch.eye(6)[targets] for targets in targets_per_head])[None]
    trace = attention_trace(query, key, torch.randn(1, 3, 6, 6))
    return LayerTrace(layer=layer, name=f"layers.{layer}.attn", attn_input=torch.randn(1, 6, 18),
                      attention=trace)


def test_the_automatic_choice_is_the_head_a_hand_built_attention_makes_best():
    from attnlab.explain.collect import explanation_from_traces

    itself, cls_sink, previous = [0, 1, 2, 3, 4, 5], [0] * 6, [0, 0, 1, 2, 3, 4]
    links = [0, 3, 4, 1, 2, 5]  # a<->c, b<->d: every word looks at another word
    traces = [_layer_looking_at(0, [itself, cls_sink, links]),
              _layer_looking_at(1, [previous, itself, cls_sink])]
    links_head = traces[0].attention.weights[0, 2]  # (query, key): one-hot to within 1%
    assert links_head.argmax(-1).tolist() == links and links_head.max(-1).values.min() > 0.99
    data = explanation_from_traces(_HandBuiltEncoder(), _SixTokens(), "a b c d", list(range(6)), traces,
                                   model_name="toy")
    assert (data["selected"]["layer"], data["selected"]["head"]) == (0, 2)
    assert data["selected"]["reason"].startswith("layer 0, head 2: of all 6 heads")
    # the links head moved to layer 1, head 1: the choice follows it
    traces = [_layer_looking_at(0, [itself, cls_sink, previous]),
              _layer_looking_at(1, [cls_sink, links, itself])]
    data = explanation_from_traces(_HandBuiltEncoder(), _SixTokens(), "a b c d", list(range(6)), traces,
                                   model_name="toy")
    assert (data["selected"]["layer"], data["selected"]["head"]) == (1, 1)


def test_chosen_layer_and_head_are_kept(minilm):
    data = build_explanation(*minilm, "Cats sleep.", model_name="minilm", layer=2, head=5)
    assert data["selected"] == {"layer": 2, "head": 5, "reason": "you chose layer 2, head 5"}


def test_a_layer_alone_picks_the_best_head_of_that_layer(minilm):
    data = build_explanation(*minilm, EXAMPLE, model_name="minilm", layer=3)
    scores = head_scores(torch.tensor(data["attention"]), data["special"], data["word_ids"], False)
    assert data["selected"]["layer"] == 3
    assert data["selected"]["head"] == int(scores[3].argmax())
    assert "of the 12 heads in layer 3" in data["selected"]["reason"]


# --- decoders ----------------------------------------------------------------------------------


def test_decoder_is_causal_with_null_scores_in_the_future(tiny_decoder):
    data = build_explanation(*tiny_decoder, "the sleeping cat sat on the mat", model_name="tiny")
    n = len(data["tokens"])
    for layer in range(2):
        for head in range(4):
            weights = data["attention"][layer][head]
            scores = data["walkthrough"][layer][head]["scores"]
            for i in range(n):
                assert all(w == 0 for w in weights[i][i + 1:])
                assert all(s is None for s in scores[i][i + 1:])
                assert all(s is not None for s in scores[i][: i + 1])
                assert sum(weights[i]) == pytest.approx(1, abs=1e-5)


def test_decoder_shares_key_value_heads(tiny_decoder):
    data = build_explanation(*tiny_decoder, "the sleeping cat sat", model_name="tiny")
    assert data["kv_head_of"] == [0, 0, 1, 1]
    steps = data["walkthrough"][1]
    assert steps[0]["key"] == steps[1]["key"] and steps[0]["value"] == steps[1]["value"]
    assert steps[1]["key"] != steps[2]["key"]
    assert data["model"]["causal"] and data["model"]["rope"] and data["model"]["kind"] == "decoder"
    assert data["word_ids"] == [None, 0, 1, 1, 2, 3]


def test_smollm2_explanation_is_causal_with_grouped_heads(smollm2, smollm2_explanation):
    data = smollm2_explanation
    _, tokenizer = smollm2
    ids = tokenizer.encode(data["text"])
    assert data["tokens"] == [t.lstrip(" ") for t in tokenizer.token_strings(ids)]
    assert data["tokens"][:3] == ["The", "cat", "sat"]
    assert data["kv_head_of"] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert data["model"]["causal"] and data["model"]["rope"]
    assert data["model"]["title"] == "SmolLM2-135M-Instruct"
    weights = torch.tensor(data["attention"])  # (30, 9, n, n)
    assert weights.shape[:2] == (30, 9)
    assert torch.equal(weights.triu(diagonal=1), torch.zeros_like(weights))
    step = data["walkthrough"][7][4]
    assert step["scores"][0][1:] == [None] * (len(ids) - 1)
    assert data["scale"] == pytest.approx(1 / 8)
    scaled = torch.tensor([[-math.inf if s is None else s for s in row] for row in step["scaled"]])
    assert (torch.softmax(scaled.double(), dim=-1) - weights[7, 4].double()).abs().max() < 2e-6


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   \n\t"])
def test_empty_text_is_refused(minilm, text):
    with pytest.raises(ValueError, match="text is empty"):
        build_explanation(*minilm, text, model_name="minilm")


def test_text_longer_than_the_model_reads_names_both_numbers(tiny_decoder):
    with pytest.raises(ValueError, match=r"the text is 21 tokens long; tiny reads at most 16 tokens"):
        build_explanation(*tiny_decoder, "word " * 20, model_name="tiny")


def test_text_longer_than_the_page_cap_is_refused_unless_allowed(tiny_decoder):
    text = "one two six ten red big"  # <s> and 6 one-piece words
    with pytest.raises(ValueError, match=r"allows at most 5 tokens for tiny.*--max-tokens"):
        build_explanation(*tiny_decoder, text, model_name="tiny", max_tokens=5)
    assert len(build_explanation(*tiny_decoder, text, model_name="tiny", max_tokens=7)["tokens"]) == 7


def test_default_page_cap_follows_the_model_size():
    assert default_max_tokens(6, 12) == 117  # MiniLM: 72 heads
    assert default_max_tokens(30, 9) == 60  # SmolLM2: 270 heads
    assert 6 * 12 * 117**2 <= 1_000_000 < 6 * 12 * 118**2


@pytest.mark.parametrize(("layer", "head", "message"), [
    (2, None, "layer=2 is out of range: this model has layers 0 to 1"),
    (0, 4, "head=4 is out of range: this model has heads 0 to 3"),
    (None, 1, "head=1 needs a layer too"),
])
def test_head_out_of_range_is_refused(tiny_decoder, layer, head, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_explanation(*tiny_decoder, "a b c", model_name="tiny", layer=layer, head=head)


# --- choose_head on attention where the answer is known ----------------------------------------

TOKENS_SPECIAL = [True, False, False, False, False, True]  # [CLS] a b c d [SEP]
WORD_IDS = [None, 0, 1, 2, 3, None]


def _rows(targets: list[int], n: int = 6) -> torch.Tensor:
    """One-hot attention: query i looks only at key targets[i]."""
    return torch.eye(n)[targets]


def _encoder_heads() -> torch.Tensor:
    """(2, 3, 6, 6): five dull heads and one that links words to words far away."""
    uniform = torch.full((6, 6), 1 / 6)
    itself = _rows([0, 1, 2, 3, 4, 5])
    cls_sink = _rows([0, 0, 0, 0, 0, 0])
    previous = _rows([0, 0, 1, 2, 3, 4])
    one_target = _rows([0, 4, 4, 4, 1, 5])  # every word looks at the same word, 'd'
    links = _rows([0, 3, 4, 1, 2, 5])  # a<->c, b<->d
    return torch.stack([torch.stack([uniform, itself, cls_sink]),
                        torch.stack([previous, one_target, links])])


def test_the_head_linking_words_to_other_words_wins():
    layer, head, reason = choose_head(_encoder_heads(), TOKENS_SPECIAL, WORD_IDS, causal=False)
    assert (layer, head) == (1, 2)
    assert reason.startswith("layer 1, head 2: of all 6 heads, this one spends the most attention "
                             "on other words rather than on itself or on the sentence markers")


def test_dull_heads_score_zero_and_links_score_highest():
    scores = head_scores(_encoder_heads(), TOKENS_SPECIAL, WORD_IDS, causal=False)
    assert scores[0, 1:].tolist() == [0, 0]  # itself, [CLS]
    assert scores[1, 0] == 0  # previous token
    # all on other words, each on one word, four different words: 1 * 1 * (1 - 1/4), and half
    # the words look two ahead, half two back: times (1 - 1/2)
    assert scores[1, 2] == pytest.approx(0.375)
    assert 0 < scores[1, 1] < 0.5  # all on one word: discounted
    assert 0 < scores[0, 0] < 0.1  # spread over everything: unfocused


def test_pieces_of_the_same_word_do_not_count_as_other_words():
    word_ids = [None, 0, 0, 1, 1, None]  # two words of two pieces each
    own_word = _rows([0, 2, 1, 4, 3, 5])
    other_word = _rows([0, 4, 4, 1, 1, 5])
    attention = torch.stack([own_word, other_word])[None]
    assert choose_head(attention, TOKENS_SPECIAL, word_ids, causal=False)[:2] == (0, 1)


def test_decoder_heads_on_the_first_or_previous_token_lose():
    n = 6
    special, word_ids = [False] * n, list(range(n))
    first = _rows([0] * n)
    previous = _rows([0, 0, 1, 2, 3, 4])
    content = _rows([0, 0, 0, 1, 1, 2])  # looks back 2, 3 and 3 places: not a fixed offset
    attention = torch.stack([first, previous, content])[None]
    layer, head, reason = choose_head(attention, special, word_ids, causal=True)
    assert (layer, head) == (0, 2)
    assert "rather than on itself, the token just before it or the first token" in reason


def test_a_head_following_a_fixed_offset_loses_to_one_following_words():
    two_ahead = _rows([0, 3, 4, 5, 5, 5])  # a->c, b->d: always two places ahead
    mixed = _rows([0, 3, 4, 2, 1, 5])  # a->c, b->d, c->b, d->a: offsets +2, +2, -1, -3
    scores = head_scores(torch.stack([two_ahead, mixed])[None], TOKENS_SPECIAL, WORD_IDS, causal=False)
    assert scores[0, 1] > scores[0, 0]


def test_when_no_head_stands_out_the_reason_says_so():
    itself = _rows([0, 1, 2, 3, 4, 5])
    layer, head, reason = choose_head(itself.expand(1, 2, 6, 6), TOKENS_SPECIAL, WORD_IDS, causal=False)
    assert (layer, head) == (0, 0)
    assert "no head links words to other words" in reason


def test_a_layer_restricts_the_choice():
    layer, head, reason = choose_head(_encoder_heads(), TOKENS_SPECIAL, WORD_IDS, causal=False, layer=0)
    assert (layer, head) == (0, 0)
    assert "of the 3 heads in layer 0" in reason


def test_ties_go_to_the_lowest_layer_and_head():
    links = _rows([0, 3, 4, 1, 2, 5])
    attention = links.expand(2, 2, 6, 6)
    assert choose_head(attention, TOKENS_SPECIAL, WORD_IDS, causal=False)[:2] == (0, 0)


def test_a_single_word_has_no_informative_head():
    attention = torch.full((2, 3, 3, 3), 1 / 3)
    layer, head, reason = choose_head(attention, [True, False, True], [None, 0, None], causal=False)
    assert (layer, head) == (0, 0)
    assert "single word" in reason
