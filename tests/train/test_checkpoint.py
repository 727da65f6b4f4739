"""Checkpoints: exact round trips, verification against the manifest, keep-last-K, resume checks."""

import json
import random
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from toy import ToyConfig, ToyModel, ToyTask, one_thread, toy_config, toy_model  # noqa: F401 (autouse fixture)

from attnlab.models.llama import LlamaConfig, LlamaDecoder
from attnlab.train import CheckpointError, latest_checkpoint, load_checkpoint, train
from attnlab.train.checkpoint import (
    MANIFEST_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    CheckpointWarning,
    _write_manifest,
    capture_rng,
    checkpoint_folder,
    checkpoint_problem,
    prune_checkpoints,
    restore_training_state,
    save_checkpoint,
    seed_everything,
)
from attnlab.train.loop import accumulate_gradients
from attnlab.train.optim import build_optimizer

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A toy run of 20 steps with dropout, checkpointed at steps 10 and 20."""
    out = tmp_path_factory.mktemp("run")
    train(toy_model(dropout=0.1), ToyTask(), toy_config(max_steps=20), out, meta={"task": "toy"},
          device="cpu")
    return out


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A copy of ``trained_run`` that a test may damage."""
    return shutil.copytree(trained_run, tmp_path / "run")


def _optimizer_after_steps(model, config, steps=3):
    optimizer = build_optimizer(model, lr=config.lr, weight_decay=config.weight_decay, betas=config.betas,
                                device=CPU)
    task = ToyTask()
    for step in range(steps):
        accumulate_gradients(model, task, task.train_batch(step, 0, 1), 1)
        optimizer.step()
        optimizer.zero_grad()
    return optimizer


def _next_draws(model, optimizer):
    """What happens next: a dropout forward pass, one optimizer step, and every RNG's next draw."""
    task = ToyTask()
    model.train()
    logits = model(task.train_batch(99, 0, 1))
    accumulate_gradients(model, task, task.train_batch(100, 0, 1), 1)
    optimizer.step()
    weights = {name: t.clone() for name, t in model.state_dict().items()}
    return logits.detach(), weights, torch.rand(4), random.random(), np.random.rand(2)


def test_round_trip_restores_weights_optimizer_moments_and_every_rng(tmp_path):
    config = toy_config()
    model = toy_model(seed=0, dropout=0.3)
    optimizer = _optimizer_after_steps(model, config)
    seed_everything(1234)
    folder = save_checkpoint(tmp_path, step=3, model=model, optimizer=optimizer, train_config=config,
                             rng_states=[capture_rng()])
    saved_moments = {key: value.clone() for key, value in optimizer.state_dict()["state"][0].items()}
    expected = _next_draws(model, optimizer)

    fresh = toy_model(seed=99, dropout=0.3)
    fresh_optimizer = build_optimizer(fresh, lr=config.lr, weight_decay=config.weight_decay,
                                      betas=config.betas, device=CPU)
    seed_everything(5)
    state = restore_training_state(folder, fresh, fresh_optimizer, config, rank=0, world_size=1)

    assert state["step"] == 3
    restored = fresh_optimizer.state_dict()
    assert set(restored["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    for key, value in saved_moments.items():
        assert torch.equal(restored["state"][0][key], value), key
    assert [g["weight_decay"] for g in restored["param_groups"]] == [config.weight_decay, 0.0]
    assert restored["param_groups"][0]["betas"] == config.betas
    got = _next_draws(fresh, fresh_optimizer)
    assert torch.equal(got[0], expected[0])  # same weights and the same dropout mask
    assert all(torch.equal(got[1][name], expected[1][name]) for name in expected[1])
    assert torch.equal(got[2], expected[2])
    assert got[3] == expected[3]
    assert np.array_equal(got[4], expected[4])


def test_a_muon_optimizer_round_trips_both_of_its_parts(tmp_path):
    config = toy_config(optimizer="muon")

    def muon_optimizer(model):
        return build_optimizer(model, lr=config.lr, weight_decay=config.weight_decay, betas=config.betas,
                               device=CPU, kind="muon")

    model = toy_model(seed=0)
    optimizer = muon_optimizer(model)
    task = ToyTask()
    for step in range(3):
        accumulate_gradients(model, task, task.train_batch(step, 0, 1), 1)
        optimizer.step()
        optimizer.zero_grad()
    seed_everything(1234)
    folder = save_checkpoint(tmp_path, step=3, model=model, optimizer=optimizer, train_config=config,
                             rng_states=[capture_rng()])
    saved = {"state": {index: {key: value.clone() for key, value in entry.items()}
                       for index, entry in optimizer.state_dict()["state"].items()}}
    expected = _next_draws(model, optimizer)  # steps the optimizer: its live state changes
    fresh = toy_model(seed=99)
    fresh_optimizer = muon_optimizer(fresh)
    restore_training_state(folder, fresh, fresh_optimizer, config, rank=0, world_size=1)
    restored = fresh_optimizer.state_dict()
    assert restored["state"].keys() == saved["state"].keys()
    kinds = {tuple(sorted(value)) for value in restored["state"].values()}
    assert kinds == {("momentum_buffer",), ("exp_avg", "exp_avg_sq", "step")}  # Muon's and AdamW's
    for index, value in saved["state"].items():
        assert all(torch.equal(restored["state"][index][key], value[key]) for key in value)
    got = _next_draws(fresh, fresh_optimizer)
    assert torch.equal(got[0], expected[0])
    assert all(torch.equal(got[1][name], expected[1][name]) for name in expected[1])


def test_manifest_lists_every_file_with_its_size(trained_run):
    folder = checkpoint_folder(trained_run, 20)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    on_disk = {p.name for p in folder.iterdir()} - {MANIFEST_FILE}
    assert set(manifest["files"]) == on_disk
    assert "toy_task.json" in on_disk  # the task's assets travel with the checkpoint
    assert all(entry["bytes"] == (folder / name).stat().st_size for name, entry in manifest["files"].items())
    assert not any(p.suffix in {".pt", ".pth", ".bin", ".pkl"} for p in folder.iterdir())


def test_load_checkpoint_with_an_explicit_model_class(trained_run):
    loaded = load_checkpoint(checkpoint_folder(trained_run, 10), model_class=ToyModel)
    assert loaded.step == 10
    assert loaded.meta == {"task": "toy"}
    assert loaded.train_config == toy_config(max_steps=20)
    assert loaded.tokenizer is None
    assert not loaded.model.training
    assert loaded.metrics["val_loss"] > 0


def test_load_checkpoint_of_an_out_dir_takes_the_latest(trained_run):
    loaded = load_checkpoint(trained_run, model_class=ToyModel)
    assert loaded.step == 20
    assert loaded.folder == checkpoint_folder(trained_run, 20)


def test_load_checkpoint_of_a_model_type_attnlab_lacks_says_so(trained_run):
    with pytest.raises(CheckpointError, match=r"holds a 'ToyModel' model, which attnlab\.models does not"):
        load_checkpoint(trained_run)


def test_load_checkpoint_refuses_another_model_class(trained_run):
    with pytest.raises(CheckpointError, match="holds a ToyModel, not a LlamaDecoder"):
        load_checkpoint(trained_run, model_class=LlamaDecoder)


def test_load_checkpoint_of_a_plain_folder_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="is not a training checkpoint"):
        load_checkpoint(tmp_path)


def _truncate_weights(folder):
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])


def _remove_manifest(folder):
    (folder / MANIFEST_FILE).unlink()


def _flip_a_byte(folder):
    path = folder / OPTIMIZER_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, different content: only the hash can tell
    path.write_bytes(bytes(data))


def _garble_manifest(folder):
    (folder / MANIFEST_FILE).write_text('{"files": ["model.safetensors"]}')


def _remove_state(folder):
    (folder / "trainer_state.json").unlink()


@pytest.mark.parametrize(("damage", "problem"), [
    (_truncate_weights, "model.safetensors has"),
    (_remove_manifest, "no manifest.json"),
    (_flip_a_byte, "optimizer.safetensors does not match its sha256"),
    (_remove_state, "trainer_state.json is missing"),
    (_garble_manifest, "manifest.json is unreadable"),
])
def test_damaged_checkpoint_is_skipped_with_a_warning_and_never_loaded(run_copy, damage, problem):
    newest = checkpoint_folder(run_copy, 20)
    damage(newest)
    with pytest.warns(CheckpointWarning, match=f"step-00000020: {problem}"):
        assert latest_checkpoint(run_copy) == checkpoint_folder(run_copy, 10)
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(newest, model_class=ToyModel)


def test_partial_folder_is_ignored_with_a_warning(run_copy):
    partial = run_copy / "checkpoints" / ".tmp-step-00000030-abc"
    shutil.copytree(checkpoint_folder(run_copy, 20), partial)
    with pytest.warns(CheckpointWarning, match="partial checkpoint .*tmp-step-00000030"):
        assert latest_checkpoint(run_copy) == checkpoint_folder(run_copy, 20)


def test_no_checkpoint_at_all_gives_none(tmp_path):
    assert latest_checkpoint(tmp_path) is None


def test_keep_last_keeps_the_newest_complete_ones(tmp_path):
    config = toy_config()
    model = toy_model()
    optimizer = _optimizer_after_steps(model, config, steps=1)
    for step in (1, 2, 3, 4, 5):
        save_checkpoint(tmp_path, step=step, model=model, optimizer=optimizer, train_config=config,
                        rng_states=[capture_rng()], keep_last=2)
    remaining = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert remaining == ["step-00000004", "step-00000005"]


class _ClashingTask(ToyTask):
    def save_assets(self, folder):
        (folder / "config.json").write_text("{}")


def test_task_assets_may_not_take_the_checkpoints_own_names(tmp_path):
    config = toy_config()
    model = toy_model()
    optimizer = _optimizer_after_steps(model, config, steps=1)
    with pytest.raises(ValueError, match=r"_ClashingTask.save_assets wrote \['config.json'\]"):
        save_checkpoint(tmp_path, step=1, model=model, optimizer=optimizer, train_config=config,
                        rng_states=[capture_rng()], task=_ClashingTask())
    assert list((tmp_path / "checkpoints").iterdir()) == []  # the staging folder is gone too


def test_pruning_leaves_newer_folders_of_a_crashed_run_alone(run_copy):
    deleted = prune_checkpoints(run_copy, 1, newest=10)
    assert deleted == []
    assert checkpoint_folder(run_copy, 20).is_dir()


def test_pruning_never_deletes_a_step_folder_attnlab_did_not_write(run_copy):
    users = run_copy / "checkpoints" / "step-00000001"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    deleted = prune_checkpoints(run_copy, 1, newest=10)
    assert users not in deleted
    assert (users / "notes.txt").read_text() == "mine"


def test_saving_a_step_again_replaces_its_folder(run_copy):
    config = toy_config()
    model = toy_model(seed=3)
    optimizer = _optimizer_after_steps(model, config, steps=1)
    folder = save_checkpoint(run_copy, step=20, model=model, optimizer=optimizer, train_config=config,
                             rng_states=[capture_rng()])
    assert latest_checkpoint(run_copy) == folder
    loaded = load_checkpoint(folder, model_class=ToyModel)
    assert torch.equal(loaded.model.head.weight, model.head.weight)
    assert not list((run_copy / "checkpoints").glob(".tmp-*"))


def test_a_fused_optimizer_state_resumes_into_the_plain_loop(tmp_path):
    # A GPU run uses fused AdamW; its checkpoint must resume on a CPU, where the loop is plain.
    config = toy_config()
    model = toy_model()
    fused = torch.optim.AdamW(model.parameters(), lr=config.lr, fused=True)
    accumulate_gradients(model, ToyTask(), ToyTask().train_batch(0, 0, 1), 1)
    fused.step()
    folder = save_checkpoint(tmp_path, step=1, model=model, optimizer=fused, train_config=config,
                             rng_states=[capture_rng()])
    plain = torch.optim.AdamW(model.parameters(), lr=config.lr)
    restore_training_state(folder, model, plain, config, rank=0, world_size=1)
    assert not plain.param_groups[0]["fused"]
    assert torch.equal(plain.state[model.head.weight]["exp_avg"], fused.state[model.head.weight]["exp_avg"])


def _restore(folder, model, config, world_size=1):
    optimizer = build_optimizer(model, lr=config.lr, weight_decay=config.weight_decay, betas=config.betas,
                                device=CPU)
    return restore_training_state(folder, model, optimizer, config, rank=0, world_size=world_size)


def test_resuming_with_another_model_config_is_refused(trained_run):
    other = ToyModel(ToyConfig(embed_dim=16, dropout=0.1))
    with pytest.raises(CheckpointError, match=r"different model .*embed_dim: 32 -> 16"):
        _restore(checkpoint_folder(trained_run, 20), other, toy_config(max_steps=20))


def test_resuming_with_another_model_class_is_refused(trained_run):
    other = LlamaDecoder(LlamaConfig(vocab_size=12, embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=1,
                                     ffn_dim=16, max_positions=16))
    with pytest.raises(CheckpointError, match="model_type: 'ToyModel' -> 'LlamaDecoder'"):
        _restore(checkpoint_folder(trained_run, 20), other, toy_config(max_steps=20))


def test_resuming_with_a_step_changing_config_is_refused(trained_run):
    config = replace(toy_config(max_steps=20), lr=5e-3, batch_size=4)
    with pytest.raises(CheckpointError, match=r"batch_size: 8 -> 4; lr: 0\.01 -> 0\.005"):
        _restore(checkpoint_folder(trained_run, 20), toy_model(dropout=0.1), config)


def test_resuming_may_extend_max_steps(trained_run):
    state = _restore(checkpoint_folder(trained_run, 20), toy_model(dropout=0.1), toy_config(max_steps=50))
    assert state["step"] == 20


def test_resuming_with_another_world_size_is_refused(trained_run):
    with pytest.raises(CheckpointError, match=r"written by 1 process.* this run has 2"):
        _restore(checkpoint_folder(trained_run, 20), toy_model(dropout=0.1), toy_config(max_steps=20),
                 world_size=2)


def test_resume_without_a_checkpoint_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match=r"cannot resume: .* holds no complete checkpoint"):
        train(toy_model(), ToyTask(), toy_config(), tmp_path, resume=True, device="cpu")


def test_a_fresh_run_refuses_an_out_dir_with_checkpoints(run_copy):
    with pytest.raises(CheckpointError, match=r"already holds checkpoints .*step-00000020.*resume=True"):
        train(toy_model(), ToyTask(), toy_config(), run_copy, device="cpu")


def _edit_json(folder, name, edit):
    """Change JSON file ``name`` of a checkpoint and re-sign the manifest, as a clumsy hand would."""
    path = folder / name
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    (folder / MANIFEST_FILE).unlink()
    _write_manifest(folder, step=20)


def test_resuming_with_a_malformed_optimizer_setting_is_refused_before_anything_changes(run_copy):
    folder = checkpoint_folder(run_copy, 20)
    _edit_json(folder, STATE_FILE, lambda state: state["optimizer"]["param_groups"][0].update(eps="tiny"))
    model = toy_model(seed=5, dropout=0.1)
    before = {name: t.clone() for name, t in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"trainer_state\.json: optimizer group 0 has eps='tiny'"):
        _restore(folder, model, toy_config(max_steps=20))
    assert all(torch.equal(model.state_dict()[name], t) for name, t in before.items())


def test_resuming_with_a_malformed_rng_state_is_refused(run_copy):
    folder = checkpoint_folder(run_copy, 20)
    _edit_json(folder, STATE_FILE, lambda state: state["rng"][0]["numpy"].update(keys=[1, 2, 3]))
    with pytest.raises(CheckpointError, match="the RNG state of rank 0 cannot be restored"):
        _restore(folder, toy_model(dropout=0.1), toy_config(max_steps=20))


def test_a_manifest_that_lists_a_path_outside_the_checkpoint_marks_it_damaged(run_copy):
    folder = checkpoint_folder(run_copy, 20)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["files"]["../../../etc/hostname"] = {"bytes": 1, "sha256": "0"}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert checkpoint_problem(folder) == ("manifest.json lists '../../../etc/hostname', a path outside the "
                                          "checkpoint")


def test_load_checkpoint_refuses_a_model_type_that_names_something_else_in_attnlab_models(run_copy):
    folder = checkpoint_folder(run_copy, 20)
    _edit_json(folder, "config.json", lambda config: config.update(model_type="load_pretrained"))
    with pytest.raises(CheckpointError, match=r"holds a 'load_pretrained' model, which attnlab\.models"):
        load_checkpoint(folder)


def test_a_trainer_state_of_another_format_is_refused_naming_the_file(run_copy):
    folder = checkpoint_folder(run_copy, 20)
    _edit_json(folder, STATE_FILE, lambda state: state.update(format="attnlab-checkpoint/0"))
    with pytest.raises(CheckpointError, match=rf"{STATE_FILE} has format 'attnlab-checkpoint/0', not"):
        load_checkpoint(folder, model_class=ToyModel)
