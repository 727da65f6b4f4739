"""``attnlab.show``: the explanation page of ``attnlab explain``, inline in a notebook.

Jupyter (JupyterLab, classic Notebook, VS Code) displays any object with ``_repr_html_``. The
explanation is one self-contained page (its CSS, script and data inside it), so it goes into an
``<iframe srcdoc=...>``: the page keeps its own styles and element ids away from the notebook's,
needs no require.js and no CDN, and works offline. A few lines added to the page make the frame
as tall as the page (the frame is same-origin with the notebook, because ``srcdoc`` inherits
the origin and no ``sandbox`` is set), so the cell shows it whole without a second scroll bar.
"""

from __future__ import annotations

import html
import os
import uuid
from pathlib import Path

#: The frame's height before the page has measured itself (and where scripts do not run).
INITIAL_HEIGHT_PX = 720

# Set the frame's height to the page's, now and whenever the page grows (a section opens, a head
# is chosen). The frame is found by its id, not by window.frameElement alone, because VS Code
# renders outputs inside a webview of its own.
_FIT_SCRIPT = """<script>
(function () {
  "use strict";
  function fit() {
    var frame = window.frameElement;
    if (!frame) return;
    var height = Math.ceil(document.documentElement.scrollHeight) + 4;
    if (Math.abs(frame.clientHeight - height) > 2) frame.style.height = height + "px";
  }
  window.addEventListener("load", fit);
  if (window.ResizeObserver) new ResizeObserver(fit).observe(document.documentElement);
  fit();
})();
</script>
"""


class Explanation:
    """What :func:`show` returns: the explanation of one text, shown inline by Jupyter.

    ``data`` is the explanation dict of :func:`attnlab.explain.collect.build_explanation`,
    ``page`` the standalone HTML page, ``lang`` its language. :meth:`save` writes the page.
    """

    def __init__(self, data: dict, lang: str = "en") -> None:
        from attnlab.explain.page import render_page

        self.data = data
        self.lang = lang
        self.page = render_page(data, lang=lang)

    @property
    def tokens(self) -> list[str]:
        """The text's tokens, as the page shows them."""
        return list(self.data["tokens"])

    def _repr_html_(self) -> str:
        frame_id = f"attnlab-{uuid.uuid4().hex[:12]}"
        page = self.page.replace("</body>", _FIT_SCRIPT + "</body>", 1)
        title = html.escape(f"attnlab explanation of {self.data['text']!r}", quote=True)
        return (f'<iframe id="{frame_id}" class="attnlab-explanation" title="{title}" '
                f'srcdoc="{html.escape(page, quote=True)}" '
                f'style="width: 100%; height: {INITIAL_HEIGHT_PX}px; border: 0; display: block;" '
                'loading="eager"></iframe>')

    def save(self, path: str | os.PathLike, *, force: bool = False) -> Path:
        """Write the standalone page to ``path`` (atomically; a file there that attnlab did not
        write is kept and :class:`attnlab.files.NotOursError` raised, unless ``force``)."""
        from attnlab.files import write_html

        return write_html(path, self.page, force=force)

    def __repr__(self) -> str:
        model = self.data["model"]["name"]
        return f"<attnlab explanation of {self.data['text']!r} by {model}: {len(self.tokens)} tokens>"


def show(text: str, model="minilm", *, tokenizer=None, layer: int | None = None,
         head: int | None = None, max_tokens: int | None = None, lang: str = "en") -> Explanation:
    """Explain ``text`` the way ``attnlab explain`` does, for display in a notebook cell.

    Args:
        text: the sentence to explain.
        model: a name or model folder for :func:`attnlab.models.load_pretrained` (``"minilm"``,
            ``"smollm2"``), or a loaded attnlab model (then give its ``tokenizer`` too, or pass
            ``(model, tokenizer)`` as returned by ``load_pretrained``).
        layer, head: the head the page opens on (default: the most informative one).
        max_tokens: refuse longer texts (the page holds every weight of every head).
        lang: ``"en"`` or ``"zh"``, the language of the page's explanations.

    Returns an :class:`Explanation`: Jupyter shows it inline; ``.save(path)`` writes the page.
    Raises ``ValueError`` for an empty or over-long text, a head out of range or an unknown
    language, and the loaders' errors for a model that cannot be loaded.
    """
    from attnlab.explain.collect import build_explanation
    from attnlab.explain.i18n import check_language

    check_language(lang)
    name = type(model).__name__
    if isinstance(model, (str, os.PathLike)):
        from attnlab.models.pretrained import load_pretrained

        name = os.fspath(model)
        model, tokenizer = load_pretrained(name)
    elif isinstance(model, tuple) and len(model) == 2 and tokenizer is None:
        model, tokenizer = model
    if tokenizer is None:
        raise ValueError("a loaded model needs its tokenizer: show(text, model, tokenizer=...) or "
                         "show(text, (model, tokenizer))")
    if not hasattr(model, "config") or not hasattr(model, "is_causal"):
        raise ValueError(f"model must be a name, a model folder or an attnlab model, got "
                         f"{type(model).__name__}")
    data = build_explanation(model, tokenizer, text, model_name=name, layer=layer, head=head,
                             max_tokens=max_tokens)
    return Explanation(data, lang=lang)
