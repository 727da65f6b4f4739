"""Which attention head to show first: the one that most clearly links words to other words.

Many heads do something dull but useful: each word looks at itself, or parks its attention on a
marker token ([CLS]/[SEP] in BERT, the first token in a decoder), or (in a decoder) simply looks
at the token just before it. A newcomer learns more from a head where words look at *other*
words, and at a few of them rather than at all of them evenly. So, for every head::

    for each real word token i (not a marker) that has at least one "other word" j to look at:
        other_i = share of i's attention on other words j
                  (not its own pieces, not markers; in a decoder also not the previous token
                   and not the first token)
        focus_i = 1 - entropy(that share, renormalised) / log(number of such j)   (1 = one word)
    spread = 1 - (the largest share one key j gets, averaged over the i)  (0 = all look at one j)
    positional = the largest share one fixed offset j - i gets, averaged over the i
                 (1 = every word looks, say, two words ahead: position, not meaning)
    score = mean over i of (other_i * focus_i), times spread, times (1 - positional)

and the head with the highest score wins (the lowest layer, then head, on a tie).
"""

from __future__ import annotations

import torch


def head_scores(attention: torch.Tensor, special: list[bool], word_ids: list[int | None],
                causal: bool) -> torch.Tensor:
    """``(layers, heads)`` informativeness scores in [0, 1] (see the module docstring).

    ``attention`` is ``(layers, heads, seq, seq)`` softmax weights (rows = queries). All zero
    when no token has another word to look at (a one-word text).
    """
    seq = attention.shape[-1]
    if len(special) != seq or len(word_ids) != seq:
        raise ValueError(f"special ({len(special)}) and word_ids ({len(word_ids)}) must have one "
                         f"entry per token of attention (seq={seq})")
    real = torch.tensor([not s and w is not None for s, w in zip(special, word_ids, strict=True)])
    words = torch.tensor([-1 if w is None else w for w in word_ids])
    # (seq, seq): may query i's attention on key j count as looking at another word?
    other_word = real[:, None] & real[None, :] & (words[:, None] != words[None, :])
    position = torch.arange(seq)
    # "previous/next token" heads follow positions, not meaning
    other_word &= (position[None, :] - position[:, None]).abs() != 1
    if causal:
        other_word &= position[None, :] < position[:, None]  # the future is masked anyway
        other_word[:, 0] = False  # decoders park spare attention on the first token
    rows = other_word.any(dim=-1)  # (seq,) queries that have someone else to look at
    if not rows.any():
        return torch.zeros(attention.shape[:2])

    weights = attention[..., rows, :].double() * other_word[rows]  # (layers, heads, rows, seq)
    other = weights.sum(dim=-1)  # (layers, heads, rows)
    share = weights / other.clamp(min=1e-12)[..., None]
    entropy = -(share * torch.log(share.clamp(min=1e-12))).sum(dim=-1)
    choices = other_word[rows].sum(dim=-1).double()  # (rows,) how many other words each may see
    # With a single word to look at, the attention is as focused as it can be.
    focus = torch.where(choices > 1, 1 - entropy / torch.log(choices.clamp(min=2)), 1.0)
    # A head that sends every word to the same one word (often the final ".") is a sink, not a
    # link: discount by the largest share any single key gets, averaged over the queries.
    spread = 1 - share.mean(dim=-2).amax(dim=-1)  # (layers, heads)
    # A head where every word looks "two words ahead" follows positions, not meaning: discount
    # by the largest share that one fixed offset (key position - query position) gets.
    offset = (position[None, :] - position[rows][:, None]) + seq  # (rows, seq), all >= 1
    by_offset = torch.zeros(*share.shape[:2], 2 * seq + 1, dtype=share.dtype)
    by_offset.scatter_add_(-1, offset.flatten().expand(*share.shape[:2], -1), share.flatten(-2))
    positional = by_offset.amax(dim=-1) / share.shape[-2]  # (layers, heads)
    return ((other * focus).mean(dim=-1) * spread * (1 - positional)).float()


def choose_head(attention: torch.Tensor, special: list[bool], word_ids: list[int | None],
                causal: bool, *, layer: int | None = None) -> tuple[int, int, str]:
    """``(layer, head, reason)``: the most informative head (see the module docstring), 0-based.

    ``attention`` is ``(layers, heads, seq, seq)``; ``special`` marks marker tokens and
    ``word_ids`` maps tokens to words (None for markers). With ``layer`` only that layer's heads
    compete. ``reason`` says in plain words why this head was chosen. Deterministic.
    """
    layers, heads = attention.shape[:2]
    scores = head_scores(attention, special, word_ids, causal)
    if layer is not None:
        scores = scores[layer : layer + 1]
    first = 0 if layer is None else layer
    if not scores.any():
        if len({w for w in word_ids if w is not None}) <= 1:
            why = "the text has a single word, so no head can look from one word to another"
        else:
            why = "no head links words to other words more clearly than the others"
        return first, 0, f"layer {first}, head 0: {why}"
    best = int(torch.argmax(scores.flatten()))  # the first maximum: lowest layer, then head
    chosen_layer, chosen_head = first + best // heads, best % heads
    among = f"of all {layers * heads} heads" if layer is None else f"of the {heads} heads in layer {layer}"
    elsewhere = ("itself, the token just before it or the first token (where a decoder parks "
                 "spare attention)" if causal else "itself or on the sentence markers")
    return chosen_layer, chosen_head, (
        f"layer {chosen_layer}, head {chosen_head}: {among}, this one spends the most attention "
        f"on other words rather than on {elsewhere}, and each word picks a few words of its own "
        "(not simply the word a fixed number of places away)"
    )
