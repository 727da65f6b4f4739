"""English–Spanish verse pairs from two public-domain Bibles: KJV (1769 text) and Reina-Valera 1909.

Debian ``sword-text-kjv`` and ``sword-text-sparv`` install the two SWORD modules in "zText" form
under ``/usr/share/sword/modules/texts/ztext/``. Each module holds ``ot.*`` and ``nt.*`` files
(Old and New Testament); all integers are little-endian:

- ``X.bzs`` — one 12-byte record per compressed block: uint32 offset into ``X.bzz``, uint32
  compressed size, uint32 uncompressed size;
- ``X.bzz`` — the zlib-compressed blocks, one after another;
- ``X.bzv`` — one 10-byte record per verse slot: uint32 block index, uint32 offset inside the
  decompressed block, uint16 size (0 = empty slot).

Both modules use the KJV's verse slots, so slot *i* of one is slot *i* of the other. The slots
are not only verses: each testament file starts with two heading slots (module, testament), each
book with a book heading slot and each chapter with a chapter heading slot. The KJV module marks
every chapter heading slot with ``<chapter ... sID="Gen.1"/>``; :func:`verse_pairs` reads the
chapter and verse numbers off those markers and checks them against the book list below.
31,084 slots hold a verse on both sides (of 31,102 KJV verses; the rest are empty in one module).

In 22 chapters the Reina-Valera numbers its verses as the Hebrew Bible does, not as the KJV:
its Jonah 2:1 is the KJV's Jonah 1:17, so each later verse of Jonah 2 sits in the slot after its
English, and the verses that overflow a KJV chapter share its last slot. ``bible_realignment.json``
lists those places as English verses paired with Spanish slots (193 groups, found by
:mod:`attnlab.data.verse_alignment` and read by us); :func:`verse_pairs` pairs them so, joining
the verses of a group (``VersePair.verses`` counts the English verses joined) and dropping none.
Slot-by-slot pairing there gave 197 pairs of wrong partners (0.6 % of 31,084); realigned, the
whole text has 31,080 pairs.

Verse text is UTF-8 OSIS XML. :func:`clean_verse` drops notes and titles with their content
(cross-references and psalm headings are not the verse), keeps the words inside every other tag,
unescapes entities, drops the KJV's paragraph marks "¶" and collapses whitespace. Some psalm
headings are plain text in the Reina-Valera (Psalm 3:1 starts "Salmo de David, ...") but a
``<title>`` in the KJV, so those Spanish verses carry a few extra words.

:func:`split_pairs` holds out whole books, never random verses, so the test set is text whose
names, phrasing and subject the model has not memorised. :data:`HELD_OUT_BOOKS` (1,619 pairs,
5.2 %; Jonah's realigned) mixes narrative and poetry, Old and New Testament:

- Ruth, Jonah — Old Testament narrative;
- Ecclesiastes, Lamentations — Old Testament wisdom and poetry;
- Mark — a gospel (New Testament narrative);
- Romans — a letter.

:data:`VALIDATION_BOOKS` (Esther, Joel, Philippians, James; 452 pairs, 1.5 %) is as mixed but
small. Everything else is training text.
"""

from __future__ import annotations

import html
import json
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from attnlab.errors import AttnlabError

ZTEXT_ROOT = Path("/usr/share/sword/modules/texts/ztext")
REALIGNMENT = Path(__file__).with_name("bible_realignment.json")
MODULES = {"en": ZTEXT_ROOT / "engKJV2006eb", "es": ZTEXT_ROOT / "spaRV1909eb"}
INSTALL_HINT = "run: apt-get install -y sword-text-kjv sword-text-sparv"
TESTAMENTS = ("ot", "nt")

# (OSIS id, English name) of the 66 books in KJV order; the first 39 are the Old Testament.
# fmt: off
BOOKS: tuple[tuple[str, str], ...] = (
    ("Gen", "Genesis"), ("Exod", "Exodus"), ("Lev", "Leviticus"), ("Num", "Numbers"),
    ("Deut", "Deuteronomy"), ("Josh", "Joshua"), ("Judg", "Judges"), ("Ruth", "Ruth"),
    ("1Sam", "1 Samuel"), ("2Sam", "2 Samuel"), ("1Kgs", "1 Kings"), ("2Kgs", "2 Kings"),
    ("1Chr", "1 Chronicles"), ("2Chr", "2 Chronicles"), ("Ezra", "Ezra"), ("Neh", "Nehemiah"),
    ("Esth", "Esther"), ("Job", "Job"), ("Ps", "Psalms"), ("Prov", "Proverbs"),
    ("Eccl", "Ecclesiastes"), ("Song", "Song of Solomon"), ("Isa", "Isaiah"), ("Jer", "Jeremiah"),
    ("Lam", "Lamentations"), ("Ezek", "Ezekiel"), ("Dan", "Daniel"), ("Hos", "Hosea"),
    ("Joel", "Joel"), ("Amos", "Amos"), ("Obad", "Obadiah"), ("Jonah", "Jonah"), ("Mic", "Micah"),
    ("Nah", "Nahum"), ("Hab", "Habakkuk"), ("Zeph", "Zephaniah"), ("Hag", "Haggai"),
    ("Zech", "Zechariah"), ("Mal", "Malachi"),
    ("Matt", "Matthew"), ("Mark", "Mark"), ("Luke", "Luke"), ("John", "John"), ("Acts", "Acts"),
    ("Rom", "Romans"), ("1Cor", "1 Corinthians"), ("2Cor", "2 Corinthians"), ("Gal", "Galatians"),
    ("Eph", "Ephesians"), ("Phil", "Philippians"), ("Col", "Colossians"),
    ("1Thess", "1 Thessalonians"), ("2Thess", "2 Thessalonians"), ("1Tim", "1 Timothy"),
    ("2Tim", "2 Timothy"), ("Titus", "Titus"), ("Phlm", "Philemon"), ("Heb", "Hebrews"),
    ("Jas", "James"), ("1Pet", "1 Peter"), ("2Pet", "2 Peter"), ("1John", "1 John"),
    ("2John", "2 John"), ("3John", "3 John"), ("Jude", "Jude"), ("Rev", "Revelation"),
)
# fmt: on
OLD_TESTAMENT_BOOKS = 39

HELD_OUT_BOOKS: tuple[str, ...] = ("Ruth", "Ecclesiastes", "Lamentations", "Jonah", "Mark", "Romans")
VALIDATION_BOOKS: tuple[str, ...] = ("Esther", "Joel", "Philippians", "James")

_BLOCK = struct.Struct("<III")  # offset in .bzz, compressed size, uncompressed size
_SLOT = struct.Struct("<IIH")  # block index, offset in the decompressed block, size

_DROPPED = re.compile(r"<(note|title)\b[^>]*/>|<(note|title)\b[^>]*>.*?</\2\s*>", flags=re.DOTALL)
_EMPTY_TAG = re.compile(r"<[^>]*/>")
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")
_CHAPTER_START = re.compile(r'<chapter\b[^>]*\bsID="([^".]+)\.(\d+)"')


class BibleDataError(AttnlabError, RuntimeError):
    """A SWORD module folder is missing, incomplete or does not parse."""


@dataclass(frozen=True)
class VersePair:
    """One verse in both languages; ``book`` is the English book name (``"1 Samuel"``).

    ``verses`` is how many consecutive English verses, from ``chapter:verse`` on, the pair joins:
    1 but where the Reina-Valera holds several KJV verses in one slot (see the module notes).
    """

    book: str
    chapter: int
    verse: int
    en: str
    es: str
    verses: int = 1


def clean_verse(raw: str) -> str:
    """Plain text of one OSIS verse: no notes, titles, tags, entities, "¶" or repeated whitespace."""
    # Empty elements (<lb/>, <div sID=.../>, <milestone/>) mark breaks, so they become a space;
    # the tags of paired elements (<w>word</w>) sit inside the running text and vanish.
    text = _TAG.sub("", _EMPTY_TAG.sub(" ", _DROPPED.sub(" ", raw)))
    text = html.unescape(text).replace("¶", " ")
    return _SPACE.sub(" ", text).strip()


def _read_file(path: Path) -> bytes:
    if not path.is_file():
        raise BibleDataError(f"SWORD module file {path} is missing; {INSTALL_HINT}")
    return path.read_bytes()


def _records(path: Path, layout: struct.Struct) -> list[tuple[int, ...]]:
    data = _read_file(path)
    if len(data) % layout.size:
        raise BibleDataError(
            f"SWORD index {path} is truncated: {len(data)} bytes is not a whole number of "
            f"{layout.size}-byte records; {INSTALL_HINT}"
        )
    return list(layout.iter_unpack(data))


def _read_testament(folder: Path, testament: str) -> list[str]:
    """Raw OSIS text of every verse slot of ``testament`` (``"ot"`` or ``"nt"``), ``""`` if empty."""
    block_path, slot_path, compressed_path = (
        folder / f"{testament}.{suffix}" for suffix in ("bzs", "bzv", "bzz")
    )
    blocks = _records(block_path, _BLOCK)
    slots = _records(slot_path, _SLOT)
    compressed = _read_file(compressed_path)
    decompressed: dict[int, bytes] = {}  # many consecutive verses share one block
    verses = []
    for index, (block, offset, size) in enumerate(slots):
        if size == 0:
            verses.append("")
            continue
        if block not in decompressed:
            if block >= len(blocks):
                raise BibleDataError(
                    f"{slot_path} slot {index} names block {block}, but {block_path} has only "
                    f"{len(blocks)}; {INSTALL_HINT}"
                )
            start, length, _ = blocks[block]
            try:
                decompressed[block] = zlib.decompress(compressed[start : start + length])
            except zlib.error as error:
                raise BibleDataError(
                    f"{compressed_path} block {block} does not decompress ({error}); {INSTALL_HINT}"
                ) from error
        text = decompressed[block][offset : offset + size]
        if len(text) != size:
            raise BibleDataError(
                f"{slot_path} slot {index} runs past the end of block {block}; {INSTALL_HINT}"
            )
        verses.append(text.decode("utf-8"))
    return verses


def read_module(folder: str | Path) -> list[str]:
    """Raw OSIS text of every verse slot of a zText module, Old then New Testament (``""`` = empty).

    Raises :class:`BibleDataError` naming the folder or file when the module is missing or broken.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BibleDataError(f"SWORD module folder {folder} does not exist; {INSTALL_HINT}")
    return [verse for testament in TESTAMENTS for verse in _read_testament(folder, testament)]


def _verse_references(kjv: list[str]) -> list[tuple[str, int, int] | None]:
    """(book, chapter, verse) of every slot of the KJV module, None for heading slots.

    Finds the chapter heading slots by their ``<chapter sID>`` markers and checks that they come in
    book order with chapters 1, 2, ...; the verses of a chapter are the slots up to the next chapter
    heading, less the book heading slot (and the two testament heading slots) in between.
    """
    headings = [
        (index, match.group(1), int(match.group(2)))
        for index, raw in enumerate(kjv)
        for match in _CHAPTER_START.finditer(raw)
    ]
    expected = []
    for osis, _ in BOOKS:
        chapters = [chapter for _, book, chapter in headings if book == osis]
        expected.extend((osis, chapter) for chapter in range(1, len(chapters) + 1))
    if [(book, chapter) for _, book, chapter in headings] != expected or not expected:
        raise BibleDataError(
            "the KJV chapter markers do not follow the 66 books in order, chapters 1, 2, ..."
        )
    names = dict(BOOKS)
    references: list[tuple[str, int, int] | None] = [None] * len(kjv)
    following = [(index, book) for index, book, _ in headings[1:]] + [(len(kjv), None)]
    for (start, osis, chapter), (end, following_osis) in zip(headings, following, strict=True):
        if following_osis is not None and following_osis != osis:
            # A new book: its heading slot, and at the testament change two more (module, testament).
            end -= 1 if following_osis != BOOKS[OLD_TESTAMENT_BOOKS][0] else 3
        for verse, index in enumerate(range(start + 1, end), start=1):
            references[index] = (names[osis], chapter, verse)
    return references


def read_realignment(
    references: list[tuple[str, int, int] | None], path: Path | None = None
) -> list[tuple[list[int], list[int]]]:
    """The realigned groups of ``path`` (:data:`REALIGNMENT`) as (English slots, Spanish slots),
    checked against the text.

    Raises :class:`BibleDataError` where a group names a verse the KJV module lacks or the groups
    overlap: the modules installed are not the ones the file was made from.
    """
    path = REALIGNMENT if path is None else path
    slot_of = {reference: index for index, reference in enumerate(references) if reference}
    groups, seen = [], set()
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        for entry in entries:
            slots = tuple(
                [slot_of[(book, chapter, verse)] for book, chapter, verse in entry[side]]
                for side in ("en", "es")
            )
            for side, side_slots in zip(("en", "es"), slots, strict=True):
                if seen & {(side, slot) for slot in side_slots}:
                    raise ValueError(f"{entry} overlaps an earlier group")
                seen |= {(side, slot) for slot in side_slots}
            groups.append(slots)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BibleDataError(
            f"{path} does not fit the installed SWORD modules ({error!r}); reinstall attnlab"
        ) from error
    return groups


def verse_pairs() -> list[VersePair]:
    """Every verse in both the KJV and the Reina-Valera 1909, in English order.

    Slot *i* of one module pairs with slot *i* of the other, except in the groups of
    :data:`REALIGNMENT`, where the English verses of a group pair with its Spanish slots.
    """
    english = read_module(MODULES["en"])
    spanish = read_module(MODULES["es"])
    if len(english) != len(spanish):
        raise BibleDataError(
            f"{MODULES['en']} has {len(english)} verse slots but {MODULES['es']} has {len(spanish)}"
        )
    references = _verse_references(english)
    groups = read_realignment(references)
    regrouped = {slot for en_slots, es_slots in groups for slot in en_slots + es_slots}
    group_at = {en_slots[0]: (en_slots, es_slots) for en_slots, es_slots in groups if en_slots}
    pairs = []
    for index, reference in enumerate(references):
        if reference is None:
            continue
        if index in group_at:
            en_slots, es_slots = group_at[index]
            en = " ".join(clean_verse(english[slot]) for slot in en_slots)
            es = " ".join(clean_verse(spanish[slot]) for slot in es_slots)
            verses = len(en_slots)
        elif index in regrouped:
            continue
        else:
            en, es, verses = clean_verse(english[index]), clean_verse(spanish[index]), 1
        if en and es:
            pairs.append(VersePair(*reference, en=en, es=es, verses=verses))
    return pairs


def split_pairs(pairs: list[VersePair]) -> tuple[list[VersePair], list[VersePair], list[VersePair]]:
    """(train, validation, test) by whole books: test is :data:`HELD_OUT_BOOKS`, validation
    :data:`VALIDATION_BOOKS`, train the rest; each keeps the order of ``pairs``."""
    train = [pair for pair in pairs if pair.book not in HELD_OUT_BOOKS + VALIDATION_BOOKS]
    validation = [pair for pair in pairs if pair.book in VALIDATION_BOOKS]
    test = [pair for pair in pairs if pair.book in HELD_OUT_BOOKS]
    return train, validation, test
