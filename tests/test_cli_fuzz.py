"""Every subcommand under random, clumsy and hostile arguments (hypothesis), with tiny models.

Each run must end, within a time bound, in exit code 0 (it worked) or 2 (a user mistake, told in
one line), never a traceback and never the generic "unexpected error" of exit 1 (an input that
reaches it is an error this project has not yet turned into its own message); and it must write
nothing outside the outputs its arguments name.
"""

import contextlib
import io
import itertools
import os
import signal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnlab import cli

SECONDS_PER_RUN = 30

# Values a clumsy or hostile user types: out of range, absurd, not numbers, empty, odd text.
NUMBERS = st.sampled_from(["-1", "0", "1", "3", "10", str(10**12), "1e400", "nan", "inf", "-inf",
                           "0.5", "x", "", " ", "٣"])
TEXTS = st.sampled_from(["The cat sat.", "", "   ", "\x00", "🙂" * 3, "a" * 5000, "--", "<script>",
                         "ROMEO:\nBut soft", "\u202e\u2028"])
PROBABILITIES = st.sampled_from(["0", "0.5", "1", "1.5", "-0.1", "nan", "x"])


def paths(tmp: Path):
    """Output paths: new, a folder, a missing folder, a read-only place, odd names."""
    return st.sampled_from([str(tmp / "new.html"), str(tmp), str(tmp / "missing" / "x.html"),
                            "/proc/nope.html", str(tmp / "folder"), "", str(tmp / "user.txt")])


def flag(name: str, values) -> st.SearchStrategy:
    return st.one_of(st.just([]), values.map(lambda v: [name, v]))


def options(*flags) -> st.SearchStrategy:
    return st.tuples(*flags).map(lambda parts: [x for part in parts for x in part])


def commands(tmp: Path, gpt: str, translator: str, vit: str, picture: str) -> st.SearchStrategy:
    out = paths(tmp)
    checkpoints = st.sampled_from([gpt, str(tmp), str(tmp / "missing"), str(tmp / "user.txt")])
    return st.one_of(
        options(flag("--layer", NUMBERS), flag("--head", NUMBERS), flag("--out", out),
                flag("--png", out), flag("--max-tokens", NUMBERS), flag("--json", st.just(None)))
        .flatmap(lambda o: TEXTS.map(lambda t: ["explain", t, *o])),
        options(flag("--max-new-tokens", NUMBERS), flag("--temperature", NUMBERS),
                flag("--top-k", NUMBERS), flag("--top-p", PROBABILITIES), flag("--seed", NUMBERS),
                flag("--stop", TEXTS))
        .flatmap(lambda o: st.tuples(TEXTS, checkpoints).map(
            lambda tc: ["generate", tc[0], "--checkpoint", tc[1], *o])),
        # The demo's default 2,048 tokens take seconds per backend: the fuzz asks for fewer.
        options(flag("--heads", NUMBERS), flag("--head-dim", NUMBERS), flag("--seed", NUMBERS))
        .flatmap(lambda o: st.sampled_from(["-1", "0", "1", "16", "x", str(10**12)]).map(
            lambda n: ["demo", "--seq-len", n, *o])),
        options(flag("--heads", NUMBERS), flag("--head-dim", NUMBERS), flag("--layers", NUMBERS),
                flag("--batch", NUMBERS), flag("--dtype", st.sampled_from(["float32", "bf16", "x"])))
        .flatmap(lambda o: NUMBERS.map(lambda n: ["cost", "--seq-len", n, *o])),
        # Scoring all the held-out works is legitimate long work: the fuzz asks for little of it.
        st.tuples(st.sampled_from(["-1", "0", "1", "200", "x", "nan", ""]), checkpoints).map(
            lambda mc: ["eval", "gpt", "--checkpoint", mc[1], "--max-tokens", mc[0]]),
        options(flag("--beam", NUMBERS), flag("--length-penalty", NUMBERS),
                flag("--show-attention", out), flag("--png", out))
        .flatmap(lambda o: TEXTS.map(lambda t: ["translate", "--checkpoint", translator, t, *o])),
        options(flag("--top", NUMBERS), flag("--invert", st.sampled_from(["auto", "yes", "x"])),
                flag("--show-attention", out), flag("--png", out))
        .flatmap(lambda o: st.sampled_from([picture, str(tmp / "user.txt"), str(tmp)]).map(
            lambda p: ["classify", "--checkpoint", vit, p, *o])),
    )


def _named_outputs(argv: list[str]) -> set[Path]:
    """The paths a run may write: those its arguments name, and `explain`'s default page."""
    named = {Path("attention.html").resolve()} if argv[0] == "explain" else set()
    for option, value in itertools.pairwise(argv):
        if option in ("--out", "--png", "--show-attention", "--translations"):
            named.add(Path(value).resolve())
    return named


def _files(folder: Path) -> dict[Path, bytes]:
    return {p.resolve(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


class _TooSlow(BaseException):
    """Not an Exception: the command's own catch-all must not swallow the time limit."""


def _alarm(signum, frame):
    raise _TooSlow


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Tiny checkpoints of a GPT, a translator and a ViT, and a picture."""
    from PIL import Image

    root = tmp_path_factory.mktemp("fuzz-models")
    runs = {"gpt": ["train", "gpt", "--preset", "shakespeare-char-tiny"],
            "translator": ["train", "translate", "--preset", "tiny"],
            "vit": ["train", "vit", "--preset", "tiny"]}
    for name, argv in runs.items():
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert cli.main([*argv, "--max-steps", "2", "--out", str(root / name)]) == 0
    picture = root / "digit.png"
    Image.new("L", (28, 28), 0).save(picture)
    return {name: str(root / name) for name in runs} | {"picture": str(picture)}


@pytest.fixture
def patched_pretrained(monkeypatch, minilm, smollm2):
    """``load_pretrained`` hands back the session's models instead of loading them again."""
    import attnlab.models.pretrained as pretrained

    models = {"minilm": minilm, "smollm2": smollm2}
    monkeypatch.setattr(pretrained, "load_pretrained", lambda name: models[name])


FUZZ = settings(deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@settings(FUZZ, max_examples=30)
@given(data=st.data())
def test_every_command_ends_in_one_line_or_success(data, tiny_models, patched_pretrained,
                                                   tmp_path_factory, monkeypatch):
    _one_run(data, tiny_models, tmp_path_factory, monkeypatch)


@pytest.mark.slow
@settings(FUZZ, max_examples=400, derandomize=False)
@given(data=st.data())
def test_every_command_ends_in_one_line_or_success_long(data, tiny_models, patched_pretrained,
                                                        tmp_path_factory, monkeypatch):
    _one_run(data, tiny_models, tmp_path_factory, monkeypatch)


def _one_run(data, tiny_models, tmp_path_factory, monkeypatch) -> None:
    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "folder").mkdir()
    (tmp / "user.txt").write_text("the user's own notes\n")
    argv = data.draw(commands(tmp, tiny_models["gpt"], tiny_models["translator"], tiny_models["vit"],
                              tiny_models["picture"]))
    argv = [a for a in argv if a is not None]
    monkeypatch.chdir(tmp)
    monkeypatch.delenv("ATTNLAB_DEBUG", raising=False)
    before = _files(tmp)
    stdout, stderr = io.StringIO(), io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(SECONDS_PER_RUN)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = cli.main(argv)
            except SystemExit as exit_:  # argparse's own refusals
                code = exit_.code
    except _TooSlow:
        pytest.fail(f"attnlab {' '.join(argv)[:200]} ran longer than {SECONDS_PER_RUN} s")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    err = stderr.getvalue()
    shown = " ".join(argv)[:300]
    assert code in (0, 2), f"exit {code} for attnlab {shown}: {err[-500:]}"
    assert "Traceback" not in err, f"attnlab {shown}"
    if code == 2:
        assert len(err.strip().splitlines()) == 1, f"attnlab {shown}: {err[-500:]}"
    named = _named_outputs(argv)
    after = _files(tmp)
    for path, content in before.items():
        assert after.get(path) == content or path in named, f"attnlab {shown} changed {path}"
    for path in set(after) - set(before):
        assert any(path == n or n in path.parents for n in named), f"attnlab {shown} wrote {path}"
    # Named or not, a file attnlab did not write is never replaced without --force.
    assert (tmp / "user.txt").read_text() == "the user's own notes\n", f"attnlab {shown}"
    assert os.getcwd() == str(tmp)
