"""attnlab.cost and `attnlab cost`: the formulas on a shape small enough to count by hand."""

from __future__ import annotations

import json

import pytest
import torch

from attnlab.cost import (
    Calibration,
    Shape,
    activation_bytes,
    attention_flops,
    calibrate,
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


class VirtualClock:
    """A ``time`` stand-in whose clock moves only when :meth:`spend` is called: work of a known
    duration, so a measured rate has one right answer."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now

    def spend(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def timed_work(monkeypatch):
    """Every ``a @ b`` takes 1 ms and every LSTM call 4 ms on a virtual clock; returns what was
    run: ``{"matmul": [(m, k, n, dtype)], "lstm": [(tokens, hidden, input dtype, weight dtype)]}``."""
    from attnlab import cost

    clock, seen = VirtualClock(), {"matmul": [], "lstm": []}

    def matmul(a, b):
        seen["matmul"].append((*a.shape, b.shape[1], a.dtype, b.dtype))
        clock.spend(1e-3)
        return a

    def lstm_forward(module, tokens, state=None):
        seen["lstm"].append((tokens.shape[0], module.hidden_size, tokens.dtype, module.weight_hh_l0.dtype))
        clock.spend(4e-3)
        return tokens, state

    monkeypatch.setattr(cost, "time", clock)
    monkeypatch.setattr(torch.Tensor, "__matmul__", matmul)
    monkeypatch.setattr(torch.nn.LSTM, "forward", lstm_forward)
    return seen


@pytest.mark.parametrize(("dtype", "torch_dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_calibrate_rates_are_flops_over_the_time_the_work_took(timed_work, dtype, torch_dtype):
    calibration = calibrate(96, dtype, seconds=0.02)
    (m, k, n, *dtypes), *_ = timed_work["matmul"]
    assert dtypes == [torch_dtype, torch_dtype]
    # a (m, k) @ (k, n) product is m * n * k multiply-adds, and each took 1 ms
    assert calibration.matmul_flops_per_s == pytest.approx(2 * m * k * n / 1e-3, rel=1e-9)
    (tokens, hidden, *dtypes), *_ = timed_work["lstm"]
    assert hidden == 96 and dtypes == [torch_dtype, torch_dtype]
    # counted as lstm_flops counts one layer of that width over that many tokens, 4 ms a call
    lstm_layer = Shape(seq_len=tokens, heads=1, head_dim=hidden)
    assert calibration.lstm_flops_per_s == pytest.approx(lstm_flops(lstm_layer) / 4e-3, rel=1e-9)
    assert calibration.threads == torch.get_num_threads()
    # it kept measuring for `seconds` (20 ms: 20 timed products and 5 timed LSTM calls, + warm-ups)
    assert len(timed_work["matmul"]) >= 20 and len(timed_work["lstm"]) >= 5


def test_cli_table_figures_are_the_formulas_computed_by_hand(attnlab_cli, monkeypatch):
    from attnlab import cost

    monkeypatch.setattr(cost, "calibrate", lambda width, dtype: Calibration(1e11, 1e9, threads=3))
    monkeypatch.setattr(cost, "available_memory_bytes", lambda: 1 << 30)
    code, out, _ = attnlab_cli("cost", "--seq-len", "2048", "--layers", "2")
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:5]}
    # n = 2048, 8 heads x 64 (d = 512), 2 layers, batch 1, fp32 (4 bytes), 1 GiB of RAM:
    # attention FLOPs 2 * (8*n*d² + 4*8*n²*64) = 25,769,803,776, at 1e11/s 0.2577 s;
    # scores 8*n²*4 B = 128 MiB; KV cache 2*2*8*n*64*4 B = 16 MiB;
    # max n: 2 * 8n²*4 + 5*n*d*4 = 64n² + 10,240n <= 2^30 up to n = 4,016
    assert rows["naive"] == ["naive", "attention", "25.77", "GFLOP", "128.0", "MiB", "16.0", "MiB",
                             "257.7", "ms", "4,016"]
    # tiled: one 2^20-score tile (4 MiB) + 2 fp32 statistics per row, 8n*2*4 B = 4.125 MiB;
    # max n: 2^22 + 64n + 10,240n <= 2^30 up to n = 103,799
    assert rows["tiled"] == ["tiled", "attention", "25.77", "GFLOP", "4.1", "MiB", "16.0", "MiB",
                             "257.7", "ms", "103,799"]
    # LSTM FLOPs 2 * 16*n*d² = 17,179,869,184, at 1e9/s 17.18 s; state 2*2*d*4 B = 8 KiB;
    # max n: input and output 2*n*d*4 + 8 KiB <= 2^30 up to n = 262,142 exactly
    assert rows["LSTM"] == ["LSTM", "17.18", "GFLOP", "0", "B", "8.0", "KiB", "17.18", "s", "262,142"]
    assert "(100 GFLOP/s for a matmul, 1.0 GFLOP/s for LSTM steps, 3 threads)" in out
    assert "fits the 1.0 GiB available now" in out


def test_cli_json_figures_are_the_formulas_computed_by_hand(attnlab_cli, monkeypatch):
    from attnlab import cost

    monkeypatch.setattr(cost, "calibrate", lambda width, dtype: Calibration(1e11, 1e9, threads=3))
    monkeypatch.setattr(cost, "available_memory_bytes", lambda: 1 << 30)
    code, out, _ = attnlab_cli("cost", "--seq-len", "100", "--heads", "2", "--head-dim", "3",
                               "--batch", "4", "--dtype", "bf16", "--json")
    assert code == 0
    models = json.loads(out)["models"]
    # n = 100, width 6, batch 4, 2 bytes: projections 8*4*100*36, scores 4*4*2*100²*3
    assert models["naive attention"]["flops"] == 8 * 4 * 100 * 36 + 4 * 4 * 2 * 100 * 100 * 3 == 1_075_200
    assert models["naive attention"]["score_memory_bytes"] == 4 * 2 * 100 * 100 * 2 == 160_000
    assert models["tiled attention"]["score_memory_bytes"] == 160_000 + 4 * 2 * 100 * 2 * 4
    assert models["naive attention"]["generation_state_bytes"] == 2 * 4 * 2 * 100 * 3 * 2 == 9_600
    assert models["LSTM"]["flops"] == 16 * 4 * 100 * 36 == 230_400
    assert models["LSTM"]["generation_state_bytes"] == 2 * 4 * 6 * 2 == 96
    assert models["naive attention"]["estimated_seconds"] == pytest.approx(1_075_200 / 1e11)
    assert models["LSTM"]["estimated_seconds"] == pytest.approx(230_400 / 1e9)
