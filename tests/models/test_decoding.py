"""Greedy decoding and beam search on hand-made next-token tables whose best answers are known."""

import math

import pytest
import torch

from attnlab.models.decoding import beam_search, greedy_decode, length_penalty_factor

BOS, EOS = 0, 1
VOCAB = 7


def table(transitions: dict[int, dict[int, float]]) -> torch.Tensor:
    """``(VOCAB, VOCAB)`` next-token log-probabilities from ``{token: {next: prob}}``; rows not
    given end the sequence."""
    probs = torch.full((VOCAB, VOCAB), 1e-9)
    probs[:, EOS] = 1.0
    for token, nexts in transitions.items():
        probs[token] = 1e-9
        for nxt, p in nexts.items():
            probs[token, nxt] = p
    return probs.log()


# Greedy takes 2 (p=0.6) then the best of three near-equal continuations: 0.6 * 0.34 = 0.204.
# Starting with 3 (p=0.4) and ending at once is better: 0.4.
GREEDY_TRAP = table({BOS: {2: 0.6, 3: 0.4}, 2: {4: 0.34, 5: 0.33, 6: 0.33}})
# Ending at once (0.52) beats 2, 6, EOS (0.48 * 0.99 = 0.4752) on raw log-probability, but GNMT
# normalisation with alpha=1 divides log(0.52) by 1 and log(0.4752) by (5+3)/6: the long one wins.
SHORT_OR_LONG = table({BOS: {EOS: 0.52, 2: 0.48}, 2: {6: 0.99, EOS: 0.01}})


def markov(tables: torch.Tensor):
    """A step function over ``tables`` ``(n, VOCAB, VOCAB)``: the state is each row's table index."""

    def step(tokens: torch.Tensor, state: torch.Tensor):
        return tables[state, tokens], state

    return step


def reorder(state: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    return state.index_select(0, indices)


def run_beam(tables, state, **kwargs):
    return beam_search(markov(tables), state, BOS, EOS, kwargs.pop("max_len", 6), reorder=reorder,
                       batch_size=len(state), **kwargs)


def test_greedy_falls_into_the_trap_and_beam_avoids_it():
    tables = GREEDY_TRAP[None]
    assert greedy_decode(markov(tables), torch.tensor([0]), BOS, EOS, 6) == [[2, 4]]
    best = run_beam(tables, torch.tensor([0]), beam_size=2, length_penalty=0.0)[0]
    assert best.tokens == [3]
    assert best.log_prob == pytest.approx(math.log(0.4), abs=1e-5)
    assert best.score == pytest.approx(best.log_prob)


def test_length_penalty_changes_the_choice():
    tables = SHORT_OR_LONG[None]
    raw = run_beam(tables, torch.tensor([0]), beam_size=2, length_penalty=0.0)[0]
    assert raw.tokens == []
    normalised = run_beam(tables, torch.tensor([0]), beam_size=2, length_penalty=1.0)[0]
    assert normalised.tokens == [2, 6]
    expected = math.log(0.48 * 0.99) / length_penalty_factor(3, 1.0)
    assert normalised.score == pytest.approx(expected, abs=1e-5)
    assert length_penalty_factor(3, 1.0) == pytest.approx(8 / 6)


def test_beam_size_one_is_greedy():
    torch.manual_seed(0)
    tables = torch.log_softmax(torch.randn(5, VOCAB, VOCAB) * 2, dim=-1)
    state = torch.arange(5)
    greedy = greedy_decode(markov(tables), state, BOS, EOS, 8, batch_size=5)
    beams = run_beam(tables, state, beam_size=1, length_penalty=0.0, max_len=8)
    assert [h.tokens for h in beams] == greedy
    assert any(len(tokens) > 1 for tokens in greedy)  # the tables do produce real sequences


def test_batched_rows_decode_independently():
    tables = torch.stack([GREEDY_TRAP, SHORT_OR_LONG])
    both = run_beam(tables, torch.tensor([0, 1]), beam_size=3, length_penalty=1.0)
    alone = [run_beam(tables, torch.tensor([i]), beam_size=3, length_penalty=1.0)[0] for i in (0, 1)]
    assert [h.tokens for h in both] == [h.tokens for h in alone] == [[3], [2, 6]]
    assert greedy_decode(markov(tables), torch.tensor([0, 1]), BOS, EOS, 6, batch_size=2) == [[2, 4], []]


def test_max_len_cuts_unfinished_sequences():
    loop = table({BOS: {2: 1.0}, 2: {2: 1.0}})[None]  # never ends
    assert greedy_decode(markov(loop), torch.tensor([0]), BOS, EOS, 4) == [[2, 2, 2, 2]]
    assert run_beam(loop, torch.tensor([0]), beam_size=2, max_len=4)[0].tokens == [2, 2, 2, 2]


@pytest.mark.parametrize("kwargs, message", [
    ({"beam_size": 0}, "beam_size must be positive, got beam_size=0"),
    ({"length_penalty": -1.0}, "length_penalty must be >= 0, got length_penalty=-1.0"),
    ({"max_len": 0}, "max_len must be positive, got max_len=0"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        run_beam(GREEDY_TRAP[None], torch.tensor([0]), **kwargs)
