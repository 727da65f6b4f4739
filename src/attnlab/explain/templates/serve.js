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
 */
(function () {
  "use strict";

  const config = JSON.parse(document.getElementById("attnlab-serve").textContent);
  const explainPage = window.attnlabExplain;
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

  function status(text) {
    $("status").textContent = text;
  }

  /* ---------- errors and requests ---------- */

  class ApiError extends Error {
    constructor(message, statusCode) {
      super(message);
      this.status = statusCode;
    }
  }

  function showError(message, retry) {
    $("error").hidden = false;
    $("error-text").textContent = message;
    const button = $("error-retry");
    button.hidden = !retry;
    button.onclick = retry ? () => { clearError(); retry(); } : null;
  }

  function clearError() {
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
    if (response.status === 503) {
      message = (message || "The model is busy with other requests.") +
        " It is busy right now: wait a moment and press “Try again”.";
    }
    return new ApiError(message || "The server answered " + response.status + " and no explanation.", response.status);
  }

  async function post(path, body, signal) {
    let response;
    try {
      response = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json"},
                                    body: JSON.stringify(body), signal: signal});
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiError("Cannot reach the attnlab server: is “attnlab serve” still running?", 0);
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
        showError(error instanceof ApiError ? error.message : "Something went wrong on this page: " + error.message,
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

  function fillModels() {
    const menu = $("model");
    for (const m of config.models) {
      menu.append(el("option", {value: m.id, text: m.title + (m.generates ? " (writes text)" : " (reads text)")}));
    }
    menu.addEventListener("change", () => chooseModel(menu.value, true));
  }

  function chooseModel(id, run) {
    S.model = config.models.find((m) => m.id === id) || config.models[0];
    $("model").value = S.model.id;
    $("model-about").textContent = S.model.description;
    $("text").value = S.model.example;
    $("text-hint").textContent = "Press Enter to run it (Shift+Enter starts a new line). This model can " +
      "explain up to " + S.model.max_tokens + " tokens (about " + Math.round(S.model.max_tokens * 0.75) +
      " words) at once.";
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
      showError("Type some text first: the box is empty.");
      return;
    }
    if (text.length > config.limits.max_text_chars) {
      showError("This text has " + text.length + " characters; the explorer takes at most " +
                config.limits.max_text_chars + ". Please shorten it.");
      return;
    }
    clearError();
    stop("whatif");
    stop("generate");
    const model = S.model;
    act("explain", async (signal) => {
      status("Reading your text…");
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
      status("Done in " + Math.round(answer.elapsed_ms) + " ms.");
      document.body.dataset.ready = "true";
    }, explainText);
  }

  /** Draw an answer ({explanation, next, path, embedding}) with page.js's options ``view``. */
  function drawAnswer(answer, view) {
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
    const names = markers.map((k) => "“" + shown(data.tokens[k]) + "”").join(" and ");
    box.append(el("p", {}, [
      el("strong", {text: "An attention sink. "}),
      "In " + sinks + " of the " + layers * heads + " heads, the words put more than half of their attention on " +
      (data.model.causal ? "the first token, " + names : "the markers " + names) + ". That does not mean " +
      (markers.length > 1 ? "they matter" : "it matters") + " most: when a head finds nothing it is looking for, " +
      "it has to put its 100% somewhere, and it parks it there, where it changes little (an ",
      el("a", {class: "term", href: "#g-sink", text: "attention sink"}), ")."]));
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
    if (t === 0) parts.push("Temperature 0: the model always takes its top token; the others get no chance.");
    else if (t < 1) parts.push("Temperature " + t.toFixed(2) + " (below 1) sharpens the chances: the likely tokens get likelier.");
    else if (t > 1) parts.push("Temperature " + t.toFixed(2) + " (above 1) flattens the chances: unlikely tokens get more of a chance.");
    else parts.push("Temperature 1: the model's own chances, unchanged.");
    if (t > 0 && settings.top_k !== null) parts.push("Top-k " + settings.top_k + ": only the " + settings.top_k + " likeliest tokens stay.");
    if (t > 0 && settings.top_p !== null) {
      parts.push("Top-p " + settings.top_p.toFixed(2) + ": only the likeliest tokens that together hold " +
                 Math.round(settings.top_p * 100) + "% of the chance stay.");
    }
    return parts.join(" ");
  }

  function drawCandidates() {
    if (!S.logits) return;
    const settings = sampling();
    $("temperature-value").textContent = settings.temperature.toFixed(2);
    $("top-k-value").textContent = settings.top_k === null ? "off" : String(settings.top_k);
    $("top-p-value").textContent = settings.top_p === null ? "off" : settings.top_p.toFixed(2);
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
                    title: p === 0 ? "left out by top-k, top-p or temperature 0" : null})]));
    }
    const best = order[0];
    $("sampling-summary").textContent = describeSettings(settings) + " Now " + count(possible) + " of the " +
      count(probs.length) + " tokens can still be chosen, and the top one, “" + shown(texts.get(best)) + "”, gets " +
      pct(probs[best]) + ".";
    const after = S.generated.length && S.shownNext !== (S.answer && S.answer.next);
    $("candidates-note").textContent = (S.whatif ? "With your what-if change. " : "") +
      (possible < order.length ? "Grey rows at 0% can no longer be chosen with these settings. " : "") +
      (after ? "These are the candidates after the last generated token. " : "") +
      "The bars are this page's own arithmetic on the model's scores for every token.";
  }

  /* ---------- generation ---------- */

  async function generate(maxNew) {
    clearError();
    const text = $("text").value;
    if (!text.trim()) {
      showError("Type some text first: the model needs something to continue.");
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
    const running = act("generate", async (signal) => {
      status("Writing…");
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
      const why = {length: "reached the limit you set", eos: "the model ended its reply", context: "the model cannot read further"};
      status(done ? "Wrote " + done.generated + " token" + (done.generated === 1 ? "" : "s") + " (" + why[done.reason] +
                    (done.tokens_per_s ? ", " + done.tokens_per_s + " tokens per second" : "") + ")." : "");
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
      $("generated-line").append(" The text is now longer than the " + S.model.max_tokens + " tokens this page can " +
        "explain at once, so the sections below still show it as it was.");
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
                               title: "probability " + pct(event.probability),
                               onclick: () => { S.stepShown = i; drawGenerated(); }}, shown(event.text)));
    });
    $("generated-line").textContent = S.generated.length
      ? S.generated.length + " new token" + (S.generated.length === 1 ? "" : "s") + " (pick one to see its step):"
      : "";
    drawStep();
  }

  function fillStepSelectors(layers, heads) {
    const fill = (menu, size, word) => {
      if (menu.options.length === size + 1) return;
      const keep = menu.value;
      menu.textContent = "";
      menu.append(el("option", {value: "all", text: "all " + word + "s (average)"}));
      for (let i = 0; i < size; i++) menu.append(el("option", {value: String(i), text: word + " " + i}));
      menu.value = keep && Number(keep) < size ? keep : "all";
    };
    fill($("step-layer"), layers, "layer");
    fill($("step-head"), heads, "head");
  }

  function drawStep() {
    const box = $("step");
    const event = S.stepShown === null ? null : S.generated[S.stepShown];
    box.hidden = !event;
    if (!event) return;
    $("step-title").textContent = "New token " + (S.stepShown + 1) + ": “" + shown(event.text) + "”, chosen with a chance of " +
      pct(event.probability);
    const weightsBox = $("step-weights");
    const cacheBox = $("step-cache");
    weightsBox.textContent = "";
    cacheBox.textContent = "";
    if (!event.attention) {
      cacheBox.append(el("p", {text: "This token ended the reply, so the model did not read it back in: there is no attention to show."}));
      return;
    }
    const {layers, heads, keys} = event.attention;
    fillStepSelectors(layers, heads);
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
      cacheBox.append(el("p", {class: "note"}, ["Most of it goes to the very first token, “" + shown(labels[0]) + "”: the ",
        el("a", {class: "term", href: "#g-sink", text: "attention sink"}), " of this model, where heads park the attention " +
        "they do not need. Pick one layer and head above to see more telling links."]));
    }
    const c = event.cache;
    cacheBox.dataset.reused = c.reused;
    cacheBox.dataset.scoresNow = c.scores_now;
    cacheBox.dataset.scoresRecompute = c.scores_recompute;
    const total = c.reused + c.new;
    cacheBox.append(
      el("h4", {text: "What the KV cache saved at this step"}),
      el("p", {}, ["To read “" + shown(event.text) + "” back in, the model needs the ", el("span", {class: "k-text", text: "keys"}),
        " and ", el("span", {class: "v-text", text: "values"}), " of all " + total + " tokens. ",
        el("strong", {text: c.reused + " of them"}), " it kept from earlier steps in its ",
        el("a", {class: "term", href: "#g-cache", text: "KV cache"}), " (in each of " + c.layers + " layers × " + c.kv_heads +
        " key/value heads: " + count(c.reused * c.layers * c.kv_heads) + " keys and as many values reused), so it computed only " +
        c.new + " new key and value per layer and head."]),
      el("p", {}, ["This step computed ", el("strong", {text: count(c.scores_now)}), " attention scores; reading the whole " +
        "text again from scratch would take " + count(c.scores_recompute) + " (" + times(c.scores_recompute, c.scores_now) +
        " as many). Counting all the multiplications of the model, " + big(c.flops_now) + " now against " + big(c.flops_recompute) +
        " (" + times(c.flops_recompute, c.flops_now) + "). The step took " + fmt(c.ms, 1) + " ms."]));
  }

  /* ---------- the path of one token ---------- */

  function drawPath(path) {
    $("path-intro").textContent = "";
    $("path-intro").append("How the last token, “", shown(path.token), "” (position " + path.position + "), travels " +
      "through the model. It starts as its dictionary entry (its ", el("a", {class: "term", href: "#g-embedding", text: "embedding"}),
      "). Then every layer adds two things to this running list of numbers, the ",
      el("a", {class: "term", href: "#g-residual", text: "residual stream"}), ": what attention gathered from the other " +
      "words, and what the ", el("a", {class: "term", href: "#g-ffn", text: "feed-forward step"}), " computed from it. " +
      "At the end the list is compared with every token of the vocabulary: that gives the scores of the next token. " +
      "“Size” is the length of the whole list of numbers (its norm); the table shows the first " + path.dims_shown + " numbers.");
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
      el("caption", {class: "hint", text: "Per layer: how much attention and the feed-forward step add, and the size of the token's numbers afterwards."}),
      el("thead", {}, el("tr", {}, [el("th", {text: "step"}), el("th", {text: "attention adds"}),
                                    el("th", {text: "feed-forward adds"}), el("th", {text: "size after"})])),
      el("tbody", {}, [
        el("tr", {}, [el("td", {text: "embedding"}), el("td"), el("td"), el("td", {class: "bar-cell"}, bar(path.embedding.norm))]),
        ...path.layers.map((l) => el("tr", {"data-layer": l.layer}, [
          el("td", {text: "layer " + l.layer}), el("td", {class: "bar-cell"}, bar(l.attention.norm)),
          el("td", {class: "bar-cell"}, bar(l.ffn.norm)), el("td", {class: "bar-cell"}, bar(l.after_ffn.norm))]))]));
    const menu = $("path-layer");
    const keep = menu.value;
    menu.textContent = "";
    path.layers.forEach((l) => menu.append(el("option", {value: String(l.layer), text: "layer " + l.layer})));
    menu.value = keep && Number(keep) < path.layers.length ? keep : "0";
    menu.onchange = () => drawPathLayer(path);
    drawPathLayer(path);
    const final = $("path-final");
    final.textContent = "";
    final.append(
      el("p", {id: "path-check", class: worst > PATH_TOLERANCE ? "check-bad" : "check-ok", "data-worst": worst},
         worst > PATH_TOLERANCE ? "✗ The shown numbers do not add up: the page found a difference of " + worst.toExponential(2) + "."
           : "✓ Re-checked on this page: in every layer, the numbers before + what attention adds = the numbers after " +
             "attention, and those + what the feed-forward step adds = the numbers after the layer."),
      el("h3", {text: "The end of the path"}),
      el("p", {text: "After the last layer the numbers are normalised once more (size " + fmt(path.final.norm, 2) + "), then " +
                     "compared with the entry of every token in the vocabulary. These are the best matches, as chances:"}),
      vectorLine("final", path.final.values),
      el("div", {class: "table-wrap"}, el("table", {class: "nums", id: "path-top"}, [
        el("thead", {}, el("tr", {}, [el("th", {text: "next token"}), el("th", {text: "score"}), el("th", {text: "chance"})])),
        el("tbody", {}, path.final.top.map((t) => el("tr", {class: "path-top", "data-id": t.id, "data-probability": t.probability}, [
          el("td", {}, tokenChip(t.text)), el("td", {class: "n", text: fmt(t.logit, 2)}),
          el("td", {class: "bar-cell"}, el("span", {class: "bar-box"}, [
            el("span", {class: "track"}, el("span", {class: "fill", style: "width:" + t.probability * 100 + "%"})),
            el("span", {class: "pct", text: pct(t.probability)})]))])))])));
  }

  function vectorLine(label, values, total) {
    return el("div", {class: "vec", "data-vector": label}, [
      el("span", {class: "vec-label", text: label}),
      el("span", {class: "vec-cells"}, values.map((x) => el("span", {class: "num-cell", "data-value": x, text: fmt(x)}))),
      total ? el("span", {class: "more", text: "size " + fmt(total, 2)}) : null]);
  }

  function drawPathLayer(path) {
    const index = Number($("path-layer").value);
    const layer = path.layers[index];
    const before = index === 0 ? path.embedding : path.layers[index - 1].after_ffn;
    const box = $("path-detail");
    box.textContent = "";
    box.append(
      el("p", {text: "Layer " + index + ": the token's numbers as they come in, what attention adds (after the heads' " +
                     "results are mixed by the output projection), and what the feed-forward step adds."}),
      vectorLine(index === 0 ? "embedding" : "coming in", before.values, before.norm),
      vectorLine("+ attention", layer.attention.values, layer.attention.norm),
      vectorLine("= after attention", layer.after_attention.values, layer.after_attention.norm),
      vectorLine("+ feed-forward", layer.ffn.values, layer.ffn.norm),
      vectorLine("= after layer " + index, layer.after_ffn.values, layer.after_ffn.norm));
  }

  /* ---------- what-if ---------- */

  function drawWhatifTokens(data) {
    const box = $("whatif-tokens");
    box.textContent = "";
    data.tokens.forEach((t, i) => {
      box.append(el("button", {type: "button", class: "chip" + (data.special[i] ? " special" : ""), "data-token": i,
                               "aria-pressed": S.hide.has(i) ? "true" : "false",
                               "aria-label": "hide “" + t + "” (token " + i + ")",
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
    $("whatif-head-off").textContent = "Switch off head " + head + " of layer " + layer;
    $("whatif-layer-off").textContent = "Switch off every head of layer " + layer;
    const list = $("whatif-list");
    list.textContent = "";
    const pill = (text, remove) => el("button", {type: "button", class: "pill", "aria-label": "undo: " + text,
                                                 onclick: () => { remove(); updateWhatifButtons(); }}, [text, " ✕"]);
    const tokens = S.answer ? S.answer.explanation.tokens : [];
    for (const i of Array.from(S.hide).sort((a, b) => a - b)) {
      list.append(pill("hide “" + shown(tokens[i] || String(i)) + "”", () => { S.hide.delete(i); drawWhatifTokens(S.answer.explanation); }));
    }
    S.headsOff.forEach(([l, h], index) => list.append(pill("head " + h + " of layer " + l + " off", () => S.headsOff.splice(index, 1))));
    S.layersOff.forEach((l, index) => list.append(pill("all of layer " + l + " off", () => S.layersOff.splice(index, 1))));
    if (!list.childNodes.length) list.append(el("span", {class: "hint", text: "No change chosen yet."}));
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
      status("Running the model with your change…");
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
      drawAnswer(answer.edited, {keep: true, hide: change.hide, headsOff: off, compare: answer.original.explanation,
                                 compareLabel: "before"});
      drawWhatif();
      $("whatif-banner").hidden = false;
      status("Done in " + Math.round(answer.elapsed_ms) + " ms.");
    }, runWhatif);
  }

  function drawWhatif() {
    const answer = S.whatif;
    const changes = answer.changes;
    $("whatif-result").hidden = false;
    const sentences = $("whatif-sentences");
    sentences.textContent = "";
    for (const sentence of changes.sentences || []) sentences.append(el("li", {text: sentence}));
    const cosine = $("whatif-cosine");
    cosine.hidden = changes.cosine === null || changes.cosine === undefined;
    if (!cosine.hidden) {
      cosine.dataset.value = changes.cosine;
      cosine.textContent = "";
      cosine.append("Meaning kept: ", el("strong", {text: pct(changes.cosine)}), " (",
        el("a", {class: "term", href: "#g-cosine", text: "cosine"}), " " + changes.cosine.toFixed(4) +
        " between the sentence's meaning vectors before and after): " + (changes.cosine > 0.98
          ? "the change hardly moves the meaning." : changes.cosine > 0.9 ? "the meaning moves a little." : "the meaning moves a lot."));
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

  /** The chosen head before and after the what-if, side by side, with each word's top keys. */
  function drawCompare() {
    if (!S.whatif) return;
    const {layer, head, token} = explainPage.current();
    const original = S.whatif.original.explanation;
    const edited = S.whatif.edited.explanation;
    $("whatif-compare-title").textContent = "Layer " + layer + ", head " + head + ": before and after";
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
    status("Back to the original.");
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
      status("Stopped.");
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
  }

  fillModels();
  wire();
  if (!config.models.length) {
    // Only translators or classifiers: serve_parts.js hides this part.
    if (!(config.apps || []).length) {
      showError("The server serves no model: start it with “attnlab serve --model minilm” (or another model).");
    }
  } else {
    chooseModel(config.models[0].id, true);
  }
})();
