"""attnlab.cost and `attnlab cost`: the formulas on a shape small enough to count by hand."""

from __future__ import annotations

import json

import pytest

from attnlab.cost import (
    Calibration,
    Shape,
    activation_bytes,
    attention_flops,
    estimate,
    kv_cache_bytes,
    largest_fitting,
    lstm_flops,
    lstm_state_bytes,
    naive_score_bytes,
    tiled_score_bytes,
)

SHAPE = Shape(seq_len=10, heads=2, head_dim=3, layers=2, batch=4)  # width 6


def test_flops_count_projections_scores_and_gates():
    # Per layer: 4 projections of (4*10 tokens) x 6 x 6 multiply-adds, QK^T and AV of 4*2*10*10*3 each.
    assert attention_flops(SHAPE) == 2 * (2 * 4 * 4 * 10 * 6 * 6 + 2 * 2 * 4 * 2 * 10 * 10 * 3)
    # Per layer and token: 4 gates from the input (6 -> 4*6) and from the state (6 -> 4*6).
    assert lstm_flops(SHAPE) == 2 * 4 * 10 * 2 * (6 * 24 + 6 * 24)


def test_memory_formulas():
    assert naive_score_bytes(SHAPE) == 4 * 2 * 10 * 10 * 4
    assert tiled_score_bytes(SHAPE) == 4 * 2 * 10 * 10 * 4 + 4 * 2 * 10 * 2 * 4  # tiny: one tile holds all
    assert kv_cache_bytes(SHAPE) == 2 * 2 * 4 * 2 * 10 * 3 * 4
    assert lstm_state_bytes(SHAPE) == 2 * 2 * 4 * 6 * 4
    long = Shape(seq_len=1 << 16)
    assert naive_score_bytes(long) == 8 * (1 << 32) * 4
    assert tiled_score_bytes(long) < naive_score_bytes(long) / 1000  # O(n), not O(n^2)
    assert Shape(seq_len=4, dtype="bf16").bytes == 2


def test_largest_fitting_is_exact():
    assert largest_fitting(lambda n: n * n, 1000) == 31
    assert largest_fitting(lambda n: 10 * n, 10) == 1
    assert largest_fitting(lambda n: 10 * n, 9) == 0


def test_estimate_uses_the_calibrated_rates_and_the_budget():
    calibration = Calibration(matmul_flops_per_s=1e9, lstm_flops_per_s=1e8, threads=2)
    result = estimate(SHAPE, calibration, memory_budget=1 << 30)
    rows = result["models"]
    assert rows["naive attention"]["estimated_seconds"] == pytest.approx(attention_flops(SHAPE) / 1e9)
    assert rows["LSTM"]["estimated_seconds"] == pytest.approx(lstm_flops(SHAPE) / 1e8)
    assert rows["naive attention"]["max_seq_len_in_ram"] < rows["tiled attention"]["max_seq_len_in_ram"]
    n = rows["naive attention"]["max_seq_len_in_ram"]
    def memory(tokens: int) -> int:  # scores and weights, and the token-sized tensors
        return 2 * naive_score_bytes(SHAPE, tokens) + activation_bytes(SHAPE, tokens)

    assert memory(n) <= 1 << 30 < memory(n + 1)


@pytest.mark.parametrize(("fields", "message"), [
    ({"seq_len": 0}, "seq_len"), ({"seq_len": 4, "heads": -1}, "heads"),
    ({"seq_len": 1 << 40}, "beyond any real model"), ({"seq_len": 4, "dtype": "int8"}, "dtype"),
])
def test_bad_shapes_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        Shape(**fields)


def test_cli_prints_json_and_a_table(attnlab_cli):
    code, out, _ = attnlab_cli("cost", "--seq-len", "2048", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["shape"]["seq_len"] == 2048
    assert result["models"]["naive attention"]["score_memory_bytes"] == 8 * 2048 * 2048 * 4
    code, out, _ = attnlab_cli("cost", "--seq-len", "2048", "--layers", "2")
    assert code == 0 and "naive attention" in out and "LSTM" in out and "estimates" in out


@pytest.mark.parametrize("argv", [
    ["--seq-len", "0"], ["--seq-len", "-5"], ["--seq-len", "99999999999"],
    ["--seq-len", "8", "--dtype", "int8"], ["--seq-len", "8", "--heads", "1e9"],
])
def test_cli_bad_numbers_are_one_line_errors(attnlab_cli, argv):
    code, out, err = attnlab_cli("cost", *argv)
    assert code == 2 and not out and err.count("\n") == 1
