"""The models an explorer serves, loaded once at start from names and checkpoint folders that
the command line gives (never from anything a browser sends)."""

from __future__ import annotations

from pathlib import Path

from attnlab.errors import AttnlabError
from attnlab.explain.collect import MODEL_TEXT
from attnlab.explain.i18n import strings
from attnlab.serve.app import ServedModel

EXAMPLES = {
    "encoder": "The animal didn't cross the street because it was too tired.",
    "decoder": "The capital of France is",
}


class LoadError(AttnlabError, ValueError):
    """A model or checkpoint that cannot be served: one line naming it and why."""


def load_named(name: str, taken: set[str] = frozenset()) -> ServedModel:
    """A pretrained model by name or a local model folder (see
    :func:`attnlab.models.load_pretrained`); a folder is named by its own name."""
    from attnlab.models.pretrained import MissingPackageError, load_pretrained

    try:
        model, tokenizer = load_pretrained(name)
    except (MissingPackageError, ValueError, OSError) as err:
        raise LoadError(f"--model {name}: {err}") from None
    label = name if name in MODEL_TEXT else (Path(name).resolve().name or name)
    title, description = MODEL_TEXT.get(name, (label, ""))
    kind = "decoder" if model.is_causal else "encoder"
    if not description:  # the page shows these in the reader's language ("model.text." keys)
        description = strings("en")[f"model.text.{kind}_size"].format(
            layers=model.config.num_layers, heads=model.config.num_heads)
    return ServedModel(id=unique_id(label, taken), title=title, description=description, model=model,
                       tokenizer=tokenizer, example=EXAMPLES[kind])


def gpt_part(folder: str | Path, loaded, taken: set[str]) -> ServedModel:
    """The Write part for a GPT trained with ``attnlab train gpt`` (``loaded`` from ``folder``)."""
    from attnlab.train.checkpoint import CheckpointError
    from attnlab.train.runs import check_gpt_run

    try:
        check_gpt_run(loaded)
    except CheckpointError as err:
        raise LoadError(f"--checkpoint {folder}: {err}") from None
    name = unique_id("gpt-" + (Path(folder).resolve().name or "checkpoint"), taken)
    cfg = loaded.model.config
    description = strings("en")["model.text.gpt"].format(
        layers=cfg.num_layers, heads=cfg.num_heads, steps=f"{loaded.step:,}", positions=cfg.max_positions)
    example = "ROMEO:\nBut soft, what light"
    try:
        loaded.tokenizer.encode(example)
    except ValueError:  # a character vocabulary without some of these letters
        example = "the"
    title = strings("en")["model.text.gpt_title"].format(folder=Path(folder).name)
    return ServedModel(id=name, title=title, description=description,
                       model=loaded.model, tokenizer=loaded.tokenizer, example=example)


def load_checkpoint_part(folder: str | Path, taken: set[str]):
    """The part of the explorer a checkpoint folder makes, recognised by the checkpoint itself
    (its ``meta.json`` task): a GPT (the Write part), a translator (Translate) or a ViT
    (Recognise a picture). ``taken`` holds the ids already in use."""
    from attnlab.train.checkpoint import CheckpointError, load_checkpoint

    try:
        loaded = load_checkpoint(folder)
    except (CheckpointError, OSError, ValueError) as err:
        raise LoadError(f"--checkpoint {folder}: {err}") from None
    task = loaded.meta.get("task")
    if task == "gpt":
        return gpt_part(folder, loaded, taken)
    if task == "translate":
        from attnlab.serve.translate import translator_part

        return translator_part(folder, loaded, taken)
    if task == "vit":
        from attnlab.serve.vision import classifier_part

        return classifier_part(folder, loaded, taken)
    raise LoadError(f"--checkpoint {folder}: a {task!r} run; the explorer serves checkpoints of "
                    "`attnlab train gpt`, `train translate` and `train vit`")


def unique_id(base: str, taken: set[str]) -> str:
    """``base``, or ``base-2``, ``base-3``... when taken."""
    name, number = base, 2
    while name in taken:
        name, number = f"{base}-{number}", number + 1
    return name
