"""Every subcommand under random, clumsy and hostile arguments (hypothesis), with tiny models.

Each run must end, within a time bound, in exit code 0 (it worked) or 2 (a user mistake, told in
one line, the last on stderr), never a traceback and never the generic "unexpected error" of
exit 1 (an input that reaches it is an error this project has not yet turned into its own
message); and it must write nothing outside the outputs its arguments name.

The slow commands get tests of their own with few examples: `train` (tiny presets, at most 3
steps), `chat` (its standard input piped, empty or closed, a few tokens per reply), `eval
translate` and `eval vit` (a few verses, the tiny ViT) and `serve` (its flags and checkpoints;
the server itself is replaced, so nothing ever listens for long).
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
    """The paths a run may write: those its arguments name, `explain`'s default page and
    `train`'s default folder."""
    named = {Path("attention.html").resolve()} if argv[0] == "explain" else set()
    if argv[0] == "train":
        named.add(Path("runs").resolve())
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
    """``load_pretrained`` hands back the session's models instead of loading them again (and
    answers any other name as it does)."""
    import attnlab.models.pretrained as pretrained

    models = {"minilm": minilm, "smollm2": smollm2}
    real = pretrained.load_pretrained
    monkeypatch.setattr(pretrained, "load_pretrained", lambda name: models.get(name) or real(name))


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


def _fuzz_folder(tmp_path_factory) -> Path:
    """A fresh folder for one run, holding a folder and a file of the user's."""
    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "folder").mkdir()
    (tmp / "user.txt").write_text("the user's own notes\n")
    return tmp


def _one_run(data, tiny_models, tmp_path_factory, monkeypatch) -> None:
    tmp = _fuzz_folder(tmp_path_factory)
    argv = data.draw(commands(tmp, tiny_models["gpt"], tiny_models["translator"], tiny_models["vit"],
                              tiny_models["picture"]))
    _check_run(argv, tmp, monkeypatch)


def _check_run(argv: list, tmp: Path, monkeypatch) -> None:
    """Run ``attnlab ARGV`` in ``tmp`` and check the contract of the module docstring."""
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
    if code == 2:  # one line, the last: progress printed before it (e.g. "Loading ...") may stay
        lines = err.strip().splitlines()
        assert lines and lines[-1].startswith("attnlab"), f"attnlab {shown}: {err[-500:]}"
        assert [" error: " in line for line in lines].count(True) == 1 and " error: " in lines[-1], \
            f"attnlab {shown}: {err[-500:]}"
    named = _named_outputs(argv)
    after = _files(tmp)
    for path, content in before.items():
        assert after.get(path) == content or path in named, f"attnlab {shown} changed {path}"
    for path in set(after) - set(before):
        assert any(path == n or n in path.parents for n in named), f"attnlab {shown} wrote {path}"
    # Named or not, a file attnlab did not write is never replaced without --force.
    assert (tmp / "user.txt").read_text() == "the user's own notes\n", f"attnlab {shown}"
    assert os.getcwd() == str(tmp)


def mostly(good: list[str], bad: list[str]) -> st.SearchStrategy:
    """A value from ``good`` or from ``bad``, half the time each: the slow commands get few
    examples, and a run that passes its checks must get to the work often enough."""
    return st.one_of(st.sampled_from(good), st.sampled_from(bad))


STEPS = mostly(["1", "2", "3"], ["0", "-1", "x"])
SEEDS = mostly(["0", "7"], ["-1", "x", str(2**63)])
TRAIN_KINDS = {"gpt": "shakespeare-char-tiny", "translate": "tiny", "vit": "tiny"}


def train_commands(tmp: Path) -> st.SearchStrategy:
    """`attnlab train` of a tiny preset (or an unknown one) for at most 3 steps: a run that works
    takes seconds; --max-steps is always given, since a preset's own steps take minutes."""
    outs = mostly([str(tmp / "run"), str(tmp / "folder"), ""],
                  [str(tmp), str(tmp / "user.txt"), str(tmp / "missing" / "run"), "/proc/nope"])
    return st.tuples(
        st.sampled_from(sorted(TRAIN_KINDS)), mostly([None], ["nope", ""]), STEPS, outs,
        options(flag("--seed", SEEDS), flag("--precision", st.sampled_from(["bf16", "fp32", "fp8"])),
                flag("--max-minutes", st.sampled_from(["0.001", "0", "x", "inf", "nan"])),
                flag("--budget-minutes", st.sampled_from(["none", "0.001", "0", "x"])),
                flag("--resume", st.just(None)), flag("--force", st.just(None)),
                flag("--json", st.just(None))),
        st.sampled_from([[], ["--arch", "lstm"], ["--arch", "x"]]),
    ).map(lambda t: ["train", t[0], "--preset", TRAIN_KINDS[t[0]] if t[1] is None else t[1],
                     "--max-steps", t[2], "--out", t[3], *t[4], *(t[5] if t[0] == "translate" else [])])


@settings(FUZZ, max_examples=6)
@given(data=st.data())
def test_train_ends_in_one_line_or_success(data, tmp_path_factory, monkeypatch):
    tmp = _fuzz_folder(tmp_path_factory)
    _check_run(data.draw(train_commands(tmp)), tmp, monkeypatch)


def eval_commands(tmp: Path, models: dict) -> st.SearchStrategy:
    """`attnlab eval translate` on a few verses and `eval vit` on the tiny ViT's test or validation
    pictures, with checkpoints of the right kind, of another kind, or none."""
    out = paths(tmp)
    missing = str(tmp / "missing")
    translate = st.tuples(
        mostly([models["translator"]], [models["vit"], missing, str(tmp / "user.txt")]),
        mostly(["1", "2"], ["0", "x"]),
        options(flag("--beam", mostly(["1", "2"], ["0", "x", str(10**12)])), flag("--translations", out),
                flag("--json", st.just(None)), flag("--force", st.just(None))),
    ).map(lambda t: ["eval", "translate", "--checkpoint", t[0], "--max-sentences", t[1], *t[2]])
    vit = st.tuples(
        mostly([models["vit"]], [models["gpt"], missing, str(tmp)]),
        options(flag("--split", st.sampled_from(["test", "validation", "x"])), flag("--tta", st.just(None)),
                flag("--png", out), flag("--json", st.just(None)), flag("--force", st.just(None))),
    ).map(lambda t: ["eval", "vit", "--checkpoint", t[0], *t[1]])
    return st.one_of(translate, vit)


@settings(FUZZ, max_examples=6)
@given(data=st.data())
def test_eval_translate_and_vit_end_in_one_line_or_success(data, tiny_models, tmp_path_factory, monkeypatch):
    tmp = _fuzz_folder(tmp_path_factory)
    _check_run(data.draw(eval_commands(tmp, tiny_models)), tmp, monkeypatch)


# What a chat reads: messages (commands and blank lines among them), nothing, or no stdin at all.
CHAT_LINES = st.lists(st.sampled_from(["The cat sat.", "", "   ", "\x00", "🙂🙂", "/reset", "/exit",
                                       "<script>", "\u202e\u2028", "ROMEO:"]), max_size=3)
CHAT_INPUTS = st.one_of(CHAT_LINES.map(lambda lines: "\n".join(lines) + "\n"),
                        st.sampled_from(["", "no newline at the end", "closed", "none"]))


def chat_commands() -> st.SearchStrategy:
    """`attnlab chat` with replies of a few tokens (the default 256 take SmolLM2 many seconds)."""
    return options(flag("--temperature", mostly(["0", "0.7", "1e400"], ["-1", "nan", "x"])),
                   flag("--top-k", mostly(["1", "5"], ["0", "x"])), flag("--top-p", PROBABILITIES),
                   flag("--seed", SEEDS), flag("--system", TEXTS.filter(lambda t: len(t) < 100)),
                   flag("--model", mostly(["smollm2"], ["minilm", "x"]))).flatmap(
        lambda o: mostly(["1", "3"], ["0", "x", "9000"]).map(lambda n: ["chat", "--max-new-tokens", n, *o]))


def _standard_input(text: str):
    """``sys.stdin`` for a chat: the text piped in, closed (``<&-``) or missing (``None``)."""
    if text == "none":
        return None
    stream = io.StringIO(text)
    if text == "closed":
        stream.close()
    return stream


@settings(FUZZ, max_examples=6)
@given(data=st.data())
def test_chat_ends_in_one_line_or_success(data, patched_pretrained, tmp_path_factory, monkeypatch):
    tmp = _fuzz_folder(tmp_path_factory)
    argv, text = data.draw(chat_commands()), data.draw(CHAT_INPUTS)
    monkeypatch.setattr("sys.stdin", _standard_input(text))
    _check_run(argv, tmp, monkeypatch)


@pytest.fixture(scope="module")
def taken_port():
    """A port something already listens on."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield str(sock.getsockname()[1])


@pytest.fixture
def no_server(monkeypatch):
    """`attnlab serve` whose server stops as soon as it is ready (as after Ctrl-C), so that a run
    that passes every check ends at once instead of serving."""
    def serve_forever(models, host, port, on_ready=None, log_level="info"):
        if on_ready is not None:
            on_ready(f"http://{host}:{port}/")

    monkeypatch.setattr("attnlab.serve.runner.serve_forever", serve_forever)


def serve_commands(tmp: Path, models: dict, taken_port: str) -> st.SearchStrategy:
    """`attnlab serve` flags: ports free, taken and absurd, hosts odd and unresolvable, models
    unknown, checkpoint folders missing, of no run, or not checkpoints at all."""
    hosts = st.sampled_from(["127.0.0.1", "localhost", "0.0.0.0", "::1", "256.1.1.1", "nope.invalid", "",
                             " ", "a" * 300, "é", "\x00", "a\x00b"])
    ports = st.one_of(st.just("0"), st.sampled_from([taken_port, "-1", "65536", "x", "", "1e3"]))
    checkpoints = st.sampled_from([models["gpt"], models["translator"], models["vit"], str(tmp / "missing"),
                                   str(tmp / "user.txt"), str(tmp / "folder"), str(tmp / "no-run")])
    return options(flag("--host", hosts), flag("--model", st.sampled_from(["minilm", "smollm2", "nope", ""])),
                   flag("--checkpoint", checkpoints), flag("--checkpoint", checkpoints)).flatmap(
        lambda o: ports.map(lambda port: ["serve", "--port", port, *o]))


@settings(FUZZ, max_examples=12)
@given(data=st.data())
def test_serve_fails_fast_in_one_line_or_would_serve(data, tiny_models, taken_port, patched_pretrained,
                                                      no_server, tmp_path_factory, monkeypatch):
    tmp = _fuzz_folder(tmp_path_factory)
    (tmp / "no-run" / "checkpoints").mkdir(parents=True)  # a training folder without a checkpoint
    _check_run(data.draw(serve_commands(tmp, tiny_models, taken_port)), tmp, monkeypatch)
