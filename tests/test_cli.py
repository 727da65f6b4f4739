"""The `attnlab` command as a user runs it."""

import json
import subprocess
import sys

import pytest

from attnlab.cli import main


def test_demo_json_reports_every_backend_close_to_float64(capsys):
    assert main(["demo", "--seq-len", "64", "--heads", "2", "--head-dim", "16", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [row["backend"] for row in result["backends"]] == ["reference", "tiled", "torch", "auto"]
    for row in result["backends"]:
        assert row["max_abs_error_vs_float64"] < 1e-5
        assert row["seconds"] > 0


def test_demo_toy_weights_are_causal_and_sum_to_one(capsys):
    main(["demo", "--seq-len", "32", "--heads", "1", "--head-dim", "8", "--json"])
    weights = json.loads(capsys.readouterr().out)["toy"]["weights"]
    for i, row in enumerate(weights):
        assert sum(row) == pytest.approx(1.0, abs=0.01)
        assert all(w == 0 for w in row[i + 1 :])


def test_demo_prints_a_table(capsys):
    assert main(["demo", "--seq-len", "32", "--heads", "1", "--head-dim", "8"]) == 0
    out = capsys.readouterr().out
    assert "tiled" in out and "causal mask" in out


def test_demo_refuses_a_sequence_too_long_in_one_line(capsys):
    assert main(["demo", "--seq-len", "1000000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--seq-len 1000000" in err and "GiB" in err


@pytest.mark.parametrize("bad", ["0", "-3", "many"])
def test_demo_rejects_bad_numbers_without_traceback(bad):
    proc = subprocess.run(
        [sys.executable, "-m", "attnlab.cli", "demo", "--seq-len", bad],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "--seq-len" in proc.stderr


@pytest.mark.parametrize("argv", [["explain", "--model", "gpt2", "hi"], ["explain"], [],
                                  ["demo", "--heads", "0"]])
def test_usage_errors_are_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and "--help" in err
