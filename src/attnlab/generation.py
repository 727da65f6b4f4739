"""Text generation with any attnlab decoder: greedy or sampled, streamed, stopped on strings.

A decoder is anything with ``model(input_ids, *, caches=None) -> logits``
(``(batch, seq) -> (batch, seq, vocab)``), ``model.new_caches(batch, max_len, ...)`` and
``model.config.max_positions``. Decoding is a loop of two steps::

    logits = model(new_tokens, caches=caches)[0, -1]      the KV cache holds everything older
    token = argmax(logits)                                 temperature 0 (greedy), else
    token ~ softmax(top_p(top_k(logits / temperature)))    sampling with a local generator

- :func:`generate_ids` / :func:`stream_ids`: token ids in, token ids out.
- :func:`generate` / :func:`stream_generate`: text in, text out; streaming (:func:`stream_text`)
  never splits a UTF-8 character and holds back text that may be the start of a stop string.
- :class:`ChatSession`: a conversation through the chat template, reusing the KV cache across
  turns.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from attnlab.attention import KVCache

# What a byte-level tokenizer decodes an incomplete UTF-8 character to.
REPLACEMENT_CHAR = "\ufffd"

# Tokens a chat's KV cache holds at least (SmolLM2-135M: 46 KiB per token in float32).
CHAT_MIN_CACHE = 1024


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of the last dimension, set the others to ``-inf``.

    ``logits`` is ``(..., vocab)``; tokens tied with the k-th largest are all kept.
    """
    if k >= logits.shape[-1]:
        return logits
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth_largest, -math.inf)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the most likely tokens whose probabilities first add up to ``p``.

    ``logits`` is ``(..., vocab)``. Sorted from most to least likely, a token is dropped (set to
    ``-inf``) when the tokens before it already hold probability ``>= p``; so the most likely
    token is always kept, and ``p = 1`` keeps everything.
    """
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # (..., vocab): probability of the tokens ahead
    drop_sorted = mass_before >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, -math.inf)


@dataclass(frozen=True)
class Sampling:
    """How the next token is picked from its logits.

    ``temperature=0`` is greedy (argmax; ``top_k`` and ``top_p`` then change nothing). Otherwise
    the logits are divided by ``temperature``, filtered by :func:`top_k_filter` (``top_k``, None
    = off) and :func:`top_p_filter` (``top_p``, None = off), and a token is drawn from their
    softmax.
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)
                                       or self.top_k < 1):
            raise ValueError(f"top_k must be a whole number >= 1 or None, got {self.top_k!r}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p}")

    def filtered(self, logits: torch.Tensor) -> torch.Tensor:
        """``(vocab,)`` logits divided by the temperature, ``-inf`` where top-k/top-p drop a token:
        their softmax is the distribution :meth:`pick` draws from. Needs ``temperature > 0``."""
        logits = logits.float() / self.temperature
        if self.top_k is not None:
            logits = top_k_filter(logits, self.top_k)
        if self.top_p is not None:
            logits = top_p_filter(logits, self.top_p)
        return logits

    def pick(self, logits: torch.Tensor, generator: torch.Generator) -> int:
        """The next token id from ``(vocab,)`` logits."""
        if self.temperature == 0:
            return int(logits.argmax())
        return int(torch.multinomial(self.filtered(logits).softmax(dim=-1), 1, generator=generator))


def _check_max_new_tokens(max_new_tokens: int) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a whole number >= 0, got {max_new_tokens!r}")


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def new_generator(device: torch.device, seed: int | None) -> torch.Generator:
    """A generator of its own, so sampling never reads or moves torch's global random state."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()  # nondeterministic
    else:
        generator.manual_seed(seed)
    return generator


@torch.inference_mode()
def _next_logits(model, tokens: Sequence[int], caches: list[KVCache] | None) -> torch.Tensor:
    """``(vocab,)`` logits for the token after ``tokens`` (only the new ones when cached)."""
    input_ids = torch.tensor([tokens], dtype=torch.long, device=_model_device(model))
    return model(input_ids, caches=caches)[0, -1]


@torch.inference_mode()
def _new_caches(model, max_len: int) -> list[KVCache]:
    # Made in inference mode, like every tensor the decoding steps write into them.
    return model.new_caches(1, max_len, device=_model_device(model))


def _decode(
    model,
    prompt_ids: Sequence[int],
    steps: int,
    sampling: Sampling,
    generator: torch.Generator,
    caches: list[KVCache] | None,
    eos_ids: frozenset[int],
) -> Iterator[int]:
    """Up to ``steps`` new tokens after ``prompt_ids``; stops before an end-of-sequence id.

    With ``caches`` (which may already hold earlier tokens), each step feeds only the newest
    token; without, each step re-runs the whole sequence. The last token yielded is never fed
    to the model, so afterwards the caches hold ``prompt_ids`` and every token yielded but the
    last (or, after an end-of-sequence id, every token yielded).
    """
    sequence = list(prompt_ids)
    feed = sequence
    limit = model.config.max_positions
    for _ in range(steps):
        # Inference mode is entered per step, never held across a `yield`: the caller's code
        # between two tokens must run in whatever autograd mode it chose.
        token = sampling.pick(_next_logits(model, feed, caches), generator)
        if token in eos_ids:
            return
        yield token
        sequence.append(token)
        if caches is not None and len(sequence) > limit:
            caches = None  # the cache holds max_positions tokens: from here on the context slides
        feed = sequence[-limit:] if caches is None else [token]


def _check_prompt_fits(model, context: int) -> None:
    """ValueError if a prompt of ``context`` tokens is longer than the model can read at once."""
    max_positions = model.config.max_positions
    if context > max_positions:
        raise ValueError(
            f"the prompt is {context} tokens, more than the model's "
            f"max_positions={max_positions}"
        )


def _room(model, context: int) -> int:
    """New tokens that fit after ``context`` tokens without sliding the context (for chats)."""
    _check_prompt_fits(model, context)
    return model.config.max_positions - context


def stream_ids(
    model,
    prompt_ids: Sequence[int],
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    eos_ids: Iterable[int] = (),
) -> Iterator[int]:
    """Yield new token ids one by one as the model produces them (see :func:`generate_ids`)."""
    prompt_ids = list(prompt_ids)
    _check_max_new_tokens(max_new_tokens)
    sampling = Sampling(temperature, top_k, top_p)
    if not prompt_ids:
        raise ValueError("the prompt has no tokens; the model needs at least one to continue")
    _check_prompt_fits(model, len(prompt_ids))
    steps = max_new_tokens
    generator = new_generator(_model_device(model), seed)
    # The last new token is never fed back, so the caches need one slot less than the sequence;
    # past max_positions the model reads a sliding context without them.
    cache_len = min(len(prompt_ids) + steps - 1, model.config.max_positions)
    caches = _new_caches(model, cache_len) if use_cache and steps else None
    return _decode(model, prompt_ids, steps, sampling, generator, caches, frozenset(eos_ids))


def generate_ids(
    model,
    prompt_ids: Sequence[int],
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    eos_ids: Iterable[int] = (),
) -> list[int]:
    """Continue ``prompt_ids`` with up to ``max_new_tokens`` token ids (the prompt not included).

    Args:
        model: a decoder (see the module docstring), in eval mode.
        prompt_ids: at least one token id.
        temperature, top_k, top_p: see :class:`Sampling` (``temperature=0`` is greedy).
        seed: seeds a generator of this call's own (same seed, same tokens); None = random.
        use_cache: decode with the model's KV cache (each step feeds one token); False re-runs
            the whole sequence every step (slower, same tokens up to float rounding).
        eos_ids: ids that end the generation; the one sampled is not returned.

    Once prompt plus new tokens pass ``model.config.max_positions``, each step reads only the
    last ``max_positions`` tokens (a sliding context, re-run without the cache).

    Raises:
        ValueError: a bad argument (named, with its value), an empty prompt, or a prompt longer
            than ``max_positions``.
    """
    return list(stream_ids(model, prompt_ids, max_new_tokens, temperature, top_k, top_p, seed,
                           use_cache, eos_ids))


def _check_stop(stop: str | Sequence[str] | None) -> tuple[str, ...]:
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    for s in stops:
        if not isinstance(s, str) or not s:
            raise ValueError(f"stop strings must be non-empty strings, got {s!r} in stop={stop!r}")
    return stops


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many characters at the end of ``text`` may still become a stop string or a character.

    A trailing replacement character is an incomplete UTF-8 character (its other bytes are in
    tokens yet to come); a trailing prefix of a stop string may complete into the stop string.
    """
    partial_char = len(text) - len(text.rstrip(REPLACEMENT_CHAR))
    stop_prefix = 0
    for s in stops:
        for size in range(min(len(s) - 1, len(text)), stop_prefix, -1):
            if text.endswith(s[:size]):
                stop_prefix = size
                break
    return max(partial_char, stop_prefix)


def stream_text(
    tokenizer,
    token_ids: Iterator[int],
    stop: Sequence[str] | str | None = None,
    *,
    received: list[int] | None = None,
) -> Iterator[str]:
    """The text of ``token_ids`` in pieces as the ids arrive, ending before the first stop string.

    Each step decodes all ids so far (decoding pieces separately could differ: a character's
    bytes may be split over tokens) and yields the part of the text that is settled: no
    incomplete character, no possible start of a stop string. ``received``, if given, collects
    the ids consumed (to count them, or to know what the model has seen).

    Raises ValueError (at the call, not at the first piece) for an empty stop string.
    """
    stops = _check_stop(stop)
    return _settled_pieces(tokenizer, token_ids, stops, [] if received is None else received)


def _settled_pieces(tokenizer, token_ids: Iterator[int], stops: tuple[str, ...],
                    ids: list[int]) -> Iterator[str]:
    sent = 0  # characters of the text already yielded
    try:
        for token in token_ids:
            ids.append(token)
            text = tokenizer.decode(ids, skip_special_tokens=True)
            found = [i for i in (text.find(s) for s in stops) if i >= 0]
            if found:
                end = min(found)
                if end > sent:
                    yield text[sent:end]
                return
            settled = len(text) - _held_back(text, stops)
            if settled > sent:
                yield text[sent:settled]
                sent = settled
        # The end: held-back stop prefixes are text after all; a character left incomplete is not.
        text = tokenizer.decode(ids, skip_special_tokens=True).rstrip(REPLACEMENT_CHAR)
        if len(text) > sent:
            yield text[sent:]
    finally:
        token_ids.close()  # stops decoding at once when a stop string ends the text early


def _encode_prompt(tokenizer, prompt: str) -> list[int]:
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError(f"the prompt {prompt!r} encodes to no tokens; give some text to continue")
    return ids


def stream_generate(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    stop: Sequence[str] | None = None,
) -> Iterator[str]:
    """Yield the generated text in pieces as tokens are produced (see :func:`generate`).

    The pieces joined are exactly :func:`generate`'s text for the same arguments and seed. No
    piece ends inside a UTF-8 character split across tokens, and text that could be the start of
    a stop string is held back until it is known not to be one.
    """
    stops = _check_stop(stop)  # before any decoding starts
    tokens = stream_ids(model, _encode_prompt(tokenizer, prompt), max_new_tokens, temperature,
                        top_k, top_p, seed, use_cache, eos_ids=(tokenizer.eos_token_id,))
    return stream_text(tokenizer, tokens, stops)


def generate(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    stop: Sequence[str] | None = None,
) -> str:
    """Continue ``prompt``; returns the generated text only (without the prompt).

    Args:
        model: a decoder (see the module docstring), in eval mode.
        tokenizer: ``encode(text) -> list[int]``, ``decode(ids, skip_special_tokens=True)``,
            ``eos_token_id``.
        prompt: the text to continue; must encode to at least one token.
        max_new_tokens: at most this many tokens are generated.
        temperature, top_k, top_p: see :class:`Sampling` (``temperature=0`` is greedy).
        seed: seeds a generator of this call's own (same seed, same text); None = random.
        use_cache: see :func:`generate_ids`.
        stop: strings (or one string) that end the text: it stops right before the first one,
            even when it spans several tokens.

    Generation ends at the tokenizer's ``eos_token_id`` or after ``max_new_tokens``; past
    ``model.config.max_positions`` the model reads a sliding context (see :func:`generate_ids`).

    Raises:
        ValueError: a bad argument (named, with its value), an empty prompt, or a prompt longer
            than ``max_positions``.
    """
    return "".join(stream_generate(model, tokenizer, prompt, max_new_tokens, temperature, top_k,
                                   top_p, seed, use_cache, stop))


class ChatSession:
    """A conversation with a chat model through its tokenizer's chat template.

    Every turn renders the whole history with ``tokenizer.apply_chat_template`` and continues it,
    so the model sees exactly what a fresh :func:`generate` on that rendering would. The KV cache
    is kept between turns: when the tokens it holds begin the new rendering, only the rest is
    fed; otherwise (e.g. a reply that re-encodes differently) the history is fed again.

    Replies end at an end-of-sequence or any other special token (a chat model ends its turn
    with one), or after ``max_new_tokens``.

    Example::

        chat = ChatSession(model, tokenizer, system="Answer briefly.", temperature=0)
        for piece in chat.send("What is the capital of France?"):
            print(piece, end="")
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        system: str | None = None,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> None:
        _check_max_new_tokens(max_new_tokens)
        self.model, self.tokenizer = model, tokenizer
        self.system = system
        self.max_new_tokens = max_new_tokens
        self.sampling = Sampling(temperature, top_k, top_p)
        # One generator for the whole conversation: each reply draws fresh numbers, and the
        # conversation as a whole is reproducible from its seed.
        self.generator = new_generator(_model_device(model), seed)
        self.end_ids = frozenset({tokenizer.eos_token_id, *tokenizer.special_ids})
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.messages: list[dict[str, str]] = []
        if self.system is not None:
            self.messages.append({"role": "system", "content": self.system})
        self._caches: list[KVCache] | None = None
        self._cached_ids: list[int] = []

    def send(self, text: str) -> Iterator[str]:
        """Add a user message and yield the reply in pieces; the reply joins the history at the end.

        Raises ValueError when the conversation no longer fits in ``max_positions``
        (``reset()`` starts over).
        """
        history = [*self.messages, {"role": "user", "content": text}]
        rendered = self.tokenizer.apply_chat_template(history, add_generation_prompt=True)
        ids = self.tokenizer.encode(rendered)
        steps = min(self.max_new_tokens, _room(self.model, len(ids)))
        return self._reply(history, ids, steps)

    def _reply(self, history: list[dict[str, str]], ids: list[int], steps: int) -> Iterator[str]:
        new_ids = self._reuse_cache(ids, steps)
        tokens = _decode(self.model, new_ids, steps, self.sampling, self.generator, self._caches,
                         self.end_ids)
        reply_ids: list[int] = []
        pieces: list[str] = []
        try:
            for piece in stream_text(self.tokenizer, tokens, received=reply_ids):
                pieces.append(piece)
                yield piece
        finally:
            # Also when the reader stops early (Ctrl-C): the history keeps what was said, and
            # the record of cached tokens stays true to the caches.
            self.messages = [*history, {"role": "assistant", "content": "".join(pieces)}]
            self._cached_ids = (ids + reply_ids)[: self._caches[0].length]

    def _reuse_cache(self, ids: list[int], steps: int) -> list[int]:
        """The ids still to feed: those after the cached ones, or all of them in fresh caches."""
        cached = len(self._cached_ids)
        if (self._caches is not None and cached < len(ids) and ids[:cached] == self._cached_ids
                and self._caches[0].max_len >= len(ids) + steps):
            return ids[cached:]
        # Room for this turn and several more before the caches must grow (and be refilled).
        size = max(2 * (len(ids) + steps), CHAT_MIN_CACHE)
        self._caches = _new_caches(self.model, min(size, self.model.config.max_positions))
        self._cached_ids = []
        return ids
