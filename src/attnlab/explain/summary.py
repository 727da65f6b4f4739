"""The terminal summary of an explanation: the tokens, then where each word looks, in words.

Words, not tokens: a word split into several tokens (``"tired"`` -> ``"ti", "##red"``) is read as
one. Its attention as a *query* is the mean over its pieces (each piece's row sums to 1, so the
mean does too); as a *key* it receives the sum over its pieces (everything that went to any of
its parts). Marker tokens ([CLS], [SEP], ...) are no words; what goes to them is reported apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TOP_TARGETS = 2
ORDINALS = {1: "1st", 2: "2nd", 3: "3rd"}


@dataclass
class Word:
    """One word of the text: its display label and the indexes of its tokens."""

    label: str
    tokens: list[int]


def _piece_text(token: str) -> str:
    """A token's text inside a word: WordPiece continuations lose their ``##``."""
    return token[2:] if token.startswith("##") and len(token) > 2 else token


def shown_token(token: str) -> str:
    """A token as printed: whitespace made visible (``↵``, ``→``, ``␣``), never empty."""
    shown = token.replace("\n", "↵").replace("\t", "→")
    return shown if shown.strip() else shown.replace(" ", "␣") or "∅"


def text_words(tokens: list[str], special: list[bool], word_ids: list[int | None]) -> list[Word]:
    """The words of the text in order; a word that occurs more than once is labelled with its
    occurrence (``"the (2nd)"``) so that every label names one word."""
    pieces: dict[int, list[int]] = {}
    for index, (is_special, word) in enumerate(zip(special, word_ids, strict=True)):
        if not is_special and word is not None:
            pieces.setdefault(word, []).append(index)
    texts = [("".join(_piece_text(tokens[i]) for i in idx), idx) for idx in pieces.values()]
    counts: dict[str, int] = {}
    for text, _ in texts:
        counts[text] = counts.get(text, 0) + 1
    seen: dict[str, int] = {}
    words = []
    for text, idx in texts:
        seen[text] = seen.get(text, 0) + 1
        nth = seen[text]
        label = f"{text} ({ORDINALS.get(nth, f'{nth}th')})" if counts[text] > 1 else text
        words.append(Word(label, idx))
    return words


def word_links(data: dict, layer: int, head: int, top: int = TOP_TARGETS) -> list[dict]:
    """For each word, where its attention goes in head ``(layer, head)``.

    Returns ``[{"word", "targets": [{"word", "weight"}] (up to ``top`` other words, largest
    first, weight > 0), "itself", "markers", "others_allowed"}]``: weights are shares of the word's
    attention (0..1, 4 decimals); ``others_allowed`` is False when the mask leaves the word no
    other word to look at (the first word of a decoder).
    """
    weights = torch.tensor(data["attention"][layer][head], dtype=torch.float64)  # (seq, seq)
    words = text_words(data["tokens"], data["special"], data["word_ids"])
    markers = torch.tensor(data["special"])
    # (words, seq): each word's attention row, the mean over its pieces
    rows = torch.stack([weights[w.tokens].mean(dim=0) for w in words])
    # (words, words): what word a gives word b, summed over b's pieces
    to_word = torch.stack([rows[:, w.tokens].sum(dim=1) for w in words], dim=1)
    links = []
    for a, word in enumerate(words):
        first = min(word.tokens)
        others = [b for b, other in enumerate(words)
                  if b != a and (not data["model"]["causal"] or min(other.tokens) < first)]
        ranked = sorted(others, key=lambda b: (-float(to_word[a, b]), b))[:top]
        links.append({
            "word": word.label,
            "targets": [{"word": words[b].label, "weight": round(float(to_word[a, b]), 4)}
                        for b in ranked if to_word[a, b] > 0],
            "itself": round(float(to_word[a, a]), 4),
            "markers": round(float(rows[a, markers].sum()), 4),
            "others_allowed": bool(others),
        })
    return links


def summary_json(data: dict, page: str | None, pngs: list[str]) -> dict:
    """The machine-readable summary that ``attnlab explain --json`` prints."""
    selected = data["selected"]
    return {
        "text": data["text"],
        "model": data["model"]["name"],
        "tokens": data["tokens"],
        "special": data["special"],
        "layer": selected["layer"],
        "head": selected["head"],
        "reason": selected["reason"],
        "words": word_links(data, selected["layer"], selected["head"]),
        "page": page,
        "pngs": pngs,
    }


def _quoted(label: str) -> str:
    label = shown_token(label)
    return f'"{label}"' if "'" in label else f"'{label}'"


def _link_line(link: dict, has_markers: bool) -> str:
    """``'it' looks most at 'animal' (38%) and 'street' (12%)``; where the rest goes (itself,
    the markers) too when that is more than half of the word's attention."""
    word = _quoted(link["word"])
    rest = f"itself {link['itself']:.0%}" + (f", markers {link['markers']:.0%}" if has_markers else "")
    if not link["others_allowed"]:
        return f"{word} has no earlier word to look at ({rest})"
    shown = [t for t in link["targets"] if round(t["weight"], 2) > 0]
    if not shown:
        return f"{word} hardly looks at other words ({rest})"
    targets = " and ".join(f"{_quoted(t['word'])} ({t['weight']:.0%})" for t in shown)
    if link["itself"] + link["markers"] > 0.5:  # say so, or 'cross (3%)' would read as the main link
        parts = [("the markers", link["markers"])] if has_markers else []
        parts = sorted([*parts, ("itself", link["itself"])], key=lambda p: -p[1])
        mostly = " and ".join(f"{name} ({share:.0%})" for name, share in parts if share >= 0.005)
        return f"{word} looks most at {targets} among other words, but mostly at {mostly}"
    return f"{word} looks most at {targets}"


def _chips(tokens: list[str], special: list[bool]):
    """The tokens as rich ``Text`` chips: a shaded box each, markers dimmed."""
    from rich.text import Text

    chips = Text()
    for token, is_special in zip(tokens, special, strict=True):
        style = "italic grey62 on grey15" if is_special else "on grey30"
        chips.append(f" {shown_token(token)} ", style=style)
        chips.append(" ")
    return chips


def print_summary(data: dict, page: str | None, pngs: list[str], console) -> None:
    """Print the summary to ``console`` (a ``rich.console.Console``): model, token chips, the
    head shown and why, one plain-language line per word, then where the page and PNGs are.

    Paragraphs wrap at the console's width; a word's line and a path are never broken (the
    terminal folds them), so they stay whole when the output is piped or copied."""
    from rich.text import Text

    model = data["model"]
    selected = data["selected"]
    console.print(Text(f"{model['title']}: {model['description']}", style="bold"))
    console.print(Text(f"{len(data['tokens'])} tokens:", style="bold"))
    console.print(_chips(data["tokens"], data["special"]))
    console.print()
    console.print(Text("Head shown: ", style="bold") + Text(selected["reason"]))
    markers = sorted({t for t, s in zip(data["tokens"], data["special"], strict=True) if s})
    rest = "itself" + (f" and to the markers {', '.join(markers)}" if markers else "")
    console.print(Text(
        "Percentages: the share of a word's attention that goes to each other word; "
        f"a word's attention adds up to 100%, the rest goes to the word {rest}.", style="dim"))
    for link in word_links(data, selected["layer"], selected["head"]):
        console.print(Text("  " + _link_line(link, bool(markers))), soft_wrap=True)
    console.print()
    for png in pngs:
        console.print(Text("Heatmap: ") + Text(png, style="cyan"), soft_wrap=True)
    if page is not None:
        console.print(Text("Open the interactive page: ", style="bold") + Text(page, style="cyan"),
                      soft_wrap=True)
