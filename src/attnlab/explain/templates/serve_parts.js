/* attnlab serve: the page's parts (Write, Translate, Recognise a picture), one shown at a time.
 * A part is shown when the server has a model for it; the tabs appear once there are two parts.
 * The bar also holds the language switch (select.lang-switch#lang, see i18n.js).
 * The shown part is in the address (#part=translate), so a reload keeps it.
 *   nav#parts > #part-tabs > button.part-tab[data-part][aria-pressed]   div.part[data-part] (hidden or not)
 */
(function () {
  "use strict";

  const config = JSON.parse(document.getElementById("attnlab-serve").textContent);
  const kinds = new Set((config.apps || []).map((app) => app.kind));
  if (config.models.length) kinds.add("text");
  const tabs = Array.from(document.querySelectorAll(".part-tab"));
  const parts = Array.from(document.querySelectorAll("div.part"));

  function show(name) {
    if (!kinds.has(name)) name = tabs.map((t) => t.dataset.part).find((p) => kinds.has(p));
    for (const part of parts) part.hidden = part.dataset.part !== name;
    for (const tab of tabs) tab.setAttribute("aria-pressed", String(tab.dataset.part === name));
    document.body.dataset.part = name || "";
    document.dispatchEvent(new CustomEvent("attnlab:part", {detail: {part: name}}));
  }

  for (const tab of tabs) {
    tab.hidden = !kinds.has(tab.dataset.part);
    tab.addEventListener("click", () => {
      history.replaceState(null, "", "#part=" + tab.dataset.part);
      show(tab.dataset.part);
    });
  }
  document.getElementById("part-tabs").hidden = kinds.size < 2;
  const wanted = /#part=(\w+)/.exec(location.hash);
  show(wanted ? wanted[1] : "text");
  window.attnlabParts = {show: show, kinds: kinds};
})();
