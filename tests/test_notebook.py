"""``attnlab.show`` in a notebook: a real kernel runs examples/explain.ipynb, and the inline page
it leaves in the output renders in Chromium."""

import shutil
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "explain.ipynb"
SENTENCE = "The animal didn't cross the street because it was too tired."


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The example notebook after a real ipykernel ran it, in a folder of its own."""
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    folder = tmp_path_factory.mktemp("notebook")
    shutil.copy(EXAMPLE, folder / EXAMPLE.name)
    notebook = nbformat.read(folder / EXAMPLE.name, as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(folder)}}).execute()
    return folder, notebook


def _html_outputs(cell) -> list[str]:
    return [out["data"]["text/html"] for out in cell.get("outputs", [])
            if "text/html" in out.get("data", {})]


def test_the_notebook_shows_the_page_inline_with_the_sentences_tokens(executed):
    import html

    _, notebook = executed
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    english, chinese = _html_outputs(code[0]), _html_outputs(code[1])
    assert len(english) == 1 and len(chinese) == 1
    assert english[0].startswith('<iframe id="attnlab-') and 'class="attnlab-explanation"' in english[0]
    page = html.unescape(english[0].split('srcdoc="', 1)[1].split('" style=', 1)[0])
    # Self-contained: no script or style is fetched from anywhere (no require.js, no CDN).
    assert "<script src" not in page and "<link rel=\"stylesheet\"" not in page and "http" not in page.split(
        '<script type="application/json" id="attnlab-data">')[0]
    for token in ("animal", "street", "tired"):
        assert f'"{token}"' in page
    assert '"default":"zh"' in html.unescape(chinese[0])


def test_the_notebook_saves_the_standalone_page(executed):
    folder, _ = executed
    saved = (folder / "attention.html").read_text(encoding="utf-8")
    assert saved.startswith("<!DOCTYPE html>") and '"animal"' in saved


def test_the_inline_page_renders_in_chromium_without_errors_and_fits_its_frame(executed, browser, tmp_path):
    _, notebook = executed
    cell = next(cell for cell in notebook.cells if cell.cell_type == "code")
    # The notebook's output as JupyterLab puts it: inside a page of its own.
    host = tmp_path / "output.html"
    host.write_text(f"<!DOCTYPE html><html><body><div class='jp-OutputArea'>{_html_outputs(cell)[0]}"
                    "</div></body></html>", encoding="utf-8")
    page = browser.new_page(viewport={"width": 1000, "height": 800})
    try:
        problems = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(host.as_uri())
        frame = page.frame_locator("iframe.attnlab-explanation")
        frame.locator("#token-strip").wait_for()
        assert "animal" in frame.locator("#token-strip").inner_text()
        page.wait_for_function("document.querySelector('iframe').clientHeight > 1000", timeout=10_000)
        assert problems == []
    finally:
        page.close()


def test_show_accepts_a_loaded_model_and_its_tokenizer(minilm, tmp_path):
    import attnlab

    model, tokenizer = minilm
    shown = attnlab.show(SENTENCE, (model, tokenizer), layer=2, head=1)
    assert shown.data["selected"]["layer"] == 2 and shown.data["selected"]["head"] == 1
    assert "animal" in shown.tokens
    assert attnlab.show(SENTENCE, model, tokenizer=tokenizer).tokens == shown.tokens
    path = shown.save(tmp_path / "page.html")
    # The file is the page plus attnlab's mark (so that a later save may replace it).
    saved = path.read_text(encoding="utf-8")
    assert saved.replace('<meta name="generator" content="attnlab">\n', "", 1) == shown.page


def test_show_refuses_what_it_cannot_explain(minilm, tmp_path):
    import attnlab
    from attnlab.files import NotOursError

    model, tokenizer = minilm
    with pytest.raises(ValueError, match="needs its tokenizer"):
        attnlab.show(SENTENCE, model)
    with pytest.raises(ValueError, match="no pages in language 'fr'"):
        attnlab.show(SENTENCE, (model, tokenizer), lang="fr")
    with pytest.raises(ValueError, match="text is empty"):
        attnlab.show("  ", (model, tokenizer))
    mine = tmp_path / "mine.html"
    mine.write_text("my notes", encoding="utf-8")
    with pytest.raises(NotOursError):
        attnlab.show(SENTENCE, (model, tokenizer)).save(mine)
    assert mine.read_text(encoding="utf-8") == "my notes"
