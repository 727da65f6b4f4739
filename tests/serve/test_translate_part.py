"""The explorer's Translate part: ``POST /api/translate`` and its page, on a real server with a tiny
Transformer and a tiny LSTM translator trained here; what they send and show equals the library's
own translations (:func:`attnlab.train.translate_task.translate`), alignments
(:func:`attnlab.explain.alignment.alignment_data`) and edited runs (:func:`attnlab.attention.edit`).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import torch

from attnlab.attention import edit
from attnlab.explain.alignment import alignment_data
from attnlab.explain.live_translate import _reads_source
from attnlab.train.translate_task import translate

SENTENCE = "God made the light."
WAIT_MS = 60_000
SHOTS = Path("/tmp/translate-shots")


@pytest.fixture(scope="module")
def translators(tiny_translator_runs):
    """``{"transformer": part, "lstm": part}``: the session's 5-step tiny translators."""
    from attnlab.serve.models import load_checkpoint_part

    parts, taken = {}, set()
    for arch in ("transformer", "lstm"):
        parts[arch] = load_checkpoint_part(tiny_translator_runs[arch], taken)
        taken.add(parts[arch].id)
    return parts


@pytest.fixture(scope="module")
def server(translators):
    from attnlab.serve.runner import BackgroundServer

    with BackgroundServer(list(translators.values())) as running:
        yield running


def stream(server, **body) -> list[dict]:
    """The NDJSON events of one ``POST /api/translate``."""
    answer = httpx.post(server.url + "api/translate", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    return [json.loads(line) for line in answer.text.splitlines()]


def refusal(server, **body) -> str:
    answer = httpx.post(server.url + "api/translate", json=body, timeout=60)
    assert answer.status_code == 400
    return answer.json()["error"]


@pytest.mark.parametrize("arch", ["transformer", "lstm"])
def test_streamed_greedy_translation_equals_the_librarys_and_its_alignment(server, translators, arch):
    part = translators[arch]
    events = stream(server, app=part.id, text=SENTENCE)
    start, tokens, end = events[0], events[1:-1], events[-1]
    assert [e["type"] for e in events] == ["start", *["token"] * len(tokens), "end"]
    assert end["translation"] == translate(part.model, part.tokenizer, [SENTENCE], greedy=True)[0]
    assert [e["id"] for e in tokens] == end["target_ids"]
    # The step-by-step weights equal the teacher-forced re-run's, row for row.
    steps = torch.tensor([e["alignment"] for e in tokens])
    torch.testing.assert_close(steps, torch.tensor(end["alignment"]), atol=1e-6, rtol=0)
    library = alignment_data(part.model, part.tokenizer, SENTENCE, end["target_ids"])
    assert start["source_tokens"] == library["source_tokens"] == end["source_tokens"]
    rows = len(end["target_ids"])  # alignment_data adds an end row to a translation that never ended
    torch.testing.assert_close(torch.tensor(end["alignment"]), torch.tensor(library["weights"])[:rows],
                               atol=1e-6, rtol=0)
    if arch == "transformer":
        torch.testing.assert_close(torch.tensor(end["cross"]), torch.tensor(library["layers"])[:, :, :rows],
                                   atol=1e-6, rtol=0)
        cfg = part.model.config
        assert torch.tensor(end["decoder_self"]).shape == (cfg.num_decoder_layers, cfg.num_heads, rows, rows)
        n_s, n_t = len(start["source_ids"]), rows
        encoder, decoder = cfg.num_encoder_layers * cfg.num_heads, cfg.num_decoder_layers * cfg.num_heads
        assert end["cost"]["scores"] == {"encoder_self": n_s * n_s * encoder,
                                         "decoder_self": n_t * (n_t + 1) // 2 * decoder,
                                         "cross": n_t * n_s * decoder}
    else:
        assert end["cross"] is None
        assert end["cost"]["scores"] == {"attention": rows * len(start["source_ids"])}


def test_decoder_self_attention_is_the_models_recorded_weights(server, translators):
    from attnlab.attention import record

    part = translators["transformer"]
    end = stream(server, app=part.id, text=SENTENCE)[-1]
    model, cfg = part.model, part.model.config
    src = torch.tensor([end["source_ids"]])
    tgt_in = torch.tensor([[cfg.bos_id, *end["target_ids"][:-1]]])
    with torch.no_grad(), record(model, modules=lambda name, _: name.endswith(".self_attn")) as rec:
        model(src, tgt_in)
    expected = torch.stack([trace.attention.weights[0] for trace in rec.traces])
    torch.testing.assert_close(torch.tensor(end["decoder_self"]), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ["transformer", "lstm"])
def test_beam_translation_equals_the_librarys_beam_search(server, translators, arch):
    part = translators[arch]
    end = stream(server, app=part.id, text=SENTENCE, decoding="beam", beam=3)[-1]
    assert end["translation"] == translate(part.model, part.tokenizer, [SENTENCE], beam=3)[0]
    assert end["decoding"] == "beam" and end["beam"] == 3


def test_hiding_source_words_equals_a_manual_edit_run_and_is_compared(server, translators):
    part = translators["transformer"]
    events = stream(server, app=part.id, text=SENTENCE, hide=[0, 2])
    end = events[-1]
    with edit(part.model, hide_keys=[0, 2], modules=_reads_source):
        expected = translate(part.model, part.tokenizer, [SENTENCE], greedy=True)[0]
    assert end["translation"] == expected and end["hidden"] == [0, 2]
    original = translate(part.model, part.tokenizer, [SENTENCE], greedy=True)[0]
    assert end["original"]["translation"] == original
    assert end["comparison"]["hidden_words"] == [end["source_tokens"][0], end["source_tokens"][2]]
    assert end["comparison"]["after"] == expected
    hidden_columns = torch.tensor(end["alignment"])[:, [0, 2]]
    assert hidden_columns.abs().max() == 0  # nothing looked at the hidden words


@pytest.mark.parametrize(("body", "says"), [
    ({"text": "   "}, "empty"),
    ({"text": "God " * 200}, "tokens long"),
    ({"text": SENTENCE, "decoding": "beam", "beam": 9}, "beam must be from 1 to 8"),
    ({"text": SENTENCE, "decoding": "beam", "beam": True}, "beam must be a whole number"),
    ({"text": SENTENCE, "decoding": "sample"}, "decoding must be"),
    ({"text": SENTENCE, "hide": [99]}, "out of range"),
    ({"text": SENTENCE, "hide": "0"}, "hide must be a list"),
])
def test_bad_requests_get_400_with_one_sentence(server, translators, body, says):
    message = refusal(server, app=translators["lstm"].id, **body)
    assert says in message.lower() and message.endswith(".") and "\n" not in message


def test_an_unknown_translator_is_refused_naming_the_served_ones(server, translators):
    message = refusal(server, app="nope", text=SENTENCE)
    assert translators["transformer"].id in message and translators["lstm"].id in message


def test_models_list_describes_both_translators(server, translators):
    apps = {a["id"]: a for a in httpx.get(server.url + "api/models").json()["apps"]}
    transformer, lstm = apps[translators["transformer"].id], apps[translators["lstm"].id]
    assert transformer["kind"] == lstm["kind"] == "translate"
    assert (transformer["arch"], lstm["arch"]) == ("transformer", "lstm")
    assert transformer["num_heads"] == 4 and lstm["num_heads"] is None


# ---------- the page ----------

class TranslatePage:
    """The page with the Translate part shown, keeping this part's console errors and key misses
    (other parts' texts are other tests' business)."""

    def __init__(self, browser, url: str, width: int = 1280):
        self.problems: list[str] = []
        self.page = browser.new_page(viewport={"width": width, "height": 900})
        self.page.set_default_timeout(WAIT_MS)
        self.page.on("pageerror", lambda error: self.problems.append(str(error)))
        self.page.on("console", self._console)
        self.page.goto(url)
        self.wait_runs(1)  # the part translates its example when first shown

    def _console(self, message):
        if message.type == "error" and ("translate" in message.text or "attnlab" not in message.text):
            self.problems.append(message.text)

    def wait_runs(self, runs: int) -> None:
        self.page.wait_for_function(
            "n => { const p = document.getElementById('part-translate');"
            " return Number(p.dataset.runs || 0) >= n && !p.dataset.busy; }", arg=runs)

    def translate(self, text: str, runs: int) -> None:
        self.page.fill("#tr-text", text)
        self.page.press("#tr-text", "Enter")
        self.wait_runs(runs)

    def shoot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_page_streams_the_translation_and_shows_the_models_weights(browser, server, translators):
    part = translators["transformer"]
    page = TranslatePage(browser, server.url)
    page.translate(SENTENCE, runs=2)
    end = stream(server, app=part.id, text=SENTENCE)[-1]
    shown = page.page.eval_on_selector_all("#tr-target .tr-tgt",
                                           "nodes => nodes.map(n => Number(n.dataset.id))")
    assert shown == end["target_ids"]
    row = len(end["target_ids"]) - 1  # the last Spanish token: a 5-step model may write only one
    cell = page.page.locator(f'#tr-map td[data-row="{row}"][data-col="1"]')
    assert float(cell.get_attribute("data-weight")) == pytest.approx(end["alignment"][row][1], abs=1e-6)
    page.page.select_option("#tr-head", "1")
    cell = page.page.locator('#tr-map td[data-row="0"][data-col="0"]')
    assert float(cell.get_attribute("data-weight")) == pytest.approx(end["cross"][-1][1][0][0], abs=1e-6)
    page.page.focus(f'#tr-target .tr-tgt[data-row="{row}"]')  # by keyboard: the looked-at bars follow
    bar = page.page.locator('#tr-bars .tr-bar[data-col="1"]')
    assert float(bar.get_attribute("data-weight")) == pytest.approx(end["cross"][-1][1][row][1], abs=1e-6)
    page.shoot("translate-1280-en")
    assert not page.problems


def test_page_hides_a_source_word_and_shows_the_librarys_new_translation(browser, server, translators):
    part = translators["transformer"]
    page = TranslatePage(browser, server.url, width=390)
    page.translate(SENTENCE, runs=2)
    page.page.click('#tr-source .tr-src[data-col="1"]')
    page.page.click("#tr-whatif-run")
    page.wait_runs(3)
    with edit(part.model, hide_keys=[1], modules=_reads_source):
        expected = translate(part.model, part.tokenizer, [SENTENCE], greedy=True)[0]
    assert page.page.text_content("#tr-whatif-after") == (expected or page.page.evaluate(
        "window.attnlabI18n.t('translate.target.empty')"))
    assert page.page.evaluate("document.documentElement.scrollWidth") <= 390
    page.page.click("#tr-compare-run")
    page.wait_runs(4)
    sides = page.page.eval_on_selector_all("#tr-compare-result .tr-side",
                                           "nodes => nodes.map(n => n.dataset.arch)")
    assert sides == ["transformer", "lstm"]
    page.shoot("translate-390-en")
    assert not page.problems


@pytest.mark.parametrize("width", [1280, 390])
def test_page_in_chinese_has_every_text_of_the_part(browser, server, width):
    page = TranslatePage(browser, server.url + "?lang=zh", width=width)
    text = page.page.inner_text("#part-translate")
    assert "⟦" not in text and "译文" in text and "注意力" in text
    page.shoot(f"translate-{width}-zh")
    assert not page.problems
