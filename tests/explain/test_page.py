"""The explain page as a file: one self-contained HTML file whose embedded data is the input."""

from __future__ import annotations

import json
import math
import os
import re

import pytest
from fake_data import fake_explanation

from attnlab.explain.page import render_page, write_page

DATA_SCRIPT = re.compile(r'<script type="application/json" id="attnlab-data">(.*?)</script>', re.DOTALL)


@pytest.fixture(scope="module")
def encoder_data():
    return fake_explanation("encoder", num_layers=2, num_heads=3)


@pytest.fixture(scope="module")
def decoder_data():
    return fake_explanation("decoder", num_layers=2, num_heads=4, num_kv_heads=2)


def embedded(page: str) -> dict:
    return json.loads(DATA_SCRIPT.search(page).group(1))


def test_page_is_one_file_that_fetches_nothing(encoder_data, tmp_path):
    path = write_page(encoder_data, tmp_path / "page.html")
    page = path.read_text(encoding="utf-8")
    assert os.listdir(tmp_path) == ["page.html"]  # no temporary file left behind
    assert not re.search(r"<script[^>]*\ssrc\s*=", page, re.IGNORECASE)
    assert not re.search(r"<link\b", page, re.IGNORECASE)
    assert not re.search(r"""\b(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert not re.search(r"@import|url\(", page, re.IGNORECASE)
    # The only URL on the page is SVG's namespace name, which is an identifier, never fetched.
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) == {"http://www.w3.org/2000/svg"}
    assert "<style>" in page and page.count("<script") == 4  # data, string tables, i18n.js, page.js


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_embedded_json_is_exactly_the_input(kind, encoder_data, decoder_data, tmp_path):
    data = encoder_data if kind == "encoder" else decoder_data
    page = write_page(data, tmp_path / "page.html").read_text(encoding="utf-8")
    assert embedded(page) == data
    if kind == "decoder":
        assert embedded(page)["walkthrough"][0][0]["scores"][0][1] is None


def test_text_cannot_break_out_of_the_data_script(encoder_data):
    hostile = "a </script><script>alert(1)</script> <!-- b & c \u2028 <\\/script>"
    data = dict(encoder_data, text=hostile, tokens=[*encoder_data["tokens"][:-1], "</SCRIPT>"])
    page = render_page(data)
    # Exactly the four real closing tags: the data's, the string tables', i18n.js's and page.js's.
    assert len(re.findall(r"</script", page, re.IGNORECASE)) == 4
    assert "<!--" not in page
    assert embedded(page)["text"] == hostile
    assert embedded(page)["tokens"][-1] == "</SCRIPT>"
    assert "<title>attnlab explain: a &lt;/script&gt;" in page


def test_placeholder_lookalikes_in_the_text_stay_as_they_are(encoder_data):
    data = dict(encoder_data, text="{{js}} and {{data}}")
    page = render_page(data)
    assert embedded(page)["text"] == "{{js}} and {{data}}"
    assert page.count("attnlab explain: draws the page") == 1  # the script is inlined once


def test_writing_replaces_an_existing_page(encoder_data, decoder_data, tmp_path):
    path = tmp_path / "page.html"
    write_page(encoder_data, path)
    assert write_page(decoder_data, path) == path
    assert embedded(path.read_text(encoding="utf-8")) == decoder_data
    assert os.listdir(tmp_path) == ["page.html"]


def test_a_failed_write_keeps_the_old_page_and_leaves_no_temporary_file(encoder_data, decoder_data,
                                                                         tmp_path, monkeypatch):
    path = write_page(encoder_data, tmp_path / "page.html")

    def refuse(source, target):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError, match=r"cannot write the page to .*page\.html: Permission denied"):
        write_page(decoder_data, path)
    assert embedded(path.read_text(encoding="utf-8")) == encoder_data
    assert os.listdir(tmp_path) == ["page.html"]


def test_missing_folder_is_a_clear_error(encoder_data, tmp_path):
    target = tmp_path / "no-such-folder" / "page.html"
    with pytest.raises(FileNotFoundError, match=r"the folder .*no-such-folder does not exist") as error:
        write_page(encoder_data, target)
    assert isinstance(error.value, OSError)


def test_folder_as_target_is_a_clear_error(encoder_data, tmp_path):
    with pytest.raises(IsADirectoryError, match=r"it is a folder; give a file name ending in \.html"):
        write_page(encoder_data, tmp_path)


def test_file_as_parent_folder_is_a_clear_error(encoder_data, tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError, match=r"notes\.txt is a file, not a folder"):
        write_page(encoder_data, blocker / "page.html")


def test_data_without_a_schema_key_is_refused(encoder_data):
    data = {k: v for k, v in encoder_data.items() if k not in ("attention", "cost")}
    with pytest.raises(ValueError, match=r"lacks the key\(s\) attention, cost"):
        render_page(data)


def test_data_of_another_schema_version_is_refused(encoder_data):
    with pytest.raises(ValueError, match=r"version=2, the page reads 1"):
        render_page(dict(encoder_data, version=2))


def test_data_json_cannot_carry_is_refused(encoder_data):
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        render_page(dict(encoder_data, scale=math.nan))
