"""The real explorer server, started once per session on a free loopback port.

``browser_thread`` is ``(pool, browser)``: Chromium driven from one worker thread of its own,
one per test module (Playwright's sync API runs one instance per thread, and the session
``browser`` of tests/conftest.py holds the main thread's), so page tests run their bodies in
``pool``.

``explorer`` serves MiniLM, SmolLM2 (the session's model objects from tests/conftest.py) and a
tiny GPT trained here with ``attnlab train gpt --preset shakespeare-char-tiny``; it is a
:class:`attnlab.serve.runner.BackgroundServer` (``.url``, ``.explorer.stats``).
"""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser_thread():
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chromium")

    def start():
        from playwright.sync_api import sync_playwright

        assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run scripts/setup.sh --dev"
        playwright = sync_playwright().start()
        return playwright, playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)

    playwright, browser = pool.submit(start).result()
    yield pool, browser
    pool.submit(lambda: (browser.close(), playwright.stop())).result()
    pool.shutdown()

