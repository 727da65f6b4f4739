"""The pages' string tables (attnlab/explain/strings/*.json) against the templates that use them.

Every key a template or script uses exists in every language, every key of the tables is used,
the languages have the same keys and the same ``{placeholders}``, and the templates of the
explain and live pages hold no English of their own.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from importlib import resources

import pytest

from attnlab.explain.i18n import LANGUAGES, check_language, page_strings, strings
from attnlab.explain.live import Edit, describe_edit, shown

TEMPLATES = resources.files("attnlab.explain") / "templates"
# The templates whose words are all in the tables (the static translation and vision pages of
# `attnlab translate` and `attnlab classify` are English only).
OWN_HTML = ("page.html", "head.html", "explain_intro.html", "explain_body.html", "explain_tokens.html",
            "explain_nav.html", "glossary_terms.html", "serve.html", "serve_vision.html",
            "serve_translate.html")
# serve_vision.js and serve_translate.js also pass keys through their own small helpers; their
# keys count as used when quoted anywhere in them (see test_every_key_is_used).
OWN_JS = ("page.js", "serve.js", "serve_parts.js")
# t("key"), parts("key"), fromEnglish("prefix"), plural("key") (which uses "key.one" and "key.other")...
CALL = re.compile(r"(?<![\w$])(?:\w+\.)?(t|parts|plural|pluralParts|fromEnglish)\(\s*"
                  r"(\"[^\"]*\"|'[^']*'|[^\s)\"'])")
# What may stay in a template's text: names, numbers and signs.
ALLOWED_TEXT = re.compile(r"^(attnlab( explain| serve)?|[\d\s.,%✕×→↓–—&;nbsp]*)$")


def _sources() -> dict[str, str]:
    return {item.name: item.read_text(encoding="utf-8") for item in TEMPLATES.iterdir()
            if item.name.endswith((".js", ".html"))}


def used_keys() -> tuple[set[str], set[str]]:
    """The keys the templates and scripts use (``data-t...`` attributes, ``t("key")`` calls), and
    the prefixes of keys they build (``fromEnglish("prefix.")``, ``"prefix." + name``)."""
    keys, prefixes = set(), set()
    for name, text in _sources().items():
        if name.endswith(".html"):
            keys |= set(re.findall(r'data-t(?:-html)?="([^"]+)"', text))
            for pairs in re.findall(r'data-t-attr="([^"]+)"', text):
                keys |= {pair.split(":", 1)[1].strip() for pair in pairs.split(";") if ":" in pair}
            continue
        prefixes |= set(re.findall(r"[\"']([\w.]+\.)[\"']\s*\+", text))
        for function, argument in CALL.findall(text):
            if name == "i18n.js" or not argument.startswith(('"', "'")) or argument[1:-1] in prefixes:
                continue
            key = argument[1:-1]
            if function == "fromEnglish":
                prefixes.add(key)
            elif function.startswith("plural"):
                keys |= {key + ".one", key + ".other"}
            else:
                keys.add(key)
    return keys, prefixes


def quoted_in_scripts() -> set[str]:
    """Every string literal of the scripts: a script may hand a key to a helper of its own."""
    return {literal for name, text in _sources().items() if name.endswith(".js")
            for literal in re.findall(r"[\"']([\w.-]+)[\"']", text)}


def test_every_call_names_its_key_literally():
    for name in OWN_JS:
        text = (TEMPLATES / name).read_text(encoding="utf-8")
        dynamic = [argument for _, argument in CALL.findall(text) if not argument.startswith(('"', "'"))]
        assert dynamic == [], f"{name} calls the string table with a computed key"


def test_every_key_used_exists_in_every_language():
    keys, _ = used_keys()
    for lang in LANGUAGES:
        assert sorted(keys - set(strings(lang))) == [], lang


def test_every_key_of_the_tables_is_used():
    keys, prefixes = used_keys()
    keys |= quoted_in_scripts()
    unused = [key for key in strings("en") if key not in keys and not key.startswith(tuple(prefixes))]
    assert unused == []


def test_languages_have_the_same_keys_and_placeholders():
    english = strings("en")
    for lang in LANGUAGES:
        table = strings(lang)
        assert set(table) == set(english), lang
        for key, text in english.items():
            names = set(re.findall(r"\{(\w+)\}", text))
            assert set(re.findall(r"\{(\w+)\}", table[key])) == names, (lang, key)


def test_chinese_table_is_written_in_chinese():
    folder = resources.files("attnlab.explain") / "strings"
    english, chinese = (json.loads((folder / f"{lang}.json").read_text(encoding="utf-8"))
                        for lang in ("en", "zh"))
    names = ("parts.title", "word.softmax", "gloss.softmax", "serve.next.top_")  # the same in both
    same = [key for key in english if english[key] == chinese[key] and not key.startswith(names)
            and re.search(r"[a-z]{4}", re.sub(r"\{\w+\}", "", english[key]))]
    assert same == []


class _Text(HTMLParser):
    """The text of an HTML template outside <script>, <style> and elements with data-t/-html."""

    VOID = ("meta", "link", "input", "br", "img", "hr")

    def __init__(self):
        super().__init__()
        self.stack: list[bool] = []  # per open element: is its text ours to ignore?
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            return
        names = dict(attrs)
        skip = tag in ("script", "style", "title") or "data-t" in names or "data-t-html" in names
        self.stack.append(skip or (bool(self.stack) and self.stack[-1]))

    def handle_endtag(self, tag):
        if tag not in self.VOID and self.stack:
            self.stack.pop()

    def handle_data(self, data):
        if not (self.stack and self.stack[-1]):
            self.text.append(data)


@pytest.mark.parametrize("name", OWN_HTML)
def test_templates_hold_no_english_of_their_own(name):
    parser = _Text()
    parser.feed(re.sub(r"\{\{[^}]*\}\}", "", (TEMPLATES / name).read_text(encoding="utf-8")))
    words = [text.strip() for text in parser.text if text.strip()]
    assert [text for text in words if not ALLOWED_TEXT.match(text)] == []


def test_unknown_language_is_refused_with_the_ones_there_are():
    with pytest.raises(ValueError, match=r"'fr'.*en, zh"):
        check_language("fr")


def test_page_strings_carry_every_table():
    data = page_strings("zh")
    assert data["default"] == "zh" and data["follow_browser"] is False
    assert set(data["tables"]) == set(LANGUAGES)
    json.dumps(data)


def test_what_if_sentences_come_from_the_english_table():
    tokens = ["[CLS]", "the", "animal", "'", "[SEP]"]
    assert describe_edit(Edit(hide=(2, 3)), tokens) == """Without 'animal' and "'\""""
    assert describe_edit(Edit(heads_off=((3, 1),)), tokens) == "With layer 3 head 1 switched off"
    assert shown(" ") == "a space"
