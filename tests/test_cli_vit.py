"""`attnlab train vit`, `attnlab eval vit` and `attnlab classify` as a user runs them: the tiny
preset trained in full on MNIST-5k once (about a minute), scored on its held-out digits, asked
about pictures saved as files; resumed; and every bad input as one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image, ImageOps

from attnlab.data.images import load_image, load_test_split
from attnlab.train.vit_task import load_preprocessing

ENV = {**os.environ, "OMP_NUM_THREADS": "2"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def attnlab_process(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "attnlab", *argv], capture_output=True, text=True,
                          env=ENV, timeout=600, check=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """``(out_dir, summary)`` of `attnlab train vit --preset tiny`, the whole preset."""
    out = tmp_path_factory.mktemp("vit") / "run"
    result = attnlab_process("train", "vit", "--preset", "tiny", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout)


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory):
    """20 held-out digits saved as a user would have them: dark ink on white, 3x larger, RGB."""
    folder = tmp_path_factory.mktemp("digits")
    test = load_test_split("mnist-5k")
    files = []
    for i in range(20):
        index = i * 50
        picture = Image.fromarray(test.images[index, 0].numpy()).resize((84, 84), Image.Resampling.BICUBIC)
        path = folder / f"digit-{index}-label-{int(test.labels[index])}.png"
        ImageOps.invert(picture).convert("RGB").save(path)
        files.append((path, str(int(test.labels[index]))))
    return files


def test_tiny_preset_learns_mnist_5k(run_dir, tmp_path):
    out, summary = run_dir
    assert summary["dataset"] == "mnist-5k" and summary["val_accuracy"] >= 0.85
    result = attnlab_process("eval", "vit", "--checkpoint", str(out), "--json",
                             "--png", str(tmp_path / "png"))
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert scores["pictures"] == 1000 and scores["accuracy"] >= 0.85
    matrix = torch.tensor(scores["confusion_matrix"])
    assert matrix.sum() == 1000 and matrix.sum(dim=1).tolist() == [100] * 10
    assert scores["accuracy"] == pytest.approx(float(matrix.diag().sum()) / 1000)
    assert set(scores["per_class_accuracy"]) == {str(d) for d in range(10)}
    assert (tmp_path / "png" / "confusion-matrix.png").read_bytes().startswith(PNG_SIGNATURE)


def test_eval_prints_accuracy_per_class(run_dir, attnlab_cli):
    code, out, _ = attnlab_cli("eval", "vit", "--checkpoint", str(run_dir[0]))
    assert code == 0
    assert "accuracy" in out and "mnist-5k: 1,000 pictures" in out and "pictures/s" in out


def test_eval_tta_averages_each_picture_with_its_one_pixel_shifts(run_dir, attnlab_cli):
    code, out, _ = attnlab_cli("eval", "vit", "--checkpoint", str(run_dir[0]), "--tta", "--json")
    assert code == 0
    scores = json.loads(out)
    assert scores["views"] == 5 and scores["pictures"] == 1000 and scores["accuracy"] >= 0.85
    assert scores["accuracy"] == pytest.approx(torch.tensor(scores["confusion_matrix"]).diag().sum() / 1000)
    code, out, _ = attnlab_cli("eval", "vit", "--checkpoint", str(run_dir[0]), "--tta")
    assert code == 0 and "4 one-pixel shifts" in out


def test_eval_on_the_validation_split_matches_the_training_runs_last_score(run_dir, attnlab_cli):
    """The tiny preset's validation batches hold its whole validation split (400 digits), so the
    run's last validation accuracy is what `eval --split validation` must find."""
    out, summary = run_dir
    code, stdout, _ = attnlab_cli("eval", "vit", "--checkpoint", str(out), "--split", "validation", "--json")
    assert code == 0
    scores = json.loads(stdout)
    assert scores["split"] == "validation" and scores["pictures"] == 400
    assert scores["accuracy"] == pytest.approx(summary["val_accuracy"], abs=1e-9)
    code, stdout, _ = attnlab_cli("eval", "vit", "--checkpoint", str(out), "--split", "validation")
    assert code == 0 and "validation set mnist-5k: 400 pictures" in stdout


def test_predict_classes_is_the_best_mean_log_probability_over_the_views(run_dir):
    from attnlab.data.images import ONE_PIXEL_SHIFTS
    from attnlab.train.evaluate import predict_classes
    from attnlab.train.runs import load_classifier

    loaded, _, _, normalization = load_classifier(str(run_dir[0]))
    model = loaded.model.double().eval()
    pictures = load_test_split("mnist-5k").images  # (1000, 1, 28, 28) uint8
    to_double = lambda images: normalization(images).double()  # noqa: E731
    with torch.no_grad():
        single = predict_classes(model, pictures, to_double)
        assert torch.equal(single, model(to_double(pictures)).argmax(dim=-1))
        averaged = predict_classes(model, pictures, to_double, ONE_PIXEL_SHIFTS)
        probabilities = torch.zeros(len(pictures), 10, dtype=torch.float64)
        for dy, dx in ONE_PIXEL_SHIFTS:  # each view built by index arithmetic, not by shift()
            moved = torch.zeros_like(pictures)
            moved[..., max(dy, 0):28 + min(dy, 0), max(dx, 0):28 + min(dx, 0)] = \
                pictures[..., max(-dy, 0):28 + min(-dy, 0), max(-dx, 0):28 + min(-dx, 0)]
            probabilities += torch.log(torch.softmax(model(to_double(moved)), dim=-1))
    assert torch.equal(averaged, probabilities.argmax(dim=-1))
    assert not torch.equal(averaged, single)  # the views change some answers


def test_classify_reads_user_pictures(run_dir, digit_files, tmp_path):
    out, _ = run_dir
    paths = [str(path) for path, _ in digit_files]
    result = attnlab_process("classify", "--checkpoint", str(out), *paths, "--json",
                             "--show-attention", str(tmp_path / "page.html"), "--png", str(tmp_path / "png"))
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)["results"]
    correct = sum(r["predictions"][0]["class"] == label for r, (_, label) in zip(results, digit_files,
                                                                                  strict=True))
    assert correct >= 16, f"only {correct} of 20 digits right"
    for r in results:
        probabilities = [p["probability"] for p in r["predictions"]]
        assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)
    assert "The model thinks this is" in (tmp_path / "page.html").read_text()
    assert len(list((tmp_path / "png").glob("*-attention.png"))) == 20


def test_classify_probabilities_are_the_models(run_dir, digit_files, attnlab_cli):
    from attnlab.train.runs import load_classifier

    loaded, _, classes, normalization = load_classifier(str(run_dir[0]))
    path, _ = digit_files[0]
    pixels, _ = load_image(path)
    with torch.no_grad():
        expected = torch.softmax(loaded.model(normalization(pixels[None]))[0], -1)
    code, out, _ = attnlab_cli("classify", "--checkpoint", str(run_dir[0]), str(path), "--top", "10",
                           "--json")
    assert code == 0
    shown = {p["class"]: p["probability"] for p in json.loads(out)["results"][0]["predictions"]}
    assert shown == pytest.approx({name: float(p) for name, p in zip(classes, expected, strict=True)},
                                  abs=1e-6)


def test_resume_continues_the_run(run_dir, tmp_path):
    out, summary = run_dir
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(out), str(copy)], check=True)
    result = attnlab_process("train", "vit", "--preset", "tiny", "--out", str(copy), "--resume",
                             "--max-steps", str(summary["steps"] + 10), "--json")
    assert result.returncode == 0, result.stderr
    assert "resuming from step" in result.stderr
    assert json.loads(result.stdout)["steps"] == summary["steps"] + 10
    assert load_preprocessing(copy / "checkpoints" / f"step-{summary['steps'] + 10:08d}")[0] == "mnist-5k"


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p.write_bytes(b""), "is empty"),
    (lambda p: p.write_text("just text"), "not an image file"),
    (lambda p: None, "no such file"),
])
def test_bad_pictures_are_one_line_errors(run_dir, tmp_path, attnlab_cli, make, message):
    path = tmp_path / "input.png"
    make(path)
    code, out, err = attnlab_cli("classify", "--checkpoint", str(run_dir[0]), str(path))
    assert code == 2 and message in err and err.count("\n") == 1 and not out


def test_bad_checkpoints_and_options_are_one_line_errors(run_dir, tmp_path, attnlab_cli):
    code, _, err = attnlab_cli("classify", "--checkpoint", str(tmp_path), "x.png")
    assert code == 2 and err.count("\n") == 1
    code, _, err = attnlab_cli("eval", "vit", "--checkpoint", str(tmp_path / "missing"))
    assert code == 2 and err.count("\n") == 1
    code, _, err = attnlab_cli("classify", "--checkpoint", str(run_dir[0]), "x.png", "--top", "0")
    assert code == 2 and "--top" in err
    code, _, err = attnlab_cli("train", "vit", "--preset", "huge")
    assert code == 2 and "choose from: tiny, fashion-mnist" in err
    (tmp_path / "file").write_text("")
    code, _, err = attnlab_cli("classify", "--checkpoint", str(run_dir[0]), "x.png", "--png",
                           str(tmp_path / "file"))
    assert code == 2 and "is a file, not a folder" in err


@pytest.mark.slow  # 15 s; tests/train/test_distributed.py covers torchrun ranks by default
def test_train_vit_under_torchrun_two_processes(tmp_path):
    """`torchrun --nproc-per-node 2 attnlab train vit`: both ranks train one model (saved once,
    world size 2 recorded), only rank 0 reports, and the loss falls."""
    out = tmp_path / "ddp"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "attnlab", "train", "vit", "--preset", "tiny", "--out", str(out), "--max-steps", "60"],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads((out / "checkpoints" / "step-00000060" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 60
    assert sum(line.startswith("step 60/60") for line in done.stderr.splitlines()) == 1
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [loss for loss in losses if loss is not None]
    assert losses[-1] < losses[0] - 0.3



@pytest.mark.slow  # 19 s
def test_a_time_budget_stops_both_torchrun_ranks_at_the_same_step(tmp_path):
    """With --budget-minutes every rank must agree on the time spent: the same learning rate at
    each step and the same last step (a disagreement would leave one rank waiting forever)."""
    out = tmp_path / "ddp-budget"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "attnlab", "train", "vit", "--preset", "tiny", "--out", str(out),
         "--max-steps", "100000", "--budget-minutes", "0.1"],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("the budget of 0.1 minutes is spent") == 1  # rank 0 reports
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]["step"]
    assert 20 < last < 100000
    state = json.loads((out / "checkpoints" / f"step-{last:08d}" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == last
    rates = [r["lr"] for r in records if r["lr"] is not None]
    assert rates[-1] < 0.25 * max(rates)  # decayed over the budget


def test_the_validation_split_of_an_unknown_preset_is_a_clear_error():
    from types import SimpleNamespace

    from attnlab.train.checkpoint import CheckpointError
    from attnlab.train.evaluate import evaluate_classifier

    loaded = SimpleNamespace(folder="runs/old", meta={"preset": "gone"}, train_config=SimpleNamespace(seed=0))
    with pytest.raises(CheckpointError,
                       match="preset 'gone', not one of tiny, fashion-mnist, so its validation"):
        evaluate_classifier(loaded, "mnist-5k", [str(d) for d in range(10)], None, split="validation")
