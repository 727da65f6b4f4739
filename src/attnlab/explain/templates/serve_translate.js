/* attnlab serve: the Translate part. It streams POST /api/translate (docs/serve-api.md,
 * "Translate") and draws where each Spanish token looked in the English sentence. Every text
 * comes from the string tables (translate.* keys); it is redrawn on the document's attnlab:lang.
 *
 * For tests, stable ids and attributes (all inside div#part-translate):
 *   #part-translate[data-busy] while a request streams; [data-runs="N"] after N finished runs
 *   #tr-app (translator picker), #tr-text (textarea; Enter runs), #tr-greedy / #tr-beam (radios),
 *     #tr-beam-size, #tr-run, #tr-status, #tr-error (a server sentence, as it is)
 *   #tr-source > button.tr-src[data-col][aria-pressed] (English tokens; pressed = hidden)
 *   #tr-target > span.tr-tgt[data-row][data-id] (Spanish tokens, added as they stream)
 *   #tr-bars > .tr-bar[data-col][data-weight] (where the hovered/focused Spanish token looked)
 *   #tr-layer, #tr-head (value "mean" or a head number), #tr-readout
 *   #tr-map, #tr-self, #tr-whatif-map-before, #tr-whatif-map-after:
 *     td[data-row][data-col][data-weight] (rows: Spanish tokens, columns: English tokens, or
 *     Spanish tokens for #tr-self; empty future cells of #tr-self have no data-weight)
 *   #tr-whatif-list, #tr-whatif-run, #tr-whatif-reset, #tr-whatif-result > #tr-whatif-sentence,
 *     #tr-whatif-before, #tr-whatif-after (the two translations)
 *   #tr-cost-table tr[data-key][data-value]
 *   #tr-compare-run, #tr-compare-result > .tr-side[data-app][data-arch] > .tr-side-text,
 *     table.tr-map (its alignment), li[data-key][data-value]
 */
(function () {
  "use strict";

  const root = document.getElementById("part-translate");
  const config = JSON.parse(document.getElementById("attnlab-serve").textContent);
  const apps = (config.apps || []).filter((app) => app.kind === "translate");
  if (!root || !apps.length) return;
  const $ = (id) => document.getElementById(id);
  const t = (key, vars) => window.attnlabI18n.t(key, vars);
  const {el, pct, count, heat} = window.attnlabExplain.helpers;
  const transformer = apps.find((a) => a.arch === "transformer");
  const lstm = apps.find((a) => a.arch === "lstm");

  const S = {
    app: apps[0],
    run: null,          // the run shown: {start, tokens: [token events], end}
    focus: null,        // the Spanish token row whose attention is shown
    hide: new Set(),    // what-if: hidden source positions of S.run
    whatif: null,       // the last what-if end event (with original and comparison)
    compare: [],        // [{app, end}] of the Compare box
    error: null,        // {key} or {text}
    status: null,       // [key, vars]
    started: false,
  };
  let busy = 0;
  let controller = null;

  /* ---------- requests ---------- */

  function setBusy(change) {
    busy += change;
    if (busy > 0) root.dataset.busy = "true";
    else delete root.dataset.busy;
  }

  function showError(error) {
    S.error = error;
    const box = $("tr-error");
    box.hidden = !error;
    box.textContent = !error ? "" : error.key ? t(error.key) : error.text;
  }

  function setStatus(key, vars) {
    S.status = key ? [key, vars] : null;
    $("tr-status").textContent = key ? t(key, vars) : "";
  }

  /** POST body to /api/translate and call onEvent(event) for each NDJSON line; the end event. */
  async function translate(body, onEvent, signal) {
    let response;
    try {
      response = await fetch("/api/translate", {method: "POST", signal: signal,
        headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw {key: "translate.error.network"};
    }
    if (!response.ok) {
      const answer = await response.json().catch(() => ({}));
      throw {text: answer.error || response.statusText};
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let end = null;
    for (;;) {
      const {value, done} = await reader.read();
      buffer += decoder.decode(value || new Uint8Array(), {stream: !done});
      const lines = buffer.split("\n");
      buffer = lines.pop();
      for (const line of lines) {
        if (!line.trim()) continue;
        const event = JSON.parse(line);
        if (event.type === "error") throw {text: event.error};
        if (event.type === "end") end = event;
        onEvent(event);
      }
      if (done) break;
    }
    if (!end) throw {key: "translate.error.network"};
    return end;
  }

  function decodingBody() {
    const beam = $("tr-beam").checked;
    const body = {decoding: beam ? "beam" : "greedy"};
    if (beam) body.beam = Number($("tr-beam-size").value);
    return body;
  }

  /** Run a request with the part marked busy; errors shown as one sentence. */
  async function guarded(work) {
    if (controller) controller.abort();
    controller = new AbortController();
    const signal = controller.signal;
    showError(null);
    setBusy(1);
    try {
      await work(signal);
      root.dataset.runs = String(Number(root.dataset.runs || 0) + 1);
    } catch (err) {
      if (err && err.name === "AbortError") return;
      setStatus(null);
      showError(err && (err.key || err.text) ? err : {text: String(err)});
    } finally {
      setBusy(-1);
    }
  }

  function runMain() {
    const text = $("tr-text").value;
    const body = Object.assign({app: S.app.id, text: text}, decodingBody());
    return guarded(async (signal) => {
      S.run = {start: null, tokens: [], end: null};
      S.hide = new Set();
      S.whatif = null;
      S.focus = null;
      setStatus(body.decoding === "beam" ? "translate.status.searching" : "translate.status.running",
                {beam: body.beam});
      drawAll();
      const end = await translate(body, (event) => {
        if (event.type === "start") S.run.start = event;
        else if (event.type === "token") S.run.tokens.push(event);
        else if (event.type === "end") S.run.end = event;
        drawRun();
      }, signal);
      S.run.text = text;
      S.run.body = body;
      setStatus("translate.status.done", {tokens: end.cost.target_tokens, ms: end.cost.ms.toFixed(0)});
      drawAll();
    });
  }

  function runWhatif() {
    if (!S.run || !S.run.end || !S.hide.size) return;
    const body = Object.assign({}, S.run.body, {hide: Array.from(S.hide).sort((a, b) => a - b)});
    return guarded(async (signal) => {
      setStatus("translate.status.running");
      S.whatif = await translate(body, () => {}, signal);
      setStatus("translate.status.done", {tokens: S.whatif.cost.target_tokens, ms: S.whatif.cost.ms.toFixed(0)});
      drawWhatif();
    });
  }

  function runCompare() {
    const text = $("tr-text").value;
    return guarded(async (signal) => {
      S.compare = [];
      drawCompare();
      for (const app of [transformer, lstm]) {
        setStatus("translate.status.running");
        const body = Object.assign({app: app.id, text: text}, decodingBody());
        const end = await translate(body, () => {}, signal);
        S.compare.push({app: app, end: end});
        drawCompare();
      }
      setStatus(null);
    });
  }

  /* ---------- weights ---------- */

  /** The source tokens and target tokens shown, and weight(row, col) of the chosen layer/head. */
  function alignmentOf(run) {
    const start = run.start;
    const end = run.end;
    const source = start ? start.source_tokens : [];
    const target = end ? end.target_tokens : run.tokens.map((e) => e.text);
    const layerValue = $("tr-layer").value;
    const headValue = $("tr-head").value;
    const isLSTM = start && start.arch === "lstm";
    // Rows of (layers, heads, Ls) per token while streaming; the end's re-run once there.
    const cross = end ? end.cross : null;
    function row(r) {
      if (isLSTM) return end ? end.alignment[r] : run.tokens[r].alignment;
      const layer = Number(layerValue || 0);
      const heads = cross ? cross[layer].map((h) => h[r]) : run.tokens[r].cross[layer];
      if (headValue === "mean" || headValue === "") {
        if (end && layer === end.layers - 1) return end.alignment[r];
        return heads[0].map((_, c) => heads.reduce((sum, h) => sum + h[c], 0) / heads.length);
      }
      return heads[Number(headValue)];
    }
    return {source: source, target: target, row: row};
  }

  function selfWeights(end) {
    if (!end || !end.decoder_self) return null;
    const layer = Number($("tr-layer").value || 0);
    const heads = end.decoder_self[layer];
    const headValue = $("tr-head").value;
    if (headValue !== "mean" && headValue !== "") return heads[Number(headValue)];
    return heads[0].map((r, i) => r.map((_, j) => heads.reduce((s, h) => s + h[i][j], 0) / heads.length));
  }

  /* ---------- drawing ---------- */

  function cellStyle(w) {
    const c = heat(w);
    return "background:rgb(" + c.join(",") + ")";
  }

  /** A heatmap table: rows labelled by `rows`, columns by `cols`, weight(r, c) or null (future). */
  function drawMap(table, rows, cols, weight, options) {
    const opts = options || {};
    table.replaceChildren();
    if (!rows.length) return;
    const head = el("tr", null, [el("th"), ...cols.map((c, j) => el("th", {scope: "col",
      class: opts.hidden && opts.hidden.has(j) ? "hidden-word" : null}, el("span", {text: c})))]);
    table.append(el("thead", null, head));
    const body = el("tbody");
    rows.forEach((label, r) => {
      const cells = cols.map((c, j) => {
        const w = weight(r, j);
        const hiddenCol = opts.hidden && opts.hidden.has(j);
        if (w === null) return el("td", {class: "future"});
        return el("td", {"data-row": r, "data-col": j, "data-weight": String(w), style: cellStyle(w),
                         class: hiddenCol ? "hidden-word" : null, title: label + " → " + c + ": " + pct(w),
                         onmouseenter: opts.onCell ? () => opts.onCell(r, j, w) : null});
      });
      body.append(el("tr", {"data-row": r, class: opts.focus === r ? "on" : null},
                     [el("th", {scope: "row", text: label}), ...cells]));
    });
    table.append(body);
  }

  function drawAbout() {
    const app = S.app;
    $("tr-about").textContent = app.arch === "transformer"
      ? t("translate.about.transformer", {enc: app.num_encoder_layers, dec: app.num_layers,
                                           heads: app.num_heads, steps: count(app.steps)})
      : t("translate.about.lstm", {steps: count(app.steps)});
    $("tr-text-hint").textContent = t("translate.text.hint", {tokens: app.max_tokens});
    $("tr-beam-size").max = String(app.max_beam);
    $("tr-whatif-how").textContent = t(app.arch === "transformer" ? "translate.whatif.how.transformer"
                                                                   : "translate.whatif.how.lstm");
  }

  function fillPickers() {
    const run = S.run;
    const arch = run && run.start ? run.start.arch : S.app.arch;
    const app = apps.find((a) => run && run.body && a.id === run.body.app) || S.app;
    const layerSelect = $("tr-layer");
    const headSelect = $("tr-head");
    const keepLayer = layerSelect.value;
    const keepHead = headSelect.value;
    $("tr-pickers").hidden = arch === "lstm";
    $("tr-lstm-note").hidden = arch !== "lstm";
    if (arch === "lstm") return;
    const layers = app.num_layers;
    layerSelect.replaceChildren(...Array.from({length: layers}, (_, l) =>
      el("option", {value: l, text: t("translate.layer.number", {n: l})})));
    headSelect.replaceChildren(el("option", {value: "mean", text: t("translate.head.mean")}),
      ...Array.from({length: app.num_heads}, (_, h) =>
        el("option", {value: h, text: t("translate.head.number", {n: h})})));
    layerSelect.value = keepLayer !== "" && Number(keepLayer) < layers ? keepLayer : String(layers - 1);
    headSelect.value = keepHead !== "" && (keepHead === "mean" || Number(keepHead) < app.num_heads)
      ? keepHead : "mean";
  }

  function drawTokens() {
    const run = S.run;
    const source = run && run.start ? run.start.source_tokens : [];
    $("tr-source").replaceChildren(...source.map((token, j) => el("button", {
      type: "button", class: "chip tr-src", "data-col": j, "aria-pressed": String(S.hide.has(j)),
      text: token, onclick: () => toggleHidden(j)})));
    const events = run ? (run.end ? run.end.target_tokens.map((text, r) => ({text: text, id: run.end.target_ids[r]}))
                               : run.tokens) : [];
    const target = $("tr-target");
    if (run && run.end && !events.length) {
      target.replaceChildren(el("span", {class: "hint", text: t("translate.target.empty")}));
      return;
    }
    target.replaceChildren(...events.map((e, r) => el("span", {
      class: "chip tr-tgt" + (S.focus === r ? " on" : ""), tabindex: 0, "data-row": r, "data-id": e.id,
      text: e.text, onmouseenter: () => setFocus(r), onfocus: () => setFocus(r)})));
  }

  function drawLooked() {
    const run = S.run;
    const bars = $("tr-bars");
    const title = $("tr-looked-title");
    if (!run || S.focus === null || !run.start || S.focus >= (run.end ? run.end.target_tokens.length : run.tokens.length)) {
      title.textContent = t("translate.looked.none");
      bars.replaceChildren();
      return;
    }
    const a = alignmentOf(run);
    const row = a.row(S.focus);
    title.textContent = t("translate.looked.title", {token: a.target[S.focus]});
    bars.replaceChildren(...a.source.flatMap((token, j) => [
      el("span", {class: "tr-bar-label" + (S.hide.has(j) ? " hidden-word" : ""), text: token}),
      el("span", {class: "tr-bar tr-bar-track", "data-col": j, "data-weight": String(row[j])},
         el("span", {class: "tr-bar-fill", style: "width:" + (100 * row[j]).toFixed(2) + "%"})),
      el("span", {class: "tr-bar-pct", text: pct(row[j])})]));
    for (const button of document.querySelectorAll("#tr-source .tr-src")) {
      const j = Number(button.dataset.col);
      button.classList.toggle("looked", row[j] === Math.max(...row));
    }
  }

  function drawMaps() {
    const run = S.run;
    const readout = $("tr-readout");
    if (!run || !run.start) {
      readout.textContent = t("translate.map.empty");
      $("tr-map").replaceChildren();
      $("tr-self").replaceChildren();
      return;
    }
    const a = alignmentOf(run);
    readout.textContent = "";
    if (S.focus !== null && S.focus < a.target.length) {  // the focused token's strongest look
      const row = a.row(S.focus);
      const top = row.indexOf(Math.max(...row));
      readout.textContent = t("translate.map.readout", {target: a.target[S.focus], source: a.source[top], pct: pct(row[top])});
    }
    drawMap($("tr-map"), a.target, a.source, (r, c) => a.row(r)[c], {focus: S.focus, onCell: (r, c, w) => {
      readout.textContent = t("translate.map.readout", {target: a.target[r], source: a.source[c], pct: pct(w)});
    }});
    const own = selfWeights(run.end);
    $("tr-self-hint").textContent = t(run.start.arch === "lstm" ? "translate.self.lstm" : "translate.self.hint");
    if (own) {
      drawMap($("tr-self"), a.target, a.target, (r, c) => (c > r ? null : own[r][c]), {focus: S.focus});
    } else {
      $("tr-self").replaceChildren();
    }
  }

  function drawCost() {
    const body = $("tr-cost-table").tBodies[0];
    const end = S.run && S.run.end;
    body.replaceChildren();
    if (!end) return;
    const cost = end.cost;
    const rows = [["decoding", end.decoding === "beam" ? t("translate.cost.beam", {beam: end.beam})
                                                      : t("translate.cost.greedy"), end.decoding],
                  ["source_tokens", count(cost.source_tokens), cost.source_tokens],
                  ["target_tokens", count(cost.target_tokens), cost.target_tokens],
                  ...Object.entries(cost.scores).map(([k, v]) => [k, count(v), v]),
                  ["total", count(cost.scores_total), cost.scores_total],
                  ["ms", cost.ms.toFixed(1), cost.ms]];
    for (const [key, shown, value] of rows) {
      body.append(el("tr", {"data-key": key, "data-value": value},
                     [el("th", {scope: "row", text: t("translate.cost." + key)}), el("td", {class: "n", text: shown})]));
    }
  }

  function drawWhatif() {
    const words = Array.from(S.hide).sort((a, b) => a - b).map((j) => "“" + S.run.start.source_tokens[j] + "”");
    $("tr-whatif-list").textContent = words.length ? t("translate.whatif.chosen", {words: words.join(" ")})
                                                   : t("translate.whatif.none");
    $("tr-whatif-run").disabled = !words.length || !(S.run && S.run.end);
    $("tr-whatif-reset").disabled = !words.length && !S.whatif;
    const result = $("tr-whatif-result");
    const w = S.whatif;
    result.hidden = !w;
    if (!w) return;
    const hiddenWords = w.comparison.hidden_words.map((x) => "“" + x + "”").join(" ");
    const empty = t("translate.target.empty");
    $("tr-whatif-sentence").textContent = t(w.comparison.same ? "translate.whatif.same" : "translate.whatif.changed",
      {words: hiddenWords, before: w.original.translation || empty, after: w.translation || empty});
    $("tr-whatif-before").textContent = w.original.translation || empty;
    $("tr-whatif-after").textContent = w.translation || empty;
    const hidden = new Set(w.hidden);
    drawMap($("tr-whatif-map-before"), w.original.target_tokens, w.source_tokens,
            (r, c) => w.original.alignment[r][c], {hidden: hidden});
    drawMap($("tr-whatif-map-after"), w.target_tokens, w.source_tokens, (r, c) => w.alignment[r][c],
            {hidden: hidden});
  }

  function drawCompare() {
    const both = Boolean(transformer && lstm);
    $("tr-compare-lead").textContent = t(both ? "translate.compare.lead" : "translate.compare.only");
    $("tr-compare-run").hidden = !both;
    const box = $("tr-compare-result");
    box.replaceChildren(...S.compare.map(({app, end}) => {
      const map = el("table", {class: "tr-map small"});
      drawMap(map, end.target_tokens, end.source_tokens, (r, c) => end.alignment[r][c]);
      return el("div", {class: "tr-side", "data-app": app.id, "data-arch": app.arch}, [
        el("h4", {text: app.title}),
        el("p", {class: "tr-side-text", lang: "es", text: end.translation || t("translate.target.empty")}),
        el("div", {class: "table-wrap"}, map),
        el("ul", null, [
          el("li", {"data-key": "tokens", "data-value": end.cost.target_tokens,
                    text: t("translate.compare.tokens", {source: end.cost.source_tokens, target: end.cost.target_tokens})}),
          el("li", {"data-key": "scores", "data-value": end.cost.scores_total,
                    text: t("translate.compare.scores", {n: count(end.cost.scores_total)})}),
          el("li", {"data-key": "ms", "data-value": end.cost.ms, text: t("translate.compare.time", {ms: end.cost.ms.toFixed(1)})}),
        ]),
      ]);
    }));
  }

  function drawRun() {
    drawTokens();
    drawMaps();
    drawLooked();
  }

  function drawAll() {
    drawAbout();
    fillPickers();
    drawRun();
    drawCost();
    if (S.run && S.run.start) drawWhatif();
    else $("tr-whatif-list").textContent = t("translate.whatif.none");
    drawCompare();
    if (S.status) setStatus(S.status[0], S.status[1]);
    showError(S.error);
  }

  /* ---------- interaction ---------- */

  function setFocus(row) {
    if (S.focus === row) return;
    S.focus = row;
    for (const node of document.querySelectorAll("#tr-target .tr-tgt")) {
      node.classList.toggle("on", Number(node.dataset.row) === row);
    }
    for (const table of [$("tr-map"), $("tr-self")]) {
      for (const tr of table.querySelectorAll("tbody tr")) tr.classList.toggle("on", Number(tr.dataset.row) === row);
    }
    const a = alignmentOf(S.run);
    const weights = a.row(row);
    const top = weights.indexOf(Math.max(...weights));
    $("tr-readout").textContent = t("translate.map.readout", {target: a.target[row], source: a.source[top], pct: pct(weights[top])});
    drawLooked();
  }

  function toggleHidden(j) {
    if (S.hide.has(j)) S.hide.delete(j);
    else S.hide.add(j);
    for (const button of document.querySelectorAll("#tr-source .tr-src")) {
      button.setAttribute("aria-pressed", String(S.hide.has(Number(button.dataset.col))));
    }
    drawLooked();
    drawWhatif();
  }

  function wire() {
    const select = $("tr-app");
    select.replaceChildren(...apps.map((app) => el("option", {value: app.id, text: app.title})));
    select.addEventListener("change", () => {
      S.app = apps.find((a) => a.id === select.value) || apps[0];
      drawAbout();
    });
    $("tr-form").addEventListener("submit", (event) => {
      event.preventDefault();
      runMain();
    });
    $("tr-text").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        runMain();
      }
    });
    const beamChoice = () => { $("tr-beam-size").closest("label").hidden = !$("tr-beam").checked; };
    $("tr-greedy").addEventListener("change", beamChoice);
    $("tr-beam").addEventListener("change", beamChoice);
    beamChoice();
    $("tr-layer").addEventListener("change", drawRun);
    $("tr-head").addEventListener("change", drawRun);
    $("tr-whatif-run").addEventListener("click", runWhatif);
    $("tr-whatif-reset").addEventListener("click", () => {
      S.hide = new Set();
      S.whatif = null;
      drawTokens();
      drawLooked();
      drawWhatif();
    });
    $("tr-compare-run").addEventListener("click", runCompare);
    document.addEventListener("attnlab:lang", drawAll);
    document.addEventListener("attnlab:part", (event) => {
      if (event.detail.part === "translate") start();
    });
  }

  /** The first time the part is shown: translate the example, so there is something to see. */
  function start() {
    if (S.started) return;
    S.started = true;
    $("tr-text").value = S.app.example;
    runMain();
  }

  wire();
  drawAll();
  if (!root.hidden) start();  // serve_parts.js may have shown this part before this script ran
})();
