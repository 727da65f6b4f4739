"""Nothing of the user's is lost: every command that writes where the user said refuses to replace
a file attnlab did not write (exit 2, one line that names --force) and leaves it byte for byte;
with --force, or to a new path, it succeeds and the user's other files stay as they were.

Also the writing helper itself (attnlab.files): atomic, the user's permissions, attnlab's mark.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
from pathlib import Path

import pytest

from attnlab.cli import main
from attnlab.files import (
    NotOursError,
    write_atomically,
    write_html,
    write_json,
    write_png,
    write_text,
    written_by_attnlab,
)

EXAMPLE = "The animal didn't cross the street because it was too tired."
USER_BYTES = b"the user's own bytes\n\x00\xff"


def cli(*argv: str) -> tuple[int, str, str]:
    """``attnlab ARGV`` in this process: ``(exit status, stdout, stderr)``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``: relative path -> bytes (folders as empty entries)."""
    return {str(p.relative_to(folder)): (b"<folder>" if p.is_dir() else p.read_bytes())
            for p in sorted(folder.rglob("*"))}


def assert_refused(result: tuple[int, str, str], *names: str) -> None:
    code, out, err = result
    assert code == 2 and out == "", err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "--force" in err, err
    for name in names:
        assert name in err, err


def user_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(USER_BYTES)
    return path


def tiny_figure():
    from matplotlib.figure import Figure

    figure = Figure(figsize=(1, 1))
    figure.add_subplot().plot([0, 1], [1, 0])
    return figure


# ---------------------------------------------------------------------------------------------
# attnlab.files


def test_a_page_carries_attnlabs_mark_and_is_recognised(tmp_path):
    path = write_html(tmp_path / "p.html", "<!DOCTYPE html>\n<html><head><title>t</title></head></html>")
    marked = '<!DOCTYPE html>\n<html><head>\n<meta name="generator" content="attnlab">'
    assert path.read_text().startswith(marked)
    assert written_by_attnlab(path)
    assert write_html(path, "<html><head></head><body>again</body></html>") == path  # its own: replaced
    assert "again" in path.read_text()


@pytest.mark.parametrize("write", [
    lambda path, force: write_html(path, "<html><head></head></html>", force=force),
    lambda path, force: write_json(path, {"a": 1}, force=force),
    lambda path, force: write_png(path, lambda tmp: tiny_figure().savefig(tmp), force=force),
], ids=["html", "json", "png"])
def test_a_file_attnlab_did_not_write_is_kept_unless_forced(tmp_path, write):
    path = user_file(tmp_path / "mine.out")
    with pytest.raises(NotOursError, match=r"cannot write .*mine\.out: .*attnlab did not write.*--force"):
        write(path, False)
    assert path.read_bytes() == USER_BYTES
    assert sorted(os.listdir(tmp_path)) == ["mine.out"]  # and no temporary file left
    write(path, True)
    assert written_by_attnlab(path)


def test_a_png_gets_one_software_text_attnlab_and_stays_a_valid_picture(tmp_path):
    from PIL import Image

    plain = tmp_path / "plain.png"
    tiny_figure().savefig(plain)  # what a user's own matplotlib script writes
    assert not written_by_attnlab(plain)
    marked = write_png(tmp_path / "marked.png", lambda tmp: tiny_figure().savefig(tmp))
    assert written_by_attnlab(marked)
    with Image.open(marked) as picture:
        assert picture.text == {"Software": "attnlab"}  # matplotlib's own Software text is gone
        picture.load()
        assert picture.size == (100, 100)


def test_json_output_begins_with_the_generator(tmp_path):
    path = write_json(tmp_path / "r.json", {"bleu": 1.5, "text": "¿qué?"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"generator": "attnlab", "bleu": 1.5,
                                                            "text": "¿qué?"}
    assert written_by_attnlab(path)


def test_new_files_follow_the_umask_and_replaced_files_keep_their_mode(tmp_path):
    previous = os.umask(0o027)
    try:
        fresh = write_text(tmp_path / "fresh.txt", "x")
        figure = write_png(tmp_path / "f.png", lambda tmp: tiny_figure().savefig(tmp))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o640  # as open(path, "w") would make it
    assert stat.S_IMODE(figure.stat().st_mode) == 0o640
    os.chmod(fresh, 0o604)
    write_text(fresh, "y")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o604 and fresh.read_text() == "y"


def test_a_failing_writer_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = write_text(tmp_path / "keep.txt", "old")

    def half_then_fail(temporary: Path) -> None:
        temporary.write_text("half")
        raise ValueError("the writer broke")

    with pytest.raises(ValueError, match="the writer broke"):
        write_atomically(path, half_then_fail)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["keep.txt"]


def test_links_and_special_files_are_never_attnlabs(tmp_path):
    page = write_html(tmp_path / "p.html", "<html><head></head></html>")
    link = tmp_path / "link.html"
    link.symlink_to(page)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert not written_by_attnlab(link)
    assert not written_by_attnlab(fifo)  # and it returns: no read that waits for a writer
    with pytest.raises(NotOursError):
        write_html(link, "<html><head></head></html>")
    assert link.is_symlink()


# ---------------------------------------------------------------------------------------------
# attnlab train: --out must be new, empty or an attnlab run; inside it only attnlab's files change

TRAIN = ("train", "gpt", "--preset", "shakespeare-char-tiny", "--max-steps", "3")


def trained(tmp_path_factory, *train_argv: str) -> Path:
    """The ``--out`` folder of ``attnlab TRAIN_ARGV`` into a new folder."""
    out = tmp_path_factory.mktemp("trained") / "run"
    code, _, err = cli(*train_argv, "--out", str(out))
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory) -> Path:
    return trained(tmp_path_factory, *TRAIN)


def test_train_refuses_a_folder_of_the_users_before_reading_any_data(tmp_path, monkeypatch):
    def no_data(*args, **kwargs):
        raise AssertionError("the corpus was read before --out was checked")

    monkeypatch.setattr("attnlab.train.lm_task.LanguageModelTask.from_preset", no_data)
    for name in ("notes.txt", "metrics.jsonl", "loss.png"):
        user_file(tmp_path / name)
    before = snapshot(tmp_path)
    assert_refused(cli(*TRAIN, "--out", str(tmp_path)), "neither empty nor")
    assert snapshot(tmp_path) == before


def test_train_with_force_adds_its_files_to_a_users_folder(tmp_path):
    notes = user_file(tmp_path / "notes.txt")
    code, _, err = cli(*TRAIN, "--out", str(tmp_path), "--force")
    assert code == 0, err
    assert notes.read_bytes() == USER_BYTES
    assert written_by_attnlab(tmp_path / ".attnlab-run") and written_by_attnlab(tmp_path / "loss.png")


@pytest.mark.parametrize("name", ["loss.png", "metrics.jsonl"])
def test_a_run_refuses_to_replace_a_file_it_did_not_write(gpt_run, tmp_path, name):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(gpt_run, run)
    user_file(run / name)
    before = snapshot(run)
    assert_refused(cli(*TRAIN, "--out", str(run), "--resume"), name)
    assert snapshot(run) == before


@pytest.mark.filterwarnings("ignore:ignoring partial checkpoint")  # the two .tmp-* folders below
def test_a_resumed_run_keeps_the_users_files_beside_and_inside_it(gpt_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(gpt_run, run)
    mine = [user_file(run / "notes.txt"), user_file(run / "checkpoints" / ".tmp-mine" / "draft.txt"),
            user_file(run / "checkpoints" / "README")]
    abandoned = run / "checkpoints" / ".tmp-step-00000004-ab12cd_9"  # an interrupted save of attnlab's
    abandoned.mkdir()
    code, _, err = cli(*TRAIN[:-1], "4", "--out", str(run), "--resume")
    assert code == 0, err
    assert all(path.read_bytes() == USER_BYTES for path in mine)
    assert not abandoned.exists()
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 4 and steps == sorted(steps)  # the log went on; nothing of it was lost


# ---------------------------------------------------------------------------------------------
# attnlab explain: --out page and --png pictures


@pytest.fixture
def loaded(monkeypatch, request):
    """``load_pretrained`` hands out the session's MiniLM instead of loading it again."""
    monkeypatch.setattr("attnlab.models.pretrained.load_pretrained",
                        lambda name: request.getfixturevalue(name))


def test_explain_refuses_to_replace_a_page_of_the_users(loaded, tmp_path):
    page = user_file(tmp_path / "attention.html")
    assert_refused(cli("explain", EXAMPLE, "--out", str(page)), "attention.html")
    assert page.read_bytes() == USER_BYTES and os.listdir(tmp_path) == ["attention.html"]


def test_explain_refuses_a_picture_of_the_users_and_writes_nothing(loaded, tmp_path):
    pictures = tmp_path / "pictures"
    user_file(pictures / "minilm_layer3_head1.png")
    user_file(pictures / "holiday.jpg")
    before = snapshot(tmp_path)
    result = cli("explain", EXAMPLE, "--layer", "3", "--head", "1", "--out", str(tmp_path / "new.html"),
                 "--png", str(pictures))
    assert_refused(result, "minilm_layer3_head1.png")
    assert snapshot(tmp_path) == before  # not even the page, which was free


def test_explain_with_force_replaces_and_then_recognises_its_own_files(loaded, tmp_path):
    pictures = tmp_path / "pictures"
    page, head_png = user_file(tmp_path / "a.html"), user_file(pictures / "minilm_layer3_head1.png")
    holiday = user_file(pictures / "holiday.jpg")
    args = ("explain", EXAMPLE, "--layer", "3", "--head", "1", "--out", str(page), "--png", str(pictures))
    code, _, err = cli(*args, "--force")
    assert code == 0, err
    assert written_by_attnlab(page) and written_by_attnlab(head_png)
    assert written_by_attnlab(pictures / "minilm_layer3_all_heads.png")
    assert holiday.read_bytes() == USER_BYTES
    code, _, err = cli(*args)  # attnlab's own files are replaced without --force
    assert code == 0, err
    assert holiday.read_bytes() == USER_BYTES


# ---------------------------------------------------------------------------------------------
# translate, eval translate, classify, eval vit: refused before the model loads, then written


@pytest.fixture(scope="module")
def translator(tmp_path_factory) -> str:
    return str(trained(tmp_path_factory, "train", "translate", "--preset", "tiny", "--max-steps", "2"))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> str:
    return str(trained(tmp_path_factory, "train", "vit", "--preset", "tiny", "--max-steps", "2"))


@pytest.fixture(scope="module")
def digit(tmp_path_factory) -> str:
    from PIL import Image

    path = tmp_path_factory.mktemp("pictures") / "digit.png"
    Image.new("L", (28, 28), 0).save(path)
    return str(path)


def test_translate_refuses_the_users_page_and_picture(tmp_path):
    page, png = user_file(tmp_path / "align.html"), user_file(tmp_path / "pngs" / "alignment.png")
    before = snapshot(tmp_path)
    nowhere = str(tmp_path / "no-checkpoint")  # refused before it is even looked at
    assert_refused(cli("translate", "--checkpoint", nowhere, "Hi", "--show-attention", str(page)),
                   "align.html")
    assert_refused(cli("translate", "--checkpoint", nowhere, "Hi", "--png", str(png.parent)), "alignment.png")
    assert snapshot(tmp_path) == before


def test_translate_with_force_writes_and_keeps_the_rest(translator, tmp_path):
    page, other = user_file(tmp_path / "align.html"), user_file(tmp_path / "notes.txt")
    code, _, err = cli("translate", "--checkpoint", translator, "--greedy", "In the beginning",
                       "--show-attention", str(page), "--png", str(tmp_path), "--force")
    assert code == 0, err
    assert written_by_attnlab(page) and written_by_attnlab(tmp_path / "alignment.png")
    assert other.read_bytes() == USER_BYTES


def test_eval_translate_refuses_the_users_file_then_writes_a_new_one(translator, tmp_path, monkeypatch):
    # The scores are tested in test_cli_translate.py; here only where they go matters.
    verses = [{"en": "In the beginning", "hypothesis": "En el principio"}] * 2
    monkeypatch.setattr("attnlab.train.evaluate.evaluate_translation",
                        lambda loaded, sentences, beam, progress, **_: {"step": loaded.step,
                                                                        "translations": verses})
    mine = user_file(tmp_path / "translations.json")
    base = ("eval", "translate", "--checkpoint", translator, "--json")
    assert_refused(cli(*base, "--translations", str(mine)), "translations.json")
    assert mine.read_bytes() == USER_BYTES
    code, _, err = cli(*base, "--translations", str(tmp_path / "new.json"))
    assert code == 0, err
    assert mine.read_bytes() == USER_BYTES
    assert json.loads((tmp_path / "new.json").read_text(encoding="utf-8"))["translations"] == verses


def test_classify_refuses_the_users_files_then_writes_with_force(classifier, digit, tmp_path):
    page, png = user_file(tmp_path / "look.html"), user_file(tmp_path / "digit-attention.png")
    other = user_file(tmp_path / "notes.txt")
    before = snapshot(tmp_path)
    base = ("classify", "--checkpoint", classifier, digit)
    assert_refused(cli(*base, "--show-attention", str(page)), "look.html")
    assert_refused(cli(*base, "--png", str(tmp_path)), "digit-attention.png")
    assert snapshot(tmp_path) == before
    code, _, err = cli(*base, "--show-attention", str(page), "--png", str(tmp_path), "--force")
    assert code == 0, err
    assert written_by_attnlab(page) and written_by_attnlab(png) and other.read_bytes() == USER_BYTES


def test_eval_vit_refuses_the_users_confusion_matrix(classifier, tmp_path):
    mine = user_file(tmp_path / "confusion-matrix.png")
    assert_refused(cli("eval", "vit", "--checkpoint", classifier, "--png", str(tmp_path)),
                   "confusion-matrix.png")
    assert mine.read_bytes() == USER_BYTES
    code, _, err = cli("eval", "vit", "--checkpoint", classifier, "--png", str(tmp_path / "new"))
    assert code == 0, err
    assert written_by_attnlab(tmp_path / "new" / "confusion-matrix.png") and mine.read_bytes() == USER_BYTES
