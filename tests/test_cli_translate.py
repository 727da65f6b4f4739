"""`attnlab train translate`, `attnlab translate` and `attnlab eval translate` end to end, in
subprocesses: 120 steps of the tiny preset (enough for poor but non-empty Spanish, which greedy
and beam search decode differently), then translation and a 20-verse BLEU/chrF checked against
what the library and sacreBLEU give in this process."""

import json
import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SENTENCE = "In the beginning God created the heaven and the earth."


def attnlab_process(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "attnlab", *argv], capture_output=True, text=True,
                          env=ENV, timeout=300, check=False, input=stdin)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("translate") / "run"
    done = attnlab_process("train", "translate", "--preset", "tiny", "--max-steps", "120",
                           "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["steps"] == 120 and summary["arch"] == "transformer" and summary["preset"] == "tiny"
    return out


def test_training_records_the_task_preset_and_arch(run_dir):
    state = json.loads((run_dir / "checkpoints" / "step-00000120" / "trainer_state.json").read_text())
    assert state["meta"] == {"task": "translate", "preset": "tiny", "arch": "transformer"}
    assert (run_dir / "checkpoints" / "step-00000120" / "tokenizer.json").is_file()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [record["loss"] for record in records if record.get("loss") is not None]
    assert len(losses) == 12 and losses[-1] < losses[0]  # logged every 10 steps, and it learns


@pytest.fixture(scope="module")
def translator(run_dir):
    """The run's latest checkpoint, loaded in this process: what the commands must agree with."""
    from attnlab.train.runs import load_translator

    return load_translator(str(run_dir))


def library_translations(loaded, sentences, **decoding) -> list[str]:
    from attnlab.train.translate_task import translate

    return translate(loaded.model, loaded.tokenizer, sentences, **decoding)


def test_translate_prints_the_librarys_greedy_beam_and_stdin_translations(run_dir, translator):
    (by_greedy,) = library_translations(translator, [SENTENCE], greedy=True)
    (by_beam,) = library_translations(translator, [SENTENCE], beam=2, length_penalty=0.5)
    assert by_greedy and by_beam and by_greedy != by_beam  # 120 steps: poor but telling apart
    greedy = attnlab_process("translate", "--checkpoint", str(run_dir), "--greedy", "--json", SENTENCE)
    assert greedy.returncode == 0, greedy.stderr
    result = json.loads(greedy.stdout)
    assert result["decoding"] == "greedy"
    assert result["translations"] == [{"en": SENTENCE, "es": by_greedy}]
    beam = attnlab_process("translate", "--checkpoint", str(run_dir), "--beam", "2",
                           "--length-penalty", "0.5", "--json", SENTENCE)
    assert beam.returncode == 0, beam.stderr
    result = json.loads(beam.stdout)
    assert result["decoding"] == "beam 2, length penalty 0.5"
    assert [t["es"] for t in result["translations"]] == [by_beam]
    lines = library_translations(translator, ["And God said", SENTENCE])  # the default beam search
    assert lines[0] != lines[1]
    piped = attnlab_process("translate", "--checkpoint", str(run_dir), "-",
                            stdin=f"And God said\n\n{SENTENCE}\n")
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.splitlines() == lines  # one line per non-blank input line, in order


def expected_by_length(sources, hypotheses, references) -> list[dict]:
    """sacreBLEU's corpus BLEU and chrF of the verses of 1-15, 16-25, 26-35, 36-50 and 51+ English
    words, each bucket scored on its own verses (empty ones left out)."""
    from sacrebleu.metrics import BLEU, CHRF

    rows = []
    for low, high in [(1, 15), (16, 25), (26, 35), (36, 50), (51, None)]:
        members = [i for i, source in enumerate(sources)
                   if low <= len(source.split()) and (high is None or len(source.split()) <= high)]
        if members:
            hyps, refs = [hypotheses[i] for i in members], [[references[i] for i in members]]
            rows.append({"bucket": f"{low}-{high}" if high else f"{low}+", "sentences": len(members),
                         "bleu": pytest.approx(BLEU().corpus_score(hyps, refs).score),
                         "chrf": pytest.approx(CHRF().corpus_score(hyps, refs).score)})
    return rows


def test_eval_scores_the_librarys_translations_with_sacrebleu(run_dir, translator, tmp_path):
    from sacrebleu.metrics import BLEU, CHRF

    saved = tmp_path / "translations.json"
    done = attnlab_process("eval", "translate", "--checkpoint", str(run_dir), "--max-sentences", "20",
                           "--beam", "2", "--translations", str(saved), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["sentences"] == 20 and result["step"] == 120 and result["beam"] == 2
    verses = json.loads(saved.read_text(encoding="utf-8"))["translations"]
    assert len(verses) == 20 and len({verse["ref"] for verse in verses}) == 20
    sources = [verse["en"] for verse in verses]
    references = [verse["reference"] for verse in verses]
    hypotheses = library_translations(translator, sources, beam=2)
    assert [verse["hypothesis"] for verse in verses] == hypotheses
    assert result["bleu"] == pytest.approx(BLEU().corpus_score(hypotheses, [references]).score)
    assert result["chrf"] == pytest.approx(CHRF().corpus_score(hypotheses, [references]).score)
    assert "tok:13a" in result["bleu_signature"] and "nc:6" in result["chrf_signature"]
    assert result["by_source_length"] == expected_by_length(sources, hypotheses, references)

    # best and worst: the top and bottom three by sentence chrF among verses of 8+ English words
    chrf = {verse["ref"]: CHRF().sentence_score(verse["hypothesis"], [verse["reference"]]).score
            for verse in verses if len(verse["en"].split()) >= 8}
    ranked = sorted(chrf.values())
    assert [row["chrf"] for row in result["worst"]] == pytest.approx(ranked[:3])
    assert [row["chrf"] for row in result["best"]] == pytest.approx(ranked[::-1][:3])
    by_ref = {verse["ref"]: verse for verse in verses}
    for row in result["best"] + result["worst"]:
        assert row["chrf"] == pytest.approx(chrf[row["ref"]])  # a verse of 8+ words, its own score
        verse = by_ref[row["ref"]]
        assert (row["en"], row["reference"], row["hypothesis"]) == (
            verse["en"], verse["reference"], verse["hypothesis"])

    text = attnlab_process("eval", "translate", "--checkpoint", str(run_dir), "--max-sentences", "20",
                           "--beam", "2")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert f"BLEU        {result['bleu']:.2f}  ({result['bleu_signature']})" in lines
    assert "nrefs:1|case:mixed" in text.stdout
    for row in result["by_source_length"]:
        assert (f"  {row['bucket']:>6} words  {row['sentences']:5d} verses  BLEU {row['bleu']:6.2f}  "
                f"chrF {row['chrf']:6.2f}") in lines
    for kind in ("best", "worst"):
        row = result[kind][0]
        at = lines.index(f"{kind} ({row['ref']}, chrF {row['chrf']:.1f}):")
        assert lines[at + 1:at + 4] == [f"  en   {row['en']}", f"  ref  {row['reference']}",
                                        f"  out  {row['hypothesis']}"]


def test_eval_on_the_validation_books_with_a_length_penalty(run_dir, translator, tmp_path):
    from attnlab.data.bible import VALIDATION_BOOKS

    saved = tmp_path / "validation.json"
    done = attnlab_process("eval", "translate", "--checkpoint", str(run_dir), "--split", "validation",
                           "--max-sentences", "12", "--beam", "2", "--length-penalty", "0.5",
                           "--translations", str(saved), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["split"] == "validation" and result["books"] == list(VALIDATION_BOOKS)
    assert result["length_penalty"] == 0.5 and result["sentences"] == 12
    verses = json.loads(saved.read_text(encoding="utf-8"))["translations"]
    assert {verse["ref"].rsplit(" ", 1)[0] for verse in verses} <= set(VALIDATION_BOOKS)
    assert len({verse["ref"].rsplit(" ", 1)[0] for verse in verses}) == len(VALIDATION_BOOKS)
    hypotheses = library_translations(translator, [verse["en"] for verse in verses], beam=2,
                                      length_penalty=0.5)
    assert [verse["hypothesis"] for verse in verses] == hypotheses
    text = attnlab_process("eval", "translate", "--checkpoint", str(run_dir), "--split", "validation",
                           "--max-sentences", "4", "--length-penalty", "0")
    assert text.returncode == 0, text.stderr
    assert f"validation  {', '.join(VALIDATION_BOOKS)}: 4 verses, beam 4, length penalty 0" in text.stdout


@pytest.mark.parametrize(("argv", "message"), [
    (["translate", "--checkpoint", "{run}", "   "], "TEXT must not be empty"),
    (["translate", "--checkpoint", "{missing}", "Hello"], "does not exist"),
    (["eval", "translate", "--checkpoint", "{missing}"], "does not exist"),
    (["eval", "translate", "--checkpoint", "{run}", "--length-penalty", "-1"], ">= 0"),
    (["eval", "translate", "--checkpoint", "{run}", "--split", "train"], "invalid choice: 'train'"),
    (["train", "translate", "--preset", "huge"], "unknown preset 'huge'; choose from: tiny, base"),
    (["train", "translate", "--preset", "tiny", "--out", "{run}"], "already holds checkpoints"),
    (["train", "translate", "--preset", "tiny", "--arch", "lstm", "--out", "{run}", "--resume"],
     "holds a 'transformer' model, not --arch lstm"),
])
def test_bad_input_is_one_clear_line(run_dir, tmp_path, argv, message):
    argv = [a.format(run=run_dir, missing=tmp_path / "nowhere") for a in argv]
    done = attnlab_process(*argv)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.slow  # 12 s; the fuzz test gives every command checkpoints of another kind
def test_translate_rejects_a_checkpoint_of_another_task(tmp_path):
    gpt_run = tmp_path / "gpt"
    done = attnlab_process("train", "gpt", "--preset", "shakespeare-char-tiny", "--max-steps", "2",
                           "--out", str(gpt_run))
    assert done.returncode == 0, done.stderr
    refused = attnlab_process("translate", "--checkpoint", str(gpt_run), "Hello")
    assert refused.returncode == 2
    assert "holds a 'gpt' run, not a translator" in refused.stderr
