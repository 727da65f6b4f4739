/* attnlab serve: the "Recognise a picture" part. A picture (uploaded, dropped, drawn or one of
 * the test pictures) goes as it is to POST /api/classify (docs/serve-api.md); the answer is drawn
 * here. Clicking patches hides them from the model and asks again. Every text comes from the
 * string tables (vision.* keys) and is redrawn on "attnlab:lang".
 *
 * For tests: #part-vision[data-ready="true"] once a first answer is drawn, [data-busy] while a
 * request is in flight. Stable ids and attributes:
 *   #vision-app (select)  #vision-about  #vision-file (file input)  #vision-drop (drop zone)
 *   #vision-canvas (drawing)  #vision-recognise  #vision-clear
 *   #vision-examples > button.vision-example[data-label]   #vision-status   #vision-error
 *   #vision-result[data-source="file|drop|drawing|example|start"][data-hidden="3,17"] (start: the
 *     test picture shown when the part first appears)
 *     #vision-verdict; #vision-view (canvas) with #vision-patches > button.vision-patch
 *     [data-patch][aria-pressed]; #vision-show-rollout (checkbox); #vision-original (img)
 *     #vision-bars > li.vision-bar[data-class][data-probability][data-before] (probability: the
 *     current run, with the hidden patches; before: the whole picture), in order of "before"
 *     #vision-whatif-sentence  #vision-unhide
 *   #vision-heads: #vision-layer (select), #vision-heads-grid > figure.vision-head[data-layer][data-head]
 *   #vision-cost-box[data-tokens][data-scores][data-ms]
 */
(function () {
  "use strict";

  const part = document.getElementById("part-vision");
  const config = JSON.parse(document.getElementById("attnlab-serve").textContent);
  const apps = (config.apps || []).filter((app) => app.kind === "vision");
  if (!part || !apps.length) return;
  const i18n = window.attnlabI18n;
  const t = i18n.t;
  const $ = (id) => document.getElementById(id);
  // The datasets `attnlab train vit` knows, named in the reader's language.
  const DATASETS = {"mnist-5k": () => t("vision.dataset.mnist-5k"),
                    "fashion-mnist": () => t("vision.dataset.fashion-mnist")};
  const ROLLOUT = [255, 150, 20];  // the overlay's orange

  const S = {
    app: apps[0],
    picture: null,     // the Blob sent: kept in memory only, for the what-if runs
    source: "",
    hidden: new Set(),
    answer: null,      // the last answer of /api/classify
    image: null,       // its model input as an <img>, drawn under the attention maps
    seq: 0,            // answers to older requests are dropped
    controller: null,
    drawn: false,
    started: false,
  };

  // ---------- small helpers ----------

  function pct(p) {
    return (100 * p).toFixed(p >= 0.9995 || p < 0.0005 ? 0 : 1) + "%";
  }

  function number(n) {
    return Number(n).toLocaleString("en-US");
  }

  function setBusy(on) {
    if (on) part.dataset.busy = "true";
    else delete part.dataset.busy;
  }

  function showError(message) {
    $("vision-error").textContent = message;
    $("vision-error").hidden = !message;
  }

  function hiddenText(count) {
    return i18n.plural("vision.hidden", count);
  }

  function datasetName(app) {
    return app.dataset in DATASETS ? DATASETS[app.dataset]() : app.dataset;
  }

  function blobOfDataUrl(url) {
    const [head, body] = url.split(",");
    const bytes = Uint8Array.from(atob(body), (c) => c.charCodeAt(0));
    return new Blob([bytes], {type: head.slice(5).split(";")[0]});
  }

  // ---------- the model and the inputs ----------

  function fillApps() {
    const select = $("vision-app");
    select.replaceChildren(...apps.map((app) => {
      const option = document.createElement("option");
      option.value = app.id;
      option.textContent = t("vision.app_title", {name: app.name});
      return option;
    }));
    select.value = S.app.id;
    select.disabled = apps.length < 2;
    const a = S.app;
    $("vision-about").textContent = t("vision.about", {
      dataset: datasetName(a), layers: a.num_layers, heads: a.num_heads, steps: number(a.steps),
      size: a.image_size, grid: a.grid, patch: a.patch_size, count: a.classes.length});
    $("vision-upload-hint").textContent = t("vision.upload_hint",
      {max: Math.round(a.max_upload_bytes / 2 ** 20)});
  }

  function fillExamples() {
    const box = $("vision-examples");
    box.replaceChildren(...S.app.examples.map((example) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "vision-example";
      button.dataset.label = example.label;
      button.setAttribute("aria-label", t("vision.example_label", {name: example.label}));
      const img = document.createElement("img");
      img.src = example.image;
      img.alt = "";
      const name = document.createElement("span");
      name.textContent = example.label;
      button.append(img, name);
      button.addEventListener("click", () => recognise(blobOfDataUrl(example.image), "example"));
      return button;
    }));
    $("vision-examples-card").hidden = !S.app.examples.length;
  }

  function chooseApp(id) {
    S.app = apps.find((app) => app.id === id) || apps[0];
    S.answer = null;
    S.hidden.clear();
    for (const id of ["vision-result", "vision-heads", "vision-cost"]) $(id).hidden = true;
    fillApps();
    fillExamples();
    buildPatches();
    if (S.picture) send();
  }

  // ---------- drawing ----------

  const pad = $("vision-canvas");
  const pen = pad.getContext("2d");

  function clearPad() {
    pen.fillStyle = "#000";
    pen.fillRect(0, 0, pad.width, pad.height);
    S.drawn = false;
    $("vision-recognise").disabled = true;
  }

  function padPoint(event) {
    const box = pad.getBoundingClientRect();
    return [(event.clientX - box.left) * pad.width / box.width, (event.clientY - box.top) * pad.height / box.height];
  }

  function wireDrawing() {
    let last = null;
    pen.lineCap = "round";
    pen.lineJoin = "round";
    pad.addEventListener("pointerdown", (event) => {
      event.preventDefault();
      pad.setPointerCapture(event.pointerId);
      last = padPoint(event);
      stroke(last, last);
    });
    pad.addEventListener("pointermove", (event) => {
      if (!last) return;
      const point = padPoint(event);
      stroke(last, point);
      last = point;
    });
    const stop = () => { last = null; };
    pad.addEventListener("pointerup", stop);
    pad.addEventListener("pointercancel", stop);

    function stroke(from, to) {
      // About as thick, for a 280-pixel pad, as an MNIST pen stroke is in 28 pixels.
      pen.strokeStyle = "#fff";
      pen.lineWidth = pad.width / 12;
      pen.beginPath();
      pen.moveTo(from[0], from[1]);
      pen.lineTo(to[0], to[1]);
      pen.stroke();
      S.drawn = true;
      $("vision-recognise").disabled = false;
    }

    $("vision-clear").addEventListener("click", clearPad);
    $("vision-recognise").addEventListener("click", () => {
      pad.toBlob((blob) => recognise(blob, "drawing"), "image/png");
    });
    clearPad();
  }

  function wireUpload() {
    $("vision-file").addEventListener("change", (event) => {
      const file = event.target.files[0];
      if (file) recognise(file, "file");
      event.target.value = "";  // choosing the same file again is a new request
    });
    const zone = $("vision-drop");
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("dragging");
      const file = event.dataTransfer.files[0];
      if (file) recognise(file, "drop");
    });
  }

  // ---------- asking the server ----------

  function recognise(blob, source) {
    S.picture = blob;
    S.source = source;
    S.hidden.clear();
    updatePatches();
    // A picture the reader gave: bring its answer into view (on a phone it is a screen or two below).
    send(source !== "start");
  }

  async function send(reveal) {
    const blob = S.picture;
    showError("");
    if (blob.size > S.app.max_upload_bytes) {
      showError(t("vision.error_too_big", {size: (blob.size / 2 ** 20).toFixed(1),
                                          max: Math.round(S.app.max_upload_bytes / 2 ** 20)}));
      return;
    }
    if (S.controller) S.controller.abort();
    const controller = new AbortController();
    const seq = ++S.seq;
    const hidden = Array.from(S.hidden).sort((a, b) => a - b);
    S.controller = controller;
    setBusy(true);
    $("vision-status").textContent = t("vision.status_working");
    const query = new URLSearchParams({app: S.app.id});
    if (hidden.length) query.set("hide", hidden.join(","));
    const type = blob.type && blob.type.startsWith("image/") ? blob.type : "application/octet-stream";
    try {
      const response = await fetch("/api/classify?" + query, {
        method: "POST", headers: {"Content-Type": type}, body: blob, signal: controller.signal});
      const answer = await response.json();
      if (seq !== S.seq) return;
      if (!response.ok) {
        showError(answer.error || t("vision.error_network"));
        $("vision-status").textContent = "";
        return;
      }
      const image = await loadPicture(answer.original.input_image);
      if (seq !== S.seq) return;
      S.answer = answer;
      S.image = image;
      $("vision-result").dataset.source = S.source;
      $("vision-result").dataset.hidden = hidden.join(",");
      draw();
      const verdict = $("vision-verdict");
      if (reveal && verdict.getBoundingClientRect().top > window.innerHeight) {
        verdict.scrollIntoView({behavior: "smooth", block: "start"});
      }
      $("vision-status").textContent = t("vision.status_done", {ms: answer.elapsed_ms.toFixed(0)});
      part.dataset.ready = "true";
    } catch (error) {
      if (seq !== S.seq) return;
      showError(t("vision.error_network"));
      $("vision-status").textContent = "";
    } finally {
      if (seq === S.seq) {
        S.controller = null;
        setBusy(false);
      }
    }
  }

  // ---------- the patches of the picture ----------

  function buildPatches() {
    const box = $("vision-patches");
    const grid = S.app.grid;
    box.style.gridTemplateColumns = `repeat(${grid}, 1fr)`;
    box.style.gridTemplateRows = `repeat(${grid}, 1fr)`;
    const buttons = [];
    for (let index = 0; index < grid * grid; index++) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "vision-patch";
      button.dataset.patch = String(index);
      button.tabIndex = index === 0 ? 0 : -1;  // one tab stop; arrows move within the grid
      button.addEventListener("click", () => togglePatch(index));
      button.addEventListener("keydown", (event) => movePatchFocus(event, index));
      buttons.push(button);
    }
    box.replaceChildren(...buttons);
    updatePatches();
  }

  function movePatchFocus(event, index) {
    const grid = S.app.grid;
    const row = Math.floor(index / grid);
    const col = index % grid;
    const moves = {ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0]};
    let target = null;
    if (event.key in moves) {
      const [dr, dc] = moves[event.key];
      target = Math.min(grid - 1, Math.max(0, row + dr)) * grid + Math.min(grid - 1, Math.max(0, col + dc));
    } else if (event.key === "Home") {
      target = row * grid;
    } else if (event.key === "End") {
      target = row * grid + grid - 1;
    }
    if (target === null) return;
    event.preventDefault();
    const buttons = $("vision-patches").children;
    buttons[index].tabIndex = -1;
    buttons[target].tabIndex = 0;
    buttons[target].focus();
  }

  function togglePatch(index) {
    if (!S.picture) return;
    if (S.hidden.has(index)) S.hidden.delete(index);
    else S.hidden.add(index);
    updatePatches();
    send();
  }

  function updatePatches() {
    const grid = S.app.grid;
    for (const button of $("vision-patches").children) {
      const index = Number(button.dataset.patch);
      button.setAttribute("aria-pressed", String(S.hidden.has(index)));
      button.setAttribute("aria-label", t("vision.patch_label",
        {row: Math.floor(index / grid) + 1, col: index % grid + 1}));
    }
    $("vision-unhide").disabled = !S.hidden.size;
  }

  // ---------- drawing an answer ----------

  function current() {
    return S.answer.edited || S.answer.original;
  }

  function draw() {
    for (const id of ["vision-result", "vision-heads", "vision-cost"]) $(id).hidden = false;
    $("vision-original").src = S.answer.original.image;
    drawTexts();
    drawView();
    drawHeads();
  }

  function drawTexts() {
    if (!S.answer) return;
    const run = current();
    const best = run.predictions[0];
    const count = (S.answer.edited && S.answer.edited.hidden.length) || 0;
    $("vision-verdict").textContent = count
      ? t("vision.verdict_hidden", {hidden: hiddenText(count), name: best.class, pct: pct(best.probability)})
      : t("vision.verdict", {name: best.class, pct: pct(best.probability)});
    const a = S.app;
    const sizes = {size: a.image_size, grid: a.grid};
    $("vision-view-caption").textContent = $("vision-show-rollout").checked
      ? t("vision.view_caption", sizes) : t("vision.view_caption_plain", sizes);
    drawBars();
    drawWhatif();
    drawCost();
    fillLayers();
    drawHeadCaptions();
  }

  function drawBars() {
    const original = S.answer.original;
    const now = current().probabilities;
    const edited = Boolean(S.answer.edited);
    const order = original.classes.map((name, i) => i).sort((i, j) => original.probabilities[j] - original.probabilities[i]);
    const top = now.indexOf(Math.max(...now));
    $("vision-bars").replaceChildren(...order.map((i) => {
      const item = document.createElement("li");
      item.className = "vision-bar" + (i === top ? " top" : "");
      item.dataset.class = original.classes[i];
      item.dataset.probability = String(now[i]);
      item.dataset.before = String(original.probabilities[i]);
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = original.classes[i];
      const track = document.createElement("span");
      track.className = "track";
      const fill = document.createElement("span");
      fill.className = "fill";
      fill.style.width = (100 * now[i]).toFixed(2) + "%";
      const before = document.createElement("span");
      before.className = "before";
      before.style.left = (100 * original.probabilities[i]).toFixed(2) + "%";
      before.hidden = !edited;
      track.append(fill, before);
      const value = document.createElement("span");
      value.className = "pct";
      value.textContent = edited ? `${pct(original.probabilities[i])} → ${pct(now[i])}` : pct(now[i]);
      item.append(name, track, value);
      return item;
    }));
    $("vision-bars-hint").textContent = edited ? t("vision.bars_hint_hidden") : t("vision.bars_hint");
  }

  function drawWhatif() {
    const sentence = $("vision-whatif-sentence");
    const edited = S.answer.edited;
    if (!edited) {
      sentence.textContent = t("vision.whatif_none");
      return;
    }
    const original = S.answer.original;
    const lead = original.predictions[0];
    const index = original.classes.indexOf(lead.class);
    const after = edited.probabilities[index];
    const vars = {hidden: hiddenText(edited.hidden.length), name: lead.class,
                  before: pct(lead.probability), after: pct(after)};
    // Below half a percentage point the bars do not visibly move: say it stays.
    let text = after < lead.probability - 0.005 ? t("vision.whatif_drops", vars)
      : after > lead.probability + 0.005 ? t("vision.whatif_rises", vars) : t("vision.whatif_same", vars);
    const now = edited.predictions[0];
    if (now.class !== lead.class) text += " " + t("vision.whatif_new_top", {name: now.class, pct: pct(now.probability)});
    sentence.textContent = text;
  }

  function drawCost() {
    const cost = S.answer.original.cost;
    const box = $("vision-cost-box");
    box.dataset.tokens = String(cost.tokens);
    box.dataset.scores = String(cost.attention_scores);
    box.dataset.ms = String(cost.elapsed_ms);
    $("vision-cost-tokens").textContent = t("vision.cost_tokens", {tokens: cost.tokens, patches: cost.patches});
    $("vision-cost-scores").textContent = t("vision.cost_scores", {
      layers: cost.layers, heads: cost.heads, tokens: cost.tokens, scores: number(cost.attention_scores)});
    let time = t("vision.cost_time", {ms: cost.elapsed_ms.toFixed(1)});
    if (S.answer.edited) time += " " + t("vision.cost_time_whatif", {ms: S.answer.edited.cost.elapsed_ms.toFixed(1)});
    $("vision-cost-time").textContent = time;
  }

  function loadPicture(url) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = reject;
      img.src = url;
    });
  }

  function stretch(values) {
    // From the map's smallest value to its largest, as the PNG of `attnlab classify` draws it:
    // a nearly even map still shows which patches stand out.
    const low = Math.min(...values);
    const span = Math.max(Math.max(...values) - low, 1e-12);
    return values.map((v) => (v - low) / span);
  }

  function paint(canvas, values, hidden, strength) {
    const context = canvas.getContext("2d");
    const size = canvas.width;
    const grid = S.app.grid;
    const cell = size / grid;
    context.imageSmoothingEnabled = false;
    context.clearRect(0, 0, size, size);
    if (S.image) context.drawImage(S.image, 0, 0, size, size);
    if (values) {
      const shares = stretch(values);
      shares.forEach((share, index) => {
        context.fillStyle = `rgba(${ROLLOUT.join(",")},${(strength * share).toFixed(3)})`;
        context.fillRect((index % grid) * cell, Math.floor(index / grid) * cell, cell, cell);
      });
    }
    context.strokeStyle = "rgba(255,255,255,0.22)";
    context.lineWidth = 1;
    for (let k = 1; k < grid; k++) {
      context.beginPath();
      context.moveTo(k * cell, 0);
      context.lineTo(k * cell, size);
      context.moveTo(0, k * cell);
      context.lineTo(size, k * cell);
      context.stroke();
    }
    for (const index of hidden) hatch(context, (index % grid) * cell, Math.floor(index / grid) * cell, cell);
  }

  function hatch(context, x, y, cell) {
    context.save();
    context.beginPath();
    context.rect(x, y, cell, cell);
    context.clip();
    context.fillStyle = "rgba(90,90,90,0.85)";
    context.fillRect(x, y, cell, cell);
    context.strokeStyle = "rgba(235,235,235,0.9)";
    context.lineWidth = Math.max(1, cell / 10);
    for (let d = -cell; d < cell * 2; d += cell / 3) {
      context.beginPath();
      context.moveTo(x + d, y + cell);
      context.lineTo(x + d + cell, y);
      context.stroke();
    }
    context.restore();
  }

  function drawView() {
    const run = current();
    // The buttons over the main picture hatch the hidden patches themselves.
    paint($("vision-view"), $("vision-show-rollout").checked ? run.rollout : null, [], 0.6);
  }

  function fillLayers() {
    const select = $("vision-layer");
    const layers = S.app.num_layers;
    const chosen = select.value === "" ? layers - 1 : Math.min(Number(select.value), layers - 1);
    select.replaceChildren(...Array.from({length: layers}, (_, layer) => {
      const option = document.createElement("option");
      option.value = String(layer);
      option.textContent = t("vision.layer_option", {n: layer, last: layers - 1});
      return option;
    }));
    select.value = String(chosen);
  }

  function drawHeads() {
    const run = current();
    const layer = Number($("vision-layer").value);
    const figures = run.cls_attention[layer].map((values, head) => {
      const figure = document.createElement("figure");
      figure.className = "vision-head";
      figure.dataset.layer = String(layer);
      figure.dataset.head = String(head);
      const canvas = document.createElement("canvas");
      canvas.width = canvas.height = 128;
      paint(canvas, values, run.hidden || [], 0.85);
      const caption = document.createElement("figcaption");
      figure.append(canvas, caption);
      return figure;
    });
    $("vision-heads-grid").replaceChildren(...figures);
    drawHeadCaptions();
  }

  function drawHeadCaptions() {
    if (!S.answer) return;
    const run = current();
    for (const figure of $("vision-heads-grid").children) {
      const layer = Number(figure.dataset.layer);
      const head = Number(figure.dataset.head);
      const caption = figure.querySelector("figcaption");
      const self = document.createElement("span");
      self.className = "self";
      self.textContent = t("vision.head_self", {pct: pct(run.cls_self[layer][head])});
      caption.replaceChildren(t("vision.head_caption", {n: head}), self);
      figure.querySelector("canvas").setAttribute("aria-label",
        t("vision.head_label", {layer: layer, head: head}));
    }
  }

  // ---------- wiring ----------

  function start() {
    // The first time the part is shown, a test picture gives it something to show at once.
    if (S.started || part.hidden) return;
    S.started = true;
    if (!S.picture && S.app.examples.length) recognise(blobOfDataUrl(S.app.examples[0].image), "start");
  }

  $("vision-app").addEventListener("change", (event) => chooseApp(event.target.value));
  $("vision-show-rollout").addEventListener("change", () => {
    if (!S.answer) return;
    drawView();
    drawTexts();
  });
  $("vision-layer").addEventListener("change", drawHeads);
  $("vision-unhide").addEventListener("click", () => {
    S.hidden.clear();
    updatePatches();
    send();
  });
  document.addEventListener("attnlab:lang", () => {
    fillApps();
    fillExamples();
    updatePatches();
    drawTexts();
    if (S.answer) drawHeadCaptions();
    if (S.answer && !part.dataset.busy) {
      $("vision-status").textContent = t("vision.status_done", {ms: S.answer.elapsed_ms.toFixed(0)});
    }
  });
  document.addEventListener("attnlab:part", start);
  wireDrawing();
  wireUpload();
  chooseApp(S.app.id);
  start();  // serve_parts.js may have shown this part before this script ran
})();
