"""The real explorer server, started once per session on a free loopback port.

``explorer`` serves MiniLM, SmolLM2 (the session's model objects from tests/conftest.py) and a
tiny GPT trained here with ``attnlab train gpt --preset shakespeare-char-tiny``; it is a
:class:`attnlab.serve.runner.BackgroundServer` (``.url``, ``.explorer.stats``).
"""

import pytest

from attnlab.serve.app import ServedModel
from attnlab.serve.models import EXAMPLES, load_checkpoint_part


@pytest.fixture(scope="session")
def tiny_gpt_run(tmp_path_factory):
    """The ``--out`` folder of a 30-step shakespeare-char-tiny GPT run."""
    from attnlab.cli import main

    out = tmp_path_factory.mktemp("serve-gpt") / "run"
    assert main(["train", "gpt", "--preset", "shakespeare-char-tiny", "--max-steps", "30",
                 "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def served_models(minilm, smollm2, tiny_gpt_run):
    from attnlab.explain.collect import MODEL_TEXT

    models = []
    for name, (model, tokenizer) in (("minilm", minilm), ("smollm2", smollm2)):
        title, description = MODEL_TEXT[name]
        kind = "decoder" if model.is_causal else "encoder"
        models.append(ServedModel(id=name, title=title, description=description, model=model,
                                  tokenizer=tokenizer, example=EXAMPLES[kind]))
    models.append(load_checkpoint_part(tiny_gpt_run, {m.id for m in models}))
    return models


@pytest.fixture(scope="session")
def explorer(served_models):
    from attnlab.serve.runner import BackgroundServer

    with BackgroundServer(served_models) as server:
        yield server
