"""The words of attnlab's pages, in English and Simplified Chinese.

Every text a page shows (labels, captions, explanations, glossary, errors) is a key of one string
table per language, ``strings/en.json`` and ``strings/zh.json``, written by hand. Numbers, model
tokens and the user's own text are never translated: only the explanation changes language.

Pages use the tables through ``templates/i18n.js`` (``attnlabI18n.t(key, vars)`` in scripts,
``data-t="key"`` / ``data-t-html="key"`` / ``data-t-attr="attr:key;..."`` in HTML); the tables
travel inside the page (:func:`page_strings`), so a page switches language without a request.
Placeholders are ``{name}``, filled by ``t(key, {name: value})``; a key ending in ``_html`` holds
markup written by us, never by a user.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

LANGUAGES = ("en", "zh")
LANGUAGE_NAMES = {"en": "English", "zh": "中文"}
DEFAULT_LANGUAGE = "en"


def check_language(lang: str) -> str:
    """``lang`` when attnlab has a table for it; else ``ValueError`` naming the ones it has."""
    if lang not in LANGUAGES:
        raise ValueError(f"no pages in language {lang!r}; attnlab has: {', '.join(LANGUAGES)}")
    return lang


@cache
def strings(lang: str) -> dict[str, str]:
    """The string table of ``lang``: key -> text (``strings/LANG.json``, with any
    ``strings/PART.LANG.json`` of a page part merged in; a key may be defined once only)."""
    check_language(lang)
    folder = resources.files(__package__) / "strings"
    files = [folder / f"{lang}.json", *sorted((f for f in folder.iterdir()
                                              if f.name.endswith(f".{lang}.json")), key=lambda f: f.name)]
    table: dict[str, str] = {}
    for path in files:
        part = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(part, dict) or not all(isinstance(v, str) for v in part.values()):
            raise ValueError(f"{path}: a string table maps keys to strings")
        twice = sorted(set(part) & set(table))
        if twice:
            raise ValueError(f"{path}: key(s) defined twice: {', '.join(twice[:5])}")
        table.update(part)
    return table


def page_strings(lang: str = DEFAULT_LANGUAGE, *, follow_browser: bool = False) -> dict:
    """What a page embeds as ``#attnlab-strings``: every table, the language to show first, and
    whether the browser's language may override it (the live page: yes; a page written with
    ``--lang``: no). ``?lang=`` in the address overrides both."""
    check_language(lang)
    return {"default": lang, "follow_browser": follow_browser,
            "names": LANGUAGE_NAMES, "tables": {code: strings(code) for code in LANGUAGES}}
