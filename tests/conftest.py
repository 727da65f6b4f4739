"""Shared test configuration: the ``cuda`` marker's auto-skip, tiled block-size fixtures, the
pretrained models, loaded once per session for every test folder, and ``browser``.

``browser`` is Debian's Chromium driven by Playwright's sync API from the main thread, launched
once per session (a missing one fails, never skips: CI installs it with scripts/setup.sh
--dev). Playwright's sync API allows one instance per thread, so every test that drives a page
from the main thread uses this one; tests/serve's live-page modules drive theirs from worker
threads of their own.

``minilm`` and ``smollm2`` are ``(model, tokenizer)`` as ``load_pretrained(name)`` returns them
(built by calling the loaders directly, so that CLI tests may patch ``load_pretrained`` to hand
back these fixtures). ``hf_smollm2`` is the ``transformers`` reference model (eager, float32)
from the same GGUF file, and ``hf_smollm2_tokenizer`` its tokenizer: loading the reference
dequantizes the whole file, so it happens once per run.
"""

import os
from pathlib import Path

import pytest
import torch

from attnlab.attention import native, tiled


def pytest_collection_modifyitems(config, items):
    """Tests marked ``@pytest.mark.cuda`` skip when no CUDA GPU is present (the only skip)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="session")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is not installed: run scripts/setup.sh --dev")
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup.sh --dev")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def tiny_translator_runs(tmp_path_factory) -> dict[str, str]:
    """``{"transformer": DIR, "lstm": DIR}``: `attnlab train translate --preset tiny` run for 5
    steps of each architecture, once per session (the numbers, not the quality, are under test)."""
    import contextlib
    import io

    from attnlab.cli import main

    folders = {}
    for arch in ("transformer", "lstm"):
        out = tmp_path_factory.mktemp(f"translator-{arch}") / "run"
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert main(["train", "translate", "--preset", "tiny", "--arch", arch, "--max-steps", "5",
                         "--out", str(out)]) == 0
        folders[arch] = str(out)
    return folders


@pytest.fixture(scope="session", autouse=True)
def native_kernel_built():
    """Build (or find) the native kernel before the first test, so that its one-time message on
    stderr never lands inside a test that reads stderr."""
    native.available()


@pytest.fixture
def set_blocks(monkeypatch):
    """``set_blocks(block_q, block_k)`` makes the tiled and native backends use tiles of that
    size (clipped to the sequence lengths; the native kernel rounds ``block_k`` up to its vector
    width) for the rest of the test.

    With a one-element tile budget :func:`tiled.choose_blocks` falls to its lower bound, so
    ``MIN_BLOCK_Q`` becomes the query block size exactly.
    """

    def set_(block_q: int, block_k: int) -> None:
        monkeypatch.setattr(tiled, "TILE_ELEMENTS", 1)
        monkeypatch.setattr(tiled, "MIN_BLOCK_Q", block_q)
        monkeypatch.setattr(tiled, "BLOCK_K", block_k)
        monkeypatch.setattr(native, "BLOCK_Q", block_q)
        monkeypatch.setattr(native, "BLOCK_K", block_k)

    return set_


@pytest.fixture
def small_blocks(set_blocks):
    """8-query x 16-key tiles: short sequences already take the tiled backend's multi-block,
    partial-block and skipped-block paths."""
    set_blocks(8, 16)


GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_folder():
    from attnlab.models.pretrained.packages import package_folder
    from attnlab.models.pretrained.smollm2 import PACKAGE, PIP_SPEC

    return package_folder(PACKAGE, PIP_SPEC)


@pytest.fixture(scope="session")
def minilm():
    """``(BertEncoder, BertTokenizer)``."""
    from attnlab.models.pretrained.minilm import load_minilm

    return load_minilm()


@pytest.fixture(scope="session")
def smollm2():
    """``(LlamaDecoder, LlamaTokenizer)``."""
    from attnlab.models.pretrained.smollm2 import load_smollm2

    return load_smollm2()


@pytest.fixture(scope="session")
def hf_smollm2():
    """The reference ``transformers`` LLaMA model from the same GGUF file (eager attention, float32)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        smollm2_folder(), gguf_file=GGUF_FILE, attn_implementation="eager", dtype=torch.float32
    )
    return model.eval()


@pytest.fixture(scope="session")
def hf_smollm2_tokenizer():
    """The reference ``transformers`` tokenizer converted from the GGUF file's metadata."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import transformers

    return transformers.AutoTokenizer.from_pretrained(smollm2_folder(), gguf_file=GGUF_FILE)


@pytest.fixture
def attnlab_cli(capsys):
    """``attnlab_cli(*argv) -> (exit status, stdout, stderr)``: ``attnlab ARGV`` run in this
    process, argparse errors included."""
    from attnlab.cli import main

    def run(*argv: str) -> tuple[int, str, str]:
        try:
            code = main(list(argv))
        except SystemExit as exit_:
            code = exit_.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
