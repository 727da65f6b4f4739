"""Greedy decoding and beam search for any model that predicts one token at a time.

A model takes part through two callables, so a Transformer (state: key/value caches) and an LSTM
(state: hidden and cell tensors) decode the same way:

* ``step_fn(tokens, state) -> (logits, state)``: ``tokens`` ``(rows,)`` long, the latest token of
  every row; ``logits`` ``(rows, vocab)`` scores for the next one (log-softmax is applied here,
  so log-probabilities work too).
* ``reorder(state, indices) -> state`` (beam search only): the state of rows ``indices``
  ``(new_rows,)``, in that order and possibly repeated. For tensors with the batch first that is
  ``index_select(0, indices)``; an LSTM's ``(layers, batch, hidden)`` state selects along dim 1.

``start_state`` is the state before the first step, one row per batch item (e.g. after running the
encoder). Results are token lists after BOS, ending before EOS (EOS itself is not included).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

StepFn = Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]
ReorderFn = Callable[[Any, torch.Tensor], Any]


@dataclass
class Hypothesis:
    """One beam-search result: ``tokens`` (no BOS, no EOS), their summed ``log_prob`` and the
    length-normalised ``score`` that ranked it."""

    tokens: list[int]
    log_prob: float
    score: float


def length_penalty_factor(length: int, alpha: float) -> float:
    """GNMT's length penalty ``((5 + length) / 6) ** alpha`` (Wu et al. 2016): scores are
    ``log_prob / factor``, so ``alpha > 0`` stops beam search favouring short outputs
    (``alpha = 0`` ranks by raw log-probability)."""
    return ((5.0 + length) / 6.0) ** alpha


def _check_args(bos_id: int, eos_id: int, max_len: int) -> None:
    if max_len <= 0:
        raise ValueError(f"max_len must be positive, got max_len={max_len}")
    if bos_id < 0 or eos_id < 0:
        raise ValueError(f"token ids must be non-negative, got bos_id={bos_id}, eos_id={eos_id}")


def _start_tokens(rows: int, bos_id: int, device: torch.device | None) -> torch.Tensor:
    return torch.full((rows,), bos_id, dtype=torch.long, device=device)


@torch.no_grad()
def greedy_decode(
    step_fn: StepFn, start_state: Any, bos_id: int, eos_id: int, max_len: int, *,
    batch_size: int = 1, device: torch.device | str | None = None,
) -> list[list[int]]:
    """The most likely next token at every step, for ``batch_size`` rows at once.

    Each row stops at its first EOS or after ``max_len`` generated tokens (EOS counted); decoding
    ends when every row has stopped. Returns one token list per row (no BOS, no EOS).
    """
    _check_args(bos_id, eos_id, max_len)
    tokens = _start_tokens(batch_size, bos_id, device)
    state = start_state
    outputs: list[list[int]] = [[] for _ in range(batch_size)]
    finished = [False] * batch_size
    for _ in range(max_len):
        logits, state = step_fn(tokens, state)
        tokens = logits.argmax(dim=-1)
        for row, token in enumerate(tokens.tolist()):
            if finished[row]:
                continue
            if token == eos_id:
                finished[row] = True
            else:
                outputs[row].append(token)
        if all(finished):
            break
    return outputs


@torch.no_grad()
def beam_search(
    step_fn: StepFn, start_state: Any, bos_id: int, eos_id: int, max_len: int,
    beam_size: int = 4, length_penalty: float = 1.0, *, reorder: ReorderFn,
    batch_size: int = 1, device: torch.device | str | None = None,
) -> list[Hypothesis]:
    """Beam search with GNMT length normalisation; returns the best :class:`Hypothesis` per row.

    Every step scores ``beam_size`` live beams per row, keeps the ``2 * beam_size`` best
    extensions, moves those that end in EOS (when ranked among the best ``beam_size``, as in
    Hugging Face's implementation, so ``beam_size=1`` with ``length_penalty=0`` is exactly greedy)
    to the row's finished hypotheses and continues with the ``beam_size`` best others. A
    finished hypothesis of ``n`` tokens plus EOS scores ``log_prob / length_penalty_factor(n + 1,
    length_penalty)``. A row stops when no live beam can still beat its best finished score
    (log-probabilities only fall as a beam grows, and for ``length_penalty >= 0`` the factor is at
    most ``length_penalty_factor(max_len)``), so the result is the one full beam search would find.
    Beams alive after ``max_len`` tokens compete unfinished.

    ``start_state`` has ``batch_size`` rows; it is expanded to ``batch_size * beam_size`` rows
    through ``reorder``.
    """
    _check_args(bos_id, eos_id, max_len)
    if beam_size <= 0:
        raise ValueError(f"beam_size must be positive, got beam_size={beam_size}")
    if length_penalty < 0:
        raise ValueError(f"length_penalty must be >= 0, got length_penalty={length_penalty}")
    rows = batch_size * beam_size
    state = reorder(start_state, torch.arange(batch_size, device=device).repeat_interleave(beam_size))
    tokens = _start_tokens(rows, bos_id, device)
    history = torch.empty(rows, 0, dtype=torch.long, device=device)  # generated tokens per beam
    # Only the first beam of each row is live at the start: the others would repeat it.
    beam_log_probs = torch.full((batch_size, beam_size), float("-inf"), device=device)
    beam_log_probs[:, 0] = 0.0
    finished: list[list[Hypothesis]] = [[] for _ in range(batch_size)]
    done = [False] * batch_size
    best_possible_factor = length_penalty_factor(max_len, length_penalty)

    for step in range(max_len):
        logits, state = step_fn(tokens, state)
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        vocab = log_probs.shape[-1]
        totals = beam_log_probs[:, :, None] + log_probs.view(batch_size, beam_size, vocab)
        top_scores, top_ids = totals.view(batch_size, -1).topk(min(2 * beam_size, beam_size * vocab))
        next_scores = beam_log_probs.clone()
        next_tokens = torch.full((batch_size, beam_size), eos_id, dtype=torch.long, device=device)
        origins = torch.arange(rows, device=device).view(batch_size, beam_size).clone()
        for row in range(batch_size):
            if done[row]:
                continue
            kept = 0
            ranked = zip(top_scores[row].tolist(), top_ids[row].tolist(), strict=True)
            for rank, (score, flat) in enumerate(ranked):
                beam, token = divmod(flat, vocab)
                if token == eos_id:
                    if rank < beam_size and score > float("-inf"):
                        prefix = history[row * beam_size + beam].tolist()
                        normalised = score / length_penalty_factor(step + 1, length_penalty)
                        finished[row].append(Hypothesis(prefix, score, normalised))
                    continue
                next_scores[row, kept] = score
                next_tokens[row, kept] = token
                origins[row, kept] = row * beam_size + beam
                kept += 1
                if kept == beam_size:
                    break
            if finished[row]:
                best = max(h.score for h in finished[row])
                done[row] = best >= next_scores[row].max().item() / best_possible_factor
        if all(done):
            break
        origins = origins.view(-1)
        state = reorder(state, origins)
        history = torch.cat([history.index_select(0, origins), next_tokens.view(-1, 1)], dim=1)
        beam_log_probs = next_scores
        tokens = next_tokens.view(-1)

    results = []
    for row in range(batch_size):
        candidates = list(finished[row])
        if not done[row]:
            for beam in range(beam_size):
                log_prob = beam_log_probs[row, beam].item()
                if log_prob > float("-inf"):
                    seq = history[row * beam_size + beam].tolist()
                    factor = length_penalty_factor(len(seq), length_penalty)
                    candidates.append(Hypothesis(seq, log_prob, log_prob / factor))
        results.append(max(candidates, key=lambda h: h.score))
    return results
