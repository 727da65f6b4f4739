/* attnlab pages in two languages (see attnlab/explain/i18n.py). Reads the tables embedded as
 * #attnlab-strings and offers window.attnlabI18n:
 *   t(key, vars)        the text of key in the current language, {name} filled from vars
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
        const url = new URL(location.href);
        url.searchParams.set("lang", select.value);
        history.replaceState(null, "", url);
        setLanguage(select.value);
      });
    }
  }

  current = pick();
  document.documentElement.lang = current === "zh" ? "zh-Hans" : current;
  window.attnlabI18n = {t: t, apply: apply, setLanguage: setLanguage,
                        language: () => current, languages: languages};
  apply(document);
  wireSwitches();
})();
