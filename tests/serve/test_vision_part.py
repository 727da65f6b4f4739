"""The explorer's "Recognise a picture" part, over HTTP and in a real browser (Debian's chromium
driven by Playwright), serving a tiny ViT trained here: what it answers equals
``attnlab classify --json`` and the library's own runs of the same model.

Every browser test also checks that the page threw nothing, logged no error about this part's
texts and asked nothing of any other address.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import torch
from browser_pages import run_in_browser
from PIL import Image, ImageDraw

from attnlab.attention import edit
from attnlab.data.images import MAX_IMAGE_BYTES, load_image
from attnlab.explain.live_vision import classify_picture

WAIT_MS = 60_000


@pytest.fixture(scope="session")
def tiny_vit_run(tmp_path_factory):
    """The ``--out`` folder of a 20-step tiny ViT run on MNIST-5k."""
    from attnlab.cli import main

    out = tmp_path_factory.mktemp("serve-vit") / "run"
    assert main(["train", "vit", "--preset", "tiny", "--max-steps", "20", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def classifier(tiny_vit_run):
    """The part as ``attnlab serve --checkpoint`` loads it."""
    from attnlab.serve.models import load_checkpoint_part

    return load_checkpoint_part(tiny_vit_run, set())


@pytest.fixture(scope="module")
def server(classifier):
    from attnlab.serve.runner import BackgroundServer

    with BackgroundServer([classifier]) as running:
        yield running


@pytest.fixture(scope="module")
def drawing(tmp_path_factory) -> Path:
    """A dark digit-like stroke on a light, wide picture: it gets squared and inverted."""
    picture = Image.new("RGB", (90, 60), (245, 245, 240))
    ImageDraw.Draw(picture).line([(30, 10), (55, 12), (40, 50)], fill=(20, 20, 20), width=6)
    path = tmp_path_factory.mktemp("pictures") / "seven.png"
    picture.save(path)
    return path


@pytest.fixture(scope="module")
def cli_predictions(tiny_vit_run, drawing):
    """``{class: probability}`` printed by ``attnlab classify --json --top 10`` for ``drawing``."""
    from attnlab.cli import main

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["classify", str(drawing), "--checkpoint", str(tiny_vit_run), "--json",
                     "--top", "10"]) == 0
    predictions = json.loads(printed.getvalue())["results"][0]["predictions"]
    return {p["class"]: p["probability"] for p in predictions}


def classify(server, picture: bytes, query: str = "", content_type: str = "image/png") -> httpx.Response:
    return httpx.post(f"{server.url}api/classify?{query}", content=picture,
                      headers={"Content-Type": content_type}, timeout=60)


def plain_probabilities(classifier, picture: bytes, hidden=()) -> list[float]:
    """The model's probabilities on ``picture`` by a plain forward pass, ``hidden`` patches hidden
    with :func:`attnlab.attention.edit` (patch i is token i + 1)."""
    cfg = classifier.model.config
    pixels, _ = load_image(picture, size=cfg.image_size, channels=cfg.in_channels)
    with torch.no_grad(), edit(classifier.model, hide_keys=[i + 1 for i in hidden]):
        logits = classifier.model(classifier.normalization(pixels[None]))
    return torch.softmax(logits[0].double(), dim=-1).tolist()


# ---------- HTTP ----------

def test_the_models_list_describes_the_classifier(server, classifier):
    apps = httpx.get(server.url + "api/models").json()["apps"]
    assert len(apps) == 1
    app = apps[0]
    assert (app["id"], app["kind"]) == (classifier.id, "vision") and app["id"].startswith("vit-")
    assert app["title"] == "Your picture classifier (run)"
    assert (app["grid"], app["patches"], app["image_size"], app["patch_size"]) == (4, 16, 28, 7)
    assert (app["num_layers"], app["num_heads"]) == (2, 4)
    assert app["classes"] == [str(d) for d in range(10)] and app["max_upload_bytes"] == MAX_IMAGE_BYTES
    assert [e["label"] for e in app["examples"]] == app["classes"]
    assert all(e["image"].startswith("data:image/png;base64,") for e in app["examples"])


def test_a_png_gets_the_probabilities_attnlab_classify_prints(server, classifier, drawing, cli_predictions):
    answer = classify(server, drawing.read_bytes(), f"app={classifier.id}").json()
    original = answer["original"]
    assert dict(zip(original["classes"], original["probabilities"], strict=True)) == pytest.approx(
        cli_predictions, abs=1e-12)
    assert original["predictions"][0]["class"] == max(cli_predictions, key=cli_predictions.get)
    assert answer["edited"] is None and answer["changes"] is None
    assert original["probabilities"] == pytest.approx(plain_probabilities(classifier, drawing.read_bytes()),
                                                      abs=1e-6)
    assert original["cost"] | {"elapsed_ms": 0} == {"tokens": 17, "patches": 16, "layers": 2, "heads": 4,
                                                    "attention_scores": 2 * 4 * 17 ** 2, "elapsed_ms": 0}
    assert len(original["rollout"]) == 16 and sum(original["rollout"]) < 1
    assert [len(layer) for layer in original["cls_attention"]] == [4, 4]
    assert original["input_image"].startswith("data:image/png;base64,")


def test_hidden_patches_equal_a_manual_edit_run(server, classifier, drawing):
    picture = drawing.read_bytes()
    answer = classify(server, picture, f"app={classifier.id}&hide=6,5,0,5").json()
    edited = answer["edited"]
    assert edited["hidden"] == [0, 5, 6]
    assert edited["probabilities"] == pytest.approx(plain_probabilities(classifier, picture, (0, 5, 6)),
                                                    abs=1e-6)
    assert edited["probabilities"] != pytest.approx(answer["original"]["probabilities"], abs=1e-9)
    # The class token takes nothing from a hidden patch, in any layer or head.
    assert all(row[i] == 0 for layer in edited["cls_attention"] for row in layer for i in (0, 5, 6))
    changes = answer["changes"]
    assert [abs(c["change"]) for c in changes] == sorted((abs(c["change"]) for c in changes), reverse=True)
    for change in changes:
        index = edited["classes"].index(change["class"])
        assert change["after"] - change["before"] == change["change"]
        assert change["after"] == edited["probabilities"][index]


@pytest.mark.parametrize(("query", "body", "content_type", "status", "message"), [
    ("app={app}", b"hello, not a picture", "image/png", 400, "The picture is not an image file"),
    ("app={app}", b"", "image/png", 400, "The picture is empty."),
    ("app=nope", b"x", "image/png", 400, 'Unknown vision model "nope"; this server has: vit-run.'),
    ("", b"x", "image/png", 400, "Unknown vision model null"),
    ("app={app}&hide=16", b"x", "image/png", 400, "Patch 16 does not exist"),
    ("app={app}&hide=-1", b"x", "image/png", 400, "Hide must list patch numbers"),
    ("app={app}&hide=1,,2", b"x", "image/png", 400, "Hide must list patch numbers"),
    ("app={app}&hide=" + ",".join(["1"] * 17), b"x", "image/png", 400, "Hide lists 17 patches"),
    ("app={app}&hide=1&hide=2", b"x", "image/png", 400, "Give hide once"),
    ("app={app}&invert=yes", b"x", "image/png", 400, "Unknown query parameter 'invert'"),
    ("app={app}", b"x", "text/plain", 415, "Send the picture itself"),
])
def test_bad_requests_get_one_readable_sentence(server, classifier, query, body, content_type, status,
                                                message):
    answer = classify(server, body, query.format(app=classifier.id), content_type)
    assert answer.status_code == status
    error = answer.json()["error"]
    assert message in error and "\n" not in error and error.endswith(".")


def test_a_picture_over_the_byte_limit_is_refused_before_it_is_read(server, classifier):
    address = urlsplit(server.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    try:
        # Only the headers go out: the server answers from the declared length alone.
        connection.putrequest("POST", f"/api/classify?app={classifier.id}")
        connection.putheader("Content-Type", "image/png")
        connection.putheader("Content-Length", str(MAX_IMAGE_BYTES + 1))
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413
        assert json.loads(response.read())["error"] == "The request is larger than 8,388,608 bytes."
    finally:
        connection.close()


def test_classify_picture_refuses_patches_outside_the_grid(classifier):
    pixels = torch.zeros(1, 28, 28, dtype=torch.uint8)
    run = (classifier.model, pixels, classifier.normalization, classifier.classes)
    for bad in (16, -1, True):
        with pytest.raises(ValueError, match="numbered 0 to 15"):
            classify_picture(*run, hidden_patches=[bad])


# ---------- in the browser ----------

class VisionPage:
    """The explorer's page in a tab, on its picture part, recording what went wrong."""

    def __init__(self, browser, url: str, width: int = 1280, query: str = ""):
        self.url = url
        self.problems: list[str] = []
        self.page = browser.new_page(viewport={"width": width, "height": 900})
        self.page.set_default_timeout(WAIT_MS)
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.problems.append(str(error)))
        self.page.on("request", self._request)
        self.page.goto(url + query)
        self.page.wait_for_selector("#part-vision[data-ready]")  # the first test picture is drawn
        self.settle()

    def _console(self, message):
        # Other parts' string tables are not this module's subject (they may be mid-translation);
        # every other error or warning is.
        text = message.text
        missing = "attnlab: no text for key "
        others = text.startswith(missing) and not text.startswith(missing + "vision.")
        if message.type in ("error", "warning") and not others:
            self.problems.append(f"{message.type}: {text}")

    def _request(self, request):
        if not request.url.startswith((self.url, "data:", "blob:")):
            self.problems.append(f"request to another address: {request.url}")

    def settle(self):
        self.page.wait_for_timeout(50)
        self.page.wait_for_function("!document.getElementById('part-vision').dataset.busy")

    def wait_for_answer(self, source: str, hidden: str = ""):
        self.page.wait_for_function(
            """([source, hidden]) => { const r = document.getElementById('vision-result');
                 return r.dataset.source === source && r.dataset.hidden === hidden
                        && !document.getElementById('part-vision').dataset.busy; }""", arg=[source, hidden])

    def bars(self, name: str = "probability") -> dict[str, float]:
        pairs = self.page.eval_on_selector_all(
            "#vision-bars .vision-bar", "(items, name) => items.map(i => [i.dataset.class, i.dataset[name]])",
            name)
        return {label: float(value) for label, value in pairs}


@pytest.fixture
def browse(browser_thread, server):
    """``browse(body)`` runs ``body(open_page)`` in the browser's thread; ``open_page(width, query)``
    opens the explorer; afterwards every page opened must have stayed clean."""
    pool, browser = browser_thread
    return run_in_browser(pool, lambda width=1280, query="": VisionPage(browser, server.url, width, query))


def test_an_uploaded_png_shows_the_numbers_attnlab_classify_prints(browse, drawing, cli_predictions):
    def body(open_page):
        page = open_page()
        page.page.set_input_files("#vision-file", str(drawing))
        page.wait_for_answer("file")
        assert page.bars() == pytest.approx(cli_predictions, abs=1e-12)
        best = max(cli_predictions, key=cli_predictions.get)
        assert f"“{best}”" in page.page.inner_text("#vision-verdict")
        assert page.page.get_attribute("#vision-cost-box", "data-scores") == "2312"
        assert page.page.locator("#vision-heads-grid figure.vision-head").count() == 4

    browse(body)


def test_clicking_a_patch_shows_the_librarys_edited_run(browse, classifier, drawing):
    picture = drawing.read_bytes()
    cfg = classifier.model.config
    pixels, original = load_image(picture, size=cfg.image_size, channels=cfg.in_channels)
    run = (classifier.model, pixels, classifier.normalization, classifier.classes)
    expected = classify_picture(*run, hidden_patches=[5], original=original)
    whole = classify_picture(*run, original=original)

    def body(open_page):
        page = open_page()
        page.page.set_input_files("#vision-file", str(drawing))
        page.wait_for_answer("file")
        page.page.click('.vision-patch[data-patch="5"]')
        page.wait_for_answer("file", "5")
        assert page.page.get_attribute('.vision-patch[data-patch="5"]', "aria-pressed") == "true"
        assert page.bars() == pytest.approx(dict(zip(expected["classes"], expected["probabilities"],
                                                     strict=True)), abs=1e-12)
        assert page.bars("before") == pytest.approx(dict(zip(whole["classes"], whole["probabilities"],
                                                             strict=True)), abs=1e-12)
        assert page.page.inner_text("#vision-whatif-sentence").startswith("With 1 patch hidden, “")
        page.page.click("#vision-unhide")
        page.wait_for_answer("file")
        assert page.bars() == page.bars("before")

    browse(body)


def test_patches_are_hidden_by_keyboard(browse):
    def body(open_page):
        page = open_page()
        page.page.focus('.vision-patch[data-patch="0"]')
        page.page.keyboard.press("ArrowRight")
        page.page.keyboard.press("ArrowDown")
        assert page.page.evaluate("document.activeElement.dataset.patch") == "5"
        page.page.keyboard.press("Enter")
        page.wait_for_answer("start", "5")
        assert page.page.get_attribute('.vision-patch[data-patch="5"]', "aria-pressed") == "true"

    browse(body)


def test_a_drawing_on_the_canvas_is_recognised(browse):
    def body(open_page):
        page = open_page(width=390)
        assert page.page.is_disabled("#vision-recognise")  # nothing drawn yet
        box = page.page.locator("#vision-canvas").bounding_box()
        mouse = page.page.mouse
        mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.2)
        mouse.down()
        for fx, fy in ((0.52, 0.5), (0.5, 0.8)):
            mouse.move(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy, steps=8)
        mouse.up()
        page.page.click("#vision-recognise")
        page.wait_for_answer("drawing")
        bars = page.bars()
        assert len(bars) == 10 and sum(bars.values()) == pytest.approx(1, abs=1e-9)
        assert page.page.evaluate("document.documentElement.scrollWidth") <= 390

    browse(body)


def test_the_part_speaks_chinese(browse):
    def body(open_page):
        page = open_page(width=390, query="?lang=zh")
        text = page.page.inner_text("#part-vision")
        assert "⟦" not in text and "图块" in text and "分类词元" in text
        assert "它看起来最像" in page.page.inner_text("#vision-verdict")
        assert "Recognise" not in text and "patch" not in text
        empty = page.page.eval_on_selector_all("#part-vision [data-t]", "nodes => nodes.filter("
                                               "n => !n.textContent.trim()).map(n => n.dataset.t)")
        assert empty == []
        assert page.page.evaluate("document.documentElement.scrollWidth") <= 390

    browse(body)
