import re
import struct
import zlib
from pathlib import Path

import pytest

from attnlab.data.bible import (
    HELD_OUT_BOOKS,
    VALIDATION_BOOKS,
    BibleDataError,
    VersePair,
    clean_verse,
    read_module,
    split_pairs,
    verse_pairs,
)

INSTALL = "apt-get install -y sword-text-kjv sword-text-sparv"


def write_ztext(folder: Path, testament: str, blocks: list[list[str]]) -> None:
    """A zText testament: each inner list is one zlib block of verse slots ("" = empty slot)."""
    folder.mkdir(parents=True, exist_ok=True)
    bzs, bzz, bzv = b"", b"", b""
    for block_index, verses in enumerate(blocks):
        raw = b""
        for verse in verses:
            data = verse.encode("utf-8")
            bzv += struct.pack("<IIH", block_index, len(raw) if data else 0, len(data))
            raw += data
        compressed = zlib.compress(raw)
        bzs += struct.pack("<III", len(bzz), len(compressed), len(raw))
        bzz += compressed
    (folder / f"{testament}.bzs").write_bytes(bzs)
    (folder / f"{testament}.bzz").write_bytes(bzz)
    (folder / f"{testament}.bzv").write_bytes(bzv)


OT_BLOCKS = [["", "<milestone/>", "Génesis ¶ uno", "dos"], ["", "tres &amp; <w>cuatro</w>"]]
NT_BLOCKS = [["", "", "cinco"]]


@pytest.fixture
def tiny_module(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny"
    write_ztext(folder, "ot", OT_BLOCKS)
    write_ztext(folder, "nt", NT_BLOCKS)
    return folder


@pytest.fixture(scope="module")
def pairs() -> list[VersePair]:
    return verse_pairs()


def test_synthetic_module_reads_back_every_slot_in_order(tiny_module):
    expected = [verse for block in OT_BLOCKS + NT_BLOCKS for verse in block]
    assert read_module(tiny_module) == expected


def test_missing_folder_names_it_and_the_install_command(tmp_path):
    with pytest.raises(BibleDataError, match=re.escape(INSTALL)) as error:
        read_module(tmp_path / "nowhere")
    assert "nowhere" in str(error.value)


def test_missing_file_is_named(tiny_module):
    (tiny_module / "nt.bzz").unlink()
    with pytest.raises(BibleDataError, match=re.escape(INSTALL)) as error:
        read_module(tiny_module)
    assert "nt.bzz" in str(error.value)


def test_truncated_index_is_named(tiny_module):
    index = tiny_module / "ot.bzv"
    index.write_bytes(index.read_bytes()[:-3])
    with pytest.raises(BibleDataError, match="truncated") as error:
        read_module(tiny_module)
    assert "ot.bzv" in str(error.value) and INSTALL in str(error.value)


def test_slot_pointing_past_its_block_is_an_error(tiny_module):
    (tiny_module / "nt.bzv").write_bytes(struct.pack("<IIH", 0, 0, 999))
    with pytest.raises(BibleDataError, match="past the end of block 0"):
        read_module(tiny_module)


def test_truncated_blocks_file_is_named(tiny_module):
    blocks = tiny_module / "ot.bzz"
    blocks.write_bytes(blocks.read_bytes()[:-4])
    with pytest.raises(BibleDataError, match="does not decompress") as error:
        read_module(tiny_module)
    assert "ot.bzz block 1" in str(error.value)


def test_slot_naming_a_missing_block_is_an_error(tiny_module):
    (tiny_module / "nt.bzv").write_bytes(struct.pack("<IIH", 7, 0, 5))
    with pytest.raises(BibleDataError, match=r"names block 7, but .*nt\.bzs has only 1"):
        read_module(tiny_module)


def test_clean_verse_drops_notes_titles_tags_entities_and_pilcrows():
    raw = (
        '<title type="psalm">A Psalm of David.</title>¶ <w lemma="strong:H3068">LORD</w>, how '
        '<note type="x-study">Or, <reference>Ps 2:1</reference></note>are&amp;\n they<lb/>many!'
    )
    assert clean_verse(raw) == "LORD, how are& they many!"


def test_aligned_non_empty_pair_count(pairs):
    assert len(pairs) == 31084
    assert len({(pair.book, pair.chapter) for pair in pairs}) == 1189
    assert len({pair.book for pair in pairs}) == 66


def test_known_verses_on_both_sides(pairs):
    by_reference = {(pair.book, pair.chapter, pair.verse): pair for pair in pairs}
    genesis = by_reference[("Genesis", 1, 1)]
    assert genesis == pairs[0]
    assert genesis.en == "In the beginning God created the heaven and the earth."
    assert genesis.es == "EN el principio crió Dios los cielos y la tierra."
    john = by_reference[("John", 3, 16)]
    assert john.en.startswith("For God so loved the world, that he gave his only begotten Son,")
    assert john.es.startswith("Porque de tal manera amó Dios al mundo, que ha dado á su Hijo unigénito,")
    last = pairs[-1]
    assert (last.book, last.chapter, last.verse) == ("Revelation", 22, 21)
    assert last.en == "The grace of our Lord Jesus Christ be with you all. Amen."
    last_verse = {(pair.book, pair.chapter): pair.verse for pair in pairs}
    # Chapters ending at a chapter, book and testament heading slot: an off-by-one shows here.
    assert last_verse[("Psalms", 119)] == 176
    assert last_verse[("Genesis", 50)] == 26
    assert last_verse[("Malachi", 4)] == 6
    assert by_reference[("Matthew", 1, 1)].en.startswith("The book of the generation of Jesus Christ")


def test_no_markup_and_collapsed_whitespace(pairs):
    leftover = re.compile(r"[<>¶]|&#?\w+;|\s\s|^\s|\s$|[\t\n]")
    bad = [pair for pair in pairs if leftover.search(pair.en) or leftover.search(pair.es)]
    assert bad == []


def test_split_holds_out_whole_documented_books_deterministically(pairs):
    train, validation, test = split_pairs(pairs)
    assert split_pairs(pairs) == (train, validation, test)
    assert len(train) + len(validation) + len(test) == len(pairs)
    books = [{pair.book for pair in part} for part in (train, validation, test)]
    assert (
        books[2] == set(HELD_OUT_BOOKS) == {"Ruth", "Ecclesiastes", "Lamentations", "Jonah", "Mark", "Romans"}
    )
    assert books[1] == set(VALIDATION_BOOKS)
    assert not books[0] & books[1] and not books[0] & books[2] and not books[1] & books[2]
    assert 0.05 <= len(test) / len(pairs) <= 0.08
    assert (len(train), len(validation), len(test)) == (29013, 452, 1619)
