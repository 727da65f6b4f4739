"""``benchmarks/vit_sweep.py``: variants are trained with their overrides applied, side by side,
and summarised per run and per variant; a failing variant is reported, not hidden."""

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "vit_sweep.py"


def load_script():
    spec = importlib.util.spec_from_file_location("vit_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sweep = load_script()


@pytest.mark.parametrize("name, variant", [("ov1-s2", "ov1"), ("base-s10", "base"), ("lr1.4", "lr1.4"),
                                           ("p7-sx", "p7-sx"), ("-s1", "-s1")])
def test_seeds_share_their_variant_name(name, variant):
    assert sweep.variant_of(name) == variant


def test_summary_gives_each_run_and_each_variants_mean():
    results = {
        "a-s0": {"steps": 100, "returncode": 0, "curve": [[50, 0.5], [100, 0.90]], "final": 0.90},
        "a-s1": {"steps": 100, "returncode": 0, "curve": [[100, 0.92]], "final": 0.92},
        "b": {"steps": 200, "returncode": 1, "curve": [], "final": None},
    }
    text = sweep.summary(results)
    assert "| a-s0 | 100 / 100 | 90.00% |" in text
    assert "| b | 0 / 200 | failed (exit 1) |" in text
    assert "| a | 2 | 91.00% | 90.00-92.00% |" in text
    assert "| b |" not in text.split("| variant |")[1]  # a failed run has no mean


def test_the_preset_rounds_spell_out_the_first_presets_settings():
    """The recorded rounds must reproduce the runs in docs/vit-sweep.json whatever today's preset."""
    folder = SCRIPT.parent / "vit_sweep"
    recorded = json.loads((SCRIPT.parents[1] / "docs" / "vit-sweep.json").read_text())["runs"]
    names = set()
    for path in sorted(folder.glob("round*.json")):
        for name, (overrides, steps) in json.loads(path.read_text()).items():
            names.add(name)
            assert {"crop_padding", "train", "model_overrides"} <= set(overrides)
            assert "lr" in overrides["train"] and "patch_overlap" in overrides["model_overrides"]
            assert recorded[name]["curve"][-1][0] == steps
    assert names == set(recorded)


@pytest.mark.parametrize("path", sorted((SCRIPT.parent / "vit_sweep").glob("*.json")), ids=lambda p: p.name)
def test_every_recorded_round_names_settings_that_exist(path):
    """A round whose override names a field that was renamed or removed would fail only minutes
    into a sweep; building each variant's preset, training and model configs catches it here."""
    from attnlab.train import TrainConfig
    from attnlab.train.vit_task import VIT_TRAIN_PRESETS

    for name, (overrides, steps) in json.loads(path.read_text()).items():
        assert isinstance(steps, int) and steps > 0, name
        variant = sweep.variant_preset(VIT_TRAIN_PRESETS["fashion-mnist"], overrides, steps, 20.0)
        TrainConfig(**variant.train)
        variant.model_config(10)


@pytest.mark.slow  # 15 s of training
def test_a_sweep_of_the_tiny_preset_trains_each_variant_with_its_overrides(tmp_path):
    configs = {
        "wide-s0": [{"model_overrides": {"embed_dim": 96}, "train": {"eval_batches": 1}}, 6],
        "wide-s1": [{"model_overrides": {"embed_dim": 96}, "train": {"eval_batches": 1, "seed": 1}}, 6],
        "broken": [{"model_overrides": {"patch_overlap": -1}, "train": {"eval_batches": 1}}, 6],
    }
    (tmp_path / "configs.json").write_text(json.dumps(configs))
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = sweep.main([str(tmp_path / "configs.json"), "--preset", "tiny", "--out",
                           str(tmp_path / "runs"), "--deadline", "240", "--json", str(tmp_path / "r.json")])
    assert code == 1  # one variant failed
    results = json.loads((tmp_path / "r.json").read_text())
    for name in ("wide-s0", "wide-s1"):
        assert results[name]["returncode"] == 0 and [s for s, _ in results[name]["curve"]][-1] == 6
        checkpoint = tmp_path / "runs" / name / "checkpoints" / "step-00000006"
        saved = json.loads((checkpoint / "config.json").read_text())
        assert saved["embed_dim"] == 96  # the override reached the model
    assert results["broken"]["final"] is None and results["broken"]["returncode"] != 0
    assert "patch_overlap=-1 is outside [0, 1024]" in (tmp_path / "runs" / "broken.log").read_text()
    text = stdout.getvalue()
    assert "| wide | 2 |" in text and "failed (exit" in text


def test_bad_configs_are_refused_with_the_reason(tmp_path, capsys):
    (tmp_path / "c.json").write_text(json.dumps({"x": [{}, 0]}))
    with pytest.raises(SystemExit):
        sweep.main([str(tmp_path / "c.json"), "--out", str(tmp_path)])
    assert "config 'x' must be [overrides object, steps > 0]" in capsys.readouterr().err
    (tmp_path / "ok.json").write_text(json.dumps({"x": [{}, 5]}))
    with pytest.raises(SystemExit):
        sweep.main([str(tmp_path / "ok.json"), "--out", str(tmp_path), "--preset", "huge"])
    assert "unknown preset 'huge'" in capsys.readouterr().err


def test_cpu_cost_prints_each_configs_steps_for_the_first_configs_time(tmp_path, capsys):
    configs = {"small": [{}, 1000], "wide": [{"model_overrides": {"embed_dim": 128, "ffn_dim": 256}}, 500]}
    costs = sweep.cpu_cost(configs, "tiny", repeats=1, steps_per_repeat=1, threads=1)
    assert set(costs) == {"small", "wide"} and all(seconds > 0 for seconds in costs.values())
    (tmp_path / "c.json").write_text(json.dumps(configs))
    assert sweep.main([str(tmp_path / "c.json"), "--preset", "tiny", "--cpu-cost"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| small")]
    assert len(rows) == 1 and "| 1.000 | 1,000 | 1,000 |" in rows[0]
