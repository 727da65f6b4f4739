"""`attnlab train ... --precision bf16|fp32`, and a preset's bf16 dropped on hardware without
native bf16 (with a note), as a user runs them on the tiny ViT preset."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from attnlab.commands import train as train_command
from attnlab.train.checkpoint import latest_checkpoint, read_trainer_state
from attnlab.train.vit_task import VIT_TRAIN_PRESETS


def run_options(**given) -> argparse.Namespace:
    options = {"max_steps": None, "max_minutes": None, "budget_minutes": None, "seed": None,
               "precision": None, **given}
    return argparse.Namespace(**options)


@pytest.mark.parametrize(("option", "expected"), [(None, True), ("bf16", True), ("fp32", False)])
def test_precision_option_sets_or_keeps_the_presets_bf16(option, expected):
    preset_train = {**VIT_TRAIN_PRESETS["tiny"].train, "bf16": True}
    assert train_command._train_config(preset_train, run_options(precision=option)).bf16 is expected
    assert train_command._train_config({**preset_train, "bf16": False},
                                       run_options(precision=option)).bf16 is (option == "bf16")


@pytest.mark.parametrize("fast", [True, False])
def test_a_presets_bf16_falls_back_to_fp32_only_where_bf16_is_slow(monkeypatch, capsys, fast):
    monkeypatch.setattr("attnlab.train.precision.bf16_is_fast", lambda device: fast)
    fields = {"batch_size": 8, "bf16": True}
    chosen = train_command._fresh_fields(fields, run_options(), is_main=True)
    assert chosen == {"batch_size": 8, "bf16": fast} and fields["bf16"] is True  # the preset is untouched
    note = capsys.readouterr().err
    assert ("training in float32" in note and "--precision bf16 forces bf16" in note) is not fast
    # Asked for by name, bf16 is obeyed anywhere; a preset without bf16 is never changed.
    assert train_command._fresh_fields(fields, run_options(precision="bf16"), is_main=True) is fields
    assert train_command._fresh_fields({"bf16": False}, run_options(), is_main=True) == {"bf16": False}
    assert capsys.readouterr().err == ""


def test_only_the_main_process_prints_the_fallback_note(monkeypatch, capsys):
    monkeypatch.setattr("attnlab.train.precision.bf16_is_fast", lambda device: False)
    chosen = train_command._fresh_fields({"bf16": True}, run_options(), is_main=False)
    assert chosen == {"bf16": False} and capsys.readouterr().err == ""


@pytest.fixture
def bf16_tiny_preset(monkeypatch):
    """The ``tiny`` ViT preset as if it asked for bf16, on a machine where bf16 is slow."""
    tiny = VIT_TRAIN_PRESETS["tiny"]
    preset = dataclasses.replace(tiny, train={**tiny.train, "bf16": True})
    monkeypatch.setitem(VIT_TRAIN_PRESETS, "tiny", preset)
    monkeypatch.setattr("attnlab.train.precision.bf16_is_fast", lambda device: False)


def saved_bf16(out) -> bool:
    return read_trainer_state(latest_checkpoint(out))["train_config"]["bf16"]


def test_a_run_trains_and_saves_in_the_precision_asked_for(attnlab_cli, bf16_tiny_preset, tmp_path):
    code, out, err = attnlab_cli("train", "vit", "--preset", "tiny", "--max-steps", "2", "--json",
                                 "--out", str(tmp_path / "fallback"))
    assert code == 0 and "training in float32" in err
    summary = json.loads(out)
    assert summary["steps"] == 2 and summary["precision"] == "fp32"
    assert saved_bf16(tmp_path / "fallback") is False

    code, out, err = attnlab_cli("train", "vit", "--preset", "tiny", "--max-steps", "2", "--json",
                                 "--precision", "bf16", "--out", str(tmp_path / "bf16"))
    assert code == 0 and "float32" not in err and saved_bf16(tmp_path / "bf16") is True
    assert json.loads(out)["precision"] == "bf16"

    # A resumed run keeps its checkpoint's precision; another one is refused in one line.
    code, out, err = attnlab_cli("train", "vit", "--preset", "tiny", "--max-steps", "3", "--json",
                                 "--resume", "--out", str(tmp_path / "bf16"))
    assert code == 0 and "float32" not in err and saved_bf16(tmp_path / "bf16") is True
    assert json.loads(out)["precision"] == "bf16"
    code, out, err = attnlab_cli("train", "vit", "--preset", "tiny", "--max-steps", "4", "--resume",
                                 "--precision", "fp32", "--out", str(tmp_path / "bf16"))
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "training config changed" in err and "bf16: True -> False" in err


def test_the_printed_summary_names_the_precision(attnlab_cli, tmp_path):
    code, out, _ = attnlab_cli("train", "vit", "--preset", "tiny", "--max-steps", "2", "--precision", "fp32",
                               "--out", str(tmp_path / "run"))
    assert code == 0 and "steps       0 -> 2 in " in out and " s (fp32)\n" in out


def test_an_unknown_precision_is_refused(attnlab_cli):
    code, _, err = attnlab_cli("train", "vit", "--preset", "tiny", "--precision", "fp8")
    assert code == 2 and "--precision: invalid choice: 'fp8'" in err
