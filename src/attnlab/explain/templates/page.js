/* attnlab explain: draws the page from the embedded explanation data (schema version 1).
 * Plain JavaScript, no libraries, no network: everything is drawn with SVG and canvas.
 *
 * The same code draws again and again: window.attnlabExplain.show(data, options) (re)renders
 * the header tokens, walkthrough, head view, all-heads view and cost for a new explanation.
 * The static page calls it once with its embedded JSON (the element "attnlab-data"); the live page of
 * `attnlab serve` calls it for every answer of its server. options:
 *   keep     (default true) keep the chosen layer, head and word when they still exist
 *            (the word only when the tokens are the same; the head only when the reader chose it)
 *   hide     token positions hidden from every query (a what-if): their keys are drawn as hidden
 *   headsOff [[layer, head], ...] heads switched off (a what-if): marked as such
 *   compare  another explanation of the same tokens (the original of a what-if): the softmax
 *            table gets a column with its shares, and changed rows are marked
 *   compareLabel  the name of that column's run (default: "before" in the page's language)
 * A change of layer, head or word fires the event "attnlab:select" on document, with
 * detail {layer, head, token}. Every text comes from the string tables (i18n.js); on
 * "attnlab:lang" the page draws its sections again in the new language. */
(function () {
  "use strict";

  const i18n = window.attnlabI18n;
  let data = null;
  let model = null;
  let tokens = [];
  let n = 0;
  let options = {hide: [], headsOff: [], compare: null, compareLabel: null};
  let wired = false;
  const SVG_NS = "http://www.w3.org/2000/svg";
  // The head view draws no line for shares below 1%: they would only be noise.
  const HV_MIN_WEIGHT = 0.01;
  // All-heads mode draws only the clearer links, or nine colours would blur together.
  const HV_ALL_MIN_WEIGHT = 0.05;
  const HV_ROW = 26;
  // Recomputed shares may differ from the stored ones by rounding only (6 decimals).
  const WEIGHT_TOLERANCE = 1e-3;
  const HEAD_COLOURS = ["#1f5fbf", "#d1495b", "#2a9d8f", "#e08e0b", "#7b3fb5", "#5c8001",
                        "#c2185b", "#00838f", "#8d6e63", "#3949ab", "#ef6c00", "#546e7a"];
  const HEAT_STOPS = [[247, 251, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]];

  const state = {
    layer: 0,
    head: 0,
    token: 0,
    chosen: false,      // whether the reader picked the layer and head (kept for a new text)
    key: null,          // the key whose dot product the walkthrough writes out
    pinned: null,       // head view: {side: "left"|"right", index} kept highlighted after a tap
    allHeads: false,
  };

  /* ---------- small helpers ---------- */

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : value);
    }
  }

  function append(node, children) {
    if (children === null || children === undefined) return;
    for (const child of Array.isArray(children) ? children : [children]) {
      if (child === null || child === undefined || child === false) continue;
      node.append(typeof child === "string" || typeof child === "number" ? String(child) : child);
    }
  }

  /** A number as readers expect it: a real minus sign, 3 decimals (fewer when large). */
  function fmt(x, decimals) {
    if (x === null || x === undefined) return "—";
    const d = decimals === undefined ? (Math.abs(x) >= 100 ? 1 : 3) : decimals;
    if (Math.abs(x) >= 1e6) return sci(x);
    const text = Math.abs(x).toFixed(d);
    return (x < 0 && Number(text) !== 0 ? "−" : "") + text;
  }

  function sci(x) {
    const [mantissa, exponent] = Math.abs(x).toExponential(2).split("e");
    return (x < 0 ? "−" : "") + mantissa + " × 10^" + Number(exponent);
  }

  /** A number inside a formula: negative ones in brackets so “× (−0.5)” reads right. */
  function term(x) {
    const text = fmt(x);
    return text.startsWith("−") ? "(" + text + ")" : text;
  }

  /** A square root as people write it: √64 = 8, √32 = 5.657. */
  function root(x) {
    const r = Math.sqrt(x);
    return Number.isInteger(r) ? String(r) : fmt(r);
  }

  function pct(w) {
    if (w > 0 && w < 0.001) return "<0.1%";
    return (w * 100).toFixed(1) + "%";
  }

  function count(x) {
    return Math.round(x).toLocaleString("en-US");
  }

  /** A big number in words: "about 7.2 million" (the units, such as 万 and 亿, come from the table). */
  function inWords(x) {
    const units = i18n.t("num.units").split("|").map((unit) => unit.split(" "))
      .map(([size, name]) => [Number(size), name]).sort((a, b) => b[0] - a[0]);
    for (const [size, name] of units) {
      const v = x / size;
      if (x >= size) return i18n.t("num.about", {n: v >= 100 ? String(Math.round(v)) : v.toPrecision(2).replace(/\.0$/, ""), unit: name});
    }
    return String(x);
  }

  /** ``text`` as lines: each "\n" (of a table's text) becomes a line break. */
  function textLines(text) {
    return text.split("\n").flatMap((line, i) => (i ? [el("br"), line] : [line]));
  }

  function tokenText(i) {
    return visibleText(tokens[i]);
  }

  /** A token's text with its invisible characters made visible: a space as ␣, a line break as ⏎. */
  function visibleText(t) {
    if (t === "") return "∅";
    return t.replace(/\n/g, "⏎").replace(/\t/g, "⇥").replace(/^ +| +$/g, (m) => "␣".repeat(m.length));
  }

  /** A token shown inline in a sentence; with its position when its text occurs twice ("the"). */
  function tok(i) {
    const repeated = tokens.indexOf(tokens[i]) !== tokens.lastIndexOf(tokens[i]);
    return el("span", {class: "tok" + (data.special[i] ? " special" : "")},
              [repeated ? el("span", {class: "idx", text: String(i)}) : null, tokenText(i)]);
  }

  function glossary(word, id) {
    return el("a", {class: "term", href: "#g-" + id, text: word});
  }

  function heat(w) {
    // Square root, so that shares of a few percent are still visible next to a share of 90%.
    const t = Math.sqrt(Math.min(1, Math.max(0, w))) * (HEAT_STOPS.length - 1);
    const i = Math.min(HEAT_STOPS.length - 2, Math.floor(t));
    const f = t - i;
    return HEAT_STOPS[i].map((c, j) => Math.round(c + (HEAT_STOPS[i + 1][j] - c) * f));
  }

  function rgb(c) {
    return "rgb(" + c.join(",") + ")";
  }

  /** Whether key ``k`` is hidden from query ``q``: the decoder's future (the data stores null
   * there) or a word hidden by a what-if. */
  function hidden(layer, head, q, k) {
    return data.walkthrough[layer][head].scaled[q][k] === null || options.hide.includes(k);
  }

  /** Why key ``k`` is hidden from query ``q``: "hid" (a what-if) or "later" (the decoder's future). */
  function hiddenWhy(q, k) {
    return options.hide.includes(k) && !(model.causal && k > q) ? "hid" : "later";
  }

  function hiddenWhyText(q, k) {
    return hiddenWhy(q, k) === "hid" ? i18n.t("hidden.hid") : i18n.t("hidden.later");
  }

  function isOff(layer, head) {
    return options.headsOff.some(([l, h]) => l === layer && h === head);
  }

  /** The compared explanation's weights for query ``q`` in the current head, or null. */
  function comparedWeights(q) {
    const other = options.compare;
    if (!other || other.tokens.length !== n || other.model.num_layers !== model.num_layers ||
        other.model.num_heads !== model.num_heads) return null;
    return other.attention[state.layer][state.head][q];
  }

  function weightsOf(layer, head, q) {
    return data.attention[layer][head][q];
  }

  function sharedWith(head) {
    const group = data.kv_head_of[head];
    return data.kv_head_of.map((g, h) => (g === group ? h : -1)).filter((h) => h >= 0);
  }

  function headRange(heads) {
    return heads.length > 1 ? heads[0] + "–" + heads[heads.length - 1] : String(heads[0]);
  }

  function argmax(values, allowed) {
    let best = -1;
    values.forEach((v, i) => {
      if (allowed(i) && (best < 0 || v > values[best])) best = i;
    });
    return best;
  }

  /** Say on the page that its own check failed: ``message`` is the text of a "problem." key. */
  function reportProblem(message) {
    console.error("attnlab explain: " + message);
    const box = document.getElementById("page-error");
    box.hidden = false;
    box.textContent = i18n.t("problem.lead", {problem: message});
  }

  /* ---------- header ---------- */

  /** The element ``id`` emptied, or null when this page has none (the live page has no title). */
  function cleared(id) {
    const node = document.getElementById(id);
    if (node) node.textContent = "";
    return node;
  }

  function renderHeader() {
    const title = cleared("page-title");
    if (title) title.textContent = i18n.t("page.title_model", {model: modelTitle(model.title)});
    const sentence = cleared("sentence");
    if (sentence) sentence.textContent = data.text;
    append(cleared("model-line"), i18n.parts("header.model_line", {
      title: el("strong", {text: modelTitle(model.title)}), description: modelDescription(model.description),
      n_layers: model.num_layers, layers: glossary(i18n.plural("word.layers", model.num_layers), "layer"),
      n_heads: model.num_heads, heads: glossary(i18n.plural("word.heads", model.num_heads), "head"),
      total: model.num_layers * model.num_heads}));
    const specials = data.special.filter(Boolean).length;
    const tokenVars = {n: n, tokens: glossary(i18n.plural("word.tokens", n), "token")};
    append(cleared("tokens-line"), specials ? i18n.parts("header.tokens_line_markers", tokenVars)
      : i18n.parts("header.tokens_line", tokenVars));
    const strip = cleared("token-strip");
    if (strip) {
      tokens.forEach((_, i) => strip.append(el("span", {class: "chip" + (data.special[i] ? " special" : "") +
                                                        (options.hide.includes(i) ? " gone" : ""), "data-token": i},
        [el("span", {class: "idx", text: String(i)}), tokenText(i)])));
    }
    const causal = document.getElementById("causal-note");
    if (causal) causal.hidden = !model.causal;
  }

  /** A model's title or description as the server wrote it (English), in the page's language
   * when it is one of the table's ("model.text." keys); a name such as "all-MiniLM-L6-v2" stays. */
  function modelTitle(text) {
    return i18n.fromEnglish("model.text.", text);
  }

  const modelDescription = modelTitle;

  /* ---------- shared controls ---------- */

  function fillSelectors() {
    for (const menu of document.querySelectorAll("select[data-select]")) {
      const isLayer = menu.dataset.select === "layer";
      const size = isLayer ? model.num_layers : model.num_heads;
      menu.textContent = "";
      for (let i = 0; i < size; i++) {
        let label = isLayer ? i18n.t("common.layer_n", {n: i}) : i18n.t("common.head_n", {n: i});
        if (isLayer && i === 0) label = i18n.t("common.first", {label: label});
        if (isLayer && i === size - 1) label = i18n.t("common.last", {label: label});
        menu.append(el("option", {value: String(i), text: label}));
      }
    }
  }

  function select(change) {
    Object.assign(state, change);
    if ("layer" in change || "head" in change) {
      state.chosen = true;
      state.pinned = null;
    }
    // A new word, layer or head starts again from the word's strongest link.
    if (!("key" in change)) state.key = null;
    render();
    if (!("key" in change)) {
      document.dispatchEvent(new CustomEvent("attnlab:select",
        {detail: {layer: state.layer, head: state.head, token: state.token}}));
    }
  }

  function render() {
    for (const s of document.querySelectorAll("select[data-select]")) s.value = String(state[s.dataset.select]);
    renderWalkthrough();
    renderHeadView();
    markCurrentThumb();
  }

  /** The default word: the one that looks most clearly at another real word in the chosen head. */
  function defaultToken() {
    let best = -1;
    let bestShare = -1;
    for (let q = 0; q < n; q++) {
      if (data.special[q]) continue;
      weightsOf(state.layer, state.head, q).forEach((w, k) => {
        if (k !== q && !data.special[k] && w > bestShare) {
          best = q;
          bestShare = w;
        }
      });
    }
    return best >= 0 ? best : 0;
  }

  /* ---------- 1. walkthrough ---------- */

  function vectorRow(label, labelClass, values, total, extra) {
    const biggest = Math.max(1e-9, ...values.map(Math.abs));
    const cells = values.map((x, d) => {
      const alpha = (Math.abs(x) / biggest) * 0.45;
      const tint = x >= 0 ? "rgba(31,95,191," + alpha + ")" : "rgba(196,90,0," + alpha + ")";
      return el("span", {class: "num-cell", style: "background:" + tint, "data-dim": d, "data-value": x,
                         title: i18n.t("wt.vec.number_title", {d: d, x: x}), text: fmt(x)});
    });
    const more = total > values.length ? el("span", {class: "more", text: i18n.t("wt.vec.more", {n: total - values.length})}) : null;
    return el("div", {class: "vec", "data-vector": extra}, [
      el("span", {class: "vec-label " + labelClass, text: label}), el("span", {class: "vec-cells"}, cells), more]);
  }

  function step(number, title, body) {
    return el("div", {class: "step", id: "wt-step-" + number}, [
      el("h3", {}, [el("span", {class: "num", text: String(number)}), title]), ...body]);
  }

  function renderReason() {
    const box = document.getElementById("wt-reason");
    box.textContent = "";
    const isSuggested = state.layer === data.selected.layer && state.head === data.selected.head;
    if (isSuggested) {
      append(box, [el("strong", {text: i18n.t("wt.reason.head", {layer: state.layer, head: state.head})}), reasonText()]);
    } else {
      append(box, [i18n.t("wt.reason.picked", {layer: state.layer, head: state.head}),
                   el("button", {type: "button", text: i18n.t("wt.reason.back", {layer: data.selected.layer,
                                                                                 head: data.selected.head}),
                                 onclick: () => select({layer: data.selected.layer, head: data.selected.head})})]);
    }
  }

  /** The reason the data gives for its head, as a sentence, without repeating the head's name
   * (attnlab's own reasons, "reason.text." keys, in the page's language). */
  function reasonText() {
    const reason = data.selected.reason.trim().replace(/^layer \d+,? head \d+\s*[:.,-]\s*/i, "");
    if (/^you chose/i.test(reason)) return i18n.t("wt.reason.chosen");
    const sentence = reason.charAt(0).toUpperCase() + reason.slice(1);
    return i18n.t("wt.reason.suggested",
                  {reason: i18n.fromEnglish("reason.text.", sentence + (/[.!?]$/.test(sentence) ? "" : "."))});
  }

  function renderWordPicker() {
    const box = document.getElementById("wt-tokens");
    box.textContent = "";
    tokens.forEach((_, i) => {
      box.append(el("button", {type: "button", class: "chip" + (data.special[i] ? " special" : ""),
                               "aria-pressed": i === state.token ? "true" : "false", "data-token": i,
                               onclick: () => select({token: i})},
                    [el("span", {class: "idx", text: String(i)}), tokenText(i)]));
    });
  }

  function renderWalkthrough() {
    renderWordPicker();
    renderReason();
    const {layer, head, token: q} = state;
    const wt = data.walkthrough[layer][head];
    const weights = weightsOf(layer, head, q);
    const visible = (k) => !hidden(layer, head, q, k);
    const top = argmax(weights, visible);
    if (state.key === null || !visible(state.key)) state.key = top;
    checkScaling(q, wt);
    const steps = document.getElementById("wt-steps");
    steps.textContent = "";
    steps.append(
      stepInput(q, wt),
      stepProjections(q, wt, head),
      stepScores(q, wt, layer, head),
      stepScale(q, wt),
      stepSoftmax(q, wt, weights, top),
      stepBlend(q, wt, weights),
      stepNext(),
    );
  }

  function stepInput(q, wt) {
    const earlier = state.layer === 0
      ? (model.rope ? i18n.t("wt.s1.first_layer_rope") : i18n.t("wt.s1.first_layer"))
      : i18n.plural("wt.s1.later_layer", state.layer);
    return step(1, i18n.t("wt.s1.title"), [
      el("p", {}, i18n.parts("wt.s1.text", {token: tok(q), vector: glossary(i18n.t("word.vector"), "vector"),
                                           dim: model.embed_dim, shown: wt.input[q].length, layer: state.layer,
                                           earlier: earlier})),
      vectorRow(i18n.t("wt.vec.input"), "", wt.input[q], model.embed_dim, "input"),
      el("p", {class: "hint"}, i18n.t("wt.s1.hint")),
    ]);
  }

  function stepProjections(q, wt, head) {
    const body = [
      el("p", {}, i18n.t("wt.s2.text", {head: head, dim: model.embed_dim, head_dim: model.head_dim})),
      vectorRow(i18n.t("wt.vec.query"), "q-text", wt.query[q], model.head_dim, "query"),
      el("p", {class: "hint"}, i18n.parts("wt.s2.query_hint", {word: el("span", {class: "q-text", text: i18n.t("wt.s2.query_word")}),
                                                              token: tok(q)})),
      vectorRow(i18n.t("wt.vec.key"), "k-text", wt.key[q], model.head_dim, "key"),
      el("p", {class: "hint"}, i18n.parts("wt.s2.key_hint", {word: el("span", {class: "k-text", text: i18n.t("wt.s2.key_word")}),
                                                            token: tok(q)})),
      vectorRow(i18n.t("wt.vec.value"), "v-text", wt.value[q], model.head_dim, "value"),
      el("p", {class: "hint"}, i18n.parts("wt.s2.value_hint", {word: el("span", {class: "v-text", text: i18n.t("wt.s2.value_word")}),
                                                              token: tok(q)})),
      el("p", {}, i18n.t("wt.s2.every_word")),
    ];
    const shared = sharedWith(head);
    if (shared.length > 1) {
      const others = shared.filter((h) => h !== head);
      body.push(el("p", {class: "note", id: "wt-shared-note"}, [
        el("strong", {text: i18n.t("wt.s2.shared_lead")}),
        ...i18n.pluralParts("wt.s2.shared", others.length, {
          range: headRange(shared), glossary: glossary(i18n.t("word.shared"), "shared"), head: head,
          others: others.join(i18n.t("common.and"))})]));
    }
    if (model.rope) body.push(el("p", {}, i18n.t("wt.s2.rope")));
    return step(2, i18n.t("wt.s2.title"), body);
  }

  function stepScores(q, wt, layer, head) {
    const k = state.key;
    const query = wt.query[q];
    const key = wt.key[k];
    const rows = query.map((x, d) => el("div", {}, i18n.t("wt.s3.product", {d: d, a: term(x), b: term(key[d]),
                                                                            c: fmt(x * key[d])})));
    const shownSum = query.reduce((s, x, d) => s + x * key[d], 0);
    const score = wt.scores[q][k];
    const rest = model.head_dim - query.length;
    if (rest > 0) {
      rows.push(el("div", {class: "total"}, i18n.t("wt.s3.shown_sum", {n: query.length, sum: fmt(shownSum)})));
      rows.push(el("div", {}, i18n.plural("wt.s3.rest_sum", rest, {sum: fmt(score - shownSum)})));
    }
    rows.push(el("div", {class: "total", id: "wt-score-total", "data-value": score}, i18n.t("wt.s3.score", {score: fmt(score)})));
    const seen = tokens.filter((_, j) => !hidden(layer, head, q, j)).length;
    const skipped = n - seen;
    const why = options.hide.length ? i18n.plural("wt.s3.why_hid", skipped) : i18n.plural("wt.s3.why_later", skipped);
    return step(3, i18n.t("wt.s3.title"), [
      el("p", {}, i18n.parts("wt.s3.text", {query: el("span", {class: "q-text", text: i18n.t("word.query")}), token: tok(q),
                                           key: el("span", {class: "k-text", text: i18n.t("word.key")}),
                                           dot: glossary(i18n.t("word.dot"), "dot")})),
      el("p", {}, i18n.parts("wt.s3.written_out", {token: tok(k)})),
      el("div", {class: "formula", id: "wt-dot"}, rows),
      el("p", {}, [...i18n.pluralParts("wt.s3.every_key", seen, {token: tok(q)}),
                   ...(skipped > 0 ? i18n.pluralParts("wt.s3.skipped", skipped, {why: why}) : [])]),
    ]);
  }

  function stepScale(q, wt) {
    const k = state.key;
    const score = wt.scores[q][k];
    const scaled = wt.scaled[q][k];
    return step(4, i18n.t("wt.s4.title"), [
      el("p", {}, i18n.parts("wt.s4.text", {d: model.head_dim, root: root(model.head_dim), scale: fmt(data.scale, 4),
                                           scaling: glossary(i18n.t("word.scaling"), "scale")})),
      el("div", {class: "formula", id: "wt-scale"}, [
        el("div", {}, i18n.parts("wt.s4.formula", {token: tok(k), score: fmt(score), root: root(model.head_dim),
                                                  scaled: fmt(scaled)}))]),
    ]);
  }

  function checkScaling(q, wt) {
    wt.scores[q].forEach((s, k) => {
      if (s === null) return;
      const expected = s * data.scale;
      if (Math.abs(expected - wt.scaled[q][k]) > 1e-4 * (1 + Math.abs(expected))) {
        reportProblem(i18n.t("problem.scaled", {scaled: wt.scaled[q][k], score: s, scale: data.scale}));
      }
    });
  }

  function stepSoftmax(q, wt, weights, top) {
    const k = state.key;
    const scaled = wt.scaled[q];
    const seen = (j) => !hidden(state.layer, state.head, q, j);
    const visibleKeys = scaled.map((s, j) => j).filter(seen);
    const exps = scaled.map((s, j) => (seen(j) ? Math.exp(s) : 0));
    const total = exps.reduce((a, b) => a + b, 0);
    // The model's own weights must be softmax(scaled): recompute them stably and compare.
    const biggest = Math.max(...visibleKeys.map((j) => scaled[j]));
    const stable = scaled.map((s, j) => (seen(j) ? Math.exp(s - biggest) : 0));
    const stableTotal = stable.reduce((a, b) => a + b, 0);
    let worst = 0;
    stable.forEach((e, j) => { worst = Math.max(worst, Math.abs(e / stableTotal - weights[j])); });
    if (worst > WEIGHT_TOLERANCE) {
      reportProblem(i18n.t("problem.shares", {x: worst.toFixed(6)}));
    }
    const sumShown = weights.reduce((a, b) => a + b, 0);

    const body = [
      el("p", {}, i18n.parts("wt.s5.text", {softmax: glossary(i18n.t("word.softmax"), "softmax")})),
      el("div", {class: "formula", id: "wt-softmax"}, [
        el("div", {}, i18n.parts("wt.s5.exp", {token: tok(k), s: term(scaled[k]), e: fmt(exps[k])})),
        el("div", {}, i18n.plural("wt.s5.total", visibleKeys.length, {total: fmt(total)})),
        el("div", {class: "total"}, i18n.parts("wt.s5.share", {token: tok(k), e: fmt(exps[k]), total: fmt(total),
                                                              share: pct(weights[k])})),
      ]),
      sinkNote(q, weights, top),
      softmaxTable(q, wt, weights, sumShown),
      el("p", {id: "wt-check", class: worst > WEIGHT_TOLERANCE ? "check-bad" : "check-ok",
               title: i18n.t("wt.s5.difference", {x: worst.toExponential(2)})},
         worst > WEIGHT_TOLERANCE ? i18n.t("wt.s5.check_bad") : i18n.t("wt.s5.check_ok")),
    ];
    return step(5, i18n.t("wt.s5.title"), body);
  }

  function sinkNote(q, weights, top) {
    // Decoders are known to park spare attention on their first token, encoders on markers.
    const parking = data.special[top] || (model.causal && top === 0);
    if (model.causal && q === 0) {
      return el("p", {class: "note"}, i18n.parts("wt.sink.first", {token: tok(q)}));
    }
    if (weights[top] < 0.4 || !(parking || top === q)) return null;
    if (top === q) return el("p", {class: "note"}, i18n.parts("wt.sink.self", {token: tok(q), share: pct(weights[top])}));
    return el("p", {class: "note"}, i18n.parts("wt.sink.parked", {token: tok(q), share: pct(weights[top]), top: tok(top)}));
  }

  function softmaxTable(q, wt, weights, sumShown) {
    const before = comparedWeights(q);
    const compareLabel = options.compareLabel || i18n.t("wt.table.before");
    const head = el("tr", {}, [el("th", {}, textLines(i18n.t("wt.table.word"))), el("th", {}, textLines(i18n.t("wt.table.score"))),
                               el("th", {}, textLines(i18n.t("wt.table.scaled", {d: model.head_dim}))),
                               before ? el("th", {class: "before", text: compareLabel}) : null,
                               el("th", {}, textLines(i18n.t("wt.table.share")))]);
    const rows = tokens.map((_, j) => {
      const isHidden = hidden(state.layer, state.head, q, j);
      const changed = before && Math.abs(before[j] - weights[j]) >= 0.005;
      const classes = [isHidden ? "hidden-row" : "pick", j === state.key ? "current" : "", j === q ? "self" : "",
                       changed ? "changed" : ""];
      const why = isHidden ? hiddenWhyText(q, j) : "";
      const share = isHidden
        ? el("span", {class: "hidden-tag", title: i18n.t("wt.table.hidden_title", {why: why})},
             [el("span", {class: "swatch hidden-swatch", "aria-hidden": "true"}), " " + why])
        : el("span", {class: "bar-box"}, [
          el("span", {class: "track"}, el("span", {class: "fill", style: "width:" + (weights[j] * 100) + "%"})),
          el("span", {class: "pct", text: pct(weights[j])})]);
      const beforeCell = before ? el("td", {class: "n before", "data-before": before[j], text: pct(before[j])}) : null;
      return el("tr", {class: classes.join(" ").trim(), "data-key": j, "data-weight": weights[j],
                       tabindex: isHidden ? null : "0", title: isHidden ? null : i18n.t("wt.table.row_title"),
                       onclick: isHidden ? null : () => select({key: j}),
                       onkeydown: isHidden ? null : (event) => {
                         if (event.key === "Enter" || event.key === " ") { event.preventDefault(); select({key: j}); }
                       }},
        [el("td", {"data-self": j === q ? i18n.t("wt.table.itself") : null}, tok(j)),
         el("td", {class: "n", text: fmt(isHidden ? null : wt.scores[q][j])}),
         el("td", {class: "n", text: fmt(isHidden ? null : wt.scaled[q][j])}), beforeCell,
         el("td", {class: "bar-cell"}, share)]);
    });
    const foot = el("tr", {}, [el("td", {text: i18n.t("wt.table.total")}), el("td"), el("td"), before ? el("td") : null,
                               el("td", {class: "pct", id: "wt-sum", "data-value": sumShown, text: pct(sumShown)})]);
    return el("div", {class: "table-wrap"}, el("table", {class: "nums", id: "wt-table"}, [
      el("caption", {class: "hint", text: i18n.t("wt.table.caption", {token: tokenText(q)}) +
                                          (before ? i18n.t("wt.table.caption_before", {label: compareLabel}) : "") +
                                          i18n.t("wt.table.caption_click")}),
      el("thead", {}, head), el("tbody", {}, rows), el("tfoot", {}, foot)]));
  }

  function stepBlend(q, wt, weights) {
    // As many numbers as fit across the screen: 4 on a wide one, 3 on a phone.
    const dims = Math.min(window.innerWidth < 520 ? 3 : 4, wt.value[0].length);
    const computed = [];
    for (let d = 0; d < wt.value[0].length; d++) {
      computed.push(weights.reduce((s, w, j) => s + w * wt.value[j][d], 0));
    }
    const expected = wt.output[q];
    let worst = 0;
    computed.forEach((c, d) => { worst = Math.max(worst, Math.abs(c - expected[d]) / (1 + Math.abs(expected[d]))); });
    // A head switched off by a what-if still computes its blend; the model then throws it away.
    const off = isOff(state.layer, state.head) && expected.every((x) => x === 0);
    if (worst > WEIGHT_TOLERANCE && !off) reportProblem(i18n.t("problem.blend", {x: worst.toFixed(6)}));

    const order = weights.map((w, j) => j).sort((a, b) => weights[b] - weights[a]);
    const listed = order.filter((j, rank) => rank < 6 && weights[j] >= 0.01);
    const left = order.filter((j) => !listed.includes(j) && weights[j] > 0).length;
    const dimHeads = Array.from({length: dims}, (_, d) => el("th", {}, textLines(i18n.t("wt.s6.value_number", {d: d}))));
    const rows = listed.map((j) => el("tr", {}, [
      el("td", {}, tok(j)), el("td", {class: "n", text: pct(weights[j])}),
      ...wt.value[j].slice(0, dims).map((v) => el("td", {class: "n", text: fmt(v)}))]));
    const outRow = el("tr", {id: "wt-output"}, [
      el("td", {text: i18n.t("wt.s6.output")}), el("td", {class: "n", text: i18n.t("wt.s6.sum")}),
      ...computed.slice(0, dims).map((c, d) => el("td", {class: "n", "data-dim": d, "data-value": c, text: fmt(c)}))]);
    const sumTerms = listed.slice(0, 3).map((j) => pct(weights[j]) + " × " + term(wt.value[j][0]));
    const others = order.filter((j) => weights[j] > 0).length - sumTerms.length;
    return step(6, i18n.t("wt.s6.title"), [
      el("p", {}, i18n.parts("wt.s6.text", {token: tok(q), values: el("span", {class: "v-text", text: i18n.t("word.values")}),
                                           dims: dims, head_dim: model.head_dim})),
      el("div", {class: "table-wrap"}, el("table", {class: "nums", id: "wt-blend"}, [
        el("caption", {class: "hint", text: i18n.t("wt.s6.caption")}),
        el("thead", {}, el("tr", {}, [el("th", {text: i18n.t("wt.s6.word")}), el("th", {text: i18n.t("wt.s6.share")}),
                                      ...dimHeads])),
        el("tbody", {}, rows), el("tfoot", {}, outRow)])),
      left ? el("p", {class: "hint"}, i18n.plural("wt.s6.left_out", left)) : null,
      el("div", {class: "formula"}, [
        el("div", {}, i18n.t("wt.s6.first_number", {terms: sumTerms.join(" + "),
                                                    more: others > 0 ? i18n.t("wt.s6.more", {n: others}) : ""})),
        el("div", {class: "total"}, "= " + fmt(computed[0]))]),
      off ? el("p", {id: "wt-output-check", class: "check-ok note"}, i18n.t("wt.s6.off"))
        : el("p", {id: "wt-output-check", class: worst > WEIGHT_TOLERANCE ? "check-bad" : "check-ok"},
             worst > WEIGHT_TOLERANCE ? i18n.t("wt.s6.check_bad")
               : i18n.t("wt.s6.check_ok", {values: expected.slice(0, dims).map((x) => fmt(x)).join(", ")})),
    ]);
  }

  function stepNext() {
    let ending = model.kind === "decoder" ? i18n.t("wt.s7.end_decoder") : i18n.t("wt.s7.end_encoder");
    if (model.name === "minilm") ending += i18n.t("wt.s7.end_minilm");
    return step(7, i18n.t("wt.s7.title"), [
      el("p", {id: "wt-projection"}, i18n.parts("wt.s7.text", {
        heads: model.num_heads, head_dim: model.head_dim, total: model.num_heads * model.head_dim,
        projection: el("strong", {text: i18n.t("word.projection")}), embed: model.embed_dim,
        residual: glossary(i18n.t("word.residual"), "residual"), layers: model.num_layers, ending: ending})),
    ]);
  }

  /* ---------- 2. head view ---------- */

  function renderHeadView() {
    state.allHeads = document.getElementById("hv-all").checked;
    const frame = document.getElementById("hv-graph");
    frame.textContent = "";
    const height = n * HV_ROW;
    const lines = svg("svg", {viewBox: "0 0 100 " + height, preserveAspectRatio: "none", height: height,
                              "aria-hidden": "true", "data-min-weight": state.allHeads ? HV_ALL_MIN_WEIGHT : HV_MIN_WEIGHT});
    const heads = state.allHeads ? Array.from({length: model.num_heads}, (_, h) => h) : [state.head];
    for (const head of heads) {
      const weights = data.attention[state.layer][head];
      for (let q = 0; q < n; q++) {
        for (let k = 0; k < n; k++) {
          const w = weights[q][k];
          if (w < (state.allHeads ? HV_ALL_MIN_WEIGHT : HV_MIN_WEIGHT)) continue;
          lines.append(svg("line", {
            x1: 0, y1: (q + 0.5) * HV_ROW, x2: 100, y2: (k + 0.5) * HV_ROW,
            "stroke-width": state.allHeads ? 1 + 3 * w : 0.8 + 7 * w,
            "stroke-opacity": 0.2 + 0.8 * w,
            "vector-effect": "non-scaling-stroke",
            style: state.allHeads ? "stroke:" + HEAD_COLOURS[head % HEAD_COLOURS.length] : null,
            "data-q": q, "data-k": k, "data-head": head, "data-weight": w,
          }));
        }
      }
    }
    const column = (side) => el("div", {class: "hv-col " + side}, tokens.map((_, i) => {
      const chip = el("button", {type: "button", class: "chip" + (data.special[i] ? " special" : ""),
                                 "data-side": side, "data-index": i, title: tokens[i],
                                 "aria-label": side === "left" ? i18n.t("hv.lines_from", {token: tokens[i]})
                                   : i18n.t("hv.lines_into", {token: tokens[i]})}, tokenText(i));
      const pctLabel = el("span", {class: "pct", "aria-live": "off"});
      return el("div", {class: "hv-row", "data-index": i}, side === "left" ? [pctLabel, chip] : [chip, pctLabel]);
    }));
    const grid = el("div", {class: "hv", id: "hv"}, [
      el("div", {class: "hv-title left", text: i18n.t("hv.looking")}), el("div"),
      el("div", {class: "hv-title", text: i18n.t("hv.looked_at")}),
      column("left"), el("div", {}, lines), column("right")]);
    frame.append(grid);
    for (const chip of grid.querySelectorAll("button.chip")) {
      const target = {side: chip.dataset.side, index: Number(chip.dataset.index)};
      chip.addEventListener("mouseenter", () => highlight(target));
      chip.addEventListener("focus", () => highlight(target));
      chip.addEventListener("mouseleave", () => highlight(state.pinned));
      chip.addEventListener("blur", () => highlight(state.pinned));
      chip.addEventListener("click", () => {
        const same = state.pinned && state.pinned.side === target.side && state.pinned.index === target.index;
        state.pinned = same ? null : target;
        highlight(state.pinned || target);
      });
    }
    renderHeadViewLegend();
    highlight(state.pinned);
  }

  function renderHeadViewLegend() {
    const legend = document.getElementById("hv-legend");
    legend.textContent = "";
    const hint = document.getElementById("hv-hint");
    if (!state.allHeads) {
      hint.textContent = i18n.t("hv.hint", {layer: state.layer, head: state.head}) +
        (model.causal ? i18n.t("hv.hint_causal") : "");
      return;
    }
    hint.textContent = i18n.t("hv.hint_all", {n: model.num_heads, layer: state.layer});
    for (let h = 0; h < model.num_heads; h++) {
      legend.append(el("button", {type: "button", class: "head-key", "data-head": h,
                                  onclick: () => { document.getElementById("hv-all").checked = false; select({head: h}); }},
        [el("i", {style: "background:" + HEAD_COLOURS[h % HEAD_COLOURS.length]}), i18n.t("common.head_n", {n: h})]));
    }
  }

  /** Show only the lines of ``target`` ({side, index}) and their percentages; null shows all. */
  function highlight(target) {
    const grid = document.getElementById("hv");
    if (!grid) return;
    const lines = grid.querySelector("svg");
    lines.classList.toggle("focus", Boolean(target));
    for (const row of grid.querySelectorAll(".hv-row")) {
      row.classList.remove("active", "dim", "future");
      row.querySelector(".pct").textContent = "";
    }
    if (!target) return;
    const own = target.side === "left" ? "q" : "k";
    for (const line of lines.querySelectorAll("line")) {
      line.classList.toggle("on", Number(line.dataset[own]) === target.index);
    }
    const activeCol = grid.querySelector(".hv-col." + target.side);
    const otherCol = grid.querySelector(".hv-col." + (target.side === "left" ? "right" : "left"));
    activeCol.children[target.index].classList.add("active");
    for (const [i, row] of Array.from(activeCol.children).entries()) {
      if (i !== target.index) row.classList.add("dim");
    }
    if (state.allHeads) return;
    for (const [i, row] of Array.from(otherCol.children).entries()) {
      const [q, k] = target.side === "left" ? [target.index, i] : [i, target.index];
      const label = row.querySelector(".pct");
      if (hidden(state.layer, state.head, q, k)) {
        row.classList.add("future");
        append(label, [el("span", {class: "swatch hidden-swatch", "aria-hidden": "true"}),
                       hiddenWhy(q, k) === "later" ? i18n.t("hv.later") : i18n.t("hv.hidden")]);
      } else {
        label.textContent = pct(data.attention[state.layer][state.head][q][k]);
      }
    }
  }

  /* ---------- 3. model view ---------- */

  function hatchPixel(x, y) {
    return (x + y) % 4 === 0;
  }

  /** Paint one head's weights into a canvas, ``cell`` pixels per square; hidden squares hatched.
   * ``source`` (default: the explanation shown) and its hidden words ``hide`` may be another
   * explanation, such as the original of a what-if. */
  function paintThumb(canvas, layer, head, source, hide) {
    source = source || data;
    hide = source === data ? options.hide : (hide || []);
    const count = source.tokens.length;
    const cell = Math.max(1, Math.ceil(48 / count));
    const size = count * cell;
    canvas.width = size;
    canvas.height = size;
    const ctx = canvas.getContext("2d");
    const image = ctx.createImageData(size, size);
    const weights = source.attention[layer][head];
    const scaled = source.walkthrough[layer][head].scaled;
    for (let y = 0; y < size; y++) {
      const q = Math.floor(y / cell);
      for (let x = 0; x < size; x++) {
        const k = Math.floor(x / cell);
        let colour;
        if (scaled[q][k] === null || hide.includes(k)) colour = hatchPixel(x, y) ? [170, 170, 170] : [228, 228, 228];
        else colour = heat(weights[q][k]);
        const o = (y * size + x) * 4;
        image.data[o] = colour[0];
        image.data[o + 1] = colour[1];
        image.data[o + 2] = colour[2];
        image.data[o + 3] = 255;
      }
    }
    ctx.putImageData(image, 0, 0);
  }

  function renderModelView() {
    const groups = Math.max(...data.kv_head_of) + 1;
    const grouped = groups < model.num_heads;
    const intro = cleared("mv-intro");
    append(intro, [...i18n.parts("mv.intro", {layers: model.num_layers, heads: model.num_heads,
                                              click: el("strong", {text: i18n.t("mv.click")})}),
                   grouped ? i18n.t("mv.grouped") : i18n.t("mv.not_grouped")]);
    fillLegend(cleared("mv-legend"));
    const grid = cleared("mv-grid");
    grid.style.gridTemplateColumns = "auto repeat(" + model.num_heads + ", var(--thumb))";
    const groupStart = (h) => grouped && h > 0 && data.kv_head_of[h] !== data.kv_head_of[h - 1];
    if (grouped) {
      grid.append(el("div"));
      for (let g = 0; g < groups; g++) {
        const members = data.kv_head_of.map((x, h) => (x === g ? h : -1)).filter((h) => h >= 0);
        grid.append(el("div", {class: "group-head" + (groupStart(members[0]) ? " group-start" : ""),
                               style: "grid-column: span " + members.length, "data-group": g,
                               text: i18n.t("mv.group", {range: headRange(members)})}));
      }
    }
    grid.append(el("div", {class: "row-head", text: i18n.t("mv.head_axis")}));
    for (let h = 0; h < model.num_heads; h++) {
      grid.append(el("div", {class: "col-head" + (groupStart(h) ? " group-start" : ""), text: String(h)}));
    }
    for (let layer = 0; layer < model.num_layers; layer++) {
      grid.append(el("div", {class: "row-head", text: i18n.t("common.layer_n", {n: layer})}));
      for (let head = 0; head < model.num_heads; head++) {
        const canvas = el("canvas");
        paintThumb(canvas, layer, head);
        const off = isOff(layer, head);
        grid.append(el("button", {type: "button", class: "thumb" + (groupStart(head) ? " group-start" : "") +
                                                         (off ? " off" : ""),
                                  "data-layer": layer, "data-head": head, "data-off": off ? "true" : null,
                                  "data-off-label": off ? i18n.t("mv.off") : null,
                                  "aria-label": off ? i18n.t("mv.thumb_label_off", {layer: layer, head: head})
                                    : i18n.t("mv.thumb_label", {layer: layer, head: head}),
                                  title: i18n.t("common.layer_head", {layer: layer, head: head}),
                                  onclick: () => { select({layer: layer, head: head}); openZoom(); }}, canvas));
      }
    }
    sizeThumbs();
  }

  /** Thumbnails as large as fit across the section (between 26 and 72 pixels). */
  function sizeThumbs() {
    const frame = document.querySelector(".mv-frame");
    const available = frame.clientWidth - 70 - model.num_heads * 6 - 30;
    const size = Math.max(26, Math.min(72, Math.floor(available / model.num_heads)));
    document.getElementById("mv-grid").style.setProperty("--thumb", size + "px");
  }

  function markCurrentThumb() {
    for (const thumb of document.querySelectorAll(".thumb")) {
      const current = Number(thumb.dataset.layer) === state.layer && Number(thumb.dataset.head) === state.head;
      thumb.classList.toggle("current", current);
      thumb.setAttribute("aria-pressed", current ? "true" : "false");
    }
  }

  function fillLegend(box) {
    const ramp = el("canvas", {width: 120, height: 12, "aria-hidden": "true"});
    const ctx = ramp.getContext("2d");
    for (let x = 0; x < 120; x++) {
      ctx.fillStyle = rgb(heat(x / 119));
      ctx.fillRect(x, 0, 1, 12);
    }
    append(box, [el("span", {class: "ramp"}, [i18n.t("legend.share"), ramp, "100%"])]);
    if (model.causal) {
      append(box, [el("span", {}, [el("span", {class: "swatch hidden-swatch", "aria-hidden": "true"}),
                                   i18n.t("legend.hidden")])]);
    }
  }

  /* ---------- the zoomed heatmap ---------- */

  const zoom = {cell: 0, labels: 0, cursor: null};

  function openZoom() {
    const dialog = document.getElementById("zoom");
    document.getElementById("zoom-title").textContent = i18n.t("common.Layer_head", {layer: state.layer, head: state.head});
    zoom.cursor = null;
    if (!dialog.open) dialog.showModal();
    drawZoom();
    showCell(null);
  }

  function drawZoom() {
    const canvas = document.getElementById("zoom-canvas");
    const ctx = canvas.getContext("2d");
    ctx.font = "12px system-ui, sans-serif";
    const widest = Math.max(...tokens.map((_, i) => ctx.measureText(tokenText(i)).width));
    // Room for the token names, and at least for the axis captions drawn in the corner.
    zoom.labels = Math.ceil(Math.max(78, Math.min(110, widest) + 10));
    const room = Math.min(900, window.innerWidth - 60) - zoom.labels;
    zoom.cell = Math.max(10, Math.min(34, Math.floor(room / n)));
    const size = zoom.labels + n * zoom.cell;
    const ratio = window.devicePixelRatio || 1;
    canvas.width = size * ratio;
    canvas.height = size * ratio;
    canvas.style.width = size + "px";
    canvas.style.height = size + "px";
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, size, size);
    const hatch = hatchPattern(ctx);
    const weights = data.attention[state.layer][state.head];
    const c = zoom.cell;
    const fontSize = Math.min(12, c - 1);
    for (let q = 0; q < n; q++) {
      for (let k = 0; k < n; k++) {
        const x = zoom.labels + k * c;
        const y = zoom.labels + q * c;
        const isHidden = hidden(state.layer, state.head, q, k);
        const colour = heat(weights[q][k]);
        ctx.fillStyle = isHidden ? hatch : rgb(colour);
        ctx.fillRect(x, y, c, c);
        if (!isHidden && c >= 26 && weights[q][k] >= 0.01) {
          ctx.fillStyle = colour[0] < 120 ? "#fff" : "#1c1e21";
          ctx.font = "10px system-ui, sans-serif";
          ctx.textAlign = "center";
          ctx.textBaseline = "middle";
          ctx.fillText(Math.round(weights[q][k] * 100) + "%", x + c / 2, y + c / 2);
        }
      }
    }
    ctx.fillStyle = "#1c1e21";
    ctx.font = fontSize + "px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    for (let i = 0; i < n; i++) {
      const label = clip(ctx, tokenText(i), zoom.labels - 8);
      ctx.fillStyle = data.special[i] ? "#55595f" : "#1c1e21";
      ctx.textAlign = "right";
      ctx.fillText(label, zoom.labels - 5, zoom.labels + (i + 0.5) * c);
      ctx.save();
      ctx.translate(zoom.labels + (i + 0.5) * c, zoom.labels - 5);
      ctx.rotate(-Math.PI / 2);
      ctx.textAlign = "left";
      ctx.fillText(label, 0, 0);
      ctx.restore();
    }
    ctx.fillStyle = "#55595f";
    ctx.font = "italic 11px system-ui, sans-serif";
    ctx.textAlign = "right";
    ctx.textBaseline = "alphabetic";
    ctx.fillText(i18n.t("zoom.looks_at"), zoom.labels - 22, zoom.labels - 20);
    ctx.fillText(i18n.t("zoom.looking"), zoom.labels - 22, zoom.labels - 6);
    const legend = document.getElementById("zoom-legend");
    legend.textContent = "";
    fillLegend(legend);
  }

  function clip(ctx, text, width) {
    if (ctx.measureText(text).width <= width) return text;
    let cut = text;
    while (cut.length > 1 && ctx.measureText(cut + "…").width > width) cut = cut.slice(0, -1);
    return cut + "…";
  }

  function hatchPattern(ctx) {
    const tile = document.createElement("canvas");
    tile.width = 8;
    tile.height = 8;
    const t = tile.getContext("2d");
    t.fillStyle = "#e6e6e6";
    t.fillRect(0, 0, 8, 8);
    t.strokeStyle = "#a8a8a8";
    t.lineWidth = 1.5;
    t.beginPath();
    t.moveTo(0, 8);
    t.lineTo(8, 0);
    t.moveTo(-2, 2);
    t.lineTo(2, -2);
    t.moveTo(6, 10);
    t.lineTo(10, 6);
    t.stroke();
    return ctx.createPattern(tile, "repeat");
  }

  /** Outline square (q, k) of the zoomed heatmap and say its share in words; null clears. */
  function showCell(cell) {
    const outline = document.getElementById("zoom-outline");
    const readout = document.getElementById("zoom-readout");
    zoom.cursor = cell;
    if (!cell) {
      outline.hidden = true;
      readout.textContent = i18n.t("zoom.point");
      return;
    }
    const [q, k] = cell;
    outline.hidden = false;
    outline.style.left = zoom.labels + k * zoom.cell - 1 + "px";
    outline.style.top = zoom.labels + q * zoom.cell - 1 + "px";
    outline.style.width = zoom.cell + 2 + "px";
    outline.style.height = zoom.cell + 2 + "px";
    readout.textContent = "";
    if (hidden(state.layer, state.head, q, k)) {
      const pair = {looking: tok(q), looked_at: tok(k)};
      append(readout, hiddenWhy(q, k) === "hid" ? i18n.parts("zoom.cell_hid", pair) : i18n.parts("zoom.cell_later", pair));
    } else {
      append(readout, i18n.parts("zoom.cell", {looking: tok(q), looked_at: tok(k),
                                               share: el("strong", {text: pct(data.attention[state.layer][state.head][q][k])})}));
    }
  }

  function cellAt(event) {
    const canvas = document.getElementById("zoom-canvas");
    const box = canvas.getBoundingClientRect();
    const k = Math.floor((event.clientX - box.left - zoom.labels) / zoom.cell);
    const q = Math.floor((event.clientY - box.top - zoom.labels) / zoom.cell);
    return q >= 0 && q < n && k >= 0 && k < n ? [q, k] : null;
  }

  function wireZoom() {
    const dialog = document.getElementById("zoom");
    const canvas = document.getElementById("zoom-canvas");
    canvas.addEventListener("mousemove", (event) => showCell(cellAt(event)));
    canvas.addEventListener("click", (event) => showCell(cellAt(event)));
    canvas.addEventListener("keydown", (event) => {
      const moves = {ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1]};
      if (!(event.key in moves)) return;
      event.preventDefault();
      const [q, k] = zoom.cursor || [state.token, state.token];
      const [dq, dk] = zoom.cursor ? moves[event.key] : [0, 0];
      showCell([Math.min(n - 1, Math.max(0, q + dq)), Math.min(n - 1, Math.max(0, k + dk))]);
    });
    document.getElementById("zoom-close").addEventListener("click", () => dialog.close());
    // A click on the dimmed backdrop lands on the dialog element itself: close, as users expect.
    dialog.addEventListener("click", (event) => { if (event.target === dialog) dialog.close(); });
    document.getElementById("zoom-to-walkthrough").addEventListener("click", () => {
      dialog.close();
      document.getElementById("walkthrough").scrollIntoView();
    });
    document.getElementById("zoom-to-headview").addEventListener("click", () => {
      dialog.close();
      document.getElementById("head-view").scrollIntoView();
    });
  }

  /* ---------- 4. cost ---------- */

  function renderCost() {
    const cost = data.cost;
    const heads = model.num_layers * model.num_heads;
    const box = cleared("cost-text");
    const row = (label, tokenCount, total) => el("tr", {}, [
      el("td", {text: label}), el("td", {class: "n", text: count(tokenCount)}),
      el("td", {class: "n", "data-value": total}, [count(total),
        total >= 1000 ? el("div", {class: "hint", text: inWords(total)}) : null])]);
    const kind = (tokenCount) => (tokenCount >= 10000 ? i18n.t("cost.chapter")
      : tokenCount >= 1000 ? i18n.t("cost.pages") : i18n.t("cost.paragraph"));
    const examples = cost.examples.filter((e) => e.tokens >= 1000);
    const atLength = examples.map((e, i) => {
      const vars = {n: count(e.tokens), scores: inWords(e.scores_total)};
      return i ? i18n.t("cost.example_next", vars) : i18n.t("cost.example_first", vars);
    });
    append(box, [
      el("p", {class: "big", id: "cost-sentence"}, i18n.parts("cost.sentence", {
        n: cost.tokens, per_head: el("strong", {text: count(cost.scores_per_head)}), heads: model.num_heads,
        layers: model.num_layers, all_heads: heads, total: el("strong", {text: count(cost.scores_total)})})),
      el("p", {}, i18n.t("cost.grows") + (atLength.length ? atLength.join(i18n.t("cost.example_sep")) + i18n.t("cost.example_end") : "")),
      el("div", {class: "table-wrap"}, el("table", {class: "nums cost", id: "cost-table"}, [
        el("thead", {}, el("tr", {}, [el("th", {text: i18n.t("cost.length")}), el("th", {text: i18n.t("cost.tokens")}),
                                      el("th", {text: i18n.t("cost.scores")})])),
        el("tbody", {}, [row(i18n.t("cost.yours"), cost.tokens, cost.scores_total),
                         ...cost.examples.map((e) => row(kind(e.tokens), e.tokens, e.scores_total))])])),
      el("p", {}, model.causal ? i18n.t("cost.tiled_causal") : i18n.t("cost.tiled")),
    ]);
  }

  /* ---------- start ---------- */

  /** Listeners that outlive one explanation: attached once. */
  function wire() {
    for (const menu of document.querySelectorAll("select[data-select]")) {
      menu.addEventListener("change", () => select({[menu.dataset.select]: Number(menu.value)}));
    }
    document.getElementById("hv-all").addEventListener("change", () => { state.pinned = null; renderHeadView(); });
    wireZoom();
    document.addEventListener("attnlab:lang", redraw);
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => { if (data) sizeThumbs(); }, 100);
    });
  }

  /** Every text again in the page's new language; the choices (layer, head, word, key) stay. */
  function redraw() {
    if (!data) return;
    renderHeader();
    fillSelectors();
    renderModelView();
    renderCost();
    render();
    const zoomDialog = document.getElementById("zoom");
    if (zoomDialog.open) {
      document.getElementById("zoom-title").textContent = i18n.t("common.Layer_head", {layer: state.layer, head: state.head});
      drawZoom();
      showCell(zoom.cursor);
    }
  }

  /** Draw (or draw again) every section for the explanation ``next`` (see the top of this file). */
  function show(next, opts) {
    opts = opts || {};
    const previous = data;
    const sameModel = Boolean(previous) && previous.model.name === next.model.name &&
      previous.model.num_layers === next.model.num_layers && previous.model.num_heads === next.model.num_heads;
    const sameTokens = sameModel && previous.tokens.length === next.tokens.length &&
      previous.tokens.every((t, i) => t === next.tokens[i]);
    const keep = opts.keep !== false;
    data = next;
    model = data.model;
    tokens = data.tokens;
    n = tokens.length;
    options = {hide: opts.hide || [], headsOff: opts.headsOff || [], compare: opts.compare || null,
               compareLabel: opts.compareLabel || null};
    if (!wired) {
      wire();
      wired = true;
    }
    const zoomDialog = document.getElementById("zoom");
    if (zoomDialog.open) zoomDialog.close();
    document.getElementById("page-error").hidden = true;
    if (!(keep && sameModel && (sameTokens || state.chosen))) {
      state.layer = data.selected.layer;
      state.head = data.selected.head;
      state.chosen = false;
    }
    if (!(keep && sameTokens && state.token < n)) state.token = defaultToken();
    state.key = null;
    state.pinned = null;
    renderHeader();
    fillSelectors();
    renderModelView();
    renderCost();
    render();
  }

  window.attnlabExplain = {
    show: show,
    /** Choose a layer, head or word ({layer, head, token}) as the reader would. */
    select: (change) => select(change),
    /** {layer, head, token} shown now. */
    current: () => ({layer: state.layer, head: state.head, token: state.token}),
    /** Paint head (layer, head) of explanation ``source`` into ``canvas`` as the all-heads view does. */
    paintHeatmap: (canvas, source, layer, head, hide) => paintThumb(canvas, layer, head, source, hide || []),
    /** A token's text as the page writes it (a space as ␣, a line break as ⏎). */
    visibleText: visibleText,
    /** The page's own small helpers, for the live page: el(tag, attrs, children) builds an
     * element, fmt/pct/count write numbers, heat(w) is the heatmaps' colour of a share. */
    helpers: {el: el, fmt: fmt, pct: pct, count: count, heat: heat, sci: sci},
  };

  const embedded = document.getElementById("attnlab-data");
  if (embedded) {
    try {
      show(JSON.parse(embedded.textContent));
      document.body.dataset.ready = "true";
    } catch (error) {
      reportProblem(i18n.t("problem.draw", {error: error.message}));
      throw error;
    }
  }
})();
