"""``benchmarks/rnn_vs_attention.py``: its smoke run produces every result, and the recall task and
the window model are what the report says they are."""

import contextlib
import importlib.util
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

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


def test_speed_has_every_n_for_both_models_with_positive_times(quick_run):
    results, stdout, _ = quick_run
    rows = results["speed"]["rows"]
    assert [row["n"] for row in rows] == list(bench.QUICK_NS)
    for row in rows:
        for model in bench.MODELS:
            for pass_ in ("train", "infer"):
                assert row[f"{model}_{pass_}_ms"] > 0
    assert "| n | train: attention ms | train: LSTM ms | ratio |" in stdout
    assert "O(n²·d)" in stdout


def test_generation_has_every_n_for_both_models_with_positive_times(quick_run):
    results, stdout, _ = quick_run
    rows = results["generation"]["rows"]
    assert [row["n"] for row in rows] == list(bench.QUICK_NS)
    assert all(row[f"{model}_us"] > 0 for row in rows for model in bench.MODELS)
    assert "| n | attention µs/token | LSTM µs/token | ratio |" in stdout


def test_recall_scores_every_distance_for_four_models_of_matched_size(quick_run):
    recall = quick_run[0]["recall"]
    models = recall["models"]
    assert len(models) == 4
    for result in models.values():
        assert result["steps"] >= 1
        assert set(result["accuracy"]) == {str(d) for d in bench.DISTANCES}
        assert all(0.0 <= score <= 1.0 for score in result["accuracy"].values())
    sizes = [result["parameters"] for result in models.values()]
    assert max(sizes) <= 1.1 * min(sizes)


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
