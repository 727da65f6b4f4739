"""What the live explorer's Translate part computes: a translation one token at a time, with the
cross-attention behind every token, for a Transformer translator
(:class:`~attnlab.models.seq2seq.Seq2SeqTransformer`) or the LSTM baseline
(:class:`~attnlab.models.lstm_seq2seq.LSTMSeq2Seq`).

:func:`translation_steps` yields JSON-ready events (shapes in ``docs/serve-api.md``, "Translate")::

    start                     source tokens and ids
    token  (one per token)    the new target token and where it looked: (layers, heads, Ls) for a
                              Transformer, (Ls,) for the LSTM, and the mean alignment row (Ls,)
    end                       every weight of the finished translation and the cost of the run

Greedy decoding is run here step by step (``argmax`` of each step's logits, stopping at EOS or
after ``min(max_positions, 2 * Ls + 10)`` tokens, as :func:`attnlab.train.translate_task.translate`
does), and each token event carries the weights of that very step. Beam search is
:func:`attnlab.models.decoding.beam_search` itself, run to the end in one go: the beams change
their minds until the search ends, so the token events of the *best finished hypothesis* come
after it, with the weights of the teacher-forced re-run below.

The ``end`` data comes from ONE teacher-forced run of (source, final translation) under
:func:`attnlab.attention.record`, the way :func:`attnlab.explain.alignment.alignment_data`
builds its heatmap: row ``t`` of every map is where the decoder looked while writing target token
``t`` (its input was BOS and the tokens before ``t``). For greedy decoding these rows equal the
step-by-step weights of the token events (to float round-off: the cached steps and the full pass
add the same numbers in another order).

Hiding source words (``hide``: source positions) is a what-if:

- Transformer: no attention that reads the source may look at them: the decoder's
  cross-attention *and* the encoder's self-attention (:func:`attnlab.attention.edit` with
  ``modules=`` choosing ``encoder.*`` and ``*.cross_attn``). Hiding them from the cross-attention
  alone would leave the word's meaning in the other source words' encoder states, which read it
  in the encoder; this way the decoder receives nothing of it. The decoder's self-attention
  (over target positions) is not edited.
- LSTM: its one attention, the decoder's, may not look at them (they join the source padding mask
  the attention uses). The bidirectional LSTM encoder has no attention to edit: it still reads
  every word, so neighbouring encoder states still carry some of the hidden one.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack

import torch

from attnlab.attention import edit, record
from attnlab.explain.alignment import token_labels

MAX_BEAM = 8


class TranslationStopped(Exception):
    """Raised inside a beam search when the caller's ``stop()`` turned true (its client left)."""


def _reads_source(name: str, module) -> bool:
    """The attention modules whose keys are source positions: the encoder's and cross-attention."""
    return name.startswith("encoder.") or name.endswith(".cross_attn")


def _is_cross(name: str, module) -> bool:
    return name.endswith(".cross_attn")


def _in_decoder(name: str, module) -> bool:
    return name.startswith("decoder.")


def is_transformer(model) -> bool:
    """Whether ``model`` is an attention translator (else the LSTM baseline)."""
    return hasattr(model, "cross_attention_weights")


def source_ids(model, tokenizer, text: str) -> list[int]:
    """The source ids of ``text`` as :func:`~attnlab.train.translate_task.translate` builds them
    (``encode(text) + [eos]``), refusing rather than truncating: ``ValueError`` (one sentence)
    for a text with no token or more than ``max_positions - 1`` of them."""
    config = model.config
    ids = tokenizer.encode(text)
    if not ids:
        raise ValueError("The text has no tokens the translator knows.")
    if len(ids) > config.max_positions - 1:
        raise ValueError(f"The text is {len(ids)} tokens long; this translator reads at most "
                         f"{config.max_positions - 1} (plus the end token). Shorten it.")
    return [*ids, config.eos_id]


def check_hide(hide: Sequence[int], length: int) -> tuple[int, ...]:
    """``hide`` sorted without repeats; ``ValueError`` for a position outside ``0 .. length - 1``
    or when nothing would be left to look at."""
    hidden = tuple(sorted(set(hide)))
    bad = [p for p in hidden if not 0 <= p < length]
    if bad:
        raise ValueError(f"hide position {bad[0]} is out of range: the source has {length} tokens "
                         f"(positions 0 to {length - 1})")
    if len(hidden) == length:
        raise ValueError("hide leaves no source token to look at; keep at least one")
    return hidden


def target_length(source_length: int, max_positions: int) -> int:
    """The most target tokens a translation may have (EOS counted), as ``translate`` allows."""
    return min(max_positions, 2 * source_length + 10)


class _Transformer:
    """Decoding steps of a :class:`Seq2SeqTransformer`, with source words hidden (see the module
    docstring). Each call opens and closes its own ``edit``/``record`` contexts, so nothing stays
    attached to the model between steps (another request may use the model in between)."""

    def __init__(self, model, hide: tuple[int, ...]) -> None:
        self.model, self.hide = model, hide
        config = model.config
        self.layers, self.heads = config.num_decoder_layers, config.num_heads
        self.encoder_layers = config.num_encoder_layers

    def _hidden(self, stack: ExitStack) -> None:
        if self.hide:
            stack.enter_context(edit(self.model, hide_keys=self.hide, modules=_reads_source))

    @torch.no_grad()
    def start(self, src: torch.Tensor, max_len: int):
        """``src`` ``(1, Ls)`` -> the decoder's start state."""
        with ExitStack() as stack:
            self._hidden(stack)
            return self.model.start_decoding(src, max_len)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, state) -> tuple[torch.Tensor, object, torch.Tensor]:
        """``tokens`` ``(rows,)`` -> logits ``(rows, vocab)``, the new state and the step's
        cross-attention ``(rows, layers, heads, Ls)``."""
        with ExitStack() as stack:
            self._hidden(stack)
            recording = stack.enter_context(record(self.model, modules=_is_cross))
            logits, state = self.model.decode_step(tokens, state)
        # One trace per decoder layer; each (rows, heads, 1, Ls): the one new query.
        rows = torch.stack([trace.attention.weights[:, :, -1] for trace in recording.traces], dim=1)
        return logits, state, rows

    @torch.no_grad()
    def forced(self, src: torch.Tensor, tgt_in: torch.Tensor) -> dict[str, torch.Tensor]:
        """Teacher-forced ``src`` ``(1, Ls)``, ``tgt_in`` ``(1, Lt)``: ``cross`` ``(layers, heads,
        Lt, Ls)``, ``self`` ``(layers, heads, Lt, Lt)`` (zero above the diagonal: the future) and
        ``alignment`` ``(Lt, Ls)``, the last layer's mean over heads."""
        with ExitStack() as stack:
            self._hidden(stack)
            recording = stack.enter_context(record(self.model, modules=_in_decoder))
            padding = self.model.source_padding(src)
            self.model.decode(tgt_in, self.model.encode(src, padding), padding)
        cross = torch.stack([t.attention.weights[0] for t in recording.traces if t.cross]).float()
        own = torch.stack([t.attention.weights[0] for t in recording.traces if not t.cross]).float()
        return {"cross": cross, "self": own, "alignment": cross[-1].mean(dim=0)}

    def scores(self, rows: int, step: int, source: int) -> dict[str, int]:
        """Attention scores (query-key dot products) one decoding step computes for ``rows`` rows
        at target position ``step``: ``step + 1`` cached self-attention keys and every source key,
        in every decoder layer and head."""
        per_row = self.layers * self.heads
        return {"decoder_self": rows * (step + 1) * per_row, "cross": rows * source * per_row}

    def encoder_scores(self, source: int) -> int:
        return source * source * self.encoder_layers * self.heads


class _LSTM:
    """Decoding steps of an :class:`LSTMSeq2Seq`; hidden source words join its padding mask."""

    layers = heads = None

    def __init__(self, model, hide: tuple[int, ...]) -> None:
        self.model, self.hide = model, hide

    @torch.no_grad()
    def start(self, src: torch.Tensor, max_len: int):
        # The hidden words are added after encoding: ``encode``'s mask also sets the packed
        # lengths, which must stay the real ones (the encoder reads every word).
        state = self.model.start_decoding(src, max_len)
        if not self.hide:
            return state
        mask = state.padding_mask.clone()
        mask[:, list(self.hide)] = True
        return dataclasses.replace(state, padding_mask=mask)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, state) -> tuple[torch.Tensor, object, torch.Tensor]:
        """``tokens`` ``(rows,)`` -> logits ``(rows, vocab)``, the new state and the attention
        ``(rows, Ls)``. ``_step`` is ``decode_step`` keeping the weights it computes."""
        return self.model.step_with_attention(tokens, state)

    @torch.no_grad()
    def forced(self, src: torch.Tensor, tgt_in: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """Teacher-forced: ``alignment`` ``(Lt, Ls)``, the attention of every step."""
        state = self.start(src, tgt_in.shape[1])
        rows = []
        for t in range(tgt_in.shape[1]):  # each step needs the state of the one before
            _, state, weights = self.model.step_with_attention(tgt_in[:, t], state)
            rows.append(weights[0])
        return {"cross": None, "self": None, "alignment": torch.stack(rows).float()}

    def scores(self, rows: int, step: int, source: int) -> dict[str, int]:
        """One additive score per source position and row."""
        return {"attention": rows * source}

    def encoder_scores(self, source: int) -> int:
        return 0  # a recurrent encoder: no attention


def _tolist(x: torch.Tensor | None):
    return None if x is None else x.tolist()


def translation_steps(model, tokenizer, text: str, *, beam: int | None = None,
                      length_penalty: float = 1.0, hide: Sequence[int] = (),
                      stop: Callable[[], bool] | None = None) -> Iterator[dict]:
    """Yield the ``start`` event, one ``token`` event per target token, then the ``end`` event
    (see the module docstring and ``docs/serve-api.md``) of translating ``text``.

    ``beam``: None for greedy decoding, else beam search with ``beam`` beams (1 to
    :data:`MAX_BEAM`) and GNMT ``length_penalty``. ``hide``: source positions (0-based, of the
    ``start`` event's tokens, the end token included) hidden from attention. ``stop``: checked
    before every beam-search step; when it returns True the search raises
    :class:`TranslationStopped`. The model is only used inside ``next()``, never across a
    ``yield``, so other work may run on it between events.

    Raises ``ValueError`` (one sentence) before yielding anything for an empty or too long text, a
    bad ``beam`` or ``hide``. The greedy translation equals ``translate(..., greedy=True)``, the
    beam one ``translate(..., beam=beam, length_penalty=length_penalty)``.
    """
    from attnlab.models.decoding import beam_search

    config = model.config
    source = source_ids(model, tokenizer, text)
    hidden = check_hide(hide, len(source))
    if beam is not None and not 1 <= beam <= MAX_BEAM:
        raise ValueError(f"beam must be from 1 to {MAX_BEAM}, got {beam}")
    runner = _Transformer(model, hidden) if is_transformer(model) else _LSTM(model, hidden)
    device = next(model.parameters()).device
    src = torch.tensor([source], device=device)
    max_len = target_length(len(source), config.max_positions)
    counted: dict[str, int] = {}
    elapsed = [0.0]  # seconds of model work; the time between events is not the model's

    def timed(function, *args):
        began = time.perf_counter()
        try:
            return function(*args)
        finally:
            elapsed[0] += time.perf_counter() - began

    def count(rows: int, step: int) -> None:
        for name, value in runner.scores(rows, step, len(source)).items():
            counted[name] = counted.get(name, 0) + value

    def token_event(step: int, token: int, row: torch.Tensor) -> dict:
        row = row.float()
        return {"type": "token", "step": step, "id": token,
                "text": token_labels(tokenizer, [token], config.eos_id)[0],
                "end": token == config.eos_id,
                "cross": _tolist(row) if row.dim() == 3 else None,
                "alignment": (row[-1].mean(dim=0) if row.dim() == 3 else row).tolist()}

    yield {"type": "start", "source_tokens": token_labels(tokenizer, source, config.eos_id),
           "source_ids": source, "hidden": list(hidden),
           "arch": "transformer" if is_transformer(model) else "lstm",
           "decoding": "greedy" if beam is None else "beam", "beam": beam}

    state = timed(runner.start, src, max_len)
    targets: list[int] = []
    if beam is None:
        token = torch.tensor([config.bos_id], device=device)
        for step in range(max_len):
            logits, state, rows = timed(runner.step, token, state)
            count(1, step)
            token = logits.argmax(dim=-1)
            targets.append(int(token[0]))
            yield token_event(step, targets[-1], rows[0])
            if targets[-1] == config.eos_id:
                break
        forced = timed(_forced, runner, src, targets, config)
    else:
        steps = 0

        def step_fn(tokens, state):
            nonlocal steps
            if stop is not None and stop():
                raise TranslationStopped("the translation was stopped")
            count(tokens.shape[0], steps)
            steps += 1
            logits, state, _ = runner.step(tokens, state)
            return logits, state

        (best,) = timed(lambda: beam_search(step_fn, state, config.bos_id, config.eos_id, max_len,
                                            beam_size=beam, length_penalty=length_penalty,
                                            reorder=model.reorder_state, device=device))
        # A finished hypothesis ended with EOS before max_len; one of max_len tokens did not end.
        targets = [*best.tokens, *([config.eos_id] if len(best.tokens) < max_len else [])]
        forced = timed(_forced, runner, src, targets, config)
        # Token events from the re-run: (layers, heads, Lt, Ls) -> one (layers, heads, Ls) per token.
        rows = forced["alignment"] if forced["cross"] is None else forced["cross"].permute(2, 0, 1, 3)
        for step, token in enumerate(targets):
            yield token_event(step, token, rows[step])

    words = [t for t in targets if t != config.eos_id and t < tokenizer.vocab_size]
    scores = {"encoder_self": runner.encoder_scores(len(source)), **counted} if runner.layers else counted
    yield {"type": "end", "arch": "transformer" if runner.layers else "lstm",
           "source_tokens": token_labels(tokenizer, source, config.eos_id), "source_ids": source,
           "target_tokens": token_labels(tokenizer, targets, config.eos_id), "target_ids": targets,
           "translation": tokenizer.decode(words).strip(), "hidden": list(hidden),
           "decoding": "greedy" if beam is None else "beam", "beam": beam,
           "layers": runner.layers, "heads": runner.heads,
           "cross": _tolist(forced["cross"]), "decoder_self": _tolist(forced["self"]),
           "alignment": forced["alignment"].tolist(),
           "cost": {"source_tokens": len(source), "target_tokens": len(targets),
                    "scores": scores, "scores_total": sum(scores.values()),
                    "ms": round(elapsed[0] * 1000, 2)}}


def _forced(runner, src: torch.Tensor, targets: list[int], config) -> dict:
    """The teacher-forced weights of ``targets`` (the decoder input is BOS and ``targets[:-1]``)."""
    tgt_in = torch.tensor([[config.bos_id, *targets[:-1]]], device=src.device)
    return runner.forced(src, tgt_in)


def translate_live(model, tokenizer, text: str, **options) -> dict:
    """The ``end`` event of :func:`translation_steps` (same ``options``), run to the end."""
    *_, end = translation_steps(model, tokenizer, text, **options)
    return end


def compare_translations(original: dict, edited: dict) -> dict:
    """What hiding source words changed: ``original`` and ``edited`` are ``end`` events of the same
    text (without and with ``hide``). Returns ``hidden_words`` (their tokens), ``before`` and
    ``after`` (the translations), ``same`` and ``sentence``, an English summary (the page writes
    its own in the reader's language)."""
    words = [original["source_tokens"][p] for p in edited["hidden"]]
    quoted = ", ".join(f"'{w}'" for w in words)
    same = original["target_ids"] == edited["target_ids"]
    if same:
        sentence = f"Without {quoted}, the translation stays the same: \"{edited['translation']}\"."
    else:
        sentence = (f"Without {quoted}, the translation becomes \"{edited['translation']}\" "
                    f"instead of \"{original['translation']}\".")
    return {"hidden_words": words, "before": original["translation"], "after": edited["translation"],
            "same": same, "sentence": sentence}
