/* attnlab serve: the live page. It talks to the server's JSON API (docs/serve-api.md) and draws
 * the explanation sections with page.js (window.attnlabExplain.show). Plain JavaScript, no
 * libraries; the only requests go to the server that sent this page.
 *
 * For tests: body[data-ready="true"] once the first explanation is drawn; body[data-busy] while
 * a request is in flight. Stable element ids:
 *   #model (select: model picker)   #text (textarea; Enter runs)   #run (button)   #status
 *   #error, #error-text, #error-retry (one readable sentence; retry after 503)
 *   #token-strip (tokens; chips [data-token])   #sink-note (attention sink, when there is one)
 *   #next (decoders): #temperature, #top-k, #top-p (range inputs) with #temperature-value,
 *     #top-k-value, #top-p-value; #sampling-summary; #candidates > li.candidate
 *     [data-id][data-probability] > .cand-token, .pct
 *   #generate (decoders): #generate-one, #generate-run, #max-new, #generate-stop; #generated >
 *     button.gen-token[data-step]; #generated-line; #step (the chosen new token): #step-title,
 *     #step-layer, #step-head, #step-weights > .chip[data-key][data-weight], #step-cache
 *     [data-reused][data-scores-now][data-scores-recompute]
 *   #whatif: #whatif-tokens > button.chip[data-token][aria-pressed], #whatif-head-off,
 *     #whatif-layer-off, #whatif-list, #whatif-run, #whatif-reset; #whatif-result:
 *     #whatif-sentences > li, #whatif-cosine[data-value] (encoders), #whatif-next tbody >
 *     tr[data-id][data-before][data-after] (decoders), #whatif-before and #whatif-after
 *     (canvases of the chosen head), #whatif-words tbody > tr[data-token]; #whatif-banner
 *   #path (decoders): #path-intro, #path-overview, #path-layer, #path-detail, #path-final
 *     (tr.path-top[data-id][data-probability]), #path-check
 *   and the ids of page.js's sections (#walkthrough, #wt-table, #head-view, #model-view, ...).
 * Every text the page writes comes from the string tables (i18n.js); on "attnlab:lang" it writes
 * them again in the new language. The server's own error sentences stay as it sent them.
 */
(function () {
  "use strict";

  const config = JSON.parse(document.getElementById("attnlab-serve").textContent);
  const explainPage = window.attnlabExplain;
  const i18n = window.attnlabI18n;
  const $ = (id) => document.getElementById(id);
  const CANDIDATES_SHOWN = 10;
  // The path's shown numbers are rounded to 6 significant digits, so sums agree to about 1e-5.
  const PATH_TOLERANCE = 1e-4;

  const S = {
    model: null,         // the entry of /api/models being used
    text: "",            // the text of the explanation shown
    answer: null,        // the last /api/explain answer for that text
    shownNext: null,     // the Next whose candidates are shown
    logits: null,        // its logits as a Float32Array
    generated: [],       // token events of the current generation log, each with .context tokens
    genText: null,       // the text the last generation left in the text box
    stepShown: null,     // index in S.generated of the token shown in #step
    hide: new Set(),     // what-if: hidden token positions
    headsOff: [],        // what-if: [layer, head] pairs
    layersOff: [],       // what-if: layers
    whatif: null,        // the last /api/whatif answer, while it is shown
    shownAnswer: null,   // the answer whose sections are drawn (S.answer, or a what-if's edited run)
    pathShown: null,     // the path drawn in #path
    tooLong: false,      // the generated text outgrew what the sections can explain
    status: () => "",    // the status line and the error, as functions of the language
    error: null,
  };
  const inflight = {};   // action name -> AbortController of its newest request
  let busy = 0;

  /* ---------- small helpers ---------- */

  const {el, fmt, pct, count, heat, sci} = explainPage.helpers;

  /** A big count as people read it: 6,750, or 2.7 × 10^8. */
  function big(x) {
    return Math.abs(x) < 1e6 ? count(x) : sci(x);
  }

  function times(a, b) {
    const ratio = a / b;
    return ratio >= 10 ? Math.round(ratio) + "×" : ratio.toFixed(1) + "×";
  }

  const shown = (text) => explainPage.visibleText(text);

  function tokenChip(text, attrs) {
    return el("span", Object.assign({class: "tok"}, attrs || {}), shown(text));
  }

  /** Little-endian float32 values from base64, as the API sends logits and weights. */
  function floats(base64) {
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    const view = new DataView(bytes.buffer);
    const out = new Float32Array(bytes.length / 4);
    for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(i * 4, true);
    return out;
  }

  function setBusy(change) {
    busy += change;
    if (busy > 0) document.body.dataset.busy = "true";
    else delete document.body.dataset.busy;
  }

  /** Show ``text`` in #status: a string, or a function that writes it in the page's language. */
  function status(text) {
    S.status = typeof text === "function" ? text : () => text;
    $("status").textContent = S.status();
  }

  /** A token in “quotes”, as the page's sentences write it. */
  function quoted(text) {
    return i18n.t("serve.quote", {text: shown(text)});
  }

  /* ---------- errors and requests ---------- */

  /** A failed request: ``say`` is the server's sentence, or a function writing the page's own. */
  class ApiError extends Error {
    constructor(say, statusCode) {
      super(typeof say === "function" ? say() : say);
      this.say = typeof say === "function" ? say : () => say;
      this.status = statusCode;
    }
  }

  /** One sentence in #error: ``message`` is a string, or a function of the page's language. */
  function showError(message, retry) {
    S.error = typeof message === "function" ? message : () => message;
    $("error").hidden = false;
    $("error-text").textContent = S.error();
    const button = $("error-retry");
    button.hidden = !retry;
    button.onclick = retry ? () => { clearError(); retry(); } : null;
  }

  function clearError() {
    S.error = null;
    $("error").hidden = true;
    $("error-text").textContent = "";
  }

  /** One sentence for a failed request: the server's own, or what went wrong on the way. */
  async function failure(response) {
    let message = "";
    try {
      message = (await response.json()).error || "";
    } catch (error) {
      message = "";
    }
    const code = response.status;
    if (code === 503) {
      return new ApiError(() => (message || i18n.t("serve.error.busy_default")) + i18n.t("serve.error.busy"), code);
    }
    return new ApiError(message || (() => i18n.t("serve.error.no_answer", {status: code})), code);
  }

  async function post(path, body, signal) {
    let response;
    try {
      response = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json"},
                                    body: JSON.stringify(body), signal: signal});
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiError(() => i18n.t("serve.error.unreachable"), 0);
    }
    if (!response.ok) throw await failure(response);
    return response;
  }

  /** Run ``work(signal)`` as the newest request of ``action``: an older one is aborted, and
   * its answer (if it still comes) is ignored. Errors become one sentence in #error. */
  async function act(action, work, retry) {
    if (inflight[action]) inflight[action].abort();
    const controller = new AbortController();
    inflight[action] = controller;
    setBusy(1);
    try {
      await work(controller.signal);
    } catch (error) {
      if (error.name !== "AbortError" && !controller.signal.aborted) {
        status("");
        showError(error instanceof ApiError ? error.say : () => i18n.t("serve.error.page", {error: error.message}),
                  error.status === 503 ? retry : null);
        if (!(error instanceof ApiError)) console.error(error);
      }
    } finally {
      setBusy(-1);
      if (inflight[action] === controller) delete inflight[action];
      updateButtons();
    }
  }

  function stop(action) {
    if (inflight[action]) inflight[action].abort();
  }

  /* ---------- the model and the text ---------- */

  /** A model's title or description as the server wrote it, in the page's language when the
   * tables have it ("model.text." keys; see i18n.js fromEnglish). */
  function modelText(text) {
    return i18n.fromEnglish("model.text.", text);
  }

  function fillModels() {
    const menu = $("model");
    const keep = menu.value;
    menu.textContent = "";
    for (const m of config.models) {
      const title = {title: modelText(m.title)};
      menu.append(el("option", {value: m.id, text: m.generates ? i18n.t("serve.ask.writes", title) : i18n.t("serve.ask.reads", title)}));
    }
    if (keep) menu.value = keep;
  }

  function describeModel() {
    $("model-about").textContent = modelText(S.model.description);
    $("text-hint").textContent = i18n.t("serve.ask.hint_limit", {n: S.model.max_tokens,
                                                                 words: Math.round(S.model.max_tokens * 0.75)});
  }

  function chooseModel(id, run) {
    S.model = config.models.find((m) => m.id === id) || config.models[0];
    $("model").value = S.model.id;
    $("text").value = S.model.example;
    describeModel();
    const decoder = S.model.generates;
    for (const node of document.querySelectorAll("[data-kind=decoder]")) node.hidden = !decoder;
    S.generated = [];
    S.genText = null;
    S.stepShown = null;
    drawGenerated();
    if (run) explainText();
  }

  function explainText() {
    const text = $("text").value;
    if (!text.trim()) {
      showError(() => i18n.t("serve.error.empty"));
      return;
    }
    if (text.length > config.limits.max_text_chars) {
      showError(() => i18n.t("serve.error.too_long", {n: text.length, max: config.limits.max_text_chars}));
      return;
    }
    clearError();
    stop("whatif");
    stop("generate");
    const model = S.model;
    act("explain", async (signal) => {
      status(() => i18n.t("serve.status.reading"));
      const response = await post("/api/explain", {model: model.id, text: text, layer: null, head: null, edit: null},
                                  signal);
      const answer = await response.json();
      if (signal.aborted) return;
      if (text !== S.genText) {
        S.generated = [];
        S.stepShown = null;
        S.genText = null;
      }
      S.text = text;
      S.answer = answer;
      clearWhatif();
      drawAnswer(answer, {keep: true});
      drawGenerated();
      status(() => i18n.t("serve.status.done", {ms: Math.round(answer.elapsed_ms)}));
      document.body.dataset.ready = "true";
    }, explainText);
  }

  /** Draw an answer ({explanation, next, path, embedding}) with page.js's options ``view``. */
  function drawAnswer(answer, view) {
    S.shownAnswer = answer;
    explainPage.show(answer.explanation, view);
    drawSink(answer.explanation);
    drawWhatifTokens(answer.explanation);
    if (answer.next) showNext(answer.next);
    if (answer.path) drawPath(answer.path);
    updateWhatifButtons();
  }

  /* ---------- attention sinks ---------- */

  function drawSink(data) {
    const box = $("sink-note");
    box.textContent = "";
    const layers = data.attention.length;
    const heads = data.attention[0].length;
    const n = data.tokens.length;
    const markers = data.model.causal ? [0] : data.special.map((s, i) => (s ? i : -1)).filter((i) => i >= 0);
    if (n < 3 || !markers.length) {
      box.hidden = true;
      return;
    }
    let sinks = 0;
    for (let l = 0; l < layers; l++) {
      for (let h = 0; h < heads; h++) {
        let share = 0;
        let rows = 0;
        for (let q = 0; q < n; q++) {
          if (markers.includes(q) || (data.model.causal && q === 0)) continue;
          share += markers.reduce((s, k) => s + data.attention[l][h][q][k], 0);
          rows += 1;
        }
        if (rows && share / rows > 0.5) sinks += 1;
      }
    }
    box.hidden = sinks === 0;
    if (!sinks) return;
    const names = markers.map((k) => quoted(data.tokens[k])).join(i18n.t("common.and"));
    const vars = {sinks: sinks, total: layers * heads, names: names,
                  sink: el("a", {class: "term", href: "#g-sink", text: i18n.t("word.sink")})};
    box.append(el("p", {}, [
      el("strong", {text: i18n.t("serve.sink.lead")}),
      ...(data.model.causal ? i18n.parts("serve.sink.first", vars) : i18n.pluralParts("serve.sink.markers", markers.length, vars))]));
  }

  /* ---------- the next word ---------- */

  function sampling() {
    const temperature = Number($("temperature").value);
    const topK = Number($("top-k").value);
    const topP = Number($("top-p").value);
    return {temperature: temperature, top_k: topK > 0 ? topK : null, top_p: topP < 1 ? topP : null};
  }

  /** Probabilities as attnlab.generation.Sampling gives them: logits / temperature (0: all on
   * the largest), keep the top_k largest (ties kept), keep the nucleus top_p, softmax. */
  function probabilities(logits, settings) {
    const size = logits.length;
    const out = new Float64Array(size);
    if (settings.temperature === 0) {
      let best = 0;
      for (let i = 1; i < size; i++) if (logits[i] > logits[best]) best = i;
      out[best] = 1;
      return out;
    }
    const x = new Float64Array(size);
    for (let i = 0; i < size; i++) x[i] = Math.fround(logits[i] / settings.temperature);
    const keep = new Uint8Array(size).fill(1);
    if (settings.top_k !== null && settings.top_k < size) {
      const kth = Float64Array.from(x).sort()[size - settings.top_k];
      for (let i = 0; i < size; i++) if (x[i] < kth) keep[i] = 0;
    }
    if (settings.top_p !== null && settings.top_p < 1) {
      const order = [];
      for (let i = 0; i < size; i++) if (keep[i]) order.push(i);
      order.sort((a, b) => x[b] - x[a]);
      const top = x[order[0]];
      let total = 0;
      for (const i of order) total += Math.exp(x[i] - top);
      let before = 0;
      for (const i of order) {
        const p = Math.exp(x[i] - top) / total;
        if (before >= settings.top_p) keep[i] = 0;
        before += p;
      }
    }
    let top = -Infinity;
    for (let i = 0; i < size; i++) if (keep[i] && x[i] > top) top = x[i];
    let total = 0;
    for (let i = 0; i < size; i++) {
      if (keep[i]) {
        out[i] = Math.exp(x[i] - top);
        total += out[i];
      }
    }
    for (let i = 0; i < size; i++) out[i] /= total;
    return out;
  }

  function showNext(next) {
    S.shownNext = next;
    S.logits = floats(next.logits);
    drawCandidates();
  }

  function describeSettings(settings) {
    const t = settings.temperature;
    const parts = [];
    if (t === 0) parts.push(i18n.t("serve.next.t0"));
    else if (t < 1) parts.push(i18n.t("serve.next.t_low", {t: t.toFixed(2)}));
    else if (t > 1) parts.push(i18n.t("serve.next.t_high", {t: t.toFixed(2)}));
    else parts.push(i18n.t("serve.next.t1"));
    if (t > 0 && settings.top_k !== null) parts.push(i18n.t("serve.next.k", {k: settings.top_k}));
    if (t > 0 && settings.top_p !== null) {
      parts.push(i18n.t("serve.next.p", {p: settings.top_p.toFixed(2), pct: Math.round(settings.top_p * 100)}));
    }
    return parts.join(i18n.t("common.sentence_gap"));
  }

  function drawSettings() {
    const settings = sampling();
    $("temperature-value").textContent = settings.temperature.toFixed(2);
    $("top-k-value").textContent = settings.top_k === null ? i18n.t("serve.next.off") : String(settings.top_k);
    $("top-p-value").textContent = settings.top_p === null ? i18n.t("serve.next.off") : settings.top_p.toFixed(2);
    return settings;
  }

  function drawCandidates() {
    const settings = drawSettings();
    if (!S.logits) return;
    const probs = probabilities(S.logits, settings);
    const texts = new Map(S.shownNext.top.map((c) => [c.id, c.text]));
    const order = S.shownNext.top.map((c) => c.id).sort((a, b) => probs[b] - probs[a] || S.logits[b] - S.logits[a]);
    let possible = 0;
    for (let i = 0; i < probs.length; i++) if (probs[i] > 0) possible += 1;
    const list = $("candidates");
    list.textContent = "";
    for (const id of order.slice(0, CANDIDATES_SHOWN)) {
      const p = probs[id];
      list.append(el("li", {class: "candidate" + (p === 0 ? " dropped" : ""), "data-id": id, "data-probability": p}, [
        el("span", {class: "cand-token"}, tokenChip(texts.get(id))),
        el("span", {class: "track", "aria-hidden": "true"}, el("span", {class: "fill", style: "width:" + p * 100 + "%"})),
        el("span", {class: "pct", text: p === 0 ? "0%" : pct(p),
                    title: p === 0 ? i18n.t("serve.next.left_out") : null})]));
    }
    const best = order[0];
    $("sampling-summary").textContent = describeSettings(settings) + i18n.t("common.sentence_gap") +
      i18n.t("serve.next.summary", {possible: count(possible), total: count(probs.length), top: quoted(texts.get(best)),
                                    p: pct(probs[best])});
    const after = S.generated.length && S.shownNext !== (S.answer && S.answer.next);
    $("candidates-note").textContent = (S.whatif ? i18n.t("serve.next.note_whatif") : "") +
      (possible < order.length ? i18n.t("serve.next.note_grey") : "") +
      (after ? i18n.t("serve.next.note_after") : "") + i18n.t("serve.next.note_bars");
  }

  /* ---------- generation ---------- */

  async function generate(maxNew) {
    clearError();
    const text = $("text").value;
    if (!text.trim()) {
      showError(() => i18n.t("serve.error.empty_generate"));
      return;
    }
    const settings = sampling();
    const model = S.model;
    if (text !== S.genText) {
      S.generated = [];
      S.stepShown = null;
    }
    const already = S.generated.length;
    let total = 0;
    S.tooLong = false;
    const running = act("generate", async (signal) => {
      status(() => i18n.t("serve.status.writing"));
      const response = await post("/api/generate", Object.assign({model: model.id, text: text, max_new_tokens: maxNew,
                                                                  seed: null, edit: null}, settings), signal);
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      let context = [];
      let done = null;
      for (;;) {
        const {value, done: ended} = await reader.read();
        if (value) buffer += decoder.decode(value, {stream: true});
        let cut;
        while ((cut = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, cut).trim();
          buffer = buffer.slice(cut + 1);
          if (!line) continue;
          const event = JSON.parse(line);
          if (event.type === "start") context = event.tokens.slice();
          else if (event.type === "token") {
            event.context = context.slice();
            context.push(event.text);
            total = context.length;
            S.generated.push(event);
            $("text").value += event.piece;
            S.genText = $("text").value;
            S.stepShown = S.generated.length - 1;
            if (event.next) showNext(event.next);
            drawGenerated();
          } else if (event.type === "done") done = event;
          else if (event.type === "error") throw new ApiError(event.error, 0);
        }
        if (ended) break;
      }
      if (signal.aborted) return;
      const why = () => ({length: i18n.t("serve.status.why_length"), eos: i18n.t("serve.status.why_eos"),
                          context: i18n.t("serve.status.why_context")})[done.reason];
      status(done ? () => i18n.plural("serve.status.wrote", done.generated, {
        why: why(), speed: done.tokens_per_s ? i18n.t("serve.status.speed", {speed: done.tokens_per_s}) : ""}) : "");
    });
    updateButtons();
    await running;
    // Finished or stopped (not superseded by a new text): the sections follow the longer text.
    if (S.generated.length > already && !inflight.generate && !inflight.explain && $("text").value === S.genText) {
      followText(total);
    }
  }

  /** After a generation, explain the longer text again, when it is still short enough. */
  function followText(tokenCount) {
    if (tokenCount > S.model.max_tokens) {
      S.tooLong = true;
      drawGenerated();
      return;
    }
    explainText();
  }

  function drawGenerated() {
    const box = $("generated");
    box.textContent = "";
    S.generated.forEach((event, i) => {
      box.append(el("button", {type: "button", class: "chip gen-token", "data-step": i,
                               "aria-pressed": i === S.stepShown ? "true" : "false",
                               title: i18n.t("serve.gen.probability", {p: pct(event.probability)}),
                               onclick: () => { S.stepShown = i; drawGenerated(); }}, shown(event.text)));
    });
    $("generated-line").textContent = (S.generated.length ? i18n.plural("serve.gen.line", S.generated.length) : "") +
      (S.tooLong ? i18n.t("serve.gen.too_long", {n: S.model.max_tokens}) : "");
    drawStep();
  }

  /** The layer and head menus of #step; ``again`` writes their options again (a new language). */
  function fillStepSelectors(layers, heads, again) {
    const fill = (menu, size, all, label) => {
      if (menu.options.length === size + 1 && !again) return;
      const keep = menu.value;
      menu.textContent = "";
      menu.append(el("option", {value: "all", text: all}));
      for (let i = 0; i < size; i++) menu.append(el("option", {value: String(i), text: label(i)}));
      menu.value = keep && Number(keep) < size ? keep : "all";
    };
    fill($("step-layer"), layers, i18n.t("serve.gen.all_layers"), (i) => i18n.t("common.layer_n", {n: i}));
    fill($("step-head"), heads, i18n.t("serve.gen.all_heads"), (i) => i18n.t("common.head_n", {n: i}));
  }

  function drawStep(again) {
    const box = $("step");
    const event = S.stepShown === null ? null : S.generated[S.stepShown];
    box.hidden = !event;
    if (!event) return;
    $("step-title").textContent = i18n.t("serve.gen.step_title", {n: S.stepShown + 1, token: quoted(event.text),
                                                                   p: pct(event.probability)});
    const weightsBox = $("step-weights");
    const cacheBox = $("step-cache");
    weightsBox.textContent = "";
    cacheBox.textContent = "";
    if (!event.attention) {
      cacheBox.append(el("p", {text: i18n.t("serve.gen.ended")}));
      return;
    }
    const {layers, heads, keys} = event.attention;
    fillStepSelectors(layers, heads, again === true);
    const all = floats(event.attention.weights);
    const layerChoice = $("step-layer").value;
    const headChoice = $("step-head").value;
    const row = new Float64Array(keys);
    let rows = 0;
    for (let l = 0; l < layers; l++) {
      if (layerChoice !== "all" && Number(layerChoice) !== l) continue;
      for (let h = 0; h < heads; h++) {
        if (headChoice !== "all" && Number(headChoice) !== h) continue;
        for (let k = 0; k < keys; k++) row[k] += all[(l * heads + h) * keys + k];
        rows += 1;
      }
    }
    const labels = event.context.concat([event.text]);
    for (let k = 0; k < keys; k++) {
      const w = row[k] / rows;
      const colour = heat(w);
      weightsBox.append(el("span", {class: "chip", "data-key": k, "data-weight": w, title: pct(w),
                                    style: "background:rgb(" + colour.join(",") + ");color:" + (colour[0] < 120 ? "#fff" : "#1c1e21")},
        [shown(labels[k] === undefined ? "?" : labels[k]), el("span", {class: "chip-pct", text: " " + pct(w)})]));
    }
    if (layerChoice === "all" && headChoice === "all" && row[0] / rows > 0.4 && keys > 2) {
      cacheBox.append(el("p", {class: "note"}, i18n.parts("serve.gen.sink", {
        token: quoted(labels[0]), sink: el("a", {class: "term", href: "#g-sink", text: i18n.t("word.sink")})})));
    }
    const c = event.cache;
    cacheBox.dataset.reused = c.reused;
    cacheBox.dataset.scoresNow = c.scores_now;
    cacheBox.dataset.scoresRecompute = c.scores_recompute;
    const total = c.reused + c.new;
    cacheBox.append(
      el("h4", {text: i18n.t("serve.cache.title")}),
      el("p", {}, i18n.parts("serve.cache.reused", {
        token: quoted(event.text), keys: el("span", {class: "k-text", text: i18n.t("word.keys")}),
        values: el("span", {class: "v-text", text: i18n.t("word.values")}), total: total,
        reused: el("strong", {text: i18n.t("serve.cache.of_them", {n: c.reused})}),
        cache: el("a", {class: "term", href: "#g-cache", text: i18n.t("word.cache")}), layers: c.layers,
        kv_heads: c.kv_heads, reused_all: count(c.reused * c.layers * c.kv_heads), new: c.new})),
      el("p", {}, i18n.parts("serve.cache.saved", {
        now: el("strong", {text: count(c.scores_now)}), recompute: count(c.scores_recompute),
        ratio: times(c.scores_recompute, c.scores_now), flops_now: big(c.flops_now), flops_recompute: big(c.flops_recompute),
        flops_ratio: times(c.flops_recompute, c.flops_now), ms: fmt(c.ms, 1)})));
  }

  /* ---------- the path of one token ---------- */

  function drawPath(path) {
    S.pathShown = path;
    $("path-intro").textContent = "";
    $("path-intro").append(...i18n.parts("serve.path.intro", {
      token: quoted(path.token), position: path.position, dims: path.dims_shown,
      embedding: el("a", {class: "term", href: "#g-embedding", text: i18n.t("word.embedding")}),
      residual: el("a", {class: "term", href: "#g-residual", text: i18n.t("word.residual")}),
      ffn: el("a", {class: "term", href: "#g-ffn", text: i18n.t("word.ffn")})}));
    const overview = $("path-overview");
    overview.textContent = "";
    const biggest = Math.max(path.embedding.norm, ...path.layers.map((l) => Math.max(l.attention.norm, l.ffn.norm, l.after_ffn.norm)));
    const bar = (x) => el("span", {class: "bar-box"}, [
      el("span", {class: "track"}, el("span", {class: "fill", style: "width:" + (x / biggest) * 100 + "%"})),
      el("span", {class: "pct", text: fmt(x, 2)})]);
    let worst = 0;
    let before = path.embedding.values;
    for (const layer of path.layers) {
      layer.attention.values.forEach((a, d) => {
        worst = Math.max(worst, Math.abs(before[d] + a - layer.after_attention.values[d]) / (1 + Math.abs(layer.after_attention.values[d])));
        worst = Math.max(worst, Math.abs(layer.after_attention.values[d] + layer.ffn.values[d] - layer.after_ffn.values[d]) /
                                (1 + Math.abs(layer.after_ffn.values[d])));
      });
      before = layer.after_ffn.values;
    }
    overview.append(
      el("caption", {class: "hint", text: i18n.t("serve.path.caption")}),
      el("thead", {}, el("tr", {}, [el("th", {text: i18n.t("serve.path.step")}), el("th", {text: i18n.t("serve.path.attention_adds")}),
                                    el("th", {text: i18n.t("serve.path.ffn_adds")}), el("th", {text: i18n.t("serve.path.size_after")})])),
      el("tbody", {}, [
        el("tr", {}, [el("td", {text: i18n.t("word.embedding")}), el("td"), el("td"),
                      el("td", {class: "bar-cell"}, bar(path.embedding.norm))]),
        ...path.layers.map((l) => el("tr", {"data-layer": l.layer}, [
          el("td", {text: i18n.t("common.layer_n", {n: l.layer})}), el("td", {class: "bar-cell"}, bar(l.attention.norm)),
          el("td", {class: "bar-cell"}, bar(l.ffn.norm)), el("td", {class: "bar-cell"}, bar(l.after_ffn.norm))]))]));
    const menu = $("path-layer");
    const keep = menu.value;
    menu.textContent = "";
    path.layers.forEach((l) => menu.append(el("option", {value: String(l.layer), text: i18n.t("common.layer_n", {n: l.layer})})));
    menu.value = keep && Number(keep) < path.layers.length ? keep : "0";
    menu.onchange = () => drawPathLayer(path);
    drawPathLayer(path);
    const final = $("path-final");
    final.textContent = "";
    final.append(
      el("p", {id: "path-check", class: worst > PATH_TOLERANCE ? "check-bad" : "check-ok", "data-worst": worst},
         worst > PATH_TOLERANCE ? i18n.t("serve.path.check_bad", {x: worst.toExponential(2)}) : i18n.t("serve.path.check_ok")),
      el("h3", {text: i18n.t("serve.path.end_title")}),
      el("p", {text: i18n.t("serve.path.end", {size: fmt(path.final.norm, 2)})}),
      vectorLine("final", i18n.t("serve.path.final"), path.final.values),
      el("div", {class: "table-wrap"}, el("table", {class: "nums", id: "path-top"}, [
        el("thead", {}, el("tr", {}, [el("th", {text: i18n.t("serve.path.next_token")}), el("th", {text: i18n.t("serve.path.score")}),
                                      el("th", {text: i18n.t("serve.path.chance")})])),
        el("tbody", {}, path.final.top.map((t) => el("tr", {class: "path-top", "data-id": t.id, "data-probability": t.probability}, [
          el("td", {}, tokenChip(t.text)), el("td", {class: "n", text: fmt(t.logit, 2)}),
          el("td", {class: "bar-cell"}, el("span", {class: "bar-box"}, [
            el("span", {class: "track"}, el("span", {class: "fill", style: "width:" + t.probability * 100 + "%"})),
            el("span", {class: "pct", text: pct(t.probability)})]))])))])));
  }

  /** One list of numbers of the path: ``name`` for tests (data-vector), ``label`` for people. */
  function vectorLine(name, label, values, total) {
    return el("div", {class: "vec", "data-vector": name}, [
      el("span", {class: "vec-label", text: label}),
      el("span", {class: "vec-cells"}, values.map((x) => el("span", {class: "num-cell", "data-value": x, text: fmt(x)}))),
      total ? el("span", {class: "more", text: i18n.t("serve.path.size", {size: fmt(total, 2)})}) : null]);
  }

  function drawPathLayer(path) {
    const index = Number($("path-layer").value);
    const layer = path.layers[index];
    const before = index === 0 ? path.embedding : path.layers[index - 1].after_ffn;
    const box = $("path-detail");
    box.textContent = "";
    box.append(
      el("p", {text: i18n.t("serve.path.layer_text", {layer: index})}),
      index === 0 ? vectorLine("embedding", i18n.t("word.embedding"), before.values, before.norm)
        : vectorLine("coming in", i18n.t("serve.path.coming_in"), before.values, before.norm),
      vectorLine("+ attention", i18n.t("serve.path.plus_attention"), layer.attention.values, layer.attention.norm),
      vectorLine("= after attention", i18n.t("serve.path.after_attention"), layer.after_attention.values,
                 layer.after_attention.norm),
      vectorLine("+ feed-forward", i18n.t("serve.path.plus_ffn"), layer.ffn.values, layer.ffn.norm),
      vectorLine("= after layer " + index, i18n.t("serve.path.after_layer", {layer: index}), layer.after_ffn.values,
                 layer.after_ffn.norm));
  }

  /* ---------- what-if ---------- */

  function drawWhatifTokens(data) {
    const box = $("whatif-tokens");
    box.textContent = "";
    data.tokens.forEach((t, i) => {
      box.append(el("button", {type: "button", class: "chip" + (data.special[i] ? " special" : ""), "data-token": i,
                               "aria-pressed": S.hide.has(i) ? "true" : "false",
                               "aria-label": i18n.t("serve.whatif.hide_token", {token: quoted(t), i: i}),
                               onclick: () => {
                                 if (S.hide.has(i)) S.hide.delete(i);
                                 else S.hide.add(i);
                                 drawWhatifTokens(data);
                                 updateWhatifButtons();
                               }},
        [el("span", {class: "idx", text: String(i)}), shown(t)]));
    });
  }

  function edit() {
    return {hide: Array.from(S.hide).sort((a, b) => a - b), heads_off: S.headsOff.slice(), layers_off: S.layersOff.slice()};
  }

  function hasEdit() {
    return S.hide.size > 0 || S.headsOff.length > 0 || S.layersOff.length > 0;
  }

  function updateWhatifButtons() {
    const {layer, head} = explainPage.current();
    $("whatif-head-off").textContent = i18n.t("serve.whatif.head_off", {layer: layer, head: head});
    $("whatif-layer-off").textContent = i18n.t("serve.whatif.layer_off", {layer: layer});
    const list = $("whatif-list");
    list.textContent = "";
    const pill = (text, remove) => el("button", {type: "button", class: "pill", "aria-label": i18n.t("serve.whatif.undo", {change: text}),
                                                 onclick: () => { remove(); updateWhatifButtons(); }}, [text, " ✕"]);
    const tokens = S.answer ? S.answer.explanation.tokens : [];
    for (const i of Array.from(S.hide).sort((a, b) => a - b)) {
      list.append(pill(i18n.t("serve.whatif.pill_hide", {token: quoted(tokens[i] || String(i))}),
                       () => { S.hide.delete(i); drawWhatifTokens(S.answer.explanation); }));
    }
    S.headsOff.forEach(([l, h], index) => list.append(pill(i18n.t("serve.whatif.pill_head", {layer: l, head: h}),
                                                           () => S.headsOff.splice(index, 1))));
    S.layersOff.forEach((l, index) => list.append(pill(i18n.t("serve.whatif.pill_layer", {layer: l}),
                                                       () => S.layersOff.splice(index, 1))));
    if (!list.childNodes.length) list.append(el("span", {class: "hint", text: i18n.t("serve.whatif.none")}));
    updateButtons();
  }

  function updateButtons() {
    const writing = Boolean(inflight.generate);
    $("whatif-run").disabled = !hasEdit() || !S.answer;
    $("whatif-reset").disabled = !S.whatif && !hasEdit();
    $("generate-stop").disabled = !writing;
    $("generate-one").disabled = writing;
    $("generate-run").disabled = writing;
  }

  function runWhatif() {
    if (!hasEdit() || !S.answer) return;
    clearError();
    const change = edit();
    const {layer, head} = explainPage.current();
    const model = S.model;
    act("whatif", async (signal) => {
      status(() => i18n.t("serve.status.whatif"));
      // The page already holds the original run of this text (S.answer): the server need not send it again.
      const response = await post("/api/whatif", {model: model.id, text: S.text, layer: layer, head: head, edit: change,
                                                  original: false}, signal);
      const answer = await response.json();
      if (signal.aborted) return;
      if (!answer.original) answer.original = S.answer;
      S.whatif = Object.assign(answer, {change: change});
      const off = change.heads_off.slice();
      const heads = answer.edited.explanation.model.num_heads;
      for (const l of change.layers_off) for (let h = 0; h < heads; h++) off.push([l, h]);
      drawAnswer(answer.edited, {keep: true, hide: change.hide, headsOff: off, compare: answer.original.explanation});
      drawWhatif();
      $("whatif-banner").hidden = false;
      status(() => i18n.t("serve.status.done", {ms: Math.round(answer.elapsed_ms)}));
    }, runWhatif);
  }

  function drawWhatif() {
    const answer = S.whatif;
    const changes = answer.changes;
    $("whatif-result").hidden = false;
    const sentences = $("whatif-sentences");
    sentences.textContent = "";
    const lead = changes.lead ? editLead(changes.lead) : "";
    const notes = changes.notes || (changes.sentences || []).map((sentence) => ({kind: "text", text: sentence}));
    for (const note of notes) sentences.append(el("li", {text: noteText(note, lead)}));
    const cosine = $("whatif-cosine");
    cosine.hidden = changes.cosine === null || changes.cosine === undefined;
    if (!cosine.hidden) {
      cosine.dataset.value = changes.cosine;
      cosine.textContent = "";
      const verdict = changes.cosine > 0.98 ? i18n.t("serve.whatif.meaning_same")
        : changes.cosine > 0.9 ? i18n.t("serve.whatif.meaning_little") : i18n.t("serve.whatif.meaning_lot");
      cosine.append(...i18n.parts("serve.whatif.meaning", {
        share: el("strong", {text: pct(changes.cosine)}), value: changes.cosine.toFixed(4), verdict: verdict,
        cosine: el("a", {class: "term", href: "#g-cosine", text: i18n.t("word.cosine")})}));
    }
    const wrap = $("whatif-next-wrap");
    const rows = changes.next || [];
    wrap.hidden = !rows.length;
    const body = $("whatif-next").tBodies[0];
    body.textContent = "";
    const barCell = (p) => el("td", {class: "bar-cell"}, el("span", {class: "bar-box"}, [
      el("span", {class: "track"}, el("span", {class: "fill", style: "width:" + p * 100 + "%"})),
      el("span", {class: "pct", text: pct(p)})]));
    for (const row of rows) {
      body.append(el("tr", {"data-id": row.id, "data-before": row.before, "data-after": row.after},
                     [el("td", {}, tokenChip(row.text)), barCell(row.before), barCell(row.after)]));
    }
    drawCompare();
  }

  /** A token quoted in a what-if sentence as attnlab.explain.live.shown quotes it in English. */
  function noteToken(token) {
    const text = (token.startsWith(" ") && token.trim() ? token.slice(1) : token).trim();
    if (!text) return token.includes("\n") ? i18n.t("serve.whatif.newline") : i18n.t("serve.whatif.space");
    return text.includes("'") ? i18n.t("serve.whatif.quote_apostrophe", {text: text}) : i18n.t("serve.whatif.quote", {text: text});
  }

  /** "Without 'animal'; with layer 2 head 1 switched off": the start of the what-if's sentences. */
  function editLead(lead) {
    const parts = [];
    if (lead.hide.length) {
      parts.push(i18n.t("serve.whatif.lead.without", {words: lead.hide.map(noteToken).join(i18n.t("serve.whatif.lead.and"))}));
    }
    if (lead.heads_off.length) {
      const heads = lead.heads_off.map(([layer, head]) => i18n.t("serve.whatif.lead.head", {layer: layer, head: head}));
      parts.push(i18n.t("serve.whatif.lead.heads_off", {heads: heads.join(i18n.t("serve.whatif.lead.list"))}));
    }
    if (lead.layers_off.length) {
      parts.push(i18n.t("serve.whatif.lead.layers_off", {layers: lead.layers_off.join(i18n.t("serve.whatif.lead.list"))}));
    }
    const text = parts.join(i18n.t("serve.whatif.lead.join"));
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  /** One sentence of the what-if from the server's note ({kind, ...values}; see live.py). */
  function noteText(note, lead) {
    const v = Object.assign({}, note, {lead: lead});
    for (const name of ["word", "now", "was"]) if (name in note) v[name] = noteToken(note[name]);
    if ("cosine_pct" in note) v.cosine_pct = note.cosine_pct.toFixed(1);
    if ("cosine" in note) v.cosine = note.cosine.toFixed(3);
    const say = {
      moved: () => i18n.t("serve.whatif.note.moved", v),
      kept: () => i18n.t("serve.whatif.note.kept", v),
      next_changed: () => i18n.t("serve.whatif.note.next_changed", v),
      next_same: () => i18n.t("serve.whatif.note.next_same", v),
      meaning: () => i18n.t("serve.whatif.note.meaning", v),
      nothing: () => i18n.t("serve.whatif.note.nothing", v),
    }[note.kind];
    return say ? say() : String(note.text || "");
  }

  /** The chosen head before and after the what-if, side by side, with each word's top keys. */
  function drawCompare() {
    if (!S.whatif) return;
    const {layer, head, token} = explainPage.current();
    const original = S.whatif.original.explanation;
    const edited = S.whatif.edited.explanation;
    $("whatif-compare-title").textContent = i18n.t("serve.whatif.compare_title", {layer: layer, head: head});
    explainPage.paintHeatmap($("whatif-before"), original, layer, head, []);
    explainPage.paintHeatmap($("whatif-after"), edited, layer, head, S.whatif.change.hide);
    const body = $("whatif-words").tBodies[0];
    body.textContent = "";
    const top = (row, q) => row.map((w, k) => [k, w]).filter(([k]) => k !== q || row.length === 1)
      .sort((a, b) => b[1] - a[1]).slice(0, 3);
    const cell = (pairs) => el("td", {}, pairs.map(([k, w]) => el("span", {class: "pair"},
      [tokenChip(original.tokens[k]), " " + pct(w)])));
    original.tokens.forEach((t, q) => {
      if (S.whatif.change.hide.includes(q) && original.model.causal) return;
      const before = top(original.attention[layer][head][q], q);
      const after = top(edited.attention[layer][head][q], q);
      const moved = before[0] && after[0] && before[0][0] !== after[0][0];
      body.append(el("tr", {"data-token": q, class: (moved ? "changed" : "") + (q === token ? " current" : "")},
                     [el("td", {}, tokenChip(t)), cell(before), cell(after)]));
    });
  }

  function clearWhatif() {
    S.whatif = null;
    S.hide = new Set();
    S.headsOff = [];
    S.layersOff = [];
    $("whatif-result").hidden = true;
    $("whatif-banner").hidden = true;
  }

  function resetWhatif() {
    stop("whatif");
    const wasShown = Boolean(S.whatif);
    clearWhatif();
    if (wasShown && S.answer) drawAnswer(S.answer, {keep: true});
    else updateWhatifButtons();
    if (S.answer) drawWhatifTokens(S.answer.explanation);
    status(() => i18n.t("serve.status.reset"));
  }

  /* ---------- start ---------- */

  function wire() {
    $("ask").addEventListener("submit", (event) => {
      event.preventDefault();
      explainText();
    });
    $("text").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        explainText();
      }
    });
    for (const id of ["temperature", "top-k", "top-p"]) $(id).addEventListener("input", drawCandidates);
    $("generate-one").addEventListener("click", () => generate(1));
    $("generate-run").addEventListener("click", () => {
      const wanted = Math.round(Number($("max-new").value)) || 20;
      generate(Math.max(1, Math.min(config.limits.max_new_tokens, wanted)));
    });
    $("generate-stop").addEventListener("click", () => {
      stop("generate");
      status(() => i18n.t("serve.status.stopped"));
    });
    $("step-layer").addEventListener("change", drawStep);
    $("step-head").addEventListener("change", drawStep);
    $("whatif-head-off").addEventListener("click", () => {
      const {layer, head} = explainPage.current();
      if (!S.headsOff.some(([l, h]) => l === layer && h === head)) S.headsOff.push([layer, head]);
      updateWhatifButtons();
    });
    $("whatif-layer-off").addEventListener("click", () => {
      const {layer} = explainPage.current();
      if (!S.layersOff.includes(layer)) S.layersOff.push(layer);
      updateWhatifButtons();
    });
    $("whatif-run").addEventListener("click", runWhatif);
    $("whatif-reset").addEventListener("click", resetWhatif);
    document.addEventListener("attnlab:select", () => {
      updateWhatifButtons();
      drawCompare();
    });
    $("model").addEventListener("change", () => chooseModel($("model").value, true));
    document.addEventListener("attnlab:lang", redraw);
  }

  /** Every text this script wrote, again in the page's new language (page.js redraws its own). */
  function redraw() {
    document.title = i18n.t("serve.doc_title");
    fillModels();
    if (S.model) describeModel();
    drawCandidates();
    if (S.shownAnswer) {
      drawSink(S.shownAnswer.explanation);
      drawWhatifTokens(S.shownAnswer.explanation);
    }
    if (S.pathShown) drawPath(S.pathShown);
    $("generated-line").textContent = "";
    drawGenerated();
    drawStep(true);
    updateWhatifButtons();
    if (S.whatif) drawWhatif();
    $("status").textContent = S.status();
    if (S.error) $("error-text").textContent = S.error();
  }

  document.title = i18n.t("serve.doc_title");
  fillModels();
  wire();
  drawSettings();
  if (!config.models.length) {
    // Only translators or classifiers: serve_parts.js hides this part.
    if (!(config.apps || []).length) {
      showError(() => i18n.t("serve.error.no_model"));
    }
  } else {
    chooseModel(config.models[0].id, true);
  }
})();
