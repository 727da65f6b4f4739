"""``benchmarks/rnn_vs_attention.py``: its smoke run produces every result, and the recall task and
the window model are what the report says they are."""

import contextlib
import importlib.util
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "rnn_vs_attention.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_script():
    """The benchmark as a module (registered in ``sys.modules``: its dataclasses need that)."""
    spec = importlib.util.spec_from_file_location("rnn_vs_attention", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = load_script()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """``(results read back from --json, stdout, PNG folder)`` of one ``--quick`` run."""
    folder = tmp_path_factory.mktemp("rnn_vs_attention")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        bench.main(["--quick", "--threads", "1", "--png", str(folder / "png"),
                    "--json", str(folder / "r.json")])
    return json.loads((folder / "r.json").read_text()), stdout.getvalue(), folder / "png"


@pytest.mark.slow  # the quick run trains four models: 20 s
def test_speed_rows_are_medians_of_their_repeats_and_the_tables_print_them(quick_run):
    results, stdout, _ = quick_run
    rows = results["speed"]["rows"]
    assert [row["n"] for row in rows] == list(bench.QUICK_NS)
    for pass_ in ("train", "infer"):
        for row in rows:
            for model in bench.MODELS:
                repeats = row[f"{model}_{pass_}_all_ms"]
                assert row[f"{model}_{pass_}_ms"] == statistics.median(repeats) and len(repeats) >= 1
            attention, lstm = row[f"attention_{pass_}_ms"], row[f"LSTM_{pass_}_ms"]
            assert f"| {row['n']} | {attention:.2f} | {lstm:.2f} | {attention / lstm:.2f} |" in stdout
    assert "| n | train: attention ms | train: LSTM ms | ratio |" in stdout
    assert "O(n²·d)" in stdout


@pytest.mark.slow  # the quick run trains four models: 20 s
def test_generation_rows_are_printed_with_their_ratio(quick_run):
    results, stdout, _ = quick_run
    rows = results["generation"]["rows"]
    assert [row["n"] for row in rows] == list(bench.QUICK_NS)
    for row in rows:
        attention, lstm = row["attention_us"], row["LSTM_us"]
        assert f"| {row['n']} | {attention:.0f} | {lstm:.0f} | {attention / lstm:.2f} |" in stdout
    assert "| n | attention µs/token | LSTM µs/token | ratio |" in stdout


def sleeper(seconds: float):
    return lambda: time.sleep(seconds)


def test_side_by_side_timing_gives_seconds_per_call_also_for_looped_short_calls():
    times = bench.time_side_by_side({"slow": sleeper(0.06), "fast": sleeper(0.002)}, max_repeats=2,
                                    budget_s=10.0)
    assert len(times["slow"]) == len(times["fast"]) == 2
    # the 2 ms call is looped (about 25 times) inside each repeat, yet reported per call
    assert all(t >= 0.06 for t in times["slow"]) and all(0.002 <= t < 0.03 for t in times["fast"])


def test_single_call_timing_leaves_out_the_preparation_and_stops_at_the_budget():
    times = bench.time_single_calls(sleeper(0.002), sleeper(0.04), samples=4, budget_s=10.0)
    assert len(times) == 4 and all(0.002 <= t < 0.04 for t in times)
    times = bench.time_single_calls(sleeper(0.01), lambda: None, samples=100, budget_s=0.035)
    assert sum(times[:-1]) < 0.035 <= sum(times)


class LastTokenEcho(nn.Module):
    """Predicts value ``key % values`` at every position: right exactly where the target says so."""

    def __init__(self, values: int) -> None:
        super().__init__()
        self.values = values

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(tokens[..., 0] % self.values, self.values).float()


def test_accuracy_is_the_fraction_of_last_position_predictions_equal_to_the_target():
    tokens = torch.zeros(7, 3, 2, dtype=torch.long)
    tokens[:, -1, 0] = torch.arange(7)  # the model answers 0, 1, ..., 6 at the last position
    tokens[:, 0, 0] = 5  # and 5 at the first position, which must not count
    targets = torch.tensor([0, 1, 5, 5, 4, 0, 0])  # right for sequences 0, 1 and 4
    model = LastTokenEcho(values=8).train()
    assert bench.accuracy(model, tokens, targets, batch=3) == 3 / 7  # batches of 3, 3 and 1
    assert not model.training


@pytest.mark.slow  # the quick run trains four models: 20 s
def test_recall_scores_every_distance_for_four_models_of_matched_size(quick_run):
    recall = quick_run[0]["recall"]
    models = recall["models"]
    assert len(models) == 4
    for result in models.values():
        assert result["steps"] >= 1
        assert set(result["accuracy"]) == {str(d) for d in bench.DISTANCES}
        # a count of right answers out of the held-out sequences
        for score in result["accuracy"].values():
            right = score * recall["eval_sequences"]
            assert right == pytest.approx(round(right)) and 0 <= round(right) <= recall["eval_sequences"]
    sizes = [result["parameters"] for result in models.values()]
    assert max(sizes) <= 1.1 * min(sizes)


@pytest.mark.slow  # the quick run trains four models: 20 s
def test_png_per_part_is_a_real_png(quick_run):
    folder = quick_run[2]
    for name in ("speed.png", "generation.png", "recall.png"):
        data = (folder / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE
        assert len(data) > 10_000  # axes, lines and labels, not an empty canvas
    assert not [path.name for path in folder.iterdir() if path.name.endswith(".tmp")]


def test_evaluation_query_key_appears_once_at_distance_d_and_target_is_its_value():
    task = bench.RecallTask()
    distances = [1, 8, 33, 64, 65, 256, task.max_distance]
    tokens, targets = task.sample(distances, np.random.default_rng(0))
    assert tokens.shape == (len(distances), task.seq_len, 2)
    last = task.seq_len - 1
    for row, d in enumerate(distances):
        key, slot = tokens[row, last].tolist()
        assert 0 <= key < task.keys and slot == task.query
        assert torch.nonzero(tokens[row, :last, 0] == key).flatten().tolist() == [last - d]
        assert tokens[row, last - d, 1].item() == targets[row].item() < task.values
        is_pair = tokens[row, :, 0] < task.keys
        assert is_pair.sum().item() == task.pairs + 1  # the pairs' keys and the query
        assert (tokens[row, ~is_pair, 1] == task.blank).all()  # fillers carry no value


def test_training_sequences_ask_every_pair_once_after_it():
    task = bench.RecallTask()
    tokens, targets = task.sample_training(16, np.random.default_rng(0))
    for row in range(len(tokens)):
        asked = torch.nonzero(targets[row] != bench.IGNORE).flatten().tolist()
        assert len(asked) == task.pairs
        for position in asked:
            key, slot = tokens[row, position].tolist()
            assert slot == task.query
            earlier = torch.nonzero(tokens[row, :position, 0] == key).flatten().tolist()
            assert len(earlier) == 1
            assert tokens[row, earlier[0], 1].item() == targets[row, position].item()


def last_logits_after_changing(model, tokens: torch.Tensor, position: int, task) -> torch.Tensor:
    """The last position's logits once the filler key at ``position`` is swapped for another."""
    changed = tokens.clone()
    key = changed[0, position, 0].item()
    changed[0, position, 0] = key + 1 if key + 1 < task.key_vocab else task.keys
    with torch.no_grad():
        return model(changed)[0, -1]


def test_window_model_cannot_see_beyond_its_two_windows():
    task = bench.RecallTask(seq_len=60)
    window, last = 8, task.seq_len - 1
    torch.manual_seed(0)
    windowed = bench.AttentionRecaller(task, 32, 2, 2, window=(window, 0)).eval()
    full = bench.AttentionRecaller(task, 32, 2, 2).eval()
    tokens = task.sample([5], np.random.default_rng(1))[0]
    with torch.no_grad():
        windowed_before, full_before = windowed(tokens)[0, -1], full(tokens)[0, -1]
    for position in range(last - 2 * window):  # farther back than two layers of the window
        if tokens[0, position, 0] >= task.keys:  # a filler
            assert torch.equal(last_logits_after_changing(windowed, tokens, position, task),
                               windowed_before)
    # The edge of the reach and everything before it matter to full attention: not a vacuous check.
    edge = last - 2 * window
    assert tokens[0, edge, 0] >= task.keys and tokens[0, 0, 0] >= task.keys
    assert not torch.allclose(last_logits_after_changing(windowed, tokens, edge, task), windowed_before)
    assert not torch.allclose(last_logits_after_changing(full, tokens, 0, task), full_before)


def test_recall_over_seeds_reports_each_seed_and_their_mean_and_spread(capsys):
    torch.set_num_threads(1)
    recall = bench.measure_recall([8, 64], train_seconds=0.3, eval_sequences=20, window=32, seeds=[0, 3])
    assert recall["seeds"] == [0, 3]
    for result in recall["models"].values():
        runs = result["runs"]
        assert [run["seed"] for run in runs] == [0, 3]
        # Another seed: other initial weights and another training stream, so another loss.
        assert runs[0]["final_loss"] != runs[1]["final_loss"]
        for d in ("8", "64"):
            scores = [run["accuracy"][d] for run in runs]
            assert result["accuracy"][d] == pytest.approx(statistics.mean(scores))
            assert (result["accuracy_min"][d], result["accuracy_max"][d]) == (min(scores), max(scores))
    table = bench.recall_table(recall)
    assert "Seeds 0, 3: steps and loss are means" in table
    full = recall["models"]["full attention"]
    assert (f"| 8 | {full['accuracy']['8']:.3f} ({full['accuracy_min']['8']:.3f}–"
            f"{full['accuracy_max']['8']:.3f}) |") in table
