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
    # 31,084 slots hold a verse on both sides; realigning 197 of them in 22 chapters makes 193.
    assert len(pairs) == 31084 - 197 + 193
    assert sum(pair.verses for pair in pairs) == 31102  # every KJV verse, once
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
    assert (len(train), len(validation), len(test)) == (29009, 452, 1619)


def by_reference(pairs) -> dict[tuple[str, int, int], VersePair]:
    return {(pair.book, pair.chapter, pair.verse): pair for pair in pairs}


def test_jonah_follows_the_verses_not_the_slots(pairs):
    jonah = by_reference(pairs)
    # The Reina-Valera's 2:1 is the KJV's 1:17, its 2:2 the KJV's 2:1, and its last slot holds two.
    assert jonah[("Jonah", 1, 17)].en.startswith("Now the LORD had prepared a great fish")
    assert jonah[("Jonah", 1, 17)].es.startswith("MAS Jehová había prevenido un gran pez")
    assert jonah[("Jonah", 2, 1)].es == "Y oró Jonás desde el vientre del pez á Jehová su Dios,"
    assert jonah[("Jonah", 2, 8)].es.startswith("Los que guardan las vanidades ilusorias")
    last = jonah[("Jonah", 2, 9)]
    assert last.verses == 2 and ("Jonah", 2, 10) not in jonah
    assert last.en.endswith("it vomited out Jonah upon the dry land.")
    assert last.es.endswith("Y mandó Jehová al pez, y vomitó á Jonás en tierra.")


def test_other_known_shifts_are_realigned(pairs):
    verse = by_reference(pairs)
    # Numbers 12:16 is the Reina-Valera's 13:1; Hosea 11:12 its 12:1; 1 Samuel 23:29 its 24:1.
    assert verse[("Numbers", 12, 16)].es.startswith("Y DESPUÉS movió el pueblo de Haseroth")
    assert verse[("Numbers", 13, 1)].es == "Y Jehová habló á Moisés, diciendo:"
    assert verse[("Hosea", 11, 12)].es.startswith("CERCÓME Ephraim con mentira")
    assert verse[("1 Samuel", 23, 29)].es.startswith("ENTONCES David subió de allí")
    # Job 38:39-41 open the Reina-Valera's Job 39, and Job 40:1-5 close it, all in its last slot.
    assert verse[("Job", 38, 39)].es.startswith("¿CAZARÁS tú la presa para el león?")
    job = verse[("Job", 39, 27)]
    assert job.verses == 9 and job.es.endswith("aun dos veces, mas no tornaré á hablar.")
    assert verse[("Job", 40, 6)].es.startswith("ENTONCES respondió Jehová á Job desde la oscuridad")
    assert verse[("Job", 40, 24)].es == "¿Tomarálo alguno por sus ojos en armadijos, y horadará su nariz?"
    # A verse split elsewhere: the Reina-Valera's Judges 14:18 ends in the KJV's 14:18.
    assert verse[("Judges", 14, 18)].es.endswith("nunca hubierais descubierto mi enigma.")


def test_headings_and_subscriptions_do_not_move_verses(pairs):
    verse = by_reference(pairs)
    # A psalm heading or a letter's closing note makes one side much longer, not shifted.
    assert verse[("Psalms", 18, 1)].es.endswith("AMARTE he, oh Jehová, fortaleza mía.")
    assert verse[("Psalms", 18, 2)].verses == 1
    assert verse[("Romans", 16, 27)].es.startswith("Al solo Dios sabio, sea gloria")
    assert verse[("Titus", 3, 15)].es.startswith("Todos los que están conmigo te saludan.")
    assert verse[("2 Samuel", 18, 33)].es.startswith("Entonces el rey se turbó")


def test_a_realignment_table_that_does_not_fit_is_one_error(tmp_path, monkeypatch):
    from attnlab.data import bible

    table = tmp_path / "realignment.json"
    table.write_text('[{"en": [["Jonah", 1, 18]], "es": [["Jonah", 2, 1]]}]')
    monkeypatch.setattr(bible, "REALIGNMENT", table)
    with pytest.raises(BibleDataError, match="does not fit the installed SWORD modules"):
        verse_pairs()
    overlapping = '{"en": [["Jonah", 1, 17]], "es": [["Jonah", 2, 1]]}'
    table.write_text(f"[{overlapping}, {overlapping}]")
    with pytest.raises(BibleDataError, match="overlaps an earlier group"):
        verse_pairs()
    table.write_text("[{")
    with pytest.raises(BibleDataError, match=r"realignment\.json"):
        verse_pairs()


@pytest.mark.slow
def test_the_stored_table_is_what_the_alignment_finds():
    import subprocess
    import sys

    script = Path(__file__).parents[2] / "scripts" / "realign_verses.py"
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "193 groups in 22 chapters" in result.stdout
