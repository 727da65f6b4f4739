"""The explain page in a real browser (Debian's chromium driven by Playwright), opened from disk.

Every test also checks that the page logged no error and asked for nothing but its own file.
Screenshots of each section go to ``tmp_path`` and, when ``ATTNLAB_SCREENSHOTS=DIR`` is set,
to ``DIR`` too, to be looked at by a person.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from fake_data import fake_explanation

from attnlab.explain.page import write_page

SECTIONS = ("top", "walkthrough", "head-view", "model-view", "cost", "glossary")
WIDE, NARROW = 1280, 420


@pytest.fixture(scope="module")
def encoder_data():
    return fake_explanation("encoder")


@pytest.fixture(scope="module")
def decoder_data():
    return fake_explanation("decoder")


class OpenPage:
    """A page opened from ``data`` via file://, recording console errors and every request."""

    def __init__(self, browser, data: dict, folder: Path, width: int = WIDE, lang: str = "en"):
        self.data = data
        self.path = write_page(data, folder / "page.html", lang=lang)
        self.url = self.path.resolve().as_uri()
        self.problems: list[str] = []
        self.requests: list[str] = []
        self.page = browser.new_page(viewport={"width": width, "height": 900})
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.problems.append(str(error)))
        self.page.route("**/*", self._only_this_file)
        self.page.goto(self.url)
        self.page.wait_for_selector("body[data-ready]", timeout=20_000)

    def _console(self, message):
        if message.type in ("error", "warning"):
            self.problems.append(f"{message.type}: {message.text}")

    def _only_this_file(self, route):
        self.requests.append(route.request.url)
        if route.request.url == self.url:
            route.continue_()
        else:
            route.abort()

    def check_clean(self):
        assert self.problems == []
        assert self.requests == [self.url]

    def numbers(self, selector: str) -> list[float]:
        return [float(v) for v in self.page.eval_on_selector_all(
            selector, "nodes => nodes.map(n => n.dataset.value ?? n.dataset.weight)")]

    def lines(self) -> list[dict]:
        return self.page.eval_on_selector_all("#hv line", """lines => lines.map(l => ({
            q: +l.dataset.q, k: +l.dataset.k, head: +l.dataset.head, weight: +l.dataset.weight,
            width: +l.getAttribute('stroke-width'), opacity: +l.getAttribute('stroke-opacity')}))""")

    def shoot(self, name: str, tmp_path: Path):
        targets = [tmp_path]
        if os.environ.get("ATTNLAB_SCREENSHOTS"):
            targets.append(Path(os.environ["ATTNLAB_SCREENSHOTS"]))
        for section in SECTIONS:
            shot = tmp_path / f"{name}-{section}.png"
            self.page.locator(f"#{section}").screenshot(path=str(shot))
            assert shot.stat().st_size > 1000
            for folder in targets[1:]:
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copy(shot, folder / shot.name)

    def close(self):
        self.page.close()


@pytest.fixture
def open_page(browser, tmp_path):
    """``open_page(data, width=1280, lang="en")``; on teardown, asserts the page stayed clean."""
    pages = []

    def open_(data: dict, width: int = WIDE, lang: str = "en") -> OpenPage:
        folder = tmp_path / f"page{len(pages)}"
        folder.mkdir()
        pages.append(OpenPage(browser, data, folder, width, lang))
        return pages[-1]

    yield open_
    for page in pages:
        page.check_clean()
        page.close()


def percent(weight: float) -> str:
    """A share as the page writes it."""
    return "<0.1%" if 0 < weight < 0.001 else f"{weight * 100:.1f}%"


def walkthrough_state(page: OpenPage) -> tuple[int, int, int]:
    layer = int(page.page.input_value("#wt-layer"))
    head = int(page.page.input_value("#wt-head"))
    token = int(page.page.get_attribute('#wt-tokens [aria-pressed="true"]', "data-token"))
    return layer, head, token


def assert_walkthrough_shows(page: OpenPage, layer: int, head: int, token: int):
    step = page.data["walkthrough"][layer][head]
    assert page.numbers('[data-vector="input"] [data-value]') == step["input"][token]
    assert page.numbers('[data-vector="query"] [data-value]') == step["query"][token]
    assert page.numbers('[data-vector="key"] [data-value]') == step["key"][token]
    assert page.numbers('[data-vector="value"] [data-value]') == step["value"][token]
    assert page.numbers("#wt-table tbody tr") == page.data["attention"][layer][head][token]
    # The output row is computed on the page as the sum of share x value: it must be the model's.
    blended = page.numbers("#wt-output [data-value]")
    assert len(blended) >= 3
    assert blended == pytest.approx(step["output"][token][:len(blended)], abs=1e-4)
    assert page.numbers("#wt-sum") == [pytest.approx(1.0, abs=1e-5)]
    assert page.page.get_attribute("#wt-check", "class") == "check-ok"
    assert page.page.get_attribute("#wt-output-check", "class") == "check-ok"


def test_encoder_page_draws_every_section_at_both_widths(open_page, encoder_data, tmp_path):
    for width in (WIDE, NARROW):
        page = open_page(encoder_data, width)
        # Nothing sticks out sideways: wide tables and heatmaps scroll inside their own frames.
        assert page.page.evaluate("document.documentElement.scrollWidth") <= width
        assert page.page.inner_text("#sentence") == encoder_data["text"]
        assert page.page.locator("#causal-note").is_hidden()
        assert page.page.locator(".thumb").count() == 6 * 12
        page.shoot(f"minilm-like-{width}", tmp_path)


def test_choosing_another_word_recomputes_the_walkthrough(open_page, encoder_data):
    page = open_page(encoder_data)
    layer, head, token = walkthrough_state(page)
    assert (layer, head) == (encoder_data["selected"]["layer"], encoder_data["selected"]["head"])
    assert_walkthrough_shows(page, layer, head, token)
    before = page.numbers('[data-vector="query"] [data-value]')

    other = 10 if token != 10 else 2
    page.page.click(f'#wt-tokens [data-token="{other}"]')
    assert walkthrough_state(page) == (layer, head, other)
    assert page.numbers('[data-vector="query"] [data-value]') != before
    assert_walkthrough_shows(page, layer, head, other)


def test_choosing_another_layer_and_head_recomputes_the_walkthrough(open_page, encoder_data):
    page = open_page(encoder_data)
    page.page.select_option("#wt-layer", "4")
    page.page.select_option("#wt-head", "11")
    _, _, token = walkthrough_state(page)
    assert_walkthrough_shows(page, 4, 11, token)
    assert page.page.input_value("#hv-layer") == "4"  # one selection drives every section
    assert "You picked layer 4, head 11" in page.page.inner_text("#wt-reason")


def test_picking_a_key_writes_out_its_dot_product(open_page, encoder_data):
    page = open_page(encoder_data)
    layer, head, token = walkthrough_state(page)
    page.page.click('#wt-table tr[data-key="1"]')
    assert page.numbers("#wt-score-total") == [encoder_data["walkthrough"][layer][head]["scores"][token][1]]
    assert page.page.locator("#wt-dot").inner_text().count("×") == encoder_data["dims_shown"]


def test_head_view_lines_are_the_weights_of_the_chosen_head(open_page, encoder_data):
    page = open_page(encoder_data)
    page.page.select_option("#hv-layer", "1")
    page.page.select_option("#hv-head", "3")
    first = page.lines()
    page.page.select_option("#hv-head", "7")
    second = page.lines()
    assert first != second
    for head, lines in ((3, first), (7, second)):
        weights = encoder_data["attention"][1][head]
        minimum = float(page.page.get_attribute("#hv svg", "data-min-weight"))
        drawn = {(line["q"], line["k"]): line["weight"] for line in lines}
        expected = {(q, k): w for q, row in enumerate(weights) for k, w in enumerate(row) if w >= minimum}
        assert drawn == expected
        # Thicker and more opaque exactly when the weight is bigger.
        ordered = sorted(lines, key=lambda line: line["weight"])
        assert [line["width"] for line in ordered] == sorted(line["width"] for line in lines)
        assert [line["opacity"] for line in ordered] == sorted(line["opacity"] for line in lines)
        assert all(line["head"] == head for line in lines)


def test_hovering_a_word_in_the_head_view_shows_its_percentages(open_page, encoder_data):
    page = open_page(encoder_data)
    layer, head = int(page.page.input_value("#hv-layer")), int(page.page.input_value("#hv-head"))
    page.page.hover('#hv .left button[data-index="2"]')
    labels = page.page.eval_on_selector_all("#hv .right .pct", "nodes => nodes.map(n => n.textContent)")
    shares = [float(label.rstrip("%")) / 100 if not label.startswith("<") else 0.0 for label in labels]
    assert shares == pytest.approx(encoder_data["attention"][layer][head][2], abs=0.0011)
    highlighted = page.page.eval_on_selector_all("#hv line.on", "lines => lines.map(l => +l.dataset.q)")
    assert highlighted and set(highlighted) == {2}
    # A tap pins the word; a tap on another word moves the pin.
    page.page.click('#hv .left button[data-index="5"]')
    page.page.mouse.move(0, 0)
    assert set(page.page.eval_on_selector_all("#hv line.on", "ls => ls.map(l => +l.dataset.q)")) == {5}


def test_all_heads_mode_draws_each_head_in_its_colour(open_page, encoder_data):
    page = open_page(encoder_data)
    page.page.check("#hv-all")
    lines = page.lines()
    assert {line["head"] for line in lines} == set(range(12))
    assert page.page.locator("#hv-legend .head-key").count() == 12
    page.page.click('#hv-legend .head-key[data-head="4"]')
    assert {line["head"] for line in page.lines()} == {4}
    assert page.page.input_value("#wt-head") == "4"


def test_clicking_a_model_view_square_opens_it_large_and_selects_it(open_page, encoder_data):
    page = open_page(encoder_data)
    assert page.page.locator("#zoom").is_hidden()
    page.page.click('.thumb[data-layer="3"][data-head="8"]')
    assert page.page.locator("#zoom").is_visible()
    assert page.page.inner_text("#zoom-title") == "Layer 3, head 8"
    assert page.page.input_value("#wt-layer") == "3" and page.page.input_value("#hv-head") == "8"
    assert page.page.get_attribute('.thumb[data-layer="3"][data-head="8"]', "aria-pressed") == "true"
    weights = encoder_data["attention"][3][8]
    # The arrow keys start on the walkthrough's word looking at itself.
    _, _, token = walkthrough_state(page)
    page.page.focus("#zoom-canvas")
    page.page.keyboard.press("ArrowRight")
    assert percent(weights[token][token]) in page.page.inner_text("#zoom-readout")
    # The outlined square gives the grid's geometry: point the mouse at square (query 4, key 9).
    box = page.page.locator("#zoom-outline").bounding_box()
    cell = box["width"] - 2
    left, top = box["x"] + 1 - token * cell, box["y"] + 1 - token * cell
    page.page.mouse.move(left + 9.5 * cell, top + 4.5 * cell)
    readout = page.page.inner_text("#zoom-readout")
    assert readout.startswith(encoder_data["tokens"][4]) and percent(weights[4][9]) in readout
    page.page.click("#zoom-close")
    assert page.page.locator("#zoom").is_hidden()


def test_decoder_page_greys_out_the_future_and_says_why(open_page, decoder_data, tmp_path):
    page = open_page(decoder_data)
    note = page.page.locator("#causal-note")
    assert note.is_visible() and "only look at itself and the words" in note.inner_text()
    n = len(decoder_data["tokens"])

    page.page.click('#wt-tokens [data-token="3"]')
    assert page.page.locator("#wt-table tr.hidden-row").count() == n - 4
    assert page.page.locator("#wt-table tr.hidden-row .hidden-swatch").count() == n - 4
    assert_walkthrough_shows(page, *walkthrough_state(page))
    assert page.page.locator("#wt-shared-note").is_visible()

    # Model view: a square above the diagonal is grey (r = g = b), one on it is blue.
    pixels = page.page.evaluate("""n => {
        const c = document.querySelector('.thumb[data-layer="0"][data-head="0"] canvas');
        const rgba = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const cell = c.width / n;
        const at = (x, y) => Array.from(rgba.slice((y * c.width + x) * 4, (y * c.width + x) * 4 + 4));
        const future = [];  // the top row of square (query 0, key n - 1)
        for (let x = c.width - cell; x < c.width; x++) future.push(at(x, 0));
        return {future: future, diagonal: at(cell / 2, cell / 2)};
    }""", n)
    assert all(r == g == b for r, g, b, _ in pixels["future"])
    assert len({tuple(p) for p in pixels["future"]}) == 2  # hatched: stripes of two greys
    assert pixels["diagonal"][2] > pixels["diagonal"][0]
    assert page.page.locator("#mv-grid .group-head").count() == 3
    assert "heads 0–2 share one key/value" in page.page.inner_text("#mv-grid")

    # Head view: the words after the hovered one are marked as coming later.
    page.page.hover('#hv .left button[data-index="2"]')
    assert page.page.locator("#hv .right .hv-row.future").count() == n - 3
    lines = page.lines()
    assert lines and all(line["k"] <= line["q"] for line in lines)

    # The large view says so in words.
    page.page.click('.thumb[data-layer="0"][data-head="0"]')
    page.page.focus("#zoom-canvas")
    page.page.keyboard.press("ArrowRight")
    page.page.keyboard.press("ArrowRight")
    readout = page.page.inner_text("#zoom-readout")
    assert re.search(r"cannot look at .*it comes later", readout, re.DOTALL)
    page.page.click("#zoom-close")
    page.shoot(f"smollm2-like-{WIDE}", tmp_path)


def test_decoder_page_fits_a_narrow_window(open_page, decoder_data, tmp_path):
    page = open_page(decoder_data, NARROW)
    assert page.page.evaluate("document.documentElement.scrollWidth") <= NARROW
    assert page.page.locator(".thumb").count() == 30 * 9
    page.shoot(f"smollm2-like-{NARROW}", tmp_path)


def test_long_sentence_stays_usable(open_page, tmp_path):
    tokens = ["<|im_start|>", *(f"w{i}" for i in range(58)), "<|im_end|>"]
    data = fake_explanation("decoder", tokens=tokens, num_layers=4)
    page = open_page(data, NARROW)
    assert page.page.evaluate("document.documentElement.scrollWidth") <= NARROW
    assert_walkthrough_shows(page, *walkthrough_state(page))
    page.page.click('.thumb[data-layer="1"][data-head="2"]')
    frame = page.page.locator("#zoom-frame").bounding_box()
    assert frame["width"] <= NARROW  # the 60 x 60 heatmap scrolls inside the dialog


def test_real_minilm_page(open_page, minilm_explanation, tmp_path):
    page = open_page(minilm_explanation)
    assert_walkthrough_shows(page, *walkthrough_state(page))
    page.page.click('#wt-tokens [data-token="10"]')  # "it"
    assert_walkthrough_shows(page, *walkthrough_state(page))
    page.shoot("minilm", tmp_path)


def test_real_smollm2_page(open_page, smollm2_explanation, tmp_path):
    page = open_page(smollm2_explanation)
    assert_walkthrough_shows(page, *walkthrough_state(page))
    assert page.page.locator("#causal-note").is_visible()
    page.shoot("smollm2", tmp_path)


CHINESE = re.compile(r"[\u4e00-\u9fff]")


def test_page_written_in_chinese_shows_chinese_and_switches_live(open_page, decoder_data, tmp_path):
    page = open_page(decoder_data, NARROW, lang="zh")
    body = page.page.inner_text("body")
    assert "⟦" not in body and page.page.evaluate("document.documentElement.lang") == "zh-Hans"
    assert "注意力" in page.page.inner_text("#glossary") and CHINESE.search(page.page.inner_text("#wt-steps"))
    assert "Follow one word" not in body and page.page.input_value("#lang") == "zh"
    assert page.page.evaluate("document.documentElement.scrollWidth") <= NARROW
    page.page.select_option("#lang", "en")
    assert page.page.inner_text("#wt-title") == "1. Follow one word through one attention head"
    assert "Each row is a word that" in page.page.inner_text("#wt-table caption")
    assert not CHINESE.search(page.page.inner_text("#wt-steps"))
    page.page.select_option("#lang", "zh")
    assert CHINESE.search(page.page.inner_text("#cost-text")) and "⟦" not in page.page.inner_text("body")
    page.shoot(f"smollm2-like-zh-{NARROW}", tmp_path)
