"""record() and edit(): the one place where attention is traced and changed.

References are built by hand: q/k/v recomputed from each module's projections in float64 and the
plain softmax formula with an explicit boolean mask; head switches by zeroing the input of
``out_proj`` with a forward pre-hook.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from attnlab.attention import LayerTrace, MultiHeadAttention, edit, record
from attnlab.models.bert import BertConfig, BertEncoder
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.models.llama import LlamaConfig, LlamaDecoder
from attnlab.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from attnlab.models.vit import ViT, ViTConfig

V = 50  # vocabulary of the tiny language models


def _randomise(model: nn.Module) -> nn.Module:
    """Non-zero weights everywhere (some models zero-initialise heads or biases)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return model.eval()


def tiny_bert() -> BertEncoder:
    torch.manual_seed(0)
    return _randomise(BertEncoder(BertConfig(vocab_size=V, embed_dim=16, num_layers=2, num_heads=4,
                                             ffn_dim=24, max_positions=16)))


def tiny_llama() -> LlamaDecoder:
    torch.manual_seed(0)
    return _randomise(LlamaDecoder(LlamaConfig(vocab_size=V, embed_dim=32, num_layers=2, num_heads=4,
                                               num_kv_heads=2, ffn_dim=48, max_positions=32)))


def tiny_gpt(positions: str) -> GPT:
    torch.manual_seed(0)
    return _randomise(GPT(GPTConfig(vocab_size=V, max_positions=32, num_layers=2, num_heads=4,
                                    embed_dim=16, positions=positions, bias=True)))


def tiny_vit() -> ViT:
    torch.manual_seed(0)
    return _randomise(ViT(ViTConfig(image_size=8, patch_size=4, embed_dim=16, num_layers=2,
                                    num_heads=4, ffn_dim=24)))


def tiny_seq2seq() -> Seq2SeqTransformer:
    torch.manual_seed(0)
    return _randomise(Seq2SeqTransformer(Seq2SeqConfig(
        vocab_size=V, max_positions=16, num_encoder_layers=2, num_decoder_layers=2, num_heads=4,
        embed_dim=16, ffn_dim=24, pad_id=0, bos_id=1, eos_id=2, dropout=0.0)))


def token_ids(batch: int = 2, seq: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, V, (batch, seq), generator=torch.Generator().manual_seed(seed))


def by_hand(attn: MultiHeadAttention, x, context=None, *, causal=False, padding=None, hidden=()):
    """Float64 ``(weights (batch, heads, Lq, Lk), heads (batch, heads, Lq, head_dim))`` of ``attn``
    reading ``x`` (and ``context``), by the plain formula with an explicit boolean mask."""
    attn = copy.deepcopy(attn).double()
    x = x.double()
    source = x if context is None else context.double()
    batch, q_len, _ = x.shape
    k_len, d = source.shape[1], attn.head_dim
    q = attn.q_proj(x).view(batch, q_len, attn.num_heads, d).transpose(1, 2)
    k = attn.k_proj(source).view(batch, k_len, attn.num_kv_heads, d).transpose(1, 2)
    v = attn.v_proj(source).view(batch, k_len, attn.num_kv_heads, d).transpose(1, 2)
    if attn.rope is not None:
        q, k = attn.rope(q), attn.rope(k)
    groups = attn.num_heads // attn.num_kv_heads
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    allowed = torch.ones(batch, 1, q_len, k_len, dtype=torch.bool)
    if causal:
        allowed &= torch.ones(q_len, k_len, dtype=torch.bool).tril()
    if padding is not None:
        allowed &= ~padding[:, None, None, :]
    allowed[..., list(hidden)] = False
    scores = (q @ k.transpose(-1, -2) / math.sqrt(d)).masked_fill(~allowed, -math.inf)
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a row with no key: zeros
    return weights, weights @ v


@contextmanager
def q_proj_inputs(model: nn.Module):
    """The inputs every ``q_proj`` of the model read, in call order."""
    seen, handles = [], []
    for m in model.modules():
        if isinstance(m, MultiHeadAttention):
            handles.append(m.q_proj.register_forward_pre_hook(lambda _, args: seen.append(args[0])))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def explicit_mask(model: nn.Module, hidden):
    """Reference for ``edit(hide_keys=hidden)``: every attention module called with an
    ``attn_mask`` whose columns ``hidden`` are False (uncached calls only)."""
    attns = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    for m in attns:
        def forward(x, context=None, *, _m=m, **kwargs):
            k_len = x.shape[1] if context is None else context.shape[1]
            allowed = torch.ones(x.shape[1], k_len, dtype=torch.bool)  # (Lq, Lk)
            allowed[:, list(hidden)] = False
            return MultiHeadAttention.forward(_m, x, context, attn_mask=allowed, **kwargs)
        m.forward = forward
    try:
        yield
    finally:
        for m in attns:
            del m.forward


@contextmanager
def heads_zeroed(model: nn.Module, off: dict[int, list[int]]):
    """Reference for ``edit(heads_off=...)``: zero the heads' slices of ``out_proj``'s input."""
    attns = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    handles = []
    for layer, heads in off.items():
        d = attns[layer].head_dim

        def zero(_, args, heads=heads, d=d):
            merged = args[0].clone()  # (batch, Lq, embed_dim): heads side by side
            for h in heads:
                merged[..., h * d:(h + 1) * d] = 0
            return (merged,)
        handles.append(attns[layer].out_proj.register_forward_pre_hook(zero))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def assert_trace_matches(trace: LayerTrace, attn: MultiHeadAttention, **by_hand_kwargs):
    weights, heads = by_hand(attn, trace.attn_input, **by_hand_kwargs)
    torch.testing.assert_close(trace.attention.weights.double(), weights, rtol=0, atol=1e-5)
    torch.testing.assert_close(trace.attention.output.double(), heads, rtol=0, atol=1e-5)


def attention_modules(model: nn.Module) -> dict[str, MultiHeadAttention]:
    return {name: m for name, m in model.named_modules() if isinstance(m, MultiHeadAttention)}


# --- recording equals the computation by hand ---------------------------------------------------


def test_bert_recording_equals_the_formula_by_hand():
    model, ids = tiny_bert(), token_ids()
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    with torch.no_grad(), q_proj_inputs(model) as read, record(model) as recording:
        model(ids, mask)
    attns = attention_modules(model)
    assert [(t.layer, t.name, t.offset, t.cross) for t in recording.traces] == [
        (0, "layers.0.attn", 0, False), (1, "layers.1.attn", 0, False)]
    for trace, q_input in zip(recording.traces, read, strict=True):
        assert torch.equal(trace.attn_input, q_input)
        assert_trace_matches(trace, attns[trace.name], padding=mask == 0)


def test_llama_gqa_recording_equals_the_formula_by_hand():
    model, ids = tiny_llama(), token_ids(seq=7)
    with torch.no_grad(), q_proj_inputs(model) as read, record(model) as recording:
        model(ids)
    attns = attention_modules(model)
    assert [t.name for t in recording.traces] == ["layers.0.attn", "layers.1.attn"]
    for trace, q_input in zip(recording.traces, read, strict=True):
        assert trace.attention.key.shape == (2, 2, 7, 8)  # two key/value heads, not four
        assert torch.equal(trace.attn_input, q_input)
        assert_trace_matches(trace, attns[trace.name], causal=True)


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_gpt_recording_equals_the_formula_by_hand(positions):
    model, ids = tiny_gpt(positions), token_ids(seq=9)
    with torch.no_grad(), q_proj_inputs(model) as read, record(model) as recording:
        model(ids)
    attns = attention_modules(model)
    assert [t.layer for t in recording.traces] == [0, 1]
    for trace, q_input in zip(recording.traces, read, strict=True):
        assert torch.equal(trace.attn_input, q_input)
        assert_trace_matches(trace, attns[trace.name], causal=True)


def test_vit_recording_equals_the_formula_by_hand():
    model, images = tiny_vit(), torch.randn(2, 1, 8, 8)
    with torch.no_grad(), q_proj_inputs(model) as read, record(model) as recording:
        model(images)
    attns = attention_modules(model)
    assert [t.name for t in recording.traces] == ["blocks.0.attn", "blocks.1.attn"]
    for trace, q_input in zip(recording.traces, read, strict=True):
        assert trace.attention.weights.shape == (2, 4, 5, 5)  # class token + 4 patches
        assert torch.equal(trace.attn_input, q_input)
        assert_trace_matches(trace, attns[trace.name])
    torch.testing.assert_close(model.attention_weights(images),
                               torch.stack([t.attention.weights for t in recording.traces]))


def test_seq2seq_recording_equals_the_formula_by_hand():
    model = tiny_seq2seq()
    src = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]])
    tgt = torch.tensor([[1, 10, 11, 12], [1, 13, 14, 15]])
    with torch.no_grad(), record(model) as recording:
        model(src, tgt)
        memory = model.encode(src)
    traces = recording.traces[:6]  # the forward pass: 2 encoder, then 2 x (self, cross) decoder
    attns, padding = attention_modules(model), src == 0
    assert [(t.name, t.cross) for t in traces] == [
        ("encoder.0.attn", False), ("encoder.1.attn", False),
        ("decoder.0.self_attn", False), ("decoder.0.cross_attn", True),
        ("decoder.1.self_attn", False), ("decoder.1.cross_attn", True)]
    assert [t.layer for t in traces] == list(range(6))
    for trace in traces[:2]:
        assert_trace_matches(trace, attns[trace.name], padding=padding)
    for trace in traces[2::2]:
        assert_trace_matches(trace, attns[trace.name], causal=True)
    for trace in traces[3::2]:
        assert trace.attention.weights.shape == (2, 4, 4, 5)  # (batch, heads, Lt, Ls)
        assert_trace_matches(trace, attns[trace.name], context=memory, padding=padding)


def test_modules_selects_and_numbers_only_the_chosen_ones():
    model = tiny_seq2seq()
    src, tgt = torch.tensor([5, 6, 7, 8]), torch.tensor([1, 10, 11])
    with torch.no_grad(), record(model, modules=lambda name, _: name.endswith("cross_attn")) as rec:
        model(src[None], tgt[None])
    assert [(t.layer, t.name, t.cross) for t in rec.traces] == [
        (0, "decoder.0.cross_attn", True), (1, "decoder.1.cross_attn", True)]
    expected = torch.stack([t.attention.weights[0] for t in rec.traces])
    torch.testing.assert_close(model.cross_attention_weights(src, tgt), expected)


def test_clear_drops_the_traces_and_keeps_recording():
    model, ids = tiny_gpt("rope"), token_ids()
    with torch.no_grad(), record(model) as recording:
        model(ids)
        recording.clear()
        assert recording.traces == []
        model(ids[:, :3])
    assert [t.attention.weights.shape[-1] for t in recording.traces] == [3, 3]


def test_record_during_cached_generation_appends_one_trace_per_layer_per_step():
    model, ids = tiny_llama(), token_ids(batch=1, seq=8)
    caches = model.new_caches(1, 8)
    with torch.no_grad(), record(model) as recording:
        model(ids[:, :5], caches=caches)
        for t in range(5, 8):
            model(ids[:, t:t + 1], caches=caches)
        full = record(model)
        with full as uncached:
            model(ids)
    steps = recording.traces[2:8]
    assert len(recording.traces) == 2 * 4 + 2  # prompt + 3 steps, then the uncached run
    assert [(t.layer, t.offset) for t in steps] == [(0, 5), (1, 5), (0, 6), (1, 6), (0, 7), (1, 7)]
    for trace in steps:
        assert trace.attention.weights.shape == (1, 4, 1, trace.offset + 1)
        row = uncached.traces[trace.layer].attention.weights[:, :, trace.offset:trace.offset + 1,
                                                             :trace.offset + 1]
        torch.testing.assert_close(trace.attention.weights, row, rtol=0, atol=1e-6)


# --- recording and empty edits leave outputs alone --------------------------------------------------


@pytest.mark.parametrize("build", [tiny_bert, tiny_llama, lambda: tiny_gpt("learned")])
def test_record_and_an_empty_edit_leave_outputs_unchanged(build):
    model, ids = build(), token_ids()
    run = (lambda: model(ids).last_hidden_state) if isinstance(model, BertEncoder) else lambda: model(ids)
    with torch.no_grad():
        plain = run()
        with record(model):
            recorded = run()
        with edit(model):
            edited = run()
    assert torch.equal(edited, plain)  # the same backend, the same arguments
    torch.testing.assert_close(recorded, plain, rtol=1e-6, atol=1e-6)


# --- edits equal explicit references ----------------------------------------------------------------


def test_hiding_a_key_in_bert_equals_an_explicit_column_mask():
    model, ids = tiny_bert(), token_ids()
    with torch.no_grad():
        with edit(model, hide_keys=[2]):
            edited = model(ids).last_hidden_state
        with explicit_mask(model, [2]):
            expected = model(ids).last_hidden_state
        unedited = model(ids).last_hidden_state
    torch.testing.assert_close(edited, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(edited, unedited, atol=1e-3)


def test_recorded_edit_shows_hidden_keys_masked_and_matches_by_hand():
    model, ids = tiny_bert(), token_ids()
    attns = attention_modules(model)
    with torch.no_grad(), edit(model, hide_keys=[2, 4]), record(model) as inside:
        model(ids)
    with torch.no_grad(), record(model) as outside, edit(model, hide_keys=[2, 4]):
        model(ids)
    for a, b in zip(inside.traces, outside.traces, strict=True):
        assert torch.equal(a.attention.weights, b.attention.weights)
        assert torch.isneginf(a.attention.masked[..., [2, 4]]).all()
        assert (a.attention.weights[..., [2, 4]] == 0).all()
        assert_trace_matches(a, attns[a.name], hidden=[2, 4])


def test_hiding_a_key_in_a_gqa_decoder_equals_an_explicit_column_mask():
    model, ids = tiny_llama(), token_ids(seq=7)
    with torch.no_grad():
        with edit(model, hide_keys=[0, 3]):
            edited = model(ids)
        with explicit_mask(model, [0, 3]):
            # is_causal and the column mask both apply; query 0 is left with no key
            expected = model(ids)
    torch.testing.assert_close(edited, expected, rtol=0, atol=1e-5)


def test_hiding_a_prompt_key_then_cached_decoding_equals_the_uncached_edited_run():
    model, ids = tiny_llama(), token_ids(batch=1, seq=8)
    caches = model.new_caches(1, 8)
    with torch.no_grad(), edit(model, hide_keys=[2]):
        steps = [model(ids[:, :5], caches=caches)]
        steps += [model(ids[:, t:t + 1], caches=caches) for t in range(5, 8)]
        uncached = model(ids)
    torch.testing.assert_close(torch.cat(steps, dim=1), uncached, rtol=0, atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(model(ids)[:, 5:], uncached[:, 5:], atol=1e-3)


def test_heads_off_equals_zeroing_that_heads_slice_before_out_proj():
    model, ids = tiny_gpt("rope"), token_ids()
    with torch.no_grad():
        with edit(model, heads_off=[(0, 1), (1, 3), (1, 0)]):
            edited = model(ids)
        with heads_zeroed(model, {0: [1], 1: [0, 3]}):
            expected = model(ids)
        unedited = model(ids)
    torch.testing.assert_close(edited, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(edited, unedited, atol=1e-3)


def test_a_recorded_head_off_keeps_its_weights_and_outputs_zero():
    model, ids = tiny_gpt("rope"), token_ids()
    with torch.no_grad(), record(model) as plain:
        model(ids)
    with torch.no_grad(), edit(model, heads_off=[(0, 1)]), record(model) as edited:
        model(ids)
    first = edited.traces[0].attention
    assert torch.equal(first.weights, plain.traces[0].attention.weights)
    assert (first.output[:, 1] == 0).all() and (first.output[:, 0] != 0).any()


def test_layers_off_equals_zeroing_every_head_and_leaves_out_projs_bias():
    model, ids = tiny_llama(), token_ids()
    model.layers[1].attn.out_proj.bias = nn.Parameter(torch.randn(32))  # a bias to see
    outputs = []
    model.layers[1].attn.register_forward_hook(lambda *args: outputs.append(args[-1]))
    with torch.no_grad():
        with edit(model, layers_off=[1]):
            edited = model(ids)
        with heads_zeroed(model, {1: [0, 1, 2, 3]}):
            expected = model(ids)
    torch.testing.assert_close(edited, expected, rtol=0, atol=1e-6)
    bias = model.layers[1].attn.out_proj.bias.expand(2, 6, 32)
    torch.testing.assert_close(outputs[0], bias, rtol=0, atol=0)


def test_a_module_can_be_edited_on_its_own():
    attn = MultiHeadAttention(8, 2)
    x = torch.randn(1, 3, 8)
    with torch.no_grad(), edit(attn, hide_keys=[0, 1, 2]):
        assert torch.equal(attn(x), attn.out_proj.bias.expand(1, 3, 8))  # no key: zeros


# --- errors and cleanup -----------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"heads_off": [(2, 0)]}, "heads_off layer 2 is out of range: the selected modules are layers 0 to 1"),
    ({"heads_off": [(0, 4)]}, r"heads_off head 4 is out of range for layer 0 \(layers.0.attn\): it has "
                              "heads 0 to 3"),
    ({"heads_off": [(-1, 0)]}, "heads_off layer -1 is out of range"),
    ({"layers_off": [5]}, "layers_off layer 5 is out of range: the selected modules are layers 0 to 1"),
])
def test_layers_and_heads_out_of_range_are_refused_at_entry(kwargs, message):
    model = tiny_gpt("rope")
    with pytest.raises(ValueError, match=message), edit(model, **kwargs):
        pytest.fail("the body must not run")


@pytest.mark.parametrize("position", [6, -1])
def test_a_hidden_position_outside_the_keys_is_refused_at_the_call(position):
    model = tiny_gpt("rope")
    with edit(model, hide_keys=[position]), pytest.raises(
            ValueError, match=rf"hide_keys position {position} is out of range for layers.0.attn: it "
                              r"attends over Lk=6 keys \(positions 0 to 5\)"):
        model(token_ids(seq=6))


def test_linear_attention_cannot_be_recorded_or_edited():
    model = nn.Sequential(MultiHeadAttention(8, 2, linear=True))
    for context in (record(model), edit(model)):
        with pytest.raises(ValueError, match="linear attention forms no attention weights to record "
                                             "or edit: 0"), context:
            pytest.fail("the body must not run")


@pytest.mark.parametrize(("call", "message"), [
    (lambda m: edit(m, hide_keys=3), "hide_keys must be an iterable of ints, got 3"),
    (lambda m: edit(m, hide_keys="12"), "hide_keys must be an iterable of ints, got '12'"),
    (lambda m: edit(m, hide_keys=[1.5]), "hide_keys must hold ints, got 1.5"),
    (lambda m: edit(m, layers_off=[True]), "layers_off must hold ints, got True"),
    (lambda m: edit(m, heads_off=[1]), r"heads_off must hold \(layer, head\) pairs, got 1"),
    (lambda m: edit(m, heads_off=[(0, 1, 2)]), r"heads_off must hold \(layer, head\) pairs, got \(0, 1, 2\)"),
    (lambda m: edit(m, heads_off=5), r"heads_off must be an iterable of \(layer, head\) pairs, got 5"),
    (lambda m: record(m, modules="attn"), "modules must be None or a callable"),
    (lambda m: record("model"), "model must be a torch.nn.Module, got str"),
])
def test_arguments_of_the_wrong_type_are_refused(call, message):
    with pytest.raises(TypeError, match=message), call(tiny_gpt("rope")):
        pytest.fail("the body must not run")


def test_a_model_without_attention_is_refused():
    with pytest.raises(ValueError, match="no MultiHeadAttention module selected in Linear"), \
            record(nn.Linear(2, 2)):
        pytest.fail("the body must not run")


def test_hooks_are_removed_on_exit_and_when_the_body_raises():
    model = tiny_llama()
    attns = list(attention_modules(model).values())
    with record(model), edit(model, hide_keys=[0]):
        assert all(len(m._attention_hooks) == 2 for m in attns)
    assert all(m._attention_hooks == [] for m in attns)
    with pytest.raises(RuntimeError, match="boom"), record(model):
        raise RuntimeError("boom")
    with pytest.raises(ValueError), edit(model, hide_keys=[99]):
        model(token_ids())
    assert all(m._attention_hooks == [] for m in attns)
