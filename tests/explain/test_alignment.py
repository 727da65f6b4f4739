"""Tests of attnlab.explain.alignment and `attnlab translate --show-attention/--png`, on tiny
translators trained for 5 steps (one Transformer, one LSTM) once per session."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from attnlab.explain.alignment import (
    END_LABEL,
    alignment_data,
    render_alignment_page,
    write_alignment_page,
    write_alignment_png,
)

SENTENCE = "In the beginning God created the heaven and the earth."
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _attnlab(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "attnlab", *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="session")
def checkpoints(tiny_translator_runs) -> dict[str, str]:
    """``{"transformer": DIR, "lstm": DIR}``: tiny translators trained for 5 steps."""
    return tiny_translator_runs


@pytest.fixture(scope="session")
def loaded(checkpoints):
    from attnlab.train.runs import load_translator

    return {arch: load_translator(folder) for arch, folder in checkpoints.items()}


@pytest.fixture(scope="session")
def datas(loaded) -> dict[str, dict]:
    # A made-up translation: the alignment does not depend on the model having written it.
    return {arch: alignment_data(run.model, run.tokenizer, SENTENCE, run.tokenizer.encode(" En el principio"))
            for arch, run in loaded.items()}


def _model_inputs(run, translation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The source and the decoder input the module documents, built here independently."""
    config = run.model.config
    src = torch.tensor([*run.tokenizer.encode(SENTENCE), config.eos_id])
    tgt_in = torch.tensor([config.bos_id, *run.tokenizer.encode(translation)])
    return src, tgt_in


@pytest.mark.parametrize("arch", ["transformer", "lstm"])
def test_rows_sum_to_one_and_match_the_models_own_weights(loaded, datas, arch):
    run, data = loaded[arch], datas[arch]
    src, tgt_in = _model_inputs(run, " En el principio")
    weights = torch.tensor(data["weights"], dtype=torch.float64)
    assert weights.shape == (len(tgt_in), len(src))
    assert len(data["target_tokens"]) == len(tgt_in) and len(data["source_tokens"]) == len(src)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(len(tgt_in), dtype=torch.float64),
                               atol=1e-6, rtol=0)
    with torch.no_grad():
        if arch == "transformer":
            every = run.model.cross_attention_weights(src, tgt_in).double()
            expected = every[-1].mean(dim=0)
            torch.testing.assert_close(torch.tensor(data["layers"], dtype=torch.float64), every,
                                       atol=1e-6, rtol=0)
        else:
            expected = run.model.attention_weights(src, tgt_in).double()
            assert "layers" not in data
    torch.testing.assert_close(weights, expected, atol=1e-6, rtol=0)
    assert data["architecture"] == arch


def test_tokens_are_readable(datas):
    data = datas["transformer"]
    assert data["source_tokens"][-1] == END_LABEL and data["target_tokens"][-1] == END_LABEL
    for token in data["source_tokens"] + data["target_tokens"]:
        assert token == token.strip() and token and "Ġ" not in token
    assert "".join(data["source_tokens"][:-1]) == SENTENCE.replace(" ", "")
    assert data["translation_text"] == "En el principio"


def test_an_eos_already_present_is_not_doubled(loaded, datas):
    run = loaded["lstm"]
    ids = [*run.tokenizer.encode(" En el principio"), run.model.config.eos_id]
    assert alignment_data(run.model, run.tokenizer, SENTENCE, ids) == datas["lstm"]


@pytest.mark.parametrize("arch", ["transformer", "lstm"])
def test_page_is_self_contained_and_its_json_round_trips(datas, tmp_path, arch):
    data = {**datas[arch], "source_text": "a </script><!-- & \u2028 trap"}
    path = write_alignment_page(data, tmp_path / "page.html")
    page = path.read_text(encoding="utf-8")
    assert not re.search(r"(src|href)\s*=|https?://|@import|url\(", page)
    assert page.count("</script>") == 2
    embedded = re.search(r'<script type="application/json" id="alignment-data">(.*?)</script>', page, re.S)
    assert json.loads(embedded.group(1)) == data
    assert "looks back at the English words" in page and "darker cells are where it looked" in page
    assert "average of heads" in page
    assert [p.name for p in tmp_path.iterdir()] == ["page.html"]   # no temporary file left


def test_page_refuses_nan(datas):
    bad = {**datas["lstm"], "weights": [[float("nan")]]}
    with pytest.raises(ValueError):
        render_alignment_page(bad)


def test_png_is_a_valid_image(datas, tmp_path):
    from matplotlib import image

    path = write_alignment_png(datas["transformer"], tmp_path / "a.png")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 300


@pytest.mark.parametrize("writer", [write_alignment_page, write_alignment_png])
def test_unwritable_paths_raise_one_line_oserror(datas, tmp_path, writer):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        writer(datas["lstm"], tmp_path / "missing" / "x")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        writer(datas["lstm"], tmp_path)


def test_cli_writes_page_and_png(checkpoints, tmp_path):
    page, folder = tmp_path / "align.html", tmp_path / "pngs"  # the PNG folder is created
    done = _attnlab("translate", "--checkpoint", checkpoints["transformer"], "--greedy", SENTENCE,
                    "--show-attention", str(page), "--png", str(folder))
    assert done.returncode == 0, done.stderr
    assert f"attention page: {page}" in done.stdout
    assert f"attention PNG: {folder / 'alignment.png'}" in done.stdout
    embedded = re.search(r'id="alignment-data">(.*?)</script>', page.read_text(encoding="utf-8"), re.S)
    data = json.loads(embedded.group(1))
    assert data["architecture"] == "transformer" and data["source_text"] == SENTENCE
    assert torch.tensor(data["layers"]).dim() == 4
    assert (folder / "alignment.png").read_bytes()[:8] == PNG_SIGNATURE


def test_cli_json_stays_parseable_with_show_attention(checkpoints, tmp_path):
    page = tmp_path / "align.html"
    done = _attnlab("translate", "--checkpoint", checkpoints["lstm"], "--greedy", "--json", SENTENCE,
                    "--show-attention", str(page))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["translations"][0]["en"] == SENTENCE
    assert f"attention page: {page}" in done.stderr and page.exists()


def test_cli_unwritable_page_is_one_line_and_exit_2(checkpoints, tmp_path):
    target = tmp_path / "missing" / "a.html"
    done = _attnlab("translate", "--checkpoint", checkpoints["lstm"], "--greedy", SENTENCE,
                    "--show-attention", str(target))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("attnlab translate: error:") and "missing" in lines[0]


def test_cli_png_path_that_is_a_file_is_one_line_and_exit_2(checkpoints, tmp_path):
    target = tmp_path / "taken"
    target.write_text("not a folder")
    done = _attnlab("translate", "--checkpoint", checkpoints["lstm"], "--greedy", SENTENCE,
                    "--png", str(target))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0] == f"attnlab translate: error: --png {target} is a file, not a folder"
