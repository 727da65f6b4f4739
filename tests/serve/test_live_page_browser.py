"""The live page of ``attnlab serve`` in a real browser (Debian's chromium driven by Playwright),
talking to the real server (the ``explorer`` fixture): what it shows equals Python-side runs of
the same models.

Every test also checks that the page logged no error and asked nothing of any other address.
Screenshots go to ``tmp_path`` and, when ``ATTNLAB_SCREENSHOTS=DIR`` is set, to ``DIR`` too
(the docs' pictures: ``ATTNLAB_SCREENSHOTS=docs/images``).
"""

from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from browser_pages import run_in_browser

from attnlab.attention import edit
from attnlab.explain.collect import build_explanation

SENTENCE = "The animal didn't cross the street because it was too tired."
SHORT = "The cat sat because it was tired."
FRANCE = "The capital of France is"
WIDE, PHONE = 1280, 390
WAIT_MS = 120_000


class LivePage:
    """The explorer's page in a browser tab, recording console errors and foreign requests."""

    def __init__(self, browser, url: str, width: int, query: str = "", locale: str | None = None):
        self.url = url
        self.problems: list[str] = []
        self.page = browser.new_page(viewport={"width": width, "height": 900}, locale=locale)
        self.page.set_default_timeout(WAIT_MS)
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.problems.append(str(error)))
        self.page.on("request", self._request)
        self.page.goto(url + query)
        self.page.wait_for_selector("body[data-ready]")
        self.settle()

    def _console(self, message):
        if message.type in ("error", "warning"):
            self.problems.append(f"{message.type}: {message.text}")

    def _request(self, request):
        if not request.url.startswith(self.url):
            self.problems.append(f"request to another address: {request.url}")

    def settle(self):
        """Wait until no request is in flight (the page sets body[data-busy] meanwhile)."""
        self.page.wait_for_timeout(50)
        self.page.wait_for_function("!document.body.dataset.busy")

    def explain(self, text: str):
        self.page.fill("#text", text)
        self.page.focus("#text")
        self.page.keyboard.press("Enter")  # the page marks itself busy at once
        self.settle()

    def choose_model(self, model_id: str):
        self.page.select_option("#model", model_id)
        self.settle()

    def set_range(self, selector: str, value: float):
        self.page.eval_on_selector(selector, """(input, value) => {
            input.value = String(value); input.dispatchEvent(new Event('input', {bubbles: true})); }""",
                                   value)

    def numbers(self, selector: str, name: str) -> list[float]:
        return [float(v) for v in self.page.eval_on_selector_all(
            selector, "(nodes, name) => nodes.map(n => n.dataset[name])", name)]

    def chosen(self) -> tuple[int, int, int]:
        """The walkthrough's layer, head and word."""
        page = self.page
        token = page.get_attribute('#wt-tokens [aria-pressed="true"]', "data-token")
        return int(page.input_value("#wt-layer")), int(page.input_value("#wt-head")), int(token)

    def fits(self, width: int):
        assert self.page.evaluate("document.documentElement.scrollWidth") <= width

    def shoot(self, name: str, tmp_path: Path, selector: str | None = None):
        shot = tmp_path / f"serve-{name}.png"
        if selector:
            self.page.locator(selector).screenshot(path=str(shot))
        else:
            self.page.screenshot(path=str(shot), full_page=False)
        assert shot.stat().st_size > 1000
        if os.environ.get("ATTNLAB_SCREENSHOTS"):
            folder = Path(os.environ["ATTNLAB_SCREENSHOTS"])
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, folder / shot.name)


@pytest.fixture
def live(browser_thread, explorer):
    """``live(body)`` runs ``body(open_page)`` in the browser's thread, where ``open_page(width=1280,
    query="", locale=None)`` opens the explorer's page (``query``: "?lang=zh"; ``locale``: the
    browser's language); afterwards it asserts that every page opened stayed clean."""
    pool, browser = browser_thread
    return run_in_browser(pool, lambda width=WIDE, query="", locale=None:
                          LivePage(browser, explorer.url, width, query, locale))


def softmax(values: torch.Tensor) -> torch.Tensor:
    return torch.softmax(values.double(), dim=-1)


def last_logits(model, tokenizer, text: str) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokenizer.encode(text)]))[0, -1].float()


def test_a_typed_sentence_shows_its_tokens_and_the_models_own_numbers(live, minilm, tmp_path):
    def body(open_page):
        page = open_page()
        assert page.page.input_value("#text") == SENTENCE  # the model's example, already explained
        page.shoot("encoder", tmp_path)
        page.explain(SHORT)
        expected = build_explanation(*minilm, SHORT, model_name="minilm")
        strip = page.page.eval_on_selector_all("#token-strip .chip",
                                               "chips => chips.map(c => c.lastChild.textContent)")
        assert strip == expected["tokens"]
        layer, head, token = page.chosen()
        shown = page.numbers("#wt-table tbody tr", "weight")
        assert shown == expected["attention"][layer][head][token]
        assert page.page.get_attribute("#wt-check", "class") == "check-ok"
        assert page.page.get_attribute("#wt-output-check", "class") == "check-ok"
        assert page.page.locator("#next").is_hidden() and page.page.locator("#path").is_hidden()

    live(body)


def test_smollm2_predicts_paris_re_ranks_by_temperature_and_generates(live, smollm2, tmp_path):
    def body(open_page):
        model, tokenizer = smollm2
        page = open_page()
        page.choose_model("smollm2")
        assert page.page.input_value("#text") == FRANCE
        assert page.page.inner_text("#candidates .candidate .cand-token >> nth=0") == "␣Paris"
        logits = last_logits(model, tokenizer, FRANCE)
        for temperature, top_k in ((0.5, None), (1.5, None), (1.0, 3)):
            page.set_range("#temperature", temperature)
            page.set_range("#top-k", top_k or 0)
            scaled = logits / temperature
            if top_k:
                scaled = scaled.masked_fill(scaled < torch.topk(scaled, top_k).values[-1], -math.inf)
            expected = softmax(scaled)
            ids = [int(i) for i in page.numbers("#candidates .candidate", "id")]
            probabilities = page.numbers("#candidates .candidate", "probability")
            assert probabilities == pytest.approx([float(expected[i]) for i in ids], abs=1e-5)
            shown = page.page.eval_on_selector_all("#candidates .pct",
                                                   "nodes => nodes.map(n => n.textContent)")
            assert shown[0] == f"{float(expected[ids[0]]) * 100:.1f}%"
        assert sum(p > 0 for p in probabilities) == 3  # top-k 3 keeps three candidates
        page.set_range("#top-k", 0)
        page.set_range("#temperature", 0.8)
        page.shoot("decoder", tmp_path, "#next")

        page.set_range("#temperature", 0)  # greedy: the page is as deterministic as the model
        page.page.click("#generate-one")
        page.page.wait_for_selector("#generated .gen-token")
        page.settle()
        assert page.page.input_value("#text") == FRANCE + " Paris"
        prompt = len(tokenizer.encode(FRANCE))
        assert int(page.page.get_attribute("#step-cache", "data-reused")) == prompt
        assert page.page.locator("#step-weights .chip").count() == prompt + 1
        weights = page.numbers("#step-weights .chip", "weight")
        assert sum(weights) == pytest.approx(1.0, abs=1e-4)  # one row of attention, averaged over heads
        # "Keep writing" streams more tokens, appended one by one.
        page.page.fill("#max-new", "3")
        page.page.click("#generate-run")
        page.page.wait_for_function("document.querySelectorAll('#generated .gen-token').length === 4")
        page.settle()
        assert page.page.input_value("#text").startswith(FRANCE + " Paris")
        page.shoot("generate", tmp_path, "#generate")

    live(body)


def test_hiding_a_word_changes_the_numbers_as_the_edited_reference(live, minilm, tmp_path):
    def body(open_page):
        model, tokenizer = minilm
        page = open_page()
        animal = 2  # [CLS] the animal ...
        page.page.click(f'#whatif-tokens [data-token="{animal}"]')
        assert page.page.get_attribute(f'#whatif-tokens [data-token="{animal}"]', "aria-pressed") == "true"
        page.page.click("#whatif-run")
        page.page.wait_for_selector("#whatif-result:not([hidden])")
        page.settle()
        with edit(model, hide_keys=[animal]):
            expected = build_explanation(model, tokenizer, SENTENCE, model_name="minilm")
            edited_vector = model.embed(SENTENCE)[0]
        original = build_explanation(model, tokenizer, SENTENCE, model_name="minilm")
        layer, head, token = page.chosen()
        assert page.numbers("#wt-table tbody tr", "weight") == expected["attention"][layer][head][token]
        assert page.numbers("#wt-table td.before", "before") == original["attention"][layer][head][token]
        assert "you hid it" in page.page.inner_text(f'#wt-table tr[data-key="{animal}"]')
        cosine = float(torch.dot(model.embed(SENTENCE)[0].double(), edited_vector.double()))
        assert page.numbers("#whatif-cosine", "value") == [pytest.approx(cosine, abs=1e-5)]
        assert "Without 'animal'" in page.page.inner_text("#whatif-sentences")
        page.shoot("whatif", tmp_path, "#whatif")
        # The sentences are written from the server's notes: they change language with the page.
        page.page.select_option("#lang", "zh")
        assert "去掉 “animal”后" in page.page.inner_text("#whatif-sentences")
        assert "意思保留了" in page.page.inner_text("#whatif-cosine")
        assert "被你隐藏了" in page.page.inner_text(f'#wt-table tr[data-key="{animal}"]')
        page.page.select_option("#lang", "en")
        assert "Without 'animal'" in page.page.inner_text("#whatif-sentences")
        page.page.click("#whatif-reset")
        page.settle()
        assert page.numbers("#wt-table tbody tr", "weight") == original["attention"][layer][head][token]

    live(body)


def test_switching_off_a_head_changes_the_next_word_as_the_reference(live, smollm2):
    def body(open_page):
        model, tokenizer = smollm2
        page = open_page()
        page.choose_model("smollm2")
        page.page.select_option("#wt-layer", "3")
        page.page.select_option("#wt-head", "1")
        page.page.click("#whatif-head-off")
        assert "head 1 of layer 3 off" in page.page.inner_text("#whatif-list")
        page.page.click("#whatif-run")
        page.page.wait_for_selector("#whatif-result:not([hidden])")
        page.settle()
        before = softmax(last_logits(model, tokenizer, FRANCE))
        with edit(model, heads_off=[(3, 1)]):
            after = softmax(last_logits(model, tokenizer, FRANCE))
        rows = page.page.eval_on_selector_all("#whatif-next tbody tr", """rows => rows.map(r => ({
            id: +r.dataset.id, before: +r.dataset.before, after: +r.dataset.after}))""")
        assert rows
        for row in rows:
            assert row["before"] == pytest.approx(float(before[row["id"]]), abs=1e-5)
            assert row["after"] == pytest.approx(float(after[row["id"]]), abs=1e-5)
        assert page.page.get_attribute('.thumb[data-layer="3"][data-head="1"]', "data-off") == "true"

    live(body)


def test_over_long_input_is_refused_in_the_page(live):
    def body(open_page):
        page = open_page()
        page.explain(" ".join(["word"] * 300))
        error = page.page.locator("#error")
        assert error.is_visible()
        assert "at most 117" in error.inner_text()
        assert not page.page.evaluate("document.body.dataset.busy")  # no hang
        # The browser itself logs the refused request; that one line is expected.
        refused = "error: Failed to load resource: the server responded with a status of 400 (Bad Request)"
        assert page.problems == [refused]
        page.problems.clear()

    live(body)


def test_the_page_fits_a_phone(live, tmp_path):
    def body(open_page):
        page = open_page(PHONE)
        page.fits(PHONE)
        page.shoot("phone", tmp_path)
        page.choose_model("smollm2")
        page.set_range("#temperature", 0)
        page.page.click("#generate-one")
        page.page.wait_for_selector("#generated .gen-token")
        page.settle()
        page.fits(PHONE)
        page.shoot("phone-decoder", tmp_path, "#next")

    live(body)


CHINESE = re.compile(r"[\u4e00-\u9fff]")


def test_the_page_speaks_chinese_when_asked_or_when_the_browser_does(live, tmp_path):
    def body(open_page):
        page = open_page(PHONE, query="?lang=zh")
        text = page.page.inner_text("body")
        assert "⟦" not in text and "Explain this text" not in text
        assert page.page.inner_text("#run") == "讲解这段文字"
        for section in ("#model-about", "#wt-steps", "#whatif", "#cost-text"):
            assert CHINESE.search(page.page.inner_text(section)), section
        page.fits(PHONE)
        page.shoot("zh-phone", tmp_path)
        page.page.select_option("#lang", "en")
        assert page.page.inner_text("#run") == "Explain this text"
        assert not CHINESE.search(page.page.inner_text("#wt-steps") + page.page.inner_text("#model-about"))
        assert "⟦" not in page.page.inner_text("body")
        browser_zh = open_page(locale="zh-CN")
        assert browser_zh.page.inner_text("#serve-title") == "看语言模型如何阅读你的文字"
        assert browser_zh.page.input_value("#lang") == "zh"

    live(body)
