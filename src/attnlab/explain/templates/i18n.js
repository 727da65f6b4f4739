/* attnlab pages in two languages (see attnlab/explain/i18n.py). Reads the tables embedded as
 * #attnlab-strings and offers window.attnlabI18n:
 *   t(key, vars)        the text of key in the current language, {name} filled from vars
 *   parts(key, vars)    the same as a list of strings and DOM nodes: a var may be an element
 *                       (a token chip, a glossary link) or a list of them and strings, which
 *                       takes the place of its {name}
 *   plural(key, n, vars), pluralParts(key, n, vars)
 *                       t / parts of "key.one" when n is 1, else "key.other"; vars.n is n
 *   fromEnglish(prefix, text)  text the server wrote in English from one of the templates
 *                       whose keys start with prefix ("model.text."): that template, filled with
 *                       the same values, in the current language; text itself when none fits
 *   apply(root)         fill [data-t] (text), [data-t-html] (our own markup) and
 *                       [data-t-attr="attr:key;attr2:key2"] under root
 *   setLanguage(code)   switch live: apply() the page, then fire "attnlab:lang" on document,
 *                       on which scripts redraw the texts they wrote
 *   language()          the current code ("en" or "zh");  languages: the codes there are
 * The first language: ?lang=en|zh in the address, else (live page) the browser's language,
 * else the page's default. A missing key shows as ⟦key⟧ and is logged as a console error.
 */
(function () {
  "use strict";

  const data = JSON.parse(document.getElementById("attnlab-strings").textContent);
  const languages = Object.keys(data.tables);
  let current = data.default;

  function pick() {
    const asked = new URLSearchParams(location.search).get("lang");
    if (asked && languages.includes(asked)) return asked;
    if (data.follow_browser) {
      for (const tag of navigator.languages || [navigator.language || ""]) {
        const code = String(tag).toLowerCase().split("-")[0];
        if (languages.includes(code)) return code;
      }
    }
    return data.default;
  }

  function t(key, vars) {
    const text = data.tables[current][key];
    if (text === undefined) {
      console.error("attnlab: no text for key " + key + " in language " + current);
      return "⟦" + key + "⟧";
    }
    if (!vars) return text;
    return text.replace(/\{(\w+)\}/g, (whole, name) => (name in vars ? String(vars[name]) : whole));
  }

  function parts(key, vars) {
    const out = [];
    const used = new Set();  // a node that fills two {name}s is copied for the second
    const text = t(key);
    let last = 0;
    for (const match of text.matchAll(/\{(\w+)\}/g)) {
      if (!vars || !(match[1] in vars)) continue;
      out.push(text.slice(last, match.index));
      const value = vars[match[1]];
      if (Array.isArray(value)) out.push(...value);
      else if (value instanceof Node) out.push(used.has(value) ? value.cloneNode(true) : value);
      else out.push(String(value));
      if (value instanceof Node) used.add(value);
      last = match.index + match[0].length;
    }
    out.push(text.slice(last));
    return out.filter((piece) => piece !== "");
  }

  function pluralKey(key, n) {
    return key + (n === 1 ? ".one" : ".other");
  }

  function plural(key, n, vars) {
    return t(pluralKey(key, n), Object.assign({n: n}, vars || {}));
  }

  function pluralParts(key, n, vars) {
    return parts(pluralKey(key, n), Object.assign({n: n}, vars || {}));
  }

  function escapeRegExp(text) {
    return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  }

  function fromEnglish(prefix, text) {
    const english = data.tables.en;
    for (const key of Object.keys(english)) {
      if (!key.startsWith(prefix)) continue;
      const names = [];
      const pattern = english[key].split(/\{(\w+)\}/).map((piece, i) => {
        if (i % 2 === 0) return escapeRegExp(piece);
        names.push(piece);
        return "(.+?)";
      }).join("");
      const match = new RegExp("^" + pattern + "$", "s").exec(text);
      if (match) return t(key, Object.fromEntries(names.map((name, i) => [name, match[i + 1]])));
    }
    return text;
  }

  function apply(root) {
    const scope = root || document;
    for (const node of scope.querySelectorAll("[data-t]")) node.textContent = t(node.dataset.t);
    for (const node of scope.querySelectorAll("[data-t-html]")) node.innerHTML = t(node.dataset.tHtml);
    for (const node of scope.querySelectorAll("[data-t-attr]")) {
      for (const pair of node.dataset.tAttr.split(";")) {
        const [attr, key] = pair.split(":").map((s) => s.trim());
        if (attr && key) node.setAttribute(attr, t(key));
      }
    }
  }

  function setLanguage(code) {
    if (!languages.includes(code)) return;
    current = code;
    document.documentElement.lang = code === "zh" ? "zh-Hans" : code;
    apply(document);
    for (const select of document.querySelectorAll("select.lang-switch")) select.value = code;
    document.dispatchEvent(new CustomEvent("attnlab:lang", {detail: {lang: code}}));
  }

  function wireSwitches() {
    for (const select of document.querySelectorAll("select.lang-switch")) {
      select.replaceChildren(...languages.map((code) => {
        const option = document.createElement("option");
        option.value = code;
        option.textContent = data.names[code] || code;
        return option;
      }));
      select.value = current;
      select.addEventListener("change", () => {
        const params = new URLSearchParams(location.search);
        params.set("lang", select.value);
        history.replaceState(null, "", "?" + params + location.hash);
        setLanguage(select.value);
      });
    }
  }

  current = pick();
  document.documentElement.lang = current === "zh" ? "zh-Hans" : current;
  window.attnlabI18n = {t: t, parts: parts, plural: plural, pluralParts: pluralParts, fromEnglish: fromEnglish,
                        apply: apply, setLanguage: setLanguage, language: () => current, languages: languages};
  apply(document);
  wireSwitches();
})();
