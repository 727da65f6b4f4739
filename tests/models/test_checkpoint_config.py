"""A saved model folder is untrusted input: config.json and model.safetensors are checked first.

Every model class shares one load path (``SafetensorsModel.load``) and one config check
(``check_config_fields``); these tests hold each class to it and each failure to one line that
names the file.
"""

import json
import time
from dataclasses import asdict, dataclass, fields

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from attnlab.models.bert import BertConfig, BertEncoder
from attnlab.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE, SafetensorsModel, SavedFileError
from attnlab.models.config_check import MAX_PARAMETERS, MAX_POSITION_TABLE, SIZE_LIMITS
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.models.llama import LlamaConfig, LlamaDecoder
from attnlab.models.lstm_seq2seq import LSTMSeq2Seq, LSTMSeq2SeqConfig
from attnlab.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from attnlab.models.vit import ViT, ViTConfig

TINY = {
    GPT: GPTConfig(vocab_size=11, max_positions=16, num_layers=1, num_heads=2, embed_dim=8),
    Seq2SeqTransformer: Seq2SeqConfig(vocab_size=11, max_positions=16, num_encoder_layers=1,
                                      num_decoder_layers=1, num_heads=2, embed_dim=8, ffn_dim=16,
                                      pad_id=0, bos_id=1, eos_id=2),
    LSTMSeq2Seq: LSTMSeq2SeqConfig(vocab_size=11, embed_dim=8, hidden_dim=8, num_layers=1, pad_id=0,
                                   bos_id=1, eos_id=2, max_positions=16),
    ViT: ViTConfig(image_size=8, patch_size=4, embed_dim=8, num_layers=1, num_heads=2, ffn_dim=16),
    BertEncoder: BertConfig(vocab_size=11, embed_dim=8, num_layers=1, num_heads=2, ffn_dim=16,
                            max_positions=16),
    LlamaDecoder: LlamaConfig(vocab_size=11, embed_dim=8, num_layers=1, num_heads=2, num_kv_heads=1,
                              ffn_dim=16, max_positions=16),
}
MODEL_CLASSES = list(TINY)


def _saved(model_class, folder):
    torch.manual_seed(0)
    return model_class(TINY[model_class]).save(folder)


def _edit_config(folder, **changes):
    path = folder / CONFIG_FILE
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _refusal(load, match):
    """The one-line SavedFileError that ``load()`` raises, which must match ``match``."""
    with pytest.raises(SavedFileError, match=match) as error:
        load()
    assert "\n" not in str(error.value)
    return str(error.value)


@pytest.mark.parametrize("model_class", MODEL_CLASSES, ids=lambda c: c.__name__)
def test_every_model_class_loads_back_what_it_saved(model_class, tmp_path):
    model = model_class(TINY[model_class])
    model.save(tmp_path)
    loaded = model_class.load(tmp_path)
    assert loaded.config == model.config
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)


@pytest.mark.parametrize("model_class", MODEL_CLASSES, ids=lambda c: c.__name__)
def test_a_string_for_a_size_is_a_value_error_naming_the_field(model_class):
    config = TINY[model_class]
    field = next(f.name for f in fields(config) if isinstance(getattr(config, f.name), int)
                 and not isinstance(getattr(config, f.name), bool))
    with pytest.raises(ValueError, match=rf"{type(config).__name__}\.{field} must be a whole number, "
                                         r"got '8' \(str\)"):
        type(config)(**{**asdict(config), field: "8"})


@pytest.mark.parametrize("model_class", MODEL_CLASSES, ids=lambda c: c.__name__)
def test_a_config_field_above_its_limit_is_refused_in_the_file_with_the_bound(model_class, tmp_path):
    _saved(model_class, tmp_path)
    field = "num_encoder_layers" if model_class is Seq2SeqTransformer else "num_layers"
    _edit_config(tmp_path, **{field: 10**12})
    start = time.perf_counter()
    _refusal(lambda: model_class.load(tmp_path),
             rf"^{tmp_path / CONFIG_FILE}: \w+\.num_\w*layers=1000000000000 is outside \[0, 512\]")
    assert time.perf_counter() - start < 1


def test_more_parameters_than_the_cap_are_refused_before_any_weight_is_read(tmp_path):
    _saved(GPT, tmp_path)
    # Every field within its own limit; together 2**20 tokens x 4096 dims = 4.3e9 parameters.
    _edit_config(tmp_path, vocab_size=1 << 20, embed_dim=4096, num_heads=32)
    start = time.perf_counter()
    _refusal(lambda: GPT.load(tmp_path), rf"config\.json describes a model of 4,\d{{3}},\d{{3}},\d{{3}} "
                                         rf"parameters, above the limit of {MAX_PARAMETERS:,}$")
    assert time.perf_counter() - start < 2


def test_a_position_table_larger_than_the_limit_is_refused(tmp_path):
    _saved(GPT, tmp_path)
    _edit_config(tmp_path, max_positions=1 << 20, embed_dim=1024, num_heads=2)
    _refusal(lambda: GPT.load(tmp_path), rf"max_positions \* embed_dim = 1048576 \* 1024 is above "
                                         rf"{MAX_POSITION_TABLE}")


@pytest.mark.parametrize(("text", "match"), [
    ("{", "config.json is not valid JSON"),
    ("[" * 100_000, "config.json is not valid JSON"),  # nested too deeply for the parser
    (b"\xff\xfe{}", "config.json is not valid JSON"),
    ("[1, 2]", "config.json must hold a JSON object, got list"),
    ('"GPT"', "config.json must hold a JSON object, got str"),
    ('{"model_type": "GPT", "vocab_size": 11}', r"config\.json: GPTConfig needs field\(s\) \['embed_dim'"),
    (" " * (2 << 20), r"config\.json is larger than 1048576 bytes"),
], ids=["open-brace", "deep-nesting", "not-utf8", "array", "string", "missing-fields", "too-large"])
def test_a_malformed_config_file_is_one_line_naming_it(tmp_path, text, match):
    _saved(GPT, tmp_path)
    path = tmp_path / CONFIG_FILE
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    _refusal(lambda: GPT.load(tmp_path), match)


@pytest.mark.parametrize(("changes", "match"), [
    ({"flash": True}, r"GPTConfig has no field\(s\) \['flash'\]; its fields are \['backend'"),
    ({"num_layers": True}, r"GPTConfig\.num_layers must be a whole number, got True \(bool\)"),
    ({"num_layers": 1.5}, r"GPTConfig\.num_layers must be a whole number, got 1\.5 \(float\)"),
    ({"dropout": float("nan")}, r"GPTConfig\.dropout must be a finite number, got nan"),
    ({"dropout": "0.1"}, r"GPTConfig\.dropout must be a number, got '0\.1' \(str\)"),
    ({"positions": ["rope"]}, r"GPTConfig\.positions must be a string, got \['rope'\] \(list\)"),
    ({"bias": 0}, r"GPTConfig\.bias must be true or false, got 0 \(int\)"),
    ({"num_heads": 3}, r"embed_dim=8 is not divisible by num_heads=3"),
    ({"vocab_size": -1}, r"GPTConfig\.vocab_size=-1 is outside \[0, 1048576\]"),
    ({"embed_dim": {"a": 1}}, r"GPTConfig\.embed_dim must be a whole number, got \{'a': 1\} \(dict\)"),
])
def test_a_bad_config_value_is_one_line_naming_the_file_and_field(tmp_path, changes, match):
    _saved(GPT, tmp_path)
    _edit_config(tmp_path, **changes)
    message = _refusal(lambda: GPT.load(tmp_path), match)
    assert message.startswith(f"{tmp_path / CONFIG_FILE}: ")


def test_weights_of_another_shape_are_refused_naming_the_tensor(tmp_path):
    _saved(GPT, tmp_path)
    _edit_config(tmp_path, embed_dim=16)
    _refusal(lambda: GPT.load(tmp_path), rf"^{tmp_path / WEIGHTS_FILE}: tensor \S+ has shape \[\d+, \d+\], "
                                         r"its config needs \[\d+, 16\]")


def test_weights_of_another_architecture_are_refused_listing_the_names(tmp_path):
    _saved(GPT, tmp_path)
    _edit_config(tmp_path, positions="learned")
    _refusal(lambda: GPT.load(tmp_path),
             r"model\.safetensors does not hold the tensors its config describes: missing \['pos_embed\.")


def test_integer_weights_are_refused(tmp_path):
    _saved(GPT, tmp_path)
    path = tmp_path / WEIGHTS_FILE
    from safetensors.torch import load_file

    tensors = load_file(path)
    tensors["norm.weight"] = tensors["norm.weight"].to(torch.int32)
    save_file(tensors, path)
    _refusal(lambda: GPT.load(tmp_path), r"tensor norm\.weight has dtype I32, not a floating one")


def test_float64_weights_load_into_the_float32_model(tmp_path):
    _saved(GPT, tmp_path)
    path = tmp_path / WEIGHTS_FILE
    from safetensors.torch import load_file

    tensors = load_file(path)
    save_file({name: t.double() for name, t in tensors.items()}, path)
    loaded = GPT.load(tmp_path)
    assert all(t.dtype == torch.float32 for t in loaded.state_dict().values())
    torch.testing.assert_close(loaded.embed.weight, tensors["embed.weight"], rtol=0, atol=0)


@pytest.mark.parametrize("keep", [0, 7, 100, -1])
def test_a_truncated_weights_file_is_one_line_naming_it(tmp_path, keep):
    _saved(GPT, tmp_path)
    path = tmp_path / WEIGHTS_FILE
    path.write_bytes(path.read_bytes()[:keep])
    _refusal(lambda: GPT.load(tmp_path), rf"^{path} is not a readable safetensors file \(")


def test_a_header_that_claims_more_bytes_than_the_file_holds_is_refused(tmp_path):
    _saved(GPT, tmp_path)
    path = tmp_path / WEIGHTS_FILE
    data = path.read_bytes()
    path.write_bytes((10**12).to_bytes(8, "little") + data[8:])
    _refusal(lambda: GPT.load(tmp_path), rf"^{path} is not a readable safetensors file")


@dataclass
class UncheckedConfig:
    """A config class outside attnlab, without a ``__post_init__`` of its own."""

    width: int = 4


class UncheckedModel(SafetensorsModel, nn.Module):
    config_class = UncheckedConfig

    def __init__(self, config: UncheckedConfig) -> None:
        super().__init__()
        self.config = config
        self.proj = nn.Linear(config.width, config.width)


def test_a_config_class_without_checks_of_its_own_is_still_checked_on_load(tmp_path):
    UncheckedModel(UncheckedConfig()).save(tmp_path)
    _edit_config(tmp_path, width=10**9)
    _refusal(lambda: UncheckedModel.load(tmp_path), r"UncheckedConfig\.width=1000000000 is outside")
    _edit_config(tmp_path, width="4")
    _refusal(lambda: UncheckedModel.load(tmp_path), r"UncheckedConfig\.width must be a whole number")


def test_the_size_limits_admit_smollm2():
    config = LlamaConfig()  # the defaults are SmolLM2-135M's
    assert config.num_layers <= SIZE_LIMITS["num_layers"]
    with torch.device("meta"):
        assert sum(p.numel() for p in LlamaDecoder(config).parameters()) < MAX_PARAMETERS


def test_a_float_field_may_be_a_whole_number_of_any_size_a_float_holds():
    values = asdict(TINY[LlamaDecoder])
    assert LlamaConfig(**{**values, "rope_theta": 5_000_000}).rope_theta == 5_000_000  # as HF may write it
    with pytest.raises(ValueError, match=r"LlamaConfig\.rope_theta must be a finite number, got 10000000000"):
        LlamaConfig(**{**values, "rope_theta": 10**400})
