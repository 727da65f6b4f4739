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
 *   compareLabel  the name of that column's run ("before")
 * A change of layer, head or word fires the event "attnlab:select" on document, with
 * detail {layer, head, token}. */
(function () {
  "use strict";

  let data = null;
  let model = null;
  let tokens = [];
  let n = 0;
  let options = {hide: [], headsOff: [], compare: null, compareLabel: "before"};
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

  function inWords(x) {
    const units = [[1e12, "trillion"], [1e9, "billion"], [1e6, "million"], [1e3, "thousand"]];
    for (const [size, name] of units) {
      if (x >= size) return "about " + (x / size).toPrecision(x / size >= 100 ? 3 : 2).replace(/\.0$/, "") + " " + name;
    }
    return String(x);
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

  /** Why key ``k`` is hidden from query ``q``, in a few words ("comes later", "you hid it"). */
  function hiddenWhy(q, k) {
    return options.hide.includes(k) && !(model.causal && k > q) ? "you hid it" : "comes later";
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

  function reportProblem(message) {
    console.error("attnlab explain: " + message);
    const box = document.getElementById("page-error");
    box.hidden = false;
    box.textContent = "Something does not add up on this page: " + message;
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
    if (title) title.textContent = "How " + model.title + " reads your sentence";
    const sentence = cleared("sentence");
    if (sentence) sentence.textContent = data.text;
    const attentionCount = model.num_layers * model.num_heads;
    append(cleared("model-line"), [
      el("strong", {text: model.title}), ": " + model.description + " It is built from ",
      String(model.num_layers), " ", glossary("layers", "layer"), " stacked one after the other, and each layer has ",
      String(model.num_heads), " ", glossary("heads", "head"), " that each do attention in their own way: ",
      "attention happens " + model.num_layers + " × " + model.num_heads + " = " + attentionCount + " times for your sentence.",
    ]);
    const specials = data.special.filter(Boolean).length;
    append(cleared("tokens-line"), [
      "First the model cuts your sentence into " + n + " ", glossary("tokens", "token"),
      ": whole words, pieces of words and punctuation. ",
      specials ? "The grey, dashed ones are markers the model adds itself; they are not part of your text. " : "",
      "The small number on each is its position, counted from 0.",
    ]);
    const strip = cleared("token-strip");
    if (strip) {
      tokens.forEach((_, i) => strip.append(el("span", {class: "chip" + (data.special[i] ? " special" : "") +
                                                        (options.hide.includes(i) ? " gone" : ""), "data-token": i},
        [el("span", {class: "idx", text: String(i)}), tokenText(i)])));
    }
    const causal = document.getElementById("causal-note");
    if (causal) causal.hidden = !model.causal;
  }

  /* ---------- shared controls ---------- */

  function fillSelectors() {
    for (const menu of document.querySelectorAll("select[data-select]")) {
      const isLayer = menu.dataset.select === "layer";
      const size = isLayer ? model.num_layers : model.num_heads;
      menu.textContent = "";
      for (let i = 0; i < size; i++) {
        let label = (isLayer ? "layer " : "head ") + i;
        if (isLayer && i === 0) label += " (first)";
        if (isLayer && i === size - 1) label += " (last)";
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
                         title: "number " + d + ": " + x, text: fmt(x)});
    });
    const more = total > values.length ? el("span", {class: "more", text: "…and " + (total - values.length) + " more"}) : null;
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
      append(box, [el("strong", {text: "Layer " + state.layer + ", head " + state.head + ": "}), reasonText()]);
    } else {
      append(box, ["You picked layer " + state.layer + ", head " + state.head + ". ",
                   el("button", {type: "button", text: "back to the suggested head (layer " + data.selected.layer +
                                 ", head " + data.selected.head + ")",
                                 onclick: () => select({layer: data.selected.layer, head: data.selected.head})})]);
    }
  }

  /** The reason the data gives for its head, as a sentence, without repeating the head's name. */
  function reasonText() {
    const reason = data.selected.reason.trim().replace(/^layer \d+,? head \d+\s*[:.,-]\s*/i, "");
    if (/^you chose/i.test(reason)) return "the head you chose.";
    const sentence = reason.charAt(0).toUpperCase() + reason.slice(1);
    return "suggested for you. " + sentence + (/[.!?]$/.test(sentence) ? "" : ".");
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
      ? "At the first layer these numbers come straight from the model's dictionary entry for this token" +
        (model.rope ? "." : ", plus numbers that mark its position in the sentence.")
      : "They have already been reshaped by the " + state.layer + " layer" + (state.layer > 1 ? "s" : "") +
        " before this one, so they hold information gathered from other words too.";
    return step(1, "The word as numbers", [
      el("p", {}, ["Inside the model, ", tok(q), " is not letters but a ", glossary("vector", "vector"),
                   ": a list of " + model.embed_dim + " numbers. Here are the first " + wt.input[q].length +
                   " as they enter layer " + state.layer + ". " + earlier]),
      vectorRow("input", "", wt.input[q], model.embed_dim, "input"),
      el("p", {class: "hint"}, "Blue cells are positive numbers, orange ones negative; the stronger the colour, " +
                               "the bigger the number. On their own the numbers mean nothing to a person: only " +
                               "the model knows how to read them."),
    ]);
  }

  function stepProjections(q, wt, head) {
    const body = [
      el("p", {}, ["Head " + head + " multiplies those " + model.embed_dim +
                   " numbers by three different tables of numbers it learned during training. That gives three ",
                   "shorter lists of " + model.head_dim + " numbers each, three views of the same word:"]),
      vectorRow("query", "q-text", wt.query[q], model.head_dim, "query"),
      el("p", {class: "hint"}, [el("span", {class: "q-text", text: "Query"}), ": the question ", tok(q), " asks."]),
      vectorRow("key", "k-text", wt.key[q], model.head_dim, "key"),
      el("p", {class: "hint"}, [el("span", {class: "k-text", text: "Key"}), ": the label ", tok(q), " wears."]),
      vectorRow("value", "v-text", wt.value[q], model.head_dim, "value"),
      el("p", {class: "hint"}, [el("span", {class: "v-text", text: "Value"}), ": the information ", tok(q), " hands over."]),
      el("p", {}, "Every other word gets its own query, key and value from the same three tables."),
    ];
    const shared = sharedWith(head);
    if (shared.length > 1) {
      const others = shared.filter((h) => h !== head);
      body.push(el("p", {class: "note", id: "wt-shared-note"}, [
        el("strong", {text: "Shared labels and information. "}),
        "To save memory, this model lets heads " + headRange(shared) + " use the same key and value tables (",
        glossary("shared keys and values", "shared"), "): only their queries differ. So the keys and values of head " +
        head + " are exactly those of head" + (others.length > 1 ? "s " : " ") + others.join(" and ") + "."]));
    }
    if (model.rope) {
      body.push(el("p", {}, "This model also turns the query and the key a little, by an angle that depends on the " +
                   "word's position in the sentence: that is how it knows the word order. The numbers shown are " +
                   "after this turn."));
    }
    return step(2, "Three views of the same word: query, key, value", body);
  }

  function stepScores(q, wt, layer, head) {
    const k = state.key;
    const query = wt.query[q];
    const key = wt.key[k];
    const rows = query.map((x, d) => el("div", {}, "number " + d + ":  " + term(x) + " × " + term(key[d]) + " = " + fmt(x * key[d])));
    const shownSum = query.reduce((s, x, d) => s + x * key[d], 0);
    const score = wt.scores[q][k];
    const rest = model.head_dim - query.length;
    if (rest > 0) {
      rows.push(el("div", {class: "total"}, "these " + query.length + " products add up to " + fmt(shownSum)));
      rows.push(el("div", {}, "+ the other " + rest + " products (not shown) add " + fmt(score - shownSum)));
    }
    rows.push(el("div", {class: "total", id: "wt-score-total", "data-value": score}, "= score " + fmt(score)));
    const seen = tokens.filter((_, j) => !hidden(layer, head, q, j)).length;
    return step(3, "Compare the question with every label", [
      el("p", {}, ["To measure how well the ", el("span", {class: "q-text", text: "query"}), " of ", tok(q),
                   " matches the ", el("span", {class: "k-text", text: "key"}), " of another word, the model ",
                   "multiplies the two lists number by number and adds up all the products (a ",
                   glossary("dot product", "dot"), "). A large positive score means a good match."]),
      el("p", {}, ["Here it is written out for the key of ", tok(k),
                   " (pick another word in the table of step 5 to see its sum):"]),
      el("div", {class: "formula", id: "wt-dot"}, rows),
      el("p", {}, ["The same is done with the key of every word: " + seen + " scores for ", tok(q), ". ",
                   seen < n ? "The other " + (n - seen) + " are skipped: those words are hidden from it (" +
                              (options.hide.length ? "you hid them, or they come later" : "they come later") + ")." : ""]),
    ]);
  }

  function stepScale(q, wt) {
    const k = state.key;
    const score = wt.scores[q][k];
    const scaled = wt.scaled[q][k];
    return step(4, "Make the scores smaller", [
      el("p", {}, ["Multiplying and adding " + model.head_dim + " pairs of numbers gives big scores. To keep them in a ",
                   "comfortable range, every score is divided by the square root of " + model.head_dim + ", √" +
                   model.head_dim + " = " + root(model.head_dim) + " (the same as multiplying by " + fmt(data.scale, 4) + "): ",
                   glossary("scaling", "scale"), ". Without it, the next step would give almost everything to a ",
                   "single word."]),
      el("div", {class: "formula", id: "wt-scale"}, [
        el("div", {}, ["score of ", tok(k), ":  " + fmt(score) + " ÷ " + root(model.head_dim) + " = " + fmt(scaled)])]),
    ]);
  }

  function checkScaling(q, wt) {
    wt.scores[q].forEach((s, k) => {
      if (s === null) return;
      const expected = s * data.scale;
      if (Math.abs(expected - wt.scaled[q][k]) > 1e-4 * (1 + Math.abs(expected))) {
        reportProblem("scaled score " + wt.scaled[q][k] + " is not score " + s + " × " + data.scale);
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
      reportProblem("the shares recomputed from the scores differ from the model's by " + worst.toFixed(6));
    }
    const sumShown = weights.reduce((a, b) => a + b, 0);

    const body = [
      el("p", {}, ["Now the scores become shares that add up to 100%, with a recipe called ",
                   glossary("softmax", "softmax"), ": raise the number e (about 2.718) to the power of each score, ",
                   "which makes every number positive and makes the bigger scores stand out much more; then divide each ",
                   "by the total of all of them."]),
      el("div", {class: "formula", id: "wt-softmax"}, [
        el("div", {}, ["for ", tok(k), ":  e^" + term(scaled[k]) + " = " + fmt(exps[k])]),
        el("div", {}, "total over the " + visibleKeys.length + " words it can see:  " + fmt(total)),
        el("div", {class: "total"}, ["share of ", tok(k), ":  " + fmt(exps[k]) + " ÷ " + fmt(total) + " = " + pct(weights[k])]),
      ]),
      sinkNote(q, weights, top),
      softmaxTable(q, wt, weights, sumShown),
      el("p", {id: "wt-check", class: worst > WEIGHT_TOLERANCE ? "check-bad" : "check-ok",
               title: "largest difference: " + worst.toExponential(2)},
         worst > WEIGHT_TOLERANCE
           ? "✗ These shares do not match the model's own attention weights."
           : "✓ Recomputed on this page from the scores, these shares match the model's own attention " +
             "weights (up to rounding in the sixth decimal)."),
    ];
    return step(5, "Turn scores into shares that add up to 100%", body);
  }

  function sinkNote(q, weights, top) {
    // Decoders are known to park spare attention on their first token, encoders on markers.
    const parking = data.special[top] || (model.causal && top === 0);
    if (model.causal && q === 0) {
      return el("p", {class: "note"}, [tok(q), " is the first token: there is nothing before it, so it can only look at ",
                                        "itself and takes 100% of its own information."]);
    }
    if (weights[top] < 0.4 || !(parking || top === q)) return null;
    if (top === q) {
      return el("p", {class: "note"}, [tok(q), " looks mostly at itself (" + pct(weights[top]) + ") in this head: ",
                                        "this head keeps the word's own information rather than gathering much from others."]);
    }
    return el("p", {class: "note"}, [tok(q), " puts " + pct(weights[top]) + " of its attention on ", tok(top), ". ",
      "That is common: when a head finds nothing it is looking for, it parks its attention on a marker or on the first ",
      "token, which changes little. Try another head or word to see a more telling pattern."]);
  }

  function softmaxTable(q, wt, weights, sumShown) {
    const before = comparedWeights(q);
    const head = el("tr", {}, [el("th", {}, ["word it", el("br"), "looks at"]), el("th", {}, ["score", el("br"), "step 3"]),
                               el("th", {}, ["÷ √" + model.head_dim, el("br"), "step 4"]),
                               before ? el("th", {class: "before", text: options.compareLabel}) : null,
                               el("th", {}, ["share", el("br"), "step 5"])]);
    const rows = tokens.map((_, j) => {
      const isHidden = hidden(state.layer, state.head, q, j);
      const changed = before && Math.abs(before[j] - weights[j]) >= 0.005;
      const classes = [isHidden ? "hidden-row" : "pick", j === state.key ? "current" : "", j === q ? "self" : "",
                       changed ? "changed" : ""];
      const why = isHidden ? hiddenWhy(q, j) : "";
      const share = isHidden
        ? el("span", {class: "hidden-tag", title: "hidden from this word: " + why},
             [el("span", {class: "swatch hidden-swatch", "aria-hidden": "true"}), " " + why])
        : el("span", {class: "bar-box"}, [
          el("span", {class: "track"}, el("span", {class: "fill", style: "width:" + (weights[j] * 100) + "%"})),
          el("span", {class: "pct", text: pct(weights[j])})]);
      const beforeCell = before ? el("td", {class: "n before", "data-before": before[j], text: pct(before[j])}) : null;
      return el("tr", {class: classes.join(" ").trim(), "data-key": j, "data-weight": weights[j],
                       tabindex: isHidden ? null : "0", title: isHidden ? null : "write out the sum for this word",
                       onclick: isHidden ? null : () => select({key: j}),
                       onkeydown: isHidden ? null : (event) => {
                         if (event.key === "Enter" || event.key === " ") { event.preventDefault(); select({key: j}); }
                       }},
        [el("td", {}, tok(j)), el("td", {class: "n", text: fmt(isHidden ? null : wt.scores[q][j])}),
         el("td", {class: "n", text: fmt(isHidden ? null : wt.scaled[q][j])}), beforeCell,
         el("td", {class: "bar-cell"}, share)]);
    });
    const foot = el("tr", {}, [el("td", {text: "total"}), el("td"), el("td"), before ? el("td") : null,
                               el("td", {class: "pct", id: "wt-sum", "data-value": sumShown, text: pct(sumShown)})]);
    return el("div", {class: "table-wrap"}, el("table", {class: "nums", id: "wt-table"}, [
      el("caption", {class: "hint", text: "Each row is a word that " + tokenText(q) + " (the word looking) looks at. " +
                                          (before ? "The “" + options.compareLabel + "” column is the share before your " +
                                                    "what-if; changed rows are marked. " : "") +
                                          "Click a row to write out its sum in steps 3 to 5."}),
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
    if (worst > WEIGHT_TOLERANCE && !off) reportProblem("the blended values differ from the model's output by " + worst.toFixed(6));

    const order = weights.map((w, j) => j).sort((a, b) => weights[b] - weights[a]);
    const listed = order.filter((j, rank) => rank < 6 && weights[j] >= 0.01);
    const left = order.filter((j) => !listed.includes(j) && weights[j] > 0).length;
    const dimHeads = Array.from({length: dims}, (_, d) => el("th", {}, ["value", el("br"), "number " + d]));
    const rows = listed.map((j) => el("tr", {}, [
      el("td", {}, tok(j)), el("td", {class: "n", text: pct(weights[j])}),
      ...wt.value[j].slice(0, dims).map((v) => el("td", {class: "n", text: fmt(v)}))]));
    const outRow = el("tr", {id: "wt-output"}, [
      el("td", {text: "output"}), el("td", {class: "n", text: "sum"}),
      ...computed.slice(0, dims).map((c, d) => el("td", {class: "n", "data-dim": d, "data-value": c, text: fmt(c)}))]);
    const sumTerms = listed.slice(0, 3).map((j) => pct(weights[j]) + " × " + term(wt.value[j][0]));
    const others = order.filter((j) => weights[j] > 0).length - sumTerms.length;
    return step(6, "Blend the information", [
      el("p", {}, ["Finally ", tok(q), " collects the ", el("span", {class: "v-text", text: "values"}),
                   " (the information) of the words, each in proportion to its share: a word with a 40% share gives 40% ",
                   "of its value. Adding everything up gives this head's output for ", tok(q), ". The first " + dims +
                   " of its " + model.head_dim + " numbers:"]),
      el("div", {class: "table-wrap"}, el("table", {class: "nums", id: "wt-blend"}, [
        el("caption", {class: "hint", text: "Each value is multiplied by its word's share, then each column is added up."}),
        el("thead", {}, el("tr", {}, [el("th", {text: "word"}), el("th", {text: "share"}), ...dimHeads])),
        el("tbody", {}, rows), el("tfoot", {}, outRow)])),
      left ? el("p", {class: "hint"}, left > 1
        ? left + " more words with a small share (under 1%, or beyond the top 6) are left out of this table but included in the sum."
        : "1 more word with a small share (under 1%, or beyond the top 6) is left out of this table but included in the sum.") : null,
      el("div", {class: "formula"}, [
        el("div", {}, "first number:  " + sumTerms.join(" + ") + (others > 0 ? " + … (" + others + " more)" : "")),
        el("div", {class: "total"}, "= " + fmt(computed[0]))]),
      off ? el("p", {id: "wt-output-check", class: "check-ok note"},
               "This head is switched off in your what-if: the model computes this blend, then replaces it with zeros, " +
               "so it adds nothing to the word.")
        : el("p", {id: "wt-output-check", class: worst > WEIGHT_TOLERANCE ? "check-bad" : "check-ok"},
             worst > WEIGHT_TOLERANCE ? "✗ This sum does not match the model's output."
               : "✓ The same as the output the model computed (" + expected.slice(0, dims).map((x) => fmt(x)).join(", ") + ")."),
    ]);
  }

  function stepNext() {
    let ending = "every token's numbers describe its meaning in this sentence.";
    if (model.kind === "decoder") ending = "the model uses the numbers of the last token to guess which token should come next.";
    if (model.name === "minilm") ending += " This model then averages them into one list of numbers for the whole sentence.";
    return step(7, "What happens next", [
      el("p", {id: "wt-projection"}, [
        "All " + model.num_heads + " heads of this layer do the same at the same time, each with its own tables, " +
        "so each notices different links. Their outputs (" + model.num_heads + " × " + model.head_dim + " = " +
        model.num_heads * model.head_dim + " numbers) are put side by side and mixed once more by one more " +
        "learned table, the ", el("strong", {text: "output projection"}), ": it lets the heads' findings be " +
        "combined (one head found the subject, another the verb) and turns them back into a list of " +
        model.embed_dim + " numbers, the size of the word's own. That list is added to the word's numbers " +
        "from step 1 (the ", glossary("residual stream", "residual"), "). The next layer starts again from " +
        "these updated numbers. After all " + model.num_layers + " layers, " + ending]),
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
                                 "aria-label": (side === "left" ? "lines from " : "lines into ") + tokens[i]}, tokenText(i));
      const pctLabel = el("span", {class: "pct", "aria-live": "off"});
      return el("div", {class: "hv-row", "data-index": i}, side === "left" ? [pctLabel, chip] : [chip, pctLabel]);
    }));
    const grid = el("div", {class: "hv", id: "hv"}, [
      el("div", {class: "hv-title left", text: "word looking"}), el("div"), el("div", {class: "hv-title", text: "words looked at"}),
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
      hint.textContent = "Layer " + state.layer + ", head " + state.head + ". Lines below 1% are not drawn." +
        (model.causal ? " Lines only go up or straight across: a word can only look at itself and the words before it." : "");
      return;
    }
    hint.textContent = "All " + model.num_heads + " heads of layer " + state.layer + ", one colour each; only shares " +
      "of 5% or more are drawn. Click a head below to see it alone.";
    for (let h = 0; h < model.num_heads; h++) {
      legend.append(el("button", {type: "button", class: "head-key", "data-head": h,
                                  onclick: () => { document.getElementById("hv-all").checked = false; select({head: h}); }},
        [el("i", {style: "background:" + HEAD_COLOURS[h % HEAD_COLOURS.length]}), "head " + h]));
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
                       hiddenWhy(q, k) === "comes later" ? " later" : " hidden"]);
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
    append(intro, [
      "Every small square is one head: " + model.num_layers + " layers (rows) × " + model.num_heads +
      " heads (columns). Inside it, each row is a word looking and each column a word it looks at; darker means a ",
      "bigger share. Heads have typical shapes: a diagonal line (each word looks at itself or its neighbour), a ",
      "single dark column (everyone looks at one marker), or scattered spots (real links between words). ",
      el("strong", {text: "Click a square"}), " to open it large; it also becomes the head shown in sections 1 and 2.",
      grouped ? " Heads are grouped by the keys and values they share: the heads under one green bracket ask their own " +
                "questions but use the same labels and information." : " In this model every head has its own keys and values.",
    ]);
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
                               text: "heads " + headRange(members) + " share one key/value"}));
      }
    }
    grid.append(el("div", {class: "row-head", text: "head →"}));
    for (let h = 0; h < model.num_heads; h++) {
      grid.append(el("div", {class: "col-head" + (groupStart(h) ? " group-start" : ""), text: String(h)}));
    }
    for (let layer = 0; layer < model.num_layers; layer++) {
      grid.append(el("div", {class: "row-head", text: "layer " + layer}));
      for (let head = 0; head < model.num_heads; head++) {
        const canvas = el("canvas");
        paintThumb(canvas, layer, head);
        const off = isOff(layer, head);
        grid.append(el("button", {type: "button", class: "thumb" + (groupStart(head) ? " group-start" : "") +
                                                         (off ? " off" : ""),
                                  "data-layer": layer, "data-head": head, "data-off": off ? "true" : null,
                                  "aria-label": "layer " + layer + ", head " + head + (off ? " (switched off)" : "") +
                                                ": open large",
                                  title: "layer " + layer + ", head " + head,
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
    append(box, [el("span", {class: "ramp"}, ["share: 0%", ramp, "100%"])]);
    if (model.causal) {
      append(box, [el("span", {}, [el("span", {class: "swatch hidden-swatch", "aria-hidden": "true"}),
                                   " hidden: comes later (the model only looks back)"])]);
    }
  }

  /* ---------- the zoomed heatmap ---------- */

  const zoom = {cell: 0, labels: 0, cursor: null};

  function openZoom() {
    const dialog = document.getElementById("zoom");
    document.getElementById("zoom-title").textContent = "Layer " + state.layer + ", head " + state.head;
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
    ctx.fillText("looks at →", zoom.labels - 22, zoom.labels - 20);
    ctx.fillText("looking ↓", zoom.labels - 22, zoom.labels - 6);
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
      readout.textContent = "Point at a square to read its share.";
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
      append(readout, [tok(q), " cannot look at ", tok(k), ": it comes later, so it is hidden."]);
    } else {
      append(readout, [tok(q), " gives ", el("strong", {text: pct(data.attention[state.layer][state.head][q][k])}),
                       " of its attention to ", tok(k), "."]);
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
    const kind = (tokenCount) => (tokenCount >= 10000 ? "a short book chapter" : tokenCount >= 1000 ? "a few pages" : "a paragraph");
    const examples = cost.examples.filter((e) => e.tokens >= 1000);
    append(box, [
      el("p", {class: "big", id: "cost-sentence"}, [
        "Your sentence has " + cost.tokens + " tokens, so each head computed " + cost.tokens + " × " + cost.tokens +
        " = ", el("strong", {text: count(cost.scores_per_head)}), " scores (every token against every token). With " +
        model.num_heads + " heads in each of " + model.num_layers + " layers (" + heads + " heads), that makes ",
        el("strong", {text: count(cost.scores_total)}), " scores in total."]),
      el("p", {}, "The work grows with the square of the length: twice as many tokens means four times as many scores, " +
                  "ten times as many tokens a hundred times as many." +
                  (examples.length ? " " + examples.map((e, i) => (i ? "at " : "At ") + count(e.tokens) + " tokens it would be " +
                                                          inWords(e.scores_total) + " scores").join("; ") + "." : "")),
      el("div", {class: "table-wrap"}, el("table", {class: "nums cost", id: "cost-table"}, [
        el("thead", {}, el("tr", {}, [el("th", {text: "length"}), el("th", {text: "tokens"}),
                                      el("th", {text: "scores, all heads"})])),
        el("tbody", {}, [row("your sentence", cost.tokens, cost.scores_total),
                         ...cost.examples.map((e) => row(kind(e.tokens), e.tokens, e.scores_total))])])),
      el("p", {}, ["That is why long texts are expensive. attnlab's tiled attention still computes every one of these ",
                   "scores, but a block at a time, so it never has to keep the whole table in memory" +
                   (model.causal ? "; and since this model only looks back, it skips the blocks that would be entirely hidden." : ".")]),
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
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => { if (data) sizeThumbs(); }, 100);
    });
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
               compareLabel: opts.compareLabel || "before"};
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
      reportProblem("the page could not be drawn (" + error.message + ")");
      throw error;
    }
  }
})();
