"""The training loop on the toy task: learning, logs, accumulation, clipping, bf16, time limit."""

import dataclasses
import io
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file
from toy import ToyConfig, ToyModel, ToyTask, one_thread, toy_config, toy_model  # noqa: F401 (autouse fixture)

from attnlab.train import TrainConfig, latest_checkpoint, train
from attnlab.train.checkpoint import OPTIMIZER_FILE, checkpoint_folder, checkpoint_problem
from attnlab.train.distributed import DistributedContext
from attnlab.train.loop import _expected_steps, accumulate_gradients, evaluate
from attnlab.train.metrics import METRIC_KEYS, ProgressDisplay, read_metrics
from attnlab.train.optim import build_optimizer, decay_groups
from attnlab.train.schedule import lr_at_time

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 40-step toy run: ``(out_dir, TrainResult, task)``."""
    out = tmp_path_factory.mktemp("run")
    task = ToyTask()
    result = train(toy_model(), task, toy_config(max_steps=40), out, device="cpu")
    return out, result, task


def test_training_reduces_the_loss(run):
    out, result, _ = run
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl") if r["loss"] is not None]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.8
    assert result.val_loss < math.log(12) - 0.8  # well below guessing among 12 tokens


def test_result_names_the_final_step_checkpoint_and_files(run):
    out, result, _ = run
    assert result.final_step == 40
    assert result.checkpoint == checkpoint_folder(out, 40) == latest_checkpoint(out)
    assert result.metrics_path == out / "metrics.jsonl"
    assert result.curve_path == out / "loss.png"
    assert result.elapsed_s > 0


def test_metrics_have_every_key_and_evaluations_at_the_interval(run):
    out, result, _ = run
    records = read_metrics(out / "metrics.jsonl")
    assert all(tuple(r) == METRIC_KEYS for r in records)
    assert [r["step"] for r in records] == list(range(1, 41))
    assert [r["step"] for r in records if r["val_loss"] is not None] == [10, 20, 30, 40]
    assert records[-1]["val_loss"] == result.val_loss
    elapsed = [r["elapsed_s"] for r in records]
    assert elapsed == sorted(elapsed)
    assert records[0]["lr"] == pytest.approx(1e-2 / 5)  # first warmup step
    assert records[-1]["lr"] == pytest.approx(1e-3)  # min_lr at the last step


def test_loss_curve_is_a_png(run):
    out, _, _ = run
    data = (out / "loss.png").read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 10_000


def test_data_order_is_step_by_step_on_rank_zero(run):
    _, _, task = run
    assert task.requested == [(step, 0, 1) for step in range(40)]


def test_plain_progress_lines_when_stderr_is_not_a_terminal(tmp_path, capsys):
    train(toy_model(), ToyTask(), toy_config(max_steps=10, log_every=5, eval_every=10, checkpoint_every=10),
          tmp_path, device="cpu")
    lines = capsys.readouterr().err.splitlines()
    progress = [line for line in lines if line.startswith("step ")]
    assert [line.split()[1] for line in progress] == ["5/10", "10/10"]
    assert "tok/s" in progress[0]
    assert "val " in progress[1]
    assert any(line.startswith("saved checkpoint") for line in lines)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_terminal_shows_step_loss_val_and_speed():
    stream = _Terminal()
    with ProgressDisplay(max_steps=10, start_step=0, stream=stream) as display:
        display.advance(4)
        display.record({"step": 4, "loss": 2.5, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 1234.0,
                        "val_loss": 2.75, "elapsed_s": 1.0})
    text = stream.getvalue()
    assert "4/10" in text
    assert "loss 2.5000" in text
    assert "val 2.7500" in text
    assert "1,234 tok/s" in text


def test_a_time_budgeted_run_moves_the_step_it_counts_towards():
    stream = _Terminal()
    with ProgressDisplay(max_steps=1000, start_step=0, stream=stream) as display:
        display.set_total(80)
        display.advance(20)
    assert "20/80" in stream.getvalue()
    plain = io.StringIO()
    display = ProgressDisplay(max_steps=1000, start_step=0, stream=plain)
    display.set_total(75)
    display.record({"step": 5, "loss": None, "elapsed_s": 1.0})
    assert plain.getvalue().startswith("step 5/75")


def test_expected_steps_of_a_time_budget_extrapolate_this_runs_speed():
    assert _expected_steps(100, 100, 10.0, 30.0, max_steps=10_000) == 400
    assert _expected_steps(150, 50, 10.0, 30.0, max_steps=10_000) == 300  # resumed at step 100
    assert _expected_steps(100, 100, 10.0, 30.0, max_steps=250) == 250
    assert _expected_steps(100, 100, 10.0, -1.0, max_steps=10_000) == 100  # budget already spent
    assert _expected_steps(0, 0, 0.0, 30.0, max_steps=500) == 500


def test_progress_is_silent_when_disabled():
    stream = _Terminal()
    with ProgressDisplay(max_steps=10, start_step=0, enabled=False, stream=stream) as display:
        display.record({"step": 1, "loss": 2.0, "lr": 1.0, "grad_norm": 1.0, "tokens_per_s": 1.0,
                        "val_loss": None, "elapsed_s": 0.0})
        display.message("hello")
    assert stream.getvalue() == ""


def _gradients(model):
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("grad_accum", [4, 3])
def test_accumulated_gradients_equal_one_big_batch(grad_accum):
    task = ToyTask(batch_size=10)  # 10 rows into 3 slices is 4 + 3 + 3: weighting must be by count
    batch = task.train_batch(0, 0, 1)
    model = toy_model()
    whole_loss, whole_count = accumulate_gradients(model, task, batch, 1)
    whole = _gradients(model)
    model.zero_grad()
    loss, count = accumulate_gradients(model, task, batch, grad_accum)
    assert count == whole_count == 10 * 15
    assert loss == pytest.approx(whole_loss, abs=1e-6)
    for name, grad in _gradients(model).items():
        torch.testing.assert_close(grad, whole[name], atol=1e-6, rtol=0)


def test_grad_accum_in_train_gives_the_same_first_step(tmp_path):
    first = []
    for grad_accum in (1, 4):
        out = tmp_path / f"accum{grad_accum}"
        train(toy_model(), ToyTask(), toy_config(max_steps=1, grad_accum=grad_accum), out, device="cpu")
        first.append(read_metrics(out / "metrics.jsonl")[0])
    assert first[1]["loss"] == pytest.approx(first[0]["loss"], abs=1e-6)
    assert first[1]["grad_norm"] == pytest.approx(first[0]["grad_norm"], abs=1e-6)


def test_gradients_are_clipped_and_the_norm_before_clipping_is_logged(tmp_path):
    train(toy_model(), ToyTask(), toy_config(max_steps=1, grad_clip=0.05), tmp_path, device="cpu")
    logged = read_metrics(tmp_path / "metrics.jsonl")[0]["grad_norm"]
    moments = load_file(checkpoint_folder(tmp_path, 1) / OPTIMIZER_FILE)
    exp_avg = torch.cat([t.flatten() for name, t in moments.items() if name.endswith(".exp_avg")])
    assert logged > 0.5
    # after one step exp_avg = (1 - beta1) * clipped gradient, whose norm is grad_clip
    assert exp_avg.norm().item() == pytest.approx((1 - 0.9) * 0.05, rel=1e-4)


def test_evaluate_runs_without_dropout_and_restores_training_mode():
    model = toy_model(dropout=0.5)
    task = ToyTask()
    batches = task.val_batches()
    ctx = DistributedContext()
    first, second = evaluate(model, task, batches, ctx), evaluate(model, task, batches, ctx)
    assert model.training
    assert first == second  # no dropout: deterministic
    model.eval()
    with torch.no_grad():
        expected = sum(task.loss(model, b).item() for b in batches) / len(batches)
    assert first == pytest.approx(expected, rel=1e-6)


def test_max_minutes_stops_early_with_a_final_eval_and_checkpoint(tmp_path, capsys):
    config = toy_config(max_steps=1000, max_minutes=0.3 / 60, eval_every=1000, checkpoint_every=1000)
    result = train(toy_model(), ToyTask(step_delay=0.05), config, tmp_path, device="cpu")
    assert 1 <= result.final_step < 20
    assert result.checkpoint == checkpoint_folder(tmp_path, result.final_step)
    assert checkpoint_problem(result.checkpoint) is None
    last = read_metrics(tmp_path / "metrics.jsonl")[-1]
    assert last["step"] == result.final_step
    assert last["val_loss"] == result.val_loss is not None
    assert "max_minutes=0.005 reached" in capsys.readouterr().err


def test_a_time_budget_decays_the_learning_rate_and_stops_when_spent(tmp_path, capsys):
    budget_s = 0.6
    config = toy_config(max_steps=1000, budget_minutes=budget_s / 60, eval_every=1000,
                        checkpoint_every=1000)
    result = train(toy_model(), ToyTask(step_delay=0.02), config, tmp_path, device="cpu")
    assert 10 <= result.final_step < 40  # about budget_s / step_delay, never max_steps
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert records[-1]["step"] == result.final_step
    assert records[-1]["val_loss"] == result.val_loss is not None
    assert checkpoint_problem(result.checkpoint) is None
    after_warmup = [r for r in records if r["step"] > config.warmup_steps]
    rates = [r["lr"] for r in after_warmup]
    assert rates == sorted(rates, reverse=True)
    assert rates[0] > 0.6 * config.lr and rates[-1] < 0.5 * config.lr  # decayed through the budget
    # Each rate is the schedule at the time spent when the step began: after the step before it
    # was logged, before that step's own record was.
    def scheduled(elapsed_s):
        return lr_at_time(config.warmup_steps, elapsed_s, lr=config.lr, min_lr=config.min_lr,
                          warmup_steps=config.warmup_steps, budget_s=budget_s)

    for earlier, before, record in zip(after_warmup, after_warmup[1:], after_warmup[2:], strict=False):
        assert scheduled(before["elapsed_s"]) <= record["lr"] <= scheduled(earlier["elapsed_s"])
    assert "the budget of 0.01 minutes is spent" in capsys.readouterr().err


def test_a_resumed_time_budget_counts_the_time_already_spent(tmp_path):
    config = toy_config(max_steps=1000, budget_minutes=0.4 / 60, eval_every=5, checkpoint_every=5)
    first = train(toy_model(), ToyTask(step_delay=0.02), config, tmp_path, device="cpu")
    spent = read_metrics(tmp_path / "metrics.jsonl")[-1]["elapsed_s"]
    assert spent >= 0.4
    # The budget is spent: resuming trains no further step.
    again = train(toy_model(), ToyTask(step_delay=0.02), config, tmp_path, resume=True, device="cpu")
    assert again.final_step == first.final_step
    # A larger budget continues from the time spent, not from zero.
    longer = dataclasses.replace(config, budget_minutes=0.8 / 60)
    task = ToyTask(step_delay=0.02)
    more = train(toy_model(), task, longer, tmp_path, resume=True, device="cpu")
    assert task.requested[0][0] == first.final_step
    assert first.final_step < more.final_step < 3 * first.final_step
    resumed = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["step"] > first.final_step]
    assert resumed[0]["elapsed_s"] > spent
    assert resumed[0]["lr"] < 0.75 * config.lr  # halfway through the longer budget, not at its start


class _DtypeRecordingTask(ToyTask):
    def loss(self, model, batch):
        logits = model(batch)
        self.logit_dtype = logits.dtype
        return super().loss(model, batch)


def test_bf16_runs_the_forward_pass_under_autocast(tmp_path):
    task = _DtypeRecordingTask()
    result = train(toy_model(), task, toy_config(max_steps=15, bf16=True), tmp_path, device="cpu")
    assert task.logit_dtype == torch.bfloat16
    assert math.isfinite(result.val_loss)
    assert result.val_loss < math.log(12)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_in_process_continues_the_same_losses(tmp_path, capsys, optimizer):
    reference = tmp_path / "reference"
    config = toy_config(max_steps=20, optimizer=optimizer)
    train(toy_model(dropout=0.1), ToyTask(), config, reference, device="cpu")
    resumed = tmp_path / "resumed"
    shutil.copytree(reference, resumed)
    shutil.rmtree(checkpoint_folder(resumed, 20))
    capsys.readouterr()
    task = ToyTask()
    result = train(toy_model(seed=5, dropout=0.1), task, config, resumed, resume=True, device="cpu")
    assert "resuming from step 10" in capsys.readouterr().err
    assert task.requested[0] == (10, 0, 1)
    assert result.final_step == 20
    expected, got = read_metrics(reference / "metrics.jsonl"), read_metrics(resumed / "metrics.jsonl")
    assert [r["step"] for r in got] == list(range(1, 21))  # the old lines after step 10 were replaced
    for old, new in zip(expected, got, strict=True):
        assert new["loss"] == pytest.approx(old["loss"], abs=1e-6)


def test_muon_trains_the_matrices_and_adamw_the_rest(tmp_path):
    from attnlab.train.optim import MuonWithAdamW, build_optimizer

    model = toy_model()
    optimizer = build_optimizer(model, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95), device=CPU,
                                kind="muon")
    assert isinstance(optimizer, MuonWithAdamW)
    muon_params = {id(p) for p in optimizer.muon.param_groups[0]["params"]}
    for name, param in model.named_parameters():
        hidden_matrix = param.dim() == 2 and "embed" not in name
        assert (id(param) in muon_params) == hidden_matrix, name
    # Muon steps are scaled to AdamW's size; on this toy it wants a larger rate than AdamW's 1e-2.
    config = toy_config(optimizer="muon", lr=5e-2, min_lr=5e-3)
    result = train(toy_model(), ToyTask(), config, tmp_path / "run", device="cpu")
    losses = [row["loss"] for row in read_metrics(result.metrics_path) if row.get("loss") is not None]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.8
    with pytest.raises(ValueError, match="optimizer must be 'adamw' or 'muon'"):
        toy_config(optimizer="sgd")


@pytest.mark.cuda
def test_a_cuda_run_in_bf16_learns_and_resumes_on_the_cpu(tmp_path):
    # 40 steps, as in the CPU run above: after 20 the toy model is still near guessing (2.21 in
    # fp32 and bf16 alike), so a 20-step run could not show that bf16 on CUDA learns.
    config = toy_config(max_steps=40, bf16=True)
    result = train(toy_model(), ToyTask(), config, tmp_path, device="cuda")
    assert result.val_loss < math.log(12) - 0.8
    shutil.rmtree(checkpoint_folder(tmp_path, 40))
    resumed = train(toy_model(), ToyTask(), config, tmp_path, resume=True, device="cpu")
    assert resumed.final_step == 40
    assert resumed.val_loss == pytest.approx(result.val_loss, abs=0.05)  # bf16 on two devices


class _NanTask(ToyTask):
    def loss(self, model, batch):
        return super().loss(model, batch) * float("nan")


def test_a_non_finite_loss_stops_training_with_the_step(tmp_path):
    with pytest.raises(FloatingPointError, match="the training loss is nan at step 1"):
        train(toy_model(), _NanTask(), toy_config(), tmp_path, device="cpu")


def test_train_refuses_a_model_that_cannot_be_checkpointed(tmp_path):
    with pytest.raises(TypeError, match=r"mixes in SafetensorsModel.*got Linear"):
        train(torch.nn.Linear(2, 2), ToyTask(), toy_config(), tmp_path)


def test_train_refuses_an_incomplete_task(tmp_path):
    with pytest.raises(TypeError, match="task object lacks train_batch, val_batches, loss, count, save_as"):
        train(toy_model(), object(), toy_config(), tmp_path)


def test_decay_groups_decay_matrices_only():
    model = toy_model()
    decay, no_decay = decay_groups(model, 0.1)
    names = {id(p): name for name, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == [
        "attn.k_proj.weight", "attn.out_proj.weight", "attn.q_proj.weight", "attn.v_proj.weight",
        "head.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == [
        "attn.k_proj.bias", "attn.out_proj.bias", "attn.q_proj.bias", "attn.v_proj.bias", "head.bias",
        "norm.bias", "norm.weight", "position_embed.weight", "token_embed.weight"]
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)


def test_a_head_tied_to_the_embedding_is_not_decayed_and_counted_once():
    model = ToyModel(ToyConfig(embed_dim=12))
    model.head.weight = model.token_embed.weight  # (vocab, embed) both: a tied output head
    decay, no_decay = decay_groups(model, 0.1)
    assert not any(p is model.token_embed.weight for p in decay["params"])
    assert sum(p is model.token_embed.weight for p in no_decay["params"]) == 1


def test_optimizer_on_cpu_is_plain_adamw():
    optimizer = build_optimizer(toy_model(), lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), device=CPU)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert not optimizer.defaults["fused"]
    assert [g["name"] for g in optimizer.param_groups] == ["decay", "no_decay"]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"batch_size": 0}, "batch_size must be a whole number > 0, got batch_size=0"),
    ({"batch_size": 8, "grad_accum": 3}, "grad_accum=3 must divide batch_size=8"),
    ({"lr": 1e-3, "min_lr": 1e-2}, r"min_lr must be in \[0, lr=0.001\], got min_lr=0.01"),
    ({"warmup_steps": -1}, "warmup_steps must be a whole number >= 0, got warmup_steps=-1"),
    ({"max_minutes": 0}, "max_minutes must be > 0 or None"),
    ({"budget_minutes": -1.0}, r"budget_minutes must be > 0 or None \(schedule by steps\)"),
    ({"budget_minutes": math.inf}, "budget_minutes must be > 0 or None"),
    ({"grad_clip": 0.0}, "grad_clip must be > 0 or None"),
    ({"betas": (0.9, 1.0)}, r"betas must be two numbers in \[0, 1\)"),
    ({"lr": -1.0}, "lr must be > 0, got lr=-1.0"),
    ({"eval_every": 2.5}, "eval_every must be a whole number > 0, got eval_every=2.5"),
])
def test_train_config_rejects_bad_values_naming_them(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**overrides)


def test_train_config_round_trips_through_a_dict():
    config = toy_config(betas=(0.8, 0.99), max_minutes=2.5, grad_clip=None)
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown TrainConfig field\(s\) \['learning_rate'\]"):
        TrainConfig.from_dict({"learning_rate": 1.0})
