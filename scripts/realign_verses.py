"""Find the verses the KJV and Reina-Valera 1909 modules number differently; write or check the table.

    python scripts/realign_verses.py          # compare with src/attnlab/data/bible_realignment.json
    python scripts/realign_verses.py --write  # (re)write that file
    python scripts/realign_verses.py --show   # print every group's two sides, to read them

About 90 s on 2 cores. See attnlab.data.verse_alignment for the method.
"""

from __future__ import annotations

import argparse
import json
import sys

from attnlab.data import bible
from attnlab.data.verse_alignment import find_realignments
from attnlab.files import write_atomically


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the table instead of checking it")
    parser.add_argument("--show", action="store_true", help="print both sides of every group")
    args = parser.parse_args()
    english = bible.read_module(bible.MODULES["en"])
    spanish = bible.read_module(bible.MODULES["es"])
    references = bible._verse_references(english)
    en_text = [bible.clean_verse(raw) if ref else "" for ref, raw in zip(references, english, strict=True)]
    es_text = [bible.clean_verse(raw) if ref else "" for ref, raw in zip(references, spanish, strict=True)]
    beads = find_realignments(references, en_text, es_text)
    entries = [
        {"en": [list(references[i]) for i in bead.english], "es": [list(references[j]) for j in bead.spanish]}
        for bead in beads
    ]
    if args.show:
        for bead in beads:
            print(
                " + ".join("{} {}:{}".format(*references[i]) for i in bead.english),
                "<->",
                " + ".join("{1}:{2}".format(*references[j]) for j in bead.spanish),
            )
            print("  EN", " ".join(en_text[i] for i in bead.english))
            print("  ES", " ".join(es_text[j] for j in bead.spanish))
    moved = {slot for bead in beads for slot in bead.english + bead.spanish}
    wrong = sum(1 for slot in moved if en_text[slot] and es_text[slot])
    chapters = {references[i][:2] for bead in beads for i in bead.english}
    print(
        f"{len(beads)} groups in {len(chapters)} chapters; slot-by-slot pairing there gives "
        f"{wrong} pairs of wrong partners; realigned they are "
        f"{sum(1 for bead in beads if bead.english and bead.spanish)} pairs"
    )
    text = "[\n" + ",\n".join(json.dumps(entry, ensure_ascii=False) for entry in entries) + "\n]\n"
    if args.write:
        write_atomically(bible.REALIGNMENT, lambda path: path.write_text(text, encoding="utf-8"))
        print(f"wrote {bible.REALIGNMENT}")
        return 0
    stored = bible.REALIGNMENT.read_text(encoding="utf-8") if bible.REALIGNMENT.exists() else ""
    if stored != text:
        print(f"{bible.REALIGNMENT} differs from what the alignment finds now", file=sys.stderr)
        return 1
    print(f"{bible.REALIGNMENT} matches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
