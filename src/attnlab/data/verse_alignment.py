"""Find the verses that the KJV and the Reina-Valera 1909 modules number differently.

Both SWORD modules use the KJV's verse slots, but the Reina-Valera follows the Hebrew numbering in
a few chapters: its Jonah 2:1 ("MAS Jehová había prevenido un gran pez...") is the KJV's Jonah
1:17, so the Spanish of every later verse of Jonah 2 sits one slot late and the chapter's last two
verses share the last slot. Pairing slot *i* with slot *i* there pairs a verse with its neighbour.

:func:`find_realignments` aligns the two texts book by book with a dynamic programme over "beads"
(1-1, 1-0, 0-1, and *k*-1 or 1-*k* verses for *k* up to 10), in the manner of Gale & Church (1993,
"A program for aligning sentences in bilingual corpora"), with two costs added up per bead:

- **length**: the Spanish of a bead should be about 0.92 times as long as its English (the median
  over all slots), with the spread measured over all slots;
- **words**: a lexicon learned from the slot pairs themselves (each English word's Spanish words
  by Dice coefficient over the verses, and back) says which words of one side should find a
  translation on the other; every word that finds none costs the same, so a shifted verse, which
  shares only "and" and "the" with its wrong partner, costs far more than the true pair.

Every bead that is not "slot *i* with slot *i*" is a realignment. The result was read verse by
verse and is stored as ``bible_realignment.json`` beside this module, which
:func:`attnlab.data.bible.verse_pairs` applies (finding them again takes a minute;
``scripts/realign_verses.py`` does it and writes the file).
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from dataclasses import dataclass

_WORD = re.compile(r"\w+")

# Cost of a bead's type, beside its length and word costs: anything but 1-1 needs evidence. The
# Spanish module puts the verses that overflow a KJV chapter into the chapter's last slot (Job
# 39:30 holds nine verses), so a chapter's last slot may pair with up to MAX_MERGED verses; any
# other slot with one or two.
MAX_MERGED = 10
BEAD_COST = {(1, 1): 0.0, (1, 0): 8.0, (0, 1): 8.0} | {
    shape: 6.0 + (k - 2) for k in range(2, MAX_MERGED + 1) for shape in ((k, 1), (1, k))
}
WORD_MISS_COST = 1.0
# A psalm heading that is verse text in one module and a title in the other makes a verse several
# times longer; uncapped, the length cost of such a true pair would outweigh all the word evidence.
MAX_LENGTH_COST = 8.0
BAND = 12  # a bead may pair slots at most this far apart: the largest shift seen is 5


@dataclass(frozen=True)
class Bead:
    """English slots paired with Spanish slots (indices into the modules' verse slots)."""

    english: tuple[int, ...]
    spanish: tuple[int, ...]


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def learn_lexicon(
    pairs: list[tuple[set[str], set[str]]], min_count: int = 3, min_dice: float = 0.25
) -> tuple[dict[str, frozenset[str]], dict[str, frozenset[str]]]:
    """English→Spanish and Spanish→English word associations by Dice coefficient over ``pairs``.

    ``pairs`` are the word sets of verses assumed aligned (nearly all of them are); a word keeps
    every partner whose Dice coefficient 2·both / (count_en + count_es) is at least ``min_dice``.
    """
    en_count: Counter[str] = Counter()
    es_count: Counter[str] = Counter()
    both: Counter[tuple[str, str]] = Counter()
    for en, es in pairs:
        en_count.update(en)
        es_count.update(es)
    for en, es in pairs:
        en = [word for word in en if en_count[word] >= min_count]
        es = [word for word in es if es_count[word] >= min_count]
        both.update((e, s) for e in en for s in es)
    en_to_es: dict[str, set[str]] = {}
    es_to_en: dict[str, set[str]] = {}
    for (e, s), count in both.items():
        if count >= min_count and 2 * count / (en_count[e] + es_count[s]) >= min_dice:
            en_to_es.setdefault(e, set()).add(s)
            es_to_en.setdefault(s, set()).add(e)
    return (
        {word: frozenset(partners) for word, partners in en_to_es.items()},
        {word: frozenset(partners) for word, partners in es_to_en.items()},
    )


class _Costs:
    """Bead costs over one book's English and Spanish verses (word sets and lengths)."""

    def __init__(self, en: list[str], es: list[str], lexicon, ratio: float, spread: float):
        self.en_words = [_words(text) for text in en]
        self.es_words = [_words(text) for text in es]
        self.en_length = [len(text) for text in en]
        self.es_length = [len(text) for text in es]
        self.en_to_es, self.es_to_en = lexicon
        self.ratio, self.spread = ratio, spread

    def _misses(self, verses, other: set[str], lexicon) -> int:
        return sum(1 for words in verses for word in words if word in lexicon and not lexicon[word] & other)

    def __call__(self, en: range, es: range) -> float:
        en_words = [self.en_words[i] for i in en]
        es_words = [self.es_words[j] for j in es]
        en_all = set().union(*en_words)
        es_all = set().union(*es_words)
        misses = self._misses(en_words, es_all, self.en_to_es) + self._misses(es_words, en_all, self.es_to_en)
        en_length = sum(self.en_length[i] for i in en)
        es_length = sum(self.es_length[j] for j in es)
        length_cost = 0.0
        if en_length and es_length:
            # Gale & Church: the length difference, scaled by the spread, is about normal.
            mean = (en_length + es_length / self.ratio) / 2
            delta = (es_length - self.ratio * en_length) / math.sqrt(mean * self.spread)
            length_cost = min(-math.log(max(math.erfc(abs(delta) / math.sqrt(2)), 1e-300)), MAX_LENGTH_COST)
        return BEAD_COST[(len(en), len(es))] + length_cost + WORD_MISS_COST * misses


def align(
    en_slots: list[int],
    es_slots: list[int],
    costs: _Costs,
    last_slots: set[int] = frozenset(),
    band: int = BAND,
) -> list[Bead]:
    """The cheapest bead sequence over one book (``*_slots``: the slot index of each verse).

    Beads of three or more verses against one are tried only where the one is in
    ``last_slots`` (the last verse slot of a chapter).
    """
    cost: dict[tuple[int, int], float] = {(0, 0): 0.0}
    back: dict[tuple[int, int], tuple[int, int]] = {}
    n, m = len(en_slots), len(es_slots)
    start = 0
    for i in range(n + 1):
        # Spanish verses j whose slot lies within ``band`` slots of English verse i's.
        anchor = en_slots[min(i, n - 1)] if n else 0
        while start < m and es_slots[start] < anchor - band:
            start += 1
        j = start
        while j <= m and (j == m or es_slots[j] <= anchor + band):
            if (i, j) != (0, 0):
                best, step = math.inf, None
                for a, b in BEAD_COST:
                    previous = cost.get((i - a, j - b))
                    if previous is None:
                        continue
                    if a > 2 and es_slots[j - 1] not in last_slots:
                        continue
                    if b > 2 and en_slots[i - 1] not in last_slots:
                        continue
                    total = previous + costs(range(i - a, i), range(j - b, j))
                    if total < best:
                        best, step = total, (a, b)
                if step is not None:
                    cost[(i, j)], back[(i, j)] = best, step
            if j == m:
                break
            j += 1
    if (n, m) not in cost:
        raise ValueError("the band is too narrow for this book")
    beads = []
    i, j = n, m
    while (i, j) != (0, 0):
        a, b = back[(i, j)]
        beads.append(Bead(tuple(en_slots[i - a : i]), tuple(es_slots[j - b : j])))
        i, j = i - a, j - b
    return beads[::-1]


def find_realignments(
    references: list[tuple[str, int, int] | None], english: list[str], spanish: list[str]
) -> list[Bead]:
    """Every bead that differs from "slot *i* with slot *i*", over all books, in slot order.

    ``references`` gives each slot's (book, chapter, verse), None for heading slots; ``english`` and
    ``spanish`` the cleaned text of every slot (``""`` where a module leaves it empty).
    """
    same = [i for i, reference in enumerate(references) if reference and english[i] and spanish[i]]
    ratios = [len(spanish[i]) / len(english[i]) for i in same]
    ratio = statistics.median(ratios)
    # The median of a chi-square with one degree of freedom is 0.455: a spread robust to outliers.
    spread = (
        statistics.median((len(spanish[i]) - ratio * len(english[i])) ** 2 / len(english[i]) for i in same)
        / 0.455
    )
    lexicon = learn_lexicon([(_words(english[i]), _words(spanish[i])) for i in same])
    books: dict[str, tuple[list[int], list[int]]] = {}
    for i, reference in enumerate(references):
        if reference is None:
            continue
        en_slots, es_slots = books.setdefault(reference[0], ([], []))
        if english[i]:
            en_slots.append(i)
        if spanish[i]:
            es_slots.append(i)
    last_slots = {
        i
        for i, reference in enumerate(references)
        if reference
        and (i + 1 == len(references) or references[i + 1] is None or references[i + 1][:2] != reference[:2])
    }
    changed = []
    for en_slots, es_slots in books.values():
        costs = _Costs([english[i] for i in en_slots], [spanish[j] for j in es_slots], lexicon, ratio, spread)
        for bead in align(en_slots, es_slots, costs, last_slots):
            if not (len(bead.english) == len(bead.spanish) == 1 and bead.english == bead.spanish):
                changed.append(bead)
    return changed
