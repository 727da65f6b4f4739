"""The encoder-decoder Transformer: shapes, masking, cached decoding, learning, save/load."""

import pytest
import torch

from attnlab.models.decoding import beam_search, greedy_decode
from attnlab.models.seq2seq import SEQ2SEQ_PRESETS, Seq2SeqConfig, Seq2SeqTransformer

PAD, BOS, EOS = 0, 1, 2
VOCAB = 13  # specials + digits 0-9 as ids 3..12


def make_model(seed: int = 0, **overrides) -> Seq2SeqTransformer:
    torch.manual_seed(seed)
    settings = {"vocab_size": VOCAB, "pad_id": PAD, "bos_id": BOS, "eos_id": EOS, "dropout": 0.0}
    config = Seq2SeqConfig.from_preset("tiny", **{**settings, **overrides})
    return Seq2SeqTransformer(config).eval()


def pad(seqs: list[list[int]], length: int | None = None) -> torch.Tensor:
    length = length or max(map(len, seqs))
    return torch.tensor([seq + [PAD] * (length - len(seq)) for seq in seqs])


@pytest.fixture(scope="module")
def model():
    return make_model()


def test_shapes_and_presets(model):
    src = torch.randint(3, VOCAB, (2, 5))
    tgt = torch.randint(3, VOCAB, (2, 4))
    assert model.encode(src).shape == (2, 5, 64)
    assert model(src, tgt).shape == (2, 4, VOCAB)
    assert model.cross_attention_weights(src[0], tgt[0]).shape == (2, 4, 4, 5)  # layers, heads, Lt, Ls
    loss = model.loss(src, tgt, tgt)
    assert loss.dim() == 0 and loss.item() > 0
    assert set(SEQ2SEQ_PRESETS) >= {"tiny", "base"}


def test_source_padding_does_not_change_real_outputs(model):
    src = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 3]])
    tgt = torch.tensor([[BOS, 4, 5], [BOS, 6, 7]])
    padded = torch.cat([src, torch.full((2, 3), PAD)], dim=1)
    torch.testing.assert_close(model.encode(padded)[:, :4], model.encode(src), atol=1e-5, rtol=0)
    torch.testing.assert_close(model(padded, tgt), model(src, tgt), atol=1e-5, rtol=0)
    weights = model.cross_attention_weights(padded[0], tgt[0])
    assert weights[..., 4:].abs().max() == 0  # padding gets no attention


def test_decoder_is_causal(model):
    src = torch.randint(3, VOCAB, (1, 6))
    tgt = torch.randint(3, VOCAB, (1, 5))
    changed = tgt.clone()
    changed[0, 3] = (tgt[0, 3] - 3 + 1) % 10 + 3
    before, after = model(src, tgt), model(src, changed)
    torch.testing.assert_close(after[:, :3], before[:, :3], atol=1e-6, rtol=0)
    assert (after[:, 3:] - before[:, 3:]).abs().max() > 1e-3


def test_cached_steps_equal_full_decode(model):
    src = pad([[4, 5, 6, 7, 8], [9, 10, 3]])
    tgt = torch.tensor([[BOS, 3, 4, 5, 6], [BOS, 7, 8, 9, 10]])
    state = model.start_decoding(src, max_len=8)
    full = model.decode(tgt, state.memory, state.src_padding)
    cross_key_projections = []
    handle = model.decoder[0].cross_attn.k_proj.register_forward_hook(
        lambda module, args, out: cross_key_projections.append(out.shape))
    steps = []
    for t in range(tgt.shape[1]):
        logits, state = model.decode_step(tgt[:, t], state)
        steps.append(logits)
    handle.remove()
    torch.testing.assert_close(torch.stack(steps, dim=1), full, atol=1e-5, rtol=0)
    assert cross_key_projections == [(2, 5, 64)]  # keys from the encoder computed on step one only
    assert state.caches[0][0].length == 5 and state.caches[0][1].length == 5


def test_reorder_state_selects_rows(model):
    src = pad([[4, 5, 6], [7, 8, 9, 10]])
    state = model.start_decoding(src, max_len=4)
    _, state = model.decode_step(torch.full((2,), BOS), state)
    swapped = model.reorder_state(state, torch.tensor([1, 0, 0]))
    logits, _ = model.decode_step(torch.tensor([5, 6, 6]), swapped)
    fresh = model.start_decoding(src[[1, 0]], max_len=4)
    _, fresh = model.decode_step(torch.full((2,), BOS), fresh)
    expected, _ = model.decode_step(torch.tensor([5, 6]), fresh)
    torch.testing.assert_close(logits[:2], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits[2], logits[1], atol=1e-6, rtol=0)


def test_beam_size_one_equals_greedy(model):
    src = pad([[4, 5, 6, 7], [8, 9], [10, 11, 12]])
    greedy = greedy_decode(model.decode_step, model.start_decoding(src, 10), BOS, EOS, 10, batch_size=3)
    beams = beam_search(model.decode_step, model.start_decoding(src, 10), BOS, EOS, 10, beam_size=1,
                        length_penalty=0.0, reorder=model.reorder_state, batch_size=3)
    assert [h.tokens for h in beams] == greedy


@pytest.fixture
def one_thread():
    """The learning check must stay fast on one core; other tests keep their thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_model_learns_to_reverse_digit_strings(one_thread):
    gen = torch.Generator().manual_seed(1)
    sources = [torch.randint(3, VOCAB, (int(torch.randint(3, 7, (1,), generator=gen)),),
                             generator=gen).tolist() for _ in range(24)]
    targets = [seq[::-1] for seq in sources]
    src = pad(sources)
    tgt_in, tgt_out = pad([[BOS, *t] for t in targets]), pad([[*t, EOS] for t in targets])
    model = make_model(seed=0, label_smoothing=0.0).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = model.loss(src, tgt_in, tgt_out).item()
    for _ in range(150):
        loss = model.loss(src, tgt_in, tgt_out)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05 < first
    model.eval()
    greedy = greedy_decode(model.decode_step, model.start_decoding(src, 10), BOS, EOS, 10, batch_size=24)
    assert greedy == targets
    beams = beam_search(model.decode_step, model.start_decoding(src, 10), BOS, EOS, 10, beam_size=3,
                        reorder=model.reorder_state, batch_size=24)
    assert [h.tokens for h in beams] == targets
    # A hypothesis' log-probability is that of its tokens and EOS under teacher forcing.
    with torch.no_grad():
        log_probs = torch.log_softmax(model(src[:1], tgt_in[:1]), dim=-1)[0]
    expected = log_probs[torch.arange(len(targets[0]) + 1), tgt_out[0, : len(targets[0]) + 1]].sum()
    assert beams[0].log_prob == pytest.approx(expected.item(), abs=1e-4)


def test_save_load_round_trip(model, tmp_path):
    src = torch.randint(3, VOCAB, (2, 5))
    tgt = torch.randint(3, VOCAB, (2, 4))
    loaded = Seq2SeqTransformer.load(model.save(tmp_path / "s2s"))
    assert loaded.config == model.config
    torch.testing.assert_close(loaded(src, tgt), model(src, tgt), atol=0, rtol=0)


def test_untied_output_layer_has_its_own_weights():
    model = make_model(tie_embeddings=False)
    assert model.lm_head is not None and model.lm_head.weight is not model.embed.weight
    assert make_model().lm_head is None


@pytest.mark.parametrize("overrides, message", [
    ({"embed_dim": 30}, "embed_dim=30 is not divisible by num_heads=4"),
    ({"eos_id": VOCAB}, "special ids must lie in"),
    ({"label_smoothing": 1.0}, "label_smoothing must be in"),
])
def test_bad_config_is_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_model(**overrides)


def test_too_long_target_is_refused(model):
    with pytest.raises(ValueError, match="max_positions=128"):
        model(torch.randint(3, VOCAB, (1, 4)), torch.randint(3, VOCAB, (1, 129)))
