"""Two processes on loopback with torchrun (gloo): identical weights at the end, a falling loss,
one writer, and a validation loss averaged over both ranks' shards."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from toy import ToyModel, ToyTask, one_thread, state_hash, toy_config, toy_model  # noqa: F401 (autouse fixture)

from attnlab.errors import AttnlabError
from attnlab.train import load_checkpoint
from attnlab.train.checkpoint import RNG_FILE, checkpoint_folder, read_trainer_state, restore_training_state
from attnlab.train.distributed import DistributedContext, process_rank, setup_distributed
from attnlab.train.loop import evaluate
from attnlab.train.metrics import read_metrics
from attnlab.train.optim import build_optimizer

RUNNER = Path(__file__).with_name("toy.py")
STEPS = 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """``(out_dir, stderr)`` of the toy task trained by two torchrun processes."""
    out = tmp_path_factory.mktemp("ddp")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", str(RUNNER), "--out", str(out), "--hash-dir", str(out),
               "--max-steps", str(STEPS), "--dropout", "0.1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stderr


def test_ranks_end_with_identical_weights(two_process_run):
    out, _ = two_process_run
    hashes = [(out / f"rank{rank}.sha256").read_text() for rank in (0, 1)]
    assert hashes[0] == hashes[1]
    saved = load_checkpoint(out, model_class=ToyModel)
    assert saved.step == STEPS
    assert state_hash(saved.model) == hashes[0]


def test_loss_falls(two_process_run):
    out, _ = two_process_run
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl") if r["loss"] is not None]
    assert len(losses) == STEPS
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5


def test_only_rank_zero_reports(two_process_run):
    _, stderr = two_process_run
    assert sum(line.startswith(f"step {STEPS}/{STEPS}") for line in stderr.splitlines()) == 1
    assert sum(line.startswith("saved checkpoint") for line in stderr.splitlines()) == STEPS // 10


def test_validation_loss_covers_both_ranks_shards(two_process_run):
    out, _ = two_process_run
    saved = load_checkpoint(out, model_class=ToyModel)
    task = ToyTask()
    single = evaluate(saved.model, task, task.val_batches(), DistributedContext())
    assert saved.metrics["val_loss"] == pytest.approx(single, abs=1e-6)


def test_checkpoint_holds_each_ranks_rng_and_restores_rank_one(two_process_run):
    out, _ = two_process_run
    folder = checkpoint_folder(out, STEPS)
    state = read_trainer_state(folder)
    assert state["world_size"] == 2
    saved = load_file(folder / RNG_FILE)
    assert not torch.equal(saved["rank0.torch_cpu"], saved["rank1.torch_cpu"])  # seeded seed + rank
    model = toy_model(dropout=0.1)
    config = toy_config(max_steps=STEPS)
    optimizer = build_optimizer(model, lr=config.lr, weight_decay=config.weight_decay, betas=config.betas,
                                device=torch.device("cpu"))
    restore_training_state(folder, model, optimizer, config, rank=1, world_size=2)
    assert torch.equal(torch.get_rng_state(), saved["rank1.torch_cpu"])


def test_a_single_process_needs_no_torchrun_variables(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = setup_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    assert ctx.sum([1.5, 2.0]) == [1.5, 2.0]
    assert ctx.gather("x") == ["x"]
    assert ctx.any(True) and not ctx.any(False)


def test_a_missing_torchrun_variable_is_named(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match="needs the environment variable RANK"):
        setup_distributed("cpu")


def test_a_malformed_torchrun_variable_is_named(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "first")
    with pytest.raises(ValueError, match="RANK must be a whole number, got RANK='first'"):
        setup_distributed("cpu")


def test_the_process_rank_is_0_outside_torchrun(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert process_rank() == 0


def test_the_process_rank_is_torchruns_rank(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    assert process_rank() == 3


@pytest.mark.parametrize(("value", "message"), [("first", "RANK must be a whole number, got RANK='first'"),
                                                ("-1", "RANK must be >= 0, got RANK='-1'")])
def test_a_malformed_rank_is_a_one_line_user_error(monkeypatch, value, message):
    monkeypatch.setenv("RANK", value)
    with pytest.raises(AttnlabError, match=message):
        process_rank()
