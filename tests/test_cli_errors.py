"""The ``attnlab`` command turns anything unforeseen into one line (exit 1), shows the traceback
only when asked (``--debug`` or ``ATTNLAB_DEBUG=1``), and answers ``--help`` without torch."""

import os
import subprocess
import sys

import pytest

from attnlab import cli


@pytest.fixture
def broken_explain(monkeypatch):
    """`attnlab explain` whose work fails in a way no check foresaw."""
    import attnlab.commands.explain as explain

    def run(args):
        raise RuntimeError("the disk\nwent away")

    monkeypatch.setattr(explain, "run", run)


def test_an_unexpected_error_is_one_line_with_exit_1(broken_explain, capsys, monkeypatch):
    monkeypatch.delenv("ATTNLAB_DEBUG", raising=False)
    assert cli.main(["explain", "hello"]) == 1
    err = capsys.readouterr().err
    assert err == ("attnlab explain: unexpected error: RuntimeError: the disk went away (run again "
                   "with --debug, or ATTNLAB_DEBUG=1, to see where it happened)\n")


def test_debug_is_accepted_after_nested_commands(capsys):
    assert cli.main(["train", "gpt", "--preset", "nope", "--debug"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--debug", "explain", "hello"], ["explain", "hello", "--debug"]])
def test_debug_shows_the_traceback(broken_explain, monkeypatch, argv):
    monkeypatch.delenv("ATTNLAB_DEBUG", raising=False)
    with pytest.raises(RuntimeError, match="the disk"):
        cli.main(argv)


def test_the_environment_variable_shows_the_traceback_too(broken_explain, monkeypatch):
    monkeypatch.setenv("ATTNLAB_DEBUG", "1")
    with pytest.raises(RuntimeError, match="the disk"):
        cli.main(["explain", "hello"])


def test_user_mistakes_stay_exit_2(capsys):
    assert cli.main(["explain", "   "]) == 2
    assert capsys.readouterr().err.startswith("attnlab explain: error: TEXT is empty")


def test_help_and_argument_errors_do_not_import_torch():
    # torch takes about a second to import; the parser and every --help must not need it.
    code = ("import sys, contextlib, io\n"
            "from attnlab import cli\n"
            "for argv in (['--help'], ['explain', '--help'], ['train', 'gpt', '--help'], ['nope']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            "        try:\n"
            "            cli.main(argv)\n"
            "        except SystemExit:\n"
            "            pass\n"
            "print('torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


@pytest.mark.parametrize(("argv", "message"), [
    (["generate", "hi", "--max-new-tokens", "1000000000"],
     "argument --max-new-tokens: must be from 1 to 8,192, got 1000000000"),
    (["generate", "hi", "--seed", str(10**23)], "argument --seed: must be from 0 to 9223372036854775807"),
    (["demo", "--seed", "-1"], "argument --seed: must be from 0 to"),
    (["train", "gpt", "--preset", "shakespeare-char-tiny", "--seed", "-3"], "--seed: must be from 0"),
    (["demo", "--head-dim", str(10**12)], "--head-dim 1000000000000 is more than the demo allows (512)"),
])
def test_work_and_seeds_beyond_what_the_libraries_take_are_refused(argv, message, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # refused by the argument parser
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("argv", "message"), [
    (["chat"], "attnlab chat: error: standard input is closed; chat reads your messages from it"),
    (["translate", "--checkpoint", "nowhere"],
     "attnlab translate: error: standard input is closed; give the English text as an argument"),
])
def test_a_closed_standard_input_is_one_line(argv, message):
    # `<&-` in a shell: the process starts with no file descriptor 0 at all.
    done = subprocess.run([sys.executable, "-m", "attnlab", *argv], capture_output=True, text=True,
                          timeout=120, preexec_fn=lambda: os.close(0))
    assert done.returncode == 2
    assert done.stderr.startswith(message) and len(done.stderr.strip().splitlines()) == 1
