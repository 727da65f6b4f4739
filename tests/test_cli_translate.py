"""`attnlab train translate`, `attnlab translate` and `attnlab eval translate` end to end, in
subprocesses: a few steps of the tiny preset, then translation and a 20-verse BLEU/chrF."""

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
    done = attnlab_process("train", "translate", "--preset", "tiny", "--max-steps", "30",
                           "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["steps"] == 30 and summary["arch"] == "transformer" and summary["preset"] == "tiny"
    return out


def test_training_records_the_task_preset_and_arch(run_dir):
    state = json.loads((run_dir / "checkpoints" / "step-00000030" / "trainer_state.json").read_text())
    assert state["meta"] == {"task": "translate", "preset": "tiny", "arch": "transformer"}
    assert (run_dir / "checkpoints" / "step-00000030" / "tokenizer.json").is_file()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [record["loss"] for record in records if record.get("loss") is not None]
    assert len(losses) == 3 and losses[-1] < losses[0]  # logged every 10 steps, and it learns


def test_translate_greedy_beam_and_stdin(run_dir):
    greedy = attnlab_process("translate", "--checkpoint", str(run_dir), "--greedy", "--json", SENTENCE)
    assert greedy.returncode == 0, greedy.stderr
    result = json.loads(greedy.stdout)
    assert result["decoding"] == "greedy"
    assert [t["en"] for t in result["translations"]] == [SENTENCE]
    assert isinstance(result["translations"][0]["es"], str)
    beam = attnlab_process("translate", "--checkpoint", str(run_dir), "--beam", "2",
                           "--length-penalty", "0.5", "--json", SENTENCE)
    assert beam.returncode == 0, beam.stderr
    assert json.loads(beam.stdout)["decoding"] == "beam 2, length penalty 0.5"
    piped = attnlab_process("translate", "--checkpoint", str(run_dir), "--json", "-",
                            stdin="And God said\n\nLet there be light\n")
    assert piped.returncode == 0, piped.stderr
    assert [t["en"] for t in json.loads(piped.stdout)["translations"]] == ["And God said",
                                                                           "Let there be light"]


def test_eval_reports_bleu_chrf_and_signatures(run_dir):
    done = attnlab_process("eval", "translate", "--checkpoint", str(run_dir), "--max-sentences", "20",
                           "--beam", "2", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["sentences"] == 20 and result["step"] == 30
    assert result["bleu"] >= 0 and result["chrf"] >= 0
    assert "tok:13a" in result["bleu_signature"] and "nc:6" in result["chrf_signature"]
    text = attnlab_process("eval", "translate", "--checkpoint", str(run_dir), "--max-sentences", "20")
    assert text.returncode == 0, text.stderr
    assert "BLEU" in text.stdout and "nrefs:1|case:mixed" in text.stdout


@pytest.mark.parametrize(("argv", "message"), [
    (["translate", "--checkpoint", "{run}", "   "], "TEXT must not be empty"),
    (["translate", "--checkpoint", "{missing}", "Hello"], "does not exist"),
    (["eval", "translate", "--checkpoint", "{missing}"], "does not exist"),
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


def test_translate_rejects_a_checkpoint_of_another_task(tmp_path):
    gpt_run = tmp_path / "gpt"
    done = attnlab_process("train", "gpt", "--preset", "shakespeare-char-tiny", "--max-steps", "2",
                           "--out", str(gpt_run))
    assert done.returncode == 0, done.stderr
    refused = attnlab_process("translate", "--checkpoint", str(gpt_run), "Hello")
    assert refused.returncode == 2
    assert "holds a 'gpt' run, not a translator" in refused.stderr
