"""The GPT decoder: shapes, causality, cached decoding, traces, tying, saving, presets, learning."""

import math

import pytest
import torch

import attnlab
import attnlab.models
from attnlab.attention import modules, record
from attnlab.data.tokenizers import CharTokenizer
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.train.config import TrainConfig
from attnlab.train.lm_task import GPT_PRESETS, GPTPreset

V, E, H, L = 50, 32, 4, 2


def small_gpt(positions: str = "rope", **overrides) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=V, max_positions=32, num_layers=L, num_heads=H, embed_dim=E,
                       positions=positions, **overrides)
    return GPT(config).eval()


def ids(batch: int = 2, seq: int = 10, seed: int = 1) -> torch.Tensor:
    return torch.randint(V, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("positions, extra", [("rope", 0), ("learned", 32 * E)])
def test_logits_shape_and_parameter_count(positions, extra):
    model = small_gpt(positions)
    assert model(ids()).shape == (2, 10, V)
    # Embedding (tied with the output), per layer two LayerNorms + 4 attention + 2 MLP matrices,
    # the final LayerNorm; learned positions add a (max_positions, E) table.
    per_layer = 2 * E + 4 * E * E + 2 * E * 4 * E
    assert model.num_parameters() == V * E + L * per_layer + E + extra


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_a_later_token_never_changes_earlier_logits(positions):
    model = small_gpt(positions)
    tokens = ids()
    changed = tokens.clone()
    changed[:, 6] = (changed[:, 6] + 1) % V
    before, after = model(tokens), model(changed)
    torch.testing.assert_close(after[:, :6], before[:, :6], rtol=0, atol=1e-6)
    assert (after[:, 6:] - before[:, 6:]).abs().amax(dim=-1).min() > 1e-4


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_cached_incremental_decoding_equals_the_full_forward(positions):
    model = small_gpt(positions)
    tokens = ids(seq=12)
    caches = model.new_caches(2, 12)
    with torch.no_grad():
        full = model(tokens)
        pieces = [model(tokens[:, :5], caches=caches)]
        pieces += [model(tokens[:, i : i + 1], caches=caches) for i in range(5, 9)]
        pieces.append(model(tokens[:, 9:], caches=caches))
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-5)
    assert caches[0].length == 12


def test_positions_matter():
    # Without positions a causal model could only count; RoPE and learned tables both tell order.
    for positions in ("rope", "learned"):
        model = small_gpt(positions)
        tokens = torch.tensor([[1, 2, 1, 2]])
        logits = model(tokens)
        assert not torch.allclose(logits[0, 0], logits[0, 2], atol=1e-4)


def test_generate_continues_a_prompt_greedily_with_a_char_tokenizer():
    tokenizer = CharTokenizer.train("abcdefgh ")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, max_positions=16, num_layers=2, num_heads=2,
                          embed_dim=16)).eval()
    text = attnlab.generate(model, tokenizer, "ab", temperature=0, max_new_tokens=5)
    assert len(text) == 5 and set(text) <= set(tokenizer.vocab)
    # Greedy decoding by hand, re-running the whole sequence each step.
    sequence = tokenizer.encode("ab")
    with torch.no_grad():
        for _ in range(5):
            sequence.append(int(model(torch.tensor([sequence]))[0, -1].argmax()))
    assert text == tokenizer.decode(sequence[2:])


def test_save_and_load_round_trip(tmp_path):
    model = small_gpt("learned", bias=True)
    model.save(tmp_path)
    loaded = attnlab.models.GPT.load(tmp_path)
    assert isinstance(loaded, GPT) and loaded.config == model.config
    assert not loaded.training
    torch.testing.assert_close(loaded(ids()), model(ids()), rtol=0, atol=0)


def test_loading_a_gpt_folder_as_another_model_names_it(tmp_path):
    small_gpt().save(tmp_path)
    with pytest.raises(ValueError, match="holds a GPT, not a LlamaDecoder"):
        attnlab.models.LlamaDecoder.load(tmp_path)


def test_traces_give_one_causal_record_per_layer():
    model = small_gpt()
    tokens = ids(seq=7)
    with record(model) as recording:
        logits = model(tokens)
    traces = recording.traces
    torch.testing.assert_close(logits, model(tokens), rtol=0, atol=1e-5)
    assert [t.layer for t in traces] == list(range(L))
    for trace in traces:
        weights = trace.attention.weights
        assert weights.shape == (2, H, 7, 7)
        assert trace.attn_input.shape == (2, 7, E)
        future = torch.ones(7, 7, dtype=torch.bool).triu(1)
        assert (weights[..., future] == 0).all()
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, H, 7))


@pytest.mark.parametrize("backend", ["reference", "tiled", "torch"])
def test_the_backend_option_reaches_every_attention_layer(monkeypatch, backend):
    seen = []
    real_attention = modules.attention

    def spy(*args, backend, **kwargs):
        seen.append(backend)
        return real_attention(*args, backend=backend, **kwargs)

    expected = small_gpt(backend="reference")(ids())
    model = small_gpt(backend=backend)
    monkeypatch.setattr(modules, "attention", spy)
    torch.testing.assert_close(model(ids()), expected, rtol=0, atol=1e-5)
    assert seen == [backend] * L


def test_output_projection_is_the_embedding():
    model = small_gpt()
    tokens = torch.tensor([[1, 2, 3]])
    model(tokens).logsumexp(-1).sum().backward()
    # Token 40 is not in the input: only the output projection can send it a gradient.
    assert model.embed.weight.grad[40].abs().sum() > 0
    assert not any("lm_head" in name for name in model.state_dict())


def test_gpt2_initialisation_scales_the_residual_projections():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=V, max_positions=8, num_layers=8, num_heads=4, embed_dim=64))
    residual_std = 0.02 / math.sqrt(2 * 8)
    down = torch.cat([layer.mlp.down.weight.flatten() for layer in model.layers])
    up = torch.cat([layer.mlp.up.weight.flatten() for layer in model.layers])
    assert down.std().item() == pytest.approx(residual_std, rel=0.05)
    assert up.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.embed.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_dropout_applies_in_training_only():
    model = small_gpt(dropout=0.3)
    without = small_gpt()
    without.load_state_dict(model.state_dict())
    tokens = ids()
    expected = without(tokens)
    torch.testing.assert_close(model(tokens), expected)  # eval: as if there were no dropout
    model.train()
    assert not torch.allclose(model(tokens), expected)
    assert all(layer.attn.dropout == 0.3 for layer in model.layers)


def test_a_few_adamw_steps_learn_a_repeated_string():
    torch.manual_seed(0)
    text = "to be or not to be, that is the question. " * 8
    tokenizer = CharTokenizer.train(text)
    data = torch.tensor(tokenizer.encode(text))
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, max_positions=64, num_layers=2, num_heads=4,
                          embed_dim=32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    starts = torch.randint(len(data) - 33, (64,), generator=torch.Generator().manual_seed(0))
    windows = torch.stack([data[s : s + 33] for s in starts])
    x, y = windows[:, :-1], windows[:, 1:]
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 2.0  # about log(vocab) at the start
    assert losses[-1] < 0.3  # the string is (nearly) memorised: after a few characters it is fixed


def test_inputs_beyond_max_positions_or_cache_are_refused():
    model = small_gpt()
    with pytest.raises(ValueError, match="33 new tokens = 33 exceeds max_positions=32"):
        model(ids(seq=33))
    caches = model.new_caches(2, 4)
    with pytest.raises(ValueError, match="KV cache overflow"):
        model(ids(seq=5), caches=caches)
    with pytest.raises(ValueError, match="max_len=40 exceeds the model's max_positions=32"):
        model.new_caches(1, 40)


@pytest.mark.parametrize("overrides, message", [
    ({"positions": "alibi"}, "positions must be one of .* got 'alibi'"),
    ({"backend": "flash"}, "backend must be one of .* got 'flash'"),
    ({"embed_dim": 30}, "embed_dim=30 is not divisible by num_heads=4"),
    ({"num_layers": 0}, "sizes must be positive, got {'num_layers': 0}"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got dropout=1.0"),
])
def test_bad_configs_name_the_field(overrides, message):
    fields = {"vocab_size": V, "max_positions": 32, "num_layers": L, "num_heads": H, "embed_dim": E}
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**fields, **overrides})


def test_presets_build_models_and_name_training_settings():
    assert {"shakespeare-char-tiny", "shakespeare-char", "shakespeare-bpe"} <= set(GPT_PRESETS)
    for name, preset in GPT_PRESETS.items():
        assert isinstance(preset, GPTPreset) and preset.name == name
        vocab = preset.bpe_vocab_size if preset.tokenizer == "bpe" else 84
        config = preset.config(vocab)
        assert config.vocab_size == vocab
        assert TrainConfig(**preset.train).block_size <= config.max_positions, name
    assert GPT_PRESETS["shakespeare-bpe"].tokenizer == "bpe"
    assert 2048 <= GPT_PRESETS["shakespeare-bpe"].bpe_vocab_size <= 4096
