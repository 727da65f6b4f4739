"""Every command that takes ``--model`` takes a local Hugging Face model folder too: `explain`,
`generate`, `chat` and `serve`, on tiny random folders saved by ``transformers``."""

from __future__ import annotations

import io
import json
import shutil

import pytest
from test_hf_folders import _hf_model, _save_folder

from attnlab.cli import main


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """``{"llama": folder with a chat template, "plain": a gpt2 folder without one, "bert": ...}``"""
    made = {}
    for kind, model_type in (("llama", "llama"), ("plain", "gpt2"), ("bert", "bert")):
        folder = tmp_path_factory.mktemp(kind) / f"tiny-{model_type}"
        folder.mkdir()
        _save_folder(_hf_model(model_type), folder, model_type)
        made[kind] = folder
    (made["plain"] / "tokenizer_config.json").unlink()
    return made


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_explain_writes_the_page_of_a_model_folder(folders, tmp_path, capsys):
    page = tmp_path / "page.html"
    code, out, err = _run(capsys, "explain", "the cat sat on the mat", "--model", str(folders["llama"]),
                          "--out", str(page), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["model"] == "tiny-llama"
    assert page.is_file() and '"name":"tiny-llama"' in page.read_text(encoding="utf-8")


def test_generate_continues_with_a_folder_model_as_the_library_does(folders, capsys):
    import attnlab
    from attnlab.models import load_pretrained

    model, tokenizer = load_pretrained(str(folders["llama"]))
    expected = attnlab.generate(model, tokenizer, "the cat", max_new_tokens=6, temperature=0)
    code, out, err = _run(capsys, "generate", "the cat", "--model", str(folders["llama"]),
                          "--max-new-tokens", "6", "--temperature", "0", "--json")
    assert code == 0, err
    assert json.loads(out)["text"] == expected


def test_chat_uses_the_folders_chat_template(folders, capsys, monkeypatch):
    from attnlab.generation import ChatSession
    from attnlab.models import load_pretrained

    model, tokenizer = load_pretrained(str(folders["llama"]))
    assert "<|im_start|>user\nhello world<|im_end|>" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hello world"}])
    expected = "".join(ChatSession(model, tokenizer, max_new_tokens=8, temperature=0).send("hello world"))
    monkeypatch.setattr("sys.stdin", io.StringIO("hello world\n"))
    code, out, err = _run(capsys, "chat", "--model", str(folders["llama"]), "--max-new-tokens", "8",
                          "--temperature", "0")
    assert code == 0, err
    assert out == expected + "\n"  # the reply the library's chat gives, whatever a random model says


def test_chat_refuses_a_folder_without_a_chat_template_in_one_line(folders, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n"))
    code, out, err = _run(capsys, "chat", "--model", str(folders["plain"]))
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        "attnlab chat: error: --model tiny-gpt2 has no chat template (tokenizer_config.json names "
        "none), so it cannot chat; use `attnlab generate` to continue a text"]


def test_generate_refuses_an_encoder_folder(folders, capsys):
    code, _, err = _run(capsys, "generate", "the cat", "--model", str(folders["bert"]))
    assert code == 2
    assert "--model tiny-bert is an encoder: it reads text but does not write it" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", [["explain", "the cat"], ["generate", "the cat"], ["chat"]])
def test_a_model_path_that_is_not_a_folder_is_refused_by_the_parser(command, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main([*command, "--model", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "is not a folder; give a model folder" in err
    assert len(err.strip().splitlines()) == 1


def test_a_folder_of_pickled_weights_is_one_line(folders, tmp_path, capsys):
    broken = tmp_path / "pickled"
    shutil.copytree(folders["llama"], broken)
    for weights in broken.glob("*.safetensors"):
        weights.unlink()
    (broken / "pytorch_model.bin").write_bytes(b"not read")
    code, _, err = _run(capsys, "explain", "the cat", "--model", str(broken), "--out",
                        str(tmp_path / "page.html"))
    assert code == 2 and "safetensors" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "page.html").exists()


def test_serve_offers_a_folder_model_under_its_folder_name(folders):
    from attnlab.serve.app import Explorer
    from attnlab.serve.models import load_named

    served = load_named(str(folders["llama"]))
    again = load_named(str(folders["llama"]), {served.id})
    assert (served.id, again.id) == ("tiny-llama", "tiny-llama-2")
    described = Explorer([served]).config()["models"][0]
    assert described["kind"] == "decoder" and described["generates"] is True
    assert described["num_kv_heads"] == 2
