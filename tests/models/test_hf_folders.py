"""Hugging Face model folders loaded into attnlab's modules, against ``transformers`` itself.

Each architecture is a tiny random model built by ``transformers`` (eager attention, float32),
saved as a folder with a tokenizer trained here, and loaded with ``load_pretrained(folder)``:
logits, every layer's attention weights and greedy generation must match. Broken folders, one
per kind of mistake, must be refused with one line that names the file.
"""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest
import torch

from attnlab.attention import record
from attnlab.generation import generate_ids
from attnlab.models.bert import BertEncoder, Pooling
from attnlab.models.gpt import GPT
from attnlab.models.hf import ModelFolderError, load_folder
from attnlab.models.llama import LlamaDecoder
from attnlab.models.pretrained import UnknownModelError, is_folder_path, load_pretrained

VOCAB = 320
MAX_POSITIONS = 64
TEXTS = ["the cat sat on the mat", "a dog ran in the park", "hello world, hello attention",
         "once upon a time there was a tiny model"] * 5
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SIZES = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "max_position_embeddings": MAX_POSITIONS}
# No special ids in the models: transformers' generate would stop at one.
NO_SPECIAL_IDS = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}


def _bpe_tokenizer_json(path) -> None:
    from tokenizers import ByteLevelBPETokenizer

    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(TEXTS, vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>",
                                                                          "<|im_end|>"])
    tokenizer.save(str(path))


def _wordpiece_tokenizer_json(path) -> None:
    from tokenizers import BertWordPieceTokenizer

    tokenizer = BertWordPieceTokenizer(lowercase=True)
    tokenizer.train_from_iterator(TEXTS, vocab_size=200)
    tokenizer.save(str(path))


def _hf_model(model_type: str):
    """A tiny random ``transformers`` model of ``model_type``, every parameter perturbed (so
    zero-initialised biases and unit norms are tested too)."""
    import transformers

    torch.manual_seed(0)
    if model_type == "gpt2":
        config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                         n_positions=MAX_POSITIONS, attn_implementation="eager",
                                         **NO_SPECIAL_IDS)
        model = transformers.GPT2LMHeadModel(config)
    elif model_type == "bert":
        config = transformers.BertConfig(**SIZES, attn_implementation="eager")
        model = transformers.BertModel(config)
    else:
        classes = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
                   "mistral": ("MistralConfig", "MistralForCausalLM")}[model_type]
        extra = {"sliding_window": 4} if model_type == "mistral" else {}
        config = getattr(transformers, classes[0])(**SIZES, num_key_value_heads=2, rope_theta=500.0,
                                                   attn_implementation="eager", **NO_SPECIAL_IDS, **extra)
        model = getattr(transformers, classes[1])(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


def _save_folder(model, folder, model_type: str, **save_options) -> None:
    model.save_pretrained(folder, safe_serialization=True, **save_options)
    if model_type == "bert":
        _wordpiece_tokenizer_json(folder / "tokenizer.json")
    else:
        _bpe_tokenizer_json(folder / "tokenizer.json")
        settings = {"eos_token": "<|im_end|>", "chat_template": CHAT_TEMPLATE}
        (folder / "tokenizer_config.json").write_text(json.dumps(settings))


DECODERS = ["llama", "qwen2", "mistral", "gpt2"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """``built(model_type)``: ``(transformers model, attnlab model, folder)``, made once."""
    pairs = {}

    def build(model_type: str):
        if model_type not in pairs:
            hf = _hf_model(model_type)
            folder = tmp_path_factory.mktemp(model_type)
            _save_folder(hf, folder, model_type)
            pairs[model_type] = hf, load_pretrained(str(folder))[0], folder
        return pairs[model_type]

    return build


@pytest.fixture(params=["bert", *DECODERS])
def pair(request, built):
    return built(request.param)


@pytest.fixture(params=DECODERS)
def decoder(request, built):
    return built(request.param)


@pytest.fixture
def bert(built):
    return built("bert")


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    """A valid llama folder: the template every broken folder is made from."""
    folder = tmp_path_factory.mktemp("llama-template")
    _save_folder(_hf_model("llama"), folder, "llama")
    return folder


def _ids(length: int = 12) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, length), generator=torch.Generator().manual_seed(1))


def _outputs(model, ids: torch.Tensor) -> torch.Tensor:
    """attnlab's last hidden states (encoders) or logits (decoders)."""
    out = model(ids)
    return out.last_hidden_state if isinstance(model, BertEncoder) else out


# --- parity with transformers ----------------------------------------------------------------


def test_folder_loads_into_attnlab_modules(pair):
    hf, ours, _ = pair
    expected = {"bert": BertEncoder, "gpt2": GPT}.get(hf.config.model_type, LlamaDecoder)
    assert type(ours) is expected and not ours.training
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters()) - (
        sum(p.numel() for p in hf.pooler.parameters()) if hf.config.model_type == "bert" else 0)


def test_outputs_match_transformers(pair):
    hf, ours, _ = pair
    ids = _ids()
    with torch.no_grad():
        theirs = hf(ids)
        theirs = theirs.last_hidden_state if hf.config.model_type == "bert" else theirs.logits
        torch.testing.assert_close(_outputs(ours, ids), theirs, rtol=0, atol=1e-5)


def test_every_layer_attention_matches_transformers(pair):
    hf, ours, _ = pair
    ids = _ids()
    with torch.no_grad(), record(ours) as recording:
        _outputs(ours, ids)
        hf_attentions = hf(ids, output_attentions=True).attentions
    assert len(recording.traces) == len(hf_attentions) == 2
    for trace, theirs in zip(recording.traces, hf_attentions, strict=True):
        torch.testing.assert_close(trace.attention.weights, theirs, rtol=0, atol=1e-5)


def test_mistral_window_hides_keys_more_than_four_back(built):
    _, ours, _ = built("mistral")
    with torch.no_grad(), record(ours) as recording:
        ours(_ids())
    weights = recording.traces[0].attention.weights[0, 0]  # (12, 12)
    assert torch.all(weights.tril(diagonal=-4) == 0) and torch.all(weights.diagonal(-3) > 0)


def test_greedy_generation_matches_transformers_token_for_token(decoder):
    hf, ours, _ = decoder
    prompt = _ids(7)[:1]
    with torch.no_grad():
        theirs = hf.generate(prompt, do_sample=False, max_new_tokens=12, min_new_tokens=12)
    assert generate_ids(ours, prompt[0].tolist(), max_new_tokens=12, temperature=0) == theirs[0, 7:].tolist()


def test_decoder_tokenizer_has_the_folders_special_tokens_and_template(decoder):
    _, ours, _ = decoder
    tokenizer = ours.tokenizer
    assert tokenizer.token_strings([tokenizer.eos_token_id]) == ["<|im_end|>"]
    assert tokenizer.max_length == MAX_POSITIONS and tokenizer.vocab_size <= VOCAB
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(tokenizer.encode("the cat sat")) == "the cat sat"


def test_encoder_embeds_by_mean_pooling_to_unit_length(bert):
    hf, ours, _ = bert
    assert ours.pooling == Pooling("mean", normalize=True)
    texts = ["the cat sat", "a dog ran in the park"]
    ids, mask = ours.tokenizer.encode_batch(texts)
    with torch.no_grad():
        hidden = hf(ids, attention_mask=mask).last_hidden_state
    mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    expected = torch.nn.functional.normalize(mean, dim=-1)
    torch.testing.assert_close(ours.embed(texts), expected, rtol=0, atol=1e-5)


def test_sentence_transformers_pooling_config_is_honoured(bert, tmp_path):
    hf, _, folder = bert
    shutil.copytree(folder, tmp_path / "cls", dirs_exist_ok=True)
    (tmp_path / "cls" / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]))
    (tmp_path / "cls" / "1_Pooling").mkdir()
    (tmp_path / "cls" / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    model, tokenizer = load_folder(tmp_path / "cls")
    assert model.pooling == Pooling("cls", normalize=False)
    ids, _ = tokenizer.encode_batch(["the cat sat"])
    with torch.no_grad():
        first_token = hf(ids).last_hidden_state[:, 0]
    torch.testing.assert_close(model.embed("the cat sat"), first_token, rtol=0, atol=1e-5)


def test_sharded_folder_loads_like_a_single_file(tmp_path):
    hf = _hf_model("llama")
    _save_folder(hf, tmp_path, "llama", max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    model, _ = load_pretrained(tmp_path)
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, rtol=0, atol=1e-5)


def test_minilm_package_folder_loads_as_a_folder(minilm):
    from attnlab.models.pretrained.minilm import minilm_folder

    model, _ = load_pretrained(str(minilm_folder()))
    texts = ["A man is playing a guitar.", "The weather is lovely today."]
    torch.testing.assert_close(model.embed(texts), minilm[0].embed(texts), rtol=0, atol=0)


def test_names_and_paths_are_told_apart(tmp_path):
    assert is_folder_path("./minilm") and is_folder_path(tmp_path) and is_folder_path(str(tmp_path))
    assert not is_folder_path("minilm") and not is_folder_path("gpt-5")
    with pytest.raises(UnknownModelError, match=r"^unknown pretrained model 'gpt-5'; choose one of: minilm, "
                                                r"smollm2, or give the path of a model folder$"):
        load_pretrained("gpt-5")


# --- broken folders: one line naming the file ------------------------------------------------


def _broken(llama_folder, tmp_path, change=None):
    folder = tmp_path / "broken"
    shutil.copytree(llama_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    if change is not None:
        change(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _refused(folder, message: str) -> None:
    with pytest.raises(ModelFolderError) as caught:
        load_pretrained(str(folder))
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)


def test_unsupported_model_type_names_the_supported_ones(llama_folder, tmp_path):
    folder = _broken(llama_folder, tmp_path, lambda c: c.update(model_type="t5"))
    _refused(folder, f"{folder}/config.json: model_type 't5' is not supported; attnlab loads bert, gpt2, "
                     f"llama, mistral, qwen2")


def test_pickle_only_weights_are_never_opened(llama_folder, tmp_path):
    folder = _broken(llama_folder, tmp_path)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not even a pickle")
    _refused(folder, f"{folder}/pytorch_model.bin holds weights in pickle form, which attnlab never "
                     f"unpickles (it can run code); safetensors weights are needed (model.safetensors)")


def test_remote_code_is_refused(llama_folder, tmp_path):
    folder = _broken(llama_folder, tmp_path, lambda c: c.update(auto_map={"AutoModel": "modeling.MyModel"}))
    _refused(folder, f"{folder}/config.json asks for remote code (auto_map); attnlab never runs code from a "
                     f"model folder, it builds the architectures it knows with its own modules")


def test_missing_config_is_refused(llama_folder, tmp_path):
    folder = _broken(llama_folder, tmp_path)
    (folder / "config.json").unlink()
    _refused(folder, f"{folder}/config.json not found: a model folder needs config.json, weights in "
                     f"*.safetensors and tokenizer.json")


def test_missing_tokenizer_is_refused(llama_folder, tmp_path):
    folder = _broken(llama_folder, tmp_path)
    (folder / "tokenizer.json").unlink()
    _refused(folder, f"{folder}/tokenizer.json not found: attnlab reads a model folder's tokenizer from "
                     f"tokenizer.json")


def _rewrite_weights(folder, change) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    change(state)
    save_file(state, folder / "model.safetensors")


def test_missing_weight_tensor_is_refused(llama_folder, tmp_path):
    folder = _broken(llama_folder, tmp_path)
    _rewrite_weights(folder, lambda state: state.pop("model.layers.1.mlp.up_proj.weight"))
    _refused(folder, f"{folder}/model.safetensors: the weights lack tensor(s) "
                     f"['model.layers.1.mlp.up_proj.weight'] that config.json implies")


def test_unknown_weight_tensor_is_refused(llama_folder, tmp_path):
    folder = _broken(llama_folder, tmp_path)
    _rewrite_weights(folder, lambda state: state.update({"score.weight": torch.zeros(2, 32)}))
    _refused(folder, f"{folder}/model.safetensors: the weights hold tensor(s) ['score.weight'] that a "
                     f"LlamaConfig model does not have")


def test_tensor_of_the_wrong_shape_is_refused(llama_folder, tmp_path):
    folder = _broken(llama_folder, tmp_path)
    _rewrite_weights(folder, lambda state: state.update({"model.norm.weight": torch.ones(33)}))
    _refused(folder, f"{folder}/model.safetensors: tensor model.norm.weight has shape [33], config.json "
                     f"needs [32]")


def test_absurd_config_value_is_refused_before_allocation(llama_folder, tmp_path):
    folder = _broken(llama_folder, tmp_path, lambda c: c.update(hidden_size=10**9))
    started = time.perf_counter()
    _refused(folder, f"{folder}/config.json: LlamaConfig.embed_dim=1000000000 is outside [0, 65536], the "
                     f"range attnlab accepts for embed_dim (config.json's hidden_size)")
    assert time.perf_counter() - started < 1.0


def test_config_value_of_the_wrong_type_is_refused(llama_folder, tmp_path):
    folder = _broken(llama_folder, tmp_path, lambda c: c.update(num_hidden_layers="2"))
    _refused(folder, f"{folder}/config.json: LlamaConfig.num_layers must be a whole number, got '2' (str) "
                     f"(config.json's num_hidden_layers)")


def test_truncated_safetensors_is_refused(llama_folder, tmp_path):
    folder = _broken(llama_folder, tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelFolderError, match=rf"^{re.escape(str(weights))} is not a readable safetensors "
                                               rf"file \(.+\)$"):
        load_pretrained(str(folder))


def test_bert_task_heads_beyond_the_encoder_are_refused(bert, tmp_path):
    """A pooler is deliberately unused; a classifier means a model attnlab would load half-way."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "classifier"
    shutil.copytree(bert[2], folder)
    state = load_file(folder / "model.safetensors")
    assert "pooler.dense.weight" in state
    save_file({**state, "classifier.weight": torch.zeros(2, 32)}, folder / "model.safetensors")
    _refused(folder, f"{folder}/model.safetensors: the weights hold tensor(s) ['classifier.weight'] that a "
                     f"BertConfig model does not have")


def test_chat_template_may_come_from_chat_template_jinja(llama_folder, tmp_path):
    folder = _broken(llama_folder, tmp_path)
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    (folder / "chat_template.jinja").write_text("{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    _, tokenizer = load_pretrained(str(folder))
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}]) == "[hi]"


def test_broken_chat_template_is_refused_at_load(llama_folder, tmp_path):
    folder = _broken(llama_folder, tmp_path)
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{% for %}"}))
    with pytest.raises(ModelFolderError, match=rf"^{re.escape(str(folder))}/tokenizer_config.json: the chat "
                                               rf"template does not compile \(.+\)$"):
        load_pretrained(str(folder))
