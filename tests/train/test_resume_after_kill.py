"""SIGKILL a training process mid-run, then resume: no finished checkpoint is lost, and the resumed
run computes exactly what an uninterrupted run computes (same data order, same dropout masks)."""

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from toy import ToyModel, main, one_thread  # noqa: F401 (autouse fixture)

from attnlab.train import latest_checkpoint, load_checkpoint
from attnlab.train.checkpoint import checkpoint_folders, checkpoint_problem, partial_checkpoints
from attnlab.train.metrics import read_metrics

RUNNER = Path(__file__).with_name("toy.py")
ARGS = ["--max-steps", "60", "--checkpoint-every", "5", "--eval-every", "10", "--dropout", "0.1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _runner(out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(RUNNER), "--out", str(out), *ARGS, *extra]


def _wait_for_checkpoints(process: subprocess.Popen, out: Path, count: int) -> list[Path]:
    """Poll until ``count`` checkpoints exist (a step-* folder only appears complete)."""
    deadline = time.monotonic() + 60
    while len(found := [folder for _, folder in checkpoint_folders(out)]) < count:
        assert process.poll() is None, f"the run ended before it was killed:\n{process.stderr.read()}"
        assert time.monotonic() < deadline, "no checkpoint within 60 s"
        time.sleep(0.005)
    return found


def test_sigkill_loses_no_checkpoint_and_resume_continues_exactly(tmp_path):
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    victim = subprocess.Popen(_runner(killed, "--step-delay", "0.03"), env=ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    finished_before_kill = _wait_for_checkpoints(victim, killed, 2)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL

    for folder in finished_before_kill:  # nothing that was complete got lost or damaged
        assert checkpoint_problem(folder) is None, folder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a partial folder of the interrupted save may be there
        latest = latest_checkpoint(killed)
    saved_step = int(latest.name.removeprefix("step-"))
    assert 10 <= saved_step < 60

    resumed = subprocess.run(_runner(killed, "--resume"), env=ENV, capture_output=True, text=True,
                             timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from step {saved_step}" in resumed.stderr
    assert partial_checkpoints(killed) == []
    main(_runner(reference)[2:])  # the uninterrupted run, in this process (saves a start-up)

    expected, got = read_metrics(reference / "metrics.jsonl"), read_metrics(killed / "metrics.jsonl")
    assert [r["step"] for r in got] == [r["step"] for r in expected] == list(range(1, 61))
    for old, new in zip(expected, got, strict=True):
        for key in ("loss", "lr", "grad_norm", "val_loss"):
            assert new[key] == old[key], (new["step"], key)  # bit-for-bit on one thread
    final, reference_final = (load_checkpoint(out, model_class=ToyModel) for out in (killed, reference))
    assert final.step == reference_final.step == 60
    for name, tensor in reference_final.model.state_dict().items():
        assert torch.equal(final.model.state_dict()[name], tensor), name
