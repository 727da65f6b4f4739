"""Tests for the LSTM encoder-decoder with additive attention (the translation baseline)."""

from __future__ import annotations

import pytest
import torch

from attnlab.models.decoding import beam_search, greedy_decode
from attnlab.models.lstm_seq2seq import LSTMSeq2Seq, LSTMSeq2SeqConfig

PAD, BOS, EOS = 0, 1, 2
DIGITS = 3  # token of digit d is DIGITS + d
VOCAB = DIGITS + 10


def make_config(**overrides) -> LSTMSeq2SeqConfig:
    sizes = dict(vocab_size=VOCAB, embed_dim=12, hidden_dim=10, num_layers=2, pad_id=PAD, bos_id=BOS,
                 eos_id=EOS, max_positions=16, dropout=0.0)
    return LSTMSeq2SeqConfig(**(sizes | overrides))


def make_model(**overrides) -> LSTMSeq2Seq:
    torch.manual_seed(0)
    return LSTMSeq2Seq(make_config(**overrides)).eval()


def right_pad(rows: list[list[int]], width: int | None = None) -> torch.Tensor:
    width = width or max(map(len, rows))
    return torch.tensor([row + [PAD] * (width - len(row)) for row in rows])


SOURCES = [[3, 4, 5, 6, 7], [8, 9, 10], [11, 12, 3, 4]]
TARGETS_IN = right_pad([[BOS, 5, 6, 7, 8], [BOS, 9, 10], [BOS, 4, 3, 12, 11, 10]])


@pytest.mark.parametrize("bidirectional", [True, False])
def test_shapes(bidirectional):
    model = make_model(bidirectional_encoder=bidirectional)
    src = right_pad(SOURCES)
    logits = model(src, TARGETS_IN)
    assert logits.shape == (3, TARGETS_IN.shape[1], VOCAB)
    state = model.encode(src)
    assert state.memory.shape == (3, 5, (2 if bidirectional else 1) * 10)
    assert state.hidden.shape == state.cell.shape == (2, 3, 10)
    step_logits, new_state = model.decode_step(torch.tensor([BOS] * 3), state)
    assert step_logits.shape == (3, VOCAB)
    assert new_state.hidden.shape == (2, 3, 10)
    assert model.attention_weights(src, TARGETS_IN).shape == (3, TARGETS_IN.shape[1], 5)
    assert model.attention_weights(src[1, :3], TARGETS_IN[1, :3]).shape == (3, 3)


def test_output_layer_is_tied_to_embedding():
    model = make_model(hidden_dim=7)
    assert not any(p.shape == (VOCAB, 12) for name, p in model.named_parameters() if name != "embed.weight")
    with torch.no_grad():
        model.embed.weight[5] += 1.0
    src = right_pad(SOURCES)
    before = make_model(hidden_dim=7)(src, TARGETS_IN)
    assert not torch.allclose(model(src, TARGETS_IN)[..., 5], before[..., 5])


def test_padding_does_not_change_logits():
    model = make_model()
    tight = right_pad(SOURCES)
    padded = right_pad(SOURCES, width=9)
    assert torch.allclose(model(tight, TARGETS_IN), model(padded, TARGETS_IN), atol=1e-5, rtol=0)
    # One example alone, without any padding, matches its padded batch row.
    alone = model(torch.tensor([SOURCES[1]]), TARGETS_IN[1:2])
    assert torch.allclose(alone, model(padded, TARGETS_IN)[1:2], atol=1e-5, rtol=0)


def test_explicit_mask_lets_pad_id_appear_in_source():
    # When pad_id doubles as a real token (e.g. EOS), an explicit mask says where padding is.
    model = make_model()
    src = torch.tensor([[3, 4, PAD, PAD, PAD]])
    mask = torch.tensor([[False, False, False, True, True]])
    with_mask = model(src, TARGETS_IN[:1], src_padding=mask)
    alone = model(src[:, :3], TARGETS_IN[:1], src_padding=torch.zeros(1, 3, dtype=torch.bool))
    assert torch.allclose(with_mask, alone, atol=1e-5, rtol=0)
    assert not torch.allclose(with_mask, model(src, TARGETS_IN[:1]), atol=1e-3)


@pytest.mark.parametrize("attention", ["bahdanau", "luong"])
def test_attention_weights_sum_to_one_over_real_tokens(attention):
    model = make_model(attention=attention)
    src = right_pad(SOURCES, width=7)
    weights = model.attention_weights(src, TARGETS_IN)
    real = src != PAD
    assert torch.allclose(weights.sum(-1), torch.ones(weights.shape[:2]), atol=1e-6)
    assert (weights.masked_select(~real[:, None, :].expand_as(weights)) == 0).all()
    assert (weights.masked_select(real[:, None, :].expand_as(weights)) > 0).all()


@pytest.mark.parametrize("attention", ["bahdanau", "luong"])
def test_forward_equals_stepping_decode_step(attention):
    # Luong's training path runs the LSTM over the whole target at once: it must match the steps.
    model = make_model(attention=attention)
    src = right_pad(SOURCES, width=6)
    expected = model(src, TARGETS_IN)
    state = model.encode(src)
    for t in range(TARGETS_IN.shape[1]):
        logits, state = model.decode_step(TARGETS_IN[:, t], state)
        assert torch.allclose(logits, expected[:, t], atol=1e-5, rtol=0)


@pytest.mark.parametrize("attention", ["bahdanau", "luong"])
def test_teacher_forcing_zero_feeds_the_models_own_guesses_in_training_only(attention):
    src = right_pad(SOURCES, width=6)
    # No dropout: training mode differs from evaluation only in what the decoder is fed.
    model = make_model(teacher_forcing=0.0, attention=attention).train()
    fed_own = model(src, TARGETS_IN)
    # By hand: BOS first, then each step's most likely token, except where the target is padding.
    state = model.encode(src)
    tokens = TARGETS_IN[:, 0]
    for t in range(TARGETS_IN.shape[1]):
        logits, state = model.decode_step(tokens, state)
        assert torch.allclose(logits, fed_own[:, t], atol=1e-5, rtol=0)
        if t + 1 < TARGETS_IN.shape[1]:
            nxt = TARGETS_IN[:, t + 1]
            tokens = torch.where(nxt != PAD, logits.argmax(dim=-1), nxt)
    assert not torch.allclose(fed_own, model.eval()(src, TARGETS_IN))  # evaluation: the reference
    assert torch.allclose(make_model(teacher_forcing=1.0, attention=attention).train()(src, TARGETS_IN),
                          make_model(attention=attention).eval()(src, TARGETS_IN), atol=1e-6)


def test_teacher_forcing_half_mixes_both_and_keeps_gradients():
    torch.manual_seed(1)
    model = make_model(teacher_forcing=0.5).train()
    src, tgt_out = right_pad(SOURCES), right_pad([[5, 6, 7, 8, EOS], [9, 10, EOS], [4, 3, 12, 11, 10, EOS]])
    loss = model.loss(src, TARGETS_IN, tgt_out)
    loss.backward()
    assert torch.isfinite(loss) and model.embed.weight.grad.abs().sum() > 0
    # Seeded, so the same mixture: different from the reference-fed logits in a later step only.
    torch.manual_seed(1)
    mixed = model(src, TARGETS_IN)
    reference = model.eval()(src, TARGETS_IN)
    assert torch.allclose(mixed[:, :1], reference[:, :1], atol=1e-6)
    assert not torch.allclose(mixed, reference, atol=1e-3)
    with pytest.raises(ValueError, match="teacher_forcing must be in"):
        make_config(teacher_forcing=1.5)


def test_reorder_state_selects_batch_rows():
    model = make_model()
    state = model.encode(right_pad(SOURCES))
    indices = torch.tensor([2, 0, 2])
    reordered = LSTMSeq2Seq.reorder_state(state, indices)
    logits, _ = model.decode_step(torch.tensor([BOS, 5, 9]), reordered)
    alone, _ = model.decode_step(torch.tensor([5]), model.encode(torch.tensor([SOURCES[0]])))
    assert torch.allclose(logits[1], alone[0], atol=1e-5, rtol=0)
    assert torch.equal(reordered.hidden[:, 0], reordered.hidden[:, 2])


def test_loss_ignores_padding_and_is_label_smoothed():
    model = make_model(label_smoothing=0.0)
    src = right_pad(SOURCES)
    tgt_out = right_pad([[5, 6, 7, 8, EOS], [9, 10, EOS], [4, 3, 12, 11, 10, EOS]])
    logits = model(src, TARGETS_IN)
    real = tgt_out != PAD
    expected = torch.nn.functional.cross_entropy(logits[real], tgt_out[real])
    assert torch.allclose(model.loss(src, TARGETS_IN, tgt_out), expected)
    smoothed = make_model(label_smoothing=0.1).loss(src, TARGETS_IN, tgt_out)
    assert not torch.allclose(smoothed, expected)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="hidden_dim must be positive, got hidden_dim=0"):
        make_config(hidden_dim=0)
    with pytest.raises(ValueError, match="special ids must lie in"):
        make_config(eos_id=VOCAB)
    with pytest.raises(ValueError, match="dropout must be in"):
        make_config(dropout=1.0)
    model = make_model()
    with pytest.raises(ValueError, match="every source needs a real token"):
        model.encode(torch.tensor([[3, 4], [PAD, PAD]]))
    with pytest.raises(ValueError, match="tgt_in must be"):
        model(right_pad(SOURCES), TARGETS_IN[:2])


def test_save_load_round_trip(tmp_path):
    model = make_model()
    src = right_pad(SOURCES)
    model.save(tmp_path / "lstm")
    loaded = LSTMSeq2Seq.load(tmp_path / "lstm")
    assert loaded.config == model.config
    saved, read = model.state_dict(), loaded.state_dict()
    assert saved.keys() == read.keys() and all(torch.equal(saved[k], read[k]) for k in saved)
    # Bit-equal weights; the outputs may still differ in the last bits, because the oneDNN LSTM
    # kernel some CPUs get (seen on AMD EPYC) depends on how the weights sit in memory.
    torch.testing.assert_close(loaded(src, TARGETS_IN), model(src, TARGETS_IN), rtol=0, atol=1e-6)


def reversal_pairs(count: int, seed: int) -> list[tuple[list[int], list[int]]]:
    generator = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(count):
        length = int(torch.randint(2, 6, (1,), generator=generator))
        digits = (torch.randint(0, 10, (length,), generator=generator) + DIGITS).tolist()
        pairs.append((digits, digits[::-1]))
    return pairs


def as_batch(pairs: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``src``, ``tgt_in`` (BOS first) and ``tgt_out`` (EOS last), right-padded."""
    return (right_pad([s for s, _ in pairs]), right_pad([[BOS, *t] for _, t in pairs]),
            right_pad([[*t, EOS] for _, t in pairs]))


@pytest.fixture(scope="module", params=["bahdanau", "luong"])
def reverser(request) -> tuple[LSTMSeq2Seq, list[tuple[list[int], list[int]]]]:
    """A tiny model of each attention trained to reverse 12 digit strings (overfits them in a few
    seconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the time budget holds on one core
    pairs = reversal_pairs(12, seed=1)
    src, tgt_in, tgt_out = as_batch(pairs)
    torch.manual_seed(0)
    model = LSTMSeq2Seq(make_config(embed_dim=24, hidden_dim=32, num_layers=1, label_smoothing=0.0,
                                    attention=request.param))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        model.loss(src, tgt_in, tgt_out).backward()
        optimizer.step()
    torch.set_num_threads(threads)
    return model.eval(), pairs


def test_tiny_model_learns_to_reverse(reverser):
    model, pairs = reverser
    src, tgt_in, tgt_out = as_batch(pairs)
    assert model.loss(src, tgt_in, tgt_out).item() < 0.05
    decoded = greedy_decode(model.decode_step, model.encode(src), BOS, EOS, model.config.max_positions,
                            batch_size=len(pairs))
    assert decoded == [t for _, t in pairs]


def test_beam_search_decodes_the_trained_model(reverser):
    model, pairs = reverser
    src, _, _ = as_batch(pairs)
    state = model.start_decoding(src)
    best = beam_search(model.decode_step, state, BOS, EOS, model.config.max_positions, beam_size=3,
                       reorder=model.reorder_state, batch_size=len(pairs))
    assert [h.tokens for h in best] == [t for _, t in pairs]
    # Beam size 1 without length penalty is greedy decoding, also on an untrained model.
    untrained = make_model()
    start = untrained.encode(src)
    greedy = greedy_decode(untrained.decode_step, start, BOS, EOS, 8, batch_size=len(pairs))
    single = beam_search(untrained.decode_step, start, BOS, EOS, 8, beam_size=1, length_penalty=0.0,
                         reorder=untrained.reorder_state, batch_size=len(pairs))
    assert [h.tokens for h in single] == greedy
