"""Text generation: sampling filters, cached decoding, streaming, stop strings, chat, SmolLM2 parity."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from attnlab.attention import KVCache, MultiHeadAttention, RotaryEmbedding
from attnlab.generation import (
    ChatSession,
    Sampling,
    generate,
    generate_ids,
    stream_generate,
    stream_ids,
    top_k_filter,
    top_p_filter,
)

EOS = 256


class ByteTokenizer:
    """One token per UTF-8 byte (ids 0..255) plus an end-of-sequence id, like byte-level BPE
    without merges: a multi-byte character always spans several tokens."""

    eos_token_id = EOS
    special_ids = frozenset({EOS})

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages, add_generation_prompt: bool = True) -> str:
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")


class TinyDecoder(nn.Module):
    """A random two-layer pre-norm decoder (causal RoPE attention with grouped KV heads, an MLP)
    that honours the attnlab decoder contract."""

    def __init__(self, vocab: int = EOS + 1, dim: int = 32, heads: int = 4, kv_heads: int = 2,
                 layers: int = 2, max_positions: int = 128, ascii_only: bool = False) -> None:
        super().__init__()
        self.ascii_only = ascii_only  # never emit bytes 128..255: its text re-encodes to its tokens
        self.config = SimpleNamespace(max_positions=max_positions)
        self.embed = nn.Embedding(vocab, dim)
        rope = RotaryEmbedding(dim // heads)
        self.attn = nn.ModuleList(
            MultiHeadAttention(dim, heads, num_kv_heads=kv_heads, rope=rope, bias=False)
            for _ in range(layers)
        )
        self.mlp = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
            for _ in range(layers)
        )
        self.norm = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.head = nn.Linear(dim, vocab)

    def new_caches(self, batch, max_len, *, dtype=None, device=None) -> list[KVCache]:
        weight = self.head.weight
        return [
            KVCache(batch, a.num_kv_heads, max_len, a.head_dim, dtype=dtype or weight.dtype,
                    device=device or weight.device)
            for a in self.attn
        ]

    def forward(self, input_ids, *, caches=None):
        x = self.embed(input_ids)
        for i, (attn, mlp, norm) in enumerate(zip(self.attn, self.mlp, self.norm, strict=True)):
            x = x + attn(norm(x), is_causal=True, cache=None if caches is None else caches[i])
            x = x + mlp(x)
        logits = self.head(x) * 3.0  # sharper distributions: sampled text is not pure noise
        if self.ascii_only:
            logits[..., 128:EOS] = -math.inf
        return logits


class ScriptedDecoder(nn.Module):
    """Says ``script`` (token ids) after a prompt of ``prompt_len`` tokens, then EOS.

    The logits at absolute position ``p`` put all weight on ``script[p + 1 - prompt_len]``;
    positions continue from the caches, so cached and uncached decoding agree.
    """

    def __init__(self, prompt_len: int, script: list[int], max_positions: int = 64,
                 vocab: int = EOS + 1) -> None:
        super().__init__()
        self.config = SimpleNamespace(max_positions=max_positions)
        self.prompt_len, self.script, self.vocab = prompt_len, script, vocab
        self.dummy = nn.Parameter(torch.zeros(1))

    def new_caches(self, batch, max_len, *, dtype=None, device=None) -> list[KVCache]:
        return [KVCache(batch, 1, max_len, 1, device=device)]

    def forward(self, input_ids, *, caches=None):
        batch, seq = input_ids.shape
        start = 0
        if caches is not None:
            start = caches[0].length
            caches[0].append(*(torch.zeros(batch, 1, seq, 1),) * 2)
        logits = torch.full((batch, seq, self.vocab), -10.0)
        for s in range(seq):
            step = start + s + 1 - self.prompt_len
            target = self.script[step] if 0 <= step < len(self.script) else EOS
            logits[:, s, target] = 10.0
        return logits


@pytest.fixture(scope="module")
def tiny():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return TinyDecoder().eval()


@pytest.fixture(scope="module")
def tiny_ascii():
    with torch.random.fork_rng():
        torch.manual_seed(1)
        return TinyDecoder(ascii_only=True).eval()


TOKENIZER = ByteTokenizer()


def scripted(prompt: str, reply: str, **kwargs) -> ScriptedDecoder:
    return ScriptedDecoder(len(TOKENIZER.encode(prompt)), TOKENIZER.encode(reply), **kwargs)


# Sampling filters on known logits.

def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([1.0, 4.0, 2.0, 3.0])
    assert top_k_filter(logits, 2).tolist() == [-math.inf, 4.0, -math.inf, 3.0]
    assert top_k_filter(logits, 10).tolist() == logits.tolist()


def test_top_k_works_row_by_row():
    logits = torch.tensor([[1.0, 4.0, 2.0], [9.0, 0.0, 5.0]])
    assert top_k_filter(logits, 1).tolist() == [[-math.inf, 4.0, -math.inf], [9.0, -math.inf, -math.inf]]


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.1, 0.5, 0.15, 0.25])
    logits = probs.log()
    kept = top_p_filter(logits, 0.7).isfinite().tolist()
    assert kept == [False, True, False, True]  # 0.5 + 0.25 >= 0.7
    assert top_p_filter(logits, 0.75).isfinite().tolist() == [False, True, False, True]
    assert top_p_filter(logits, 0.76).isfinite().tolist() == [False, True, True, True]


def test_top_p_always_keeps_the_most_likely_token():
    logits = torch.tensor([0.0, 5.0, 1.0])
    assert top_p_filter(logits, 1e-9).isfinite().tolist() == [False, True, False]
    assert top_p_filter(logits, 1.0).tolist() == logits.tolist()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -0.5}, "temperature must be a finite number >= 0, got -0.5"),
        ({"temperature": math.inf}, "temperature must be a finite number >= 0, got inf"),
        ({"top_k": 0}, "top_k must be a whole number >= 1 or None, got 0"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\] or None, got 0.0"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\] or None, got 1.5"),
    ],
)
def test_bad_sampling_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Sampling(**kwargs)
    with pytest.raises(ValueError, match=message):
        generate(scripted("a", "b"), TOKENIZER, "a", **kwargs)


# Token-level decoding with the random decoder.

def test_cached_and_uncached_greedy_give_the_same_tokens(tiny):
    prompt = TOKENIZER.encode("hello")
    cached = generate_ids(tiny, prompt, 40, temperature=0)
    uncached = generate_ids(tiny, prompt, 40, temperature=0, use_cache=False)
    assert len(cached) == 40 and cached == uncached


def test_cached_and_uncached_sampling_give_the_same_tokens(tiny):
    prompt = TOKENIZER.encode("hi")
    assert generate_ids(tiny, prompt, 30, seed=3) == generate_ids(tiny, prompt, 30, seed=3, use_cache=False)


def test_greedy_is_the_argmax_of_the_full_forward(tiny):
    prompt = TOKENIZER.encode("abc")
    ids = generate_ids(tiny, prompt, 5, temperature=0)
    with torch.no_grad():
        logits = tiny(torch.tensor([prompt + ids]))[0]
    assert ids == logits[len(prompt) - 1 : -1].argmax(-1).tolist()


def test_same_seed_same_tokens_and_global_rng_untouched(tiny):
    prompt = TOKENIZER.encode("x")
    state = torch.get_rng_state()
    first = generate_ids(tiny, prompt, 30, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert generate_ids(tiny, prompt, 30, seed=7) == first
    assert generate_ids(tiny, prompt, 30, seed=8) != first


def test_top_k_one_and_tiny_top_p_equal_greedy(tiny):
    prompt = TOKENIZER.encode("q")
    greedy = generate_ids(tiny, prompt, 25, temperature=0)
    assert generate_ids(tiny, prompt, 25, temperature=1.5, top_k=1, seed=1) == greedy
    assert generate_ids(tiny, prompt, 25, temperature=1.5, top_p=1e-6, seed=2) == greedy


def test_stream_ids_yields_what_generate_ids_returns(tiny):
    prompt = TOKENIZER.encode("s")
    assert list(stream_ids(tiny, prompt, 12, seed=4)) == generate_ids(tiny, prompt, 12, seed=4)


def test_eos_ids_end_generation_and_are_not_returned(tiny):
    prompt = TOKENIZER.encode("e")
    greedy = generate_ids(tiny, prompt, 20, temperature=0)
    assert generate_ids(tiny, prompt, 20, temperature=0, eos_ids=[greedy[5]]) == greedy[:5]


def test_past_max_positions_the_context_slides(tiny):
    prompt = TOKENIZER.encode("m" * 122)  # max_positions = 128
    cached = generate_ids(tiny, prompt, 20, temperature=0)
    assert len(cached) == 20
    assert generate_ids(tiny, prompt, 20, temperature=0, use_cache=False) == cached
    # Reference: every step reads only the last 128 tokens.
    sequence = list(prompt)
    with torch.no_grad():
        for _ in range(20):
            logits = tiny(torch.tensor([sequence[-128:]]))[0, -1]
            sequence.append(int(logits.argmax()))
    assert cached == sequence[len(prompt):]
    assert len(generate_ids(tiny, TOKENIZER.encode("m" * 128), 5, temperature=0)) == 5


def test_a_prompt_longer_than_max_positions_is_refused(tiny):
    with pytest.raises(ValueError, match="the prompt is 129 tokens, more than the model's max_positions=128"):
        generate_ids(tiny, [1] * 129, 5)


@pytest.mark.parametrize("bad", [-1, 2.5, True])
def test_bad_max_new_tokens_is_named(tiny, bad):
    with pytest.raises(ValueError, match=f"max_new_tokens must be a whole number >= 0, got {bad}"):
        generate_ids(tiny, [1], bad)


def test_an_empty_prompt_is_refused(tiny):
    with pytest.raises(ValueError, match="no tokens"):
        generate_ids(tiny, [], 5)
    with pytest.raises(ValueError, match="the prompt '' encodes to no tokens"):
        generate(tiny, TOKENIZER, "")


def test_zero_new_tokens_give_nothing(tiny):
    assert generate(tiny, TOKENIZER, "abc", max_new_tokens=0) == ""


def test_generation_runs_in_inference_mode_but_leaves_grad_mode_alone(tiny):
    pieces = stream_generate(tiny, TOKENIZER, "g", max_new_tokens=5, temperature=0)
    for _ in pieces:
        assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


# Text: scripted replies, stop strings, streaming.

def test_generate_returns_the_text_after_the_prompt_and_stops_at_eos():
    model = scripted("Hi", "Hello there")
    assert generate(model, TOKENIZER, "Hi", max_new_tokens=50) == "Hello there"
    assert generate(model, TOKENIZER, "Hi", max_new_tokens=5) == "Hello"


def test_stop_string_ends_the_text_before_it():
    model = scripted("Q", "one. two. three.")
    assert generate(model, TOKENIZER, "Q", stop=[". t"]) == "one"
    assert generate(model, TOKENIZER, "Q", stop=["three", "wo"]) == "one. t"
    assert generate(model, TOKENIZER, "Q", stop="zzz") == "one. two. three."


class WordTokenizer(ByteTokenizer):
    """:class:`ByteTokenizer` plus id 300, the whole word 'STOP!'."""

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join("STOP!" if i == 300 else ByteTokenizer.decode(self, [i]) for i in ids)


def test_stop_string_inside_one_token_is_found():
    model = ScriptedDecoder(1, [ord("a"), 300, ord("b")], vocab=301)
    assert generate(model, WordTokenizer(), "x", stop=["OP"]) == "aST"


def test_a_bad_stop_string_is_named():
    with pytest.raises(ValueError, match="stop strings must be non-empty strings, got ''"):
        generate(scripted("a", "b"), TOKENIZER, "a", stop=["x", ""])


def test_streaming_never_splits_a_multibyte_character():
    reply = "naïve café → 日本"
    model = scripted("p", reply)
    pieces = list(stream_generate(model, TOKENIZER, "p"))
    assert "".join(pieces) == reply == generate(model, TOKENIZER, "p")
    assert len(pieces) > 5  # really streamed
    assert all("\ufffd" not in piece for piece in pieces)


def test_an_incomplete_last_character_is_dropped():
    model = scripted("p", "ab€")  # € is 3 bytes; stop after its second
    pieces = list(stream_generate(model, TOKENIZER, "p", max_new_tokens=4))
    assert pieces == ["a", "b"]


def test_streaming_holds_back_a_possible_stop_string():
    model = scripted("p", "abcabd")
    pieces = list(stream_generate(model, TOKENIZER, "p", stop=["abd"]))
    assert pieces == ["abc"] and generate(model, TOKENIZER, "p", stop=["abd"]) == "abc"
    # A held-back prefix that never completes is released at the end.
    assert "".join(stream_generate(model, TOKENIZER, "p", stop=["abx"])) == "abcabd"


def test_stream_joined_equals_generate_when_sampling(tiny):
    kwargs = {"max_new_tokens": 40, "temperature": 0.9, "top_k": 50, "top_p": 0.9, "seed": 11}
    pieces = list(stream_generate(tiny, TOKENIZER, "tiny", **kwargs))
    assert "".join(pieces) == generate(tiny, TOKENIZER, "tiny", **kwargs)
    assert not any(p.endswith("\ufffd") for p in pieces)


# Chat.

def fresh_greedy_reply(model, messages):
    prompt = TOKENIZER.apply_chat_template(messages, add_generation_prompt=True)
    return generate(model, TOKENIZER, prompt, max_new_tokens=12, temperature=0)


def test_chat_reuses_the_cache_and_answers_as_a_fresh_generation_would(tiny_ascii):
    tiny = tiny_ascii
    chat = ChatSession(tiny, TOKENIZER, system="sys", max_new_tokens=12, temperature=0)
    fed = []  # tokens in each model call
    hook = tiny.register_forward_pre_hook(lambda module, args: fed.append(args[0].shape[1]))
    try:
        for text in ["hello", "and then?", "bye"]:
            history = [*chat.messages, {"role": "user", "content": text}]
            fed.clear()
            reply = "".join(chat.send(text))
            # Later turns feed only what follows the cached tokens (the reply's end, the new message).
            rendered = TOKENIZER.apply_chat_template(history, add_generation_prompt=True)
            if text == "hello":
                assert fed[0] == len(rendered)
            else:  # at most the reply's last token (never fed when the reply hit max_new_tokens)
                assert fed[0] - len(f"\n<user>{text}\n<assistant>") in (0, 1)
            assert reply == fresh_greedy_reply(tiny, history)
            assert chat.messages == [*history, {"role": "assistant", "content": reply}]
    finally:
        hook.remove()


def test_chat_reset_forgets_all_but_the_system_message(tiny):
    chat = ChatSession(tiny, TOKENIZER, system="sys", max_new_tokens=4, temperature=0)
    first = "".join(chat.send("hello"))
    chat.reset()
    assert chat.messages == [{"role": "system", "content": "sys"}]
    assert "".join(chat.send("hello")) == first


def test_chat_refuses_a_conversation_longer_than_max_positions(tiny):
    chat = ChatSession(tiny, TOKENIZER, max_new_tokens=4)
    with pytest.raises(ValueError, match="max_positions=128"):
        chat.send("x" * 130)


# SmolLM2: greedy decoding with the KV cache against transformers' generate.

def _hf_greedy(hf_model, prompt_ids: list[int], new_tokens: int, eos: int) -> list[int]:
    input_ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = hf_model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                                max_new_tokens=new_tokens, eos_token_id=eos, pad_token_id=eos)
    ids = out[0, len(prompt_ids):].tolist()
    return ids[: ids.index(eos)] if eos in ids else ids


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("Once upon a time", None),
        pytest.param("def fibonacci(n):", None, marks=pytest.mark.slow),  # 12 s; "story" stays
        ([{"role": "user", "content": "What is the capital of France?"}], "Paris"),
    ],
    ids=["story", "code", "chat"],
)
def test_smollm2_greedy_with_cache_matches_transformers(smollm2, hf_smollm2, prompt, expected):
    model, tokenizer = smollm2
    if isinstance(prompt, list):
        prompt = tokenizer.apply_chat_template(prompt, add_generation_prompt=True)
    prompt_ids = tokenizer.encode(prompt)
    ids = generate_ids(model, prompt_ids, 40, temperature=0, eos_ids=[tokenizer.eos_token_id])
    assert ids == _hf_greedy(hf_smollm2, prompt_ids, 40, tokenizer.eos_token_id)
    assert len(ids) == 40 if expected is None else expected in tokenizer.decode(ids)


def test_smollm2_streams_whole_characters_when_tokens_split_them(smollm2):
    model, tokenizer = smollm2
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Reply with five emojis only."}])
    ids = generate_ids(model, tokenizer.encode(prompt), 12, temperature=0, eos_ids=[tokenizer.eos_token_id])
    assert "\ufffd" in tokenizer.token_strings(ids)  # some emoji's bytes span tokens
    pieces = list(stream_generate(model, tokenizer, prompt, 12, temperature=0))
    assert "".join(pieces) == tokenizer.decode(ids) and "\ufffd" not in "".join(pieces)
