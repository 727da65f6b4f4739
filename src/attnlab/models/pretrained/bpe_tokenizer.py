"""SmolLM2's byte-level BPE tokenizer, rebuilt from a GGUF file's metadata, and its chat template.

A GGUF file has no ``tokenizer.json``; it stores the tokenizer as metadata: the vocabulary
(``tokenizer.ggml.tokens``, each token spelled in GPT-2's byte alphabet, where ``Ġ`` is a space),
the merges, a type per token (3 = control, e.g. ``<|im_start|>``), the special ids and the
name of the pre-tokenizer (``tokenizer.ggml.pre``). For ``"smollm"`` llama.cpp first splits
every digit off on its own, then applies GPT-2's regex (``'s|'t|…| ?\\p{L}+| ?\\p{N}+|…``); that is
``Digits(individual_digits=True)`` followed by ``ByteLevel``, exactly SmolLM2's original
``tokenizer.json``. (``transformers``' GGUF converter does not know ``"smollm"`` and skips the
digit split; the two differ only on a run of spaces before a digit: ``"x  1"``.)
"""

from __future__ import annotations

import json
from bisect import bisect_right
from pathlib import Path

import torch

from attnlab.errors import AttnlabError

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

# llama.cpp's token types (gguf.TokenType): CONTROL tokens are special, USER_DEFINED are added
# tokens matched whole in the text but decoded like any other.
_CONTROL, _USER_DEFINED = 3, 4


def _word_splitter():
    """GPT-2's pre-tokenizer alone: the pieces :meth:`LlamaTokenizer.word_ids` calls words."""
    from tokenizers import pre_tokenizers

    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _pre_tokenizer(name: str):
    from tokenizers import pre_tokenizers

    if name != "smollm":
        raise ValueError(f"tokenizer.ggml.pre={name!r} is not supported (only 'smollm' is)")
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _word_splitter()])


class NoChatTemplateError(AttnlabError, ValueError):
    """A chat was asked of a tokenizer that has no chat template."""


class LlamaTokenizer:
    """Byte-level BPE (``tokenizers.Tokenizer``) plus the special ids and chat template of a model.

    Build it with :meth:`from_gguf` or :meth:`load`. ``encode`` adds no BOS token (SmolLM2's
    ``tokenizer.ggml.add_bos_token`` is false; its chat template frames every turn itself) and
    recognises special tokens written in the text, such as ``<|im_start|>``.
    """

    def __init__(self, tokenizer, *, bos_token_id: int | None, eos_token_id: int | None,
                 pad_token_id: int | None, chat_template: str | None, max_length: int | None) -> None:
        self._tokenizer = tokenizer
        self.bos_token_id, self.eos_token_id, self.pad_token_id = bos_token_id, eos_token_id, pad_token_id
        self.chat_template = chat_template
        self.max_length = max_length
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.special_ids = frozenset(
            index for index, token in tokenizer.get_added_tokens_decoder().items() if token.special
        )
        self._template = None
        self._word_splitter = _word_splitter()

    @classmethod
    def from_gguf(cls, reader) -> LlamaTokenizer:
        """From the ``tokenizer.*`` metadata of a ``gguf.GGUFReader``.

        Raises ``ValueError`` for a tokenizer other than byte-level BPE with the ``smollm``
        pre-tokenizer, and ``KeyError`` naming a missing metadata key.
        """
        from tokenizers import AddedToken, Tokenizer, decoders, models

        from attnlab.models.pretrained.gguf_reader import metadata

        kind = metadata(reader, "tokenizer.ggml.model")
        if kind != "gpt2":
            raise ValueError(f"expected a byte-level BPE tokenizer, got tokenizer.ggml.model={kind!r}")
        tokens = metadata(reader, "tokenizer.ggml.tokens")
        merges = [tuple(merge.split(" ")) for merge in metadata(reader, "tokenizer.ggml.merges")]
        tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
        tokenizer.pre_tokenizer = _pre_tokenizer(metadata(reader, "tokenizer.ggml.pre"))
        tokenizer.decoder = decoders.ByteLevel()
        types = metadata(reader, "tokenizer.ggml.token_type")
        # Already in the vocabulary: adding them only makes the text matcher keep them whole.
        tokenizer.add_special_tokens([
            AddedToken(t, special=True, normalized=False) for t, kind in zip(tokens, types, strict=True)
            if kind == _CONTROL
        ])
        tokenizer.add_tokens([
            AddedToken(t, special=False, normalized=False) for t, kind in zip(tokens, types, strict=True)
            if kind == _USER_DEFINED
        ])
        pad = reader.fields.get("tokenizer.ggml.padding_token_id")
        return cls(
            tokenizer,
            bos_token_id=metadata(reader, "tokenizer.ggml.bos_token_id"),
            eos_token_id=metadata(reader, "tokenizer.ggml.eos_token_id"),
            pad_token_id=None if pad is None else pad.contents(),
            chat_template=metadata(reader, "tokenizer.chat_template"),
            max_length=metadata(reader, "llama.context_length"),
        )

    def save(self, folder: str | Path) -> None:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` (ids, template, length) into ``folder``."""
        folder = Path(folder)
        self._tokenizer.save(str(folder / TOKENIZER_FILE))
        settings = {
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "chat_template": self.chat_template,
            "max_length": self.max_length,
        }
        (folder / TOKENIZER_CONFIG_FILE).write_text(json.dumps(settings, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> LlamaTokenizer:
        """From a folder written by :meth:`save`."""
        from tokenizers import Tokenizer

        folder = Path(folder)
        settings = json.loads((folder / TOKENIZER_CONFIG_FILE).read_text())
        return cls(Tokenizer.from_file(str(folder / TOKENIZER_FILE)), **settings)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS added; special tokens in the text become their ids)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Text of ``ids`` (a list or 1-D tensor). Bytes that end mid-character decode to ``�``."""
        return self._tokenizer.decode(self._checked(ids), skip_special_tokens=skip_special_tokens)

    def token_strings(self, ids) -> list[str]:
        """Readable text of each token: ``' cat'`` (a real leading space), ``'\\n'``, ``'<|im_end|>'``.

        A token holding part of a multi-byte character shows as ``'�'``.
        """
        return self._tokenizer.decode_batch([[i] for i in self._checked(ids)], skip_special_tokens=False)

    def word_ids(self, ids) -> list[int | None]:
        """For each token, the index of the word it belongs to; None for special tokens.

        Words are GPT-2's pre-tokenizer pieces of the decoded text: a run of letters or of
        digits with its leading space, a run of punctuation, whitespace. For ``"Hello world!"``
        the tokens ``['Hello', ' world', '!']`` give ``[0, 1, 2]``; the pieces of a long word
        share one index, and so do the digits of a number (tokenized one by one). Words are
        numbered 0, 1, 2, ... across the whole sequence; special tokens break the text into
        parts that are split separately.
        """
        ids = self._checked(ids)
        words: list[int | None] = [None] * len(ids)
        next_word, start = 0, 0
        for end in range(len(ids) + 1):
            if end < len(ids) and ids[end] not in self.special_ids:
                continue
            if start < end:  # ids[start:end] is a run of text tokens
                part = self._words_of_part(ids[start:end])
                words[start:end] = [next_word + w for w in part]
                next_word += part[-1] + 1
            start = end + 1
        return words

    def _words_of_part(self, ids: list[int]) -> list[int]:
        """For each token of a run without special tokens, the pre-tokenizer piece it starts in."""
        # In the byte alphabet one character is one byte, so lengths below are byte offsets.
        text = self._tokenizer.decode(ids, skip_special_tokens=False)
        pieces = self._word_splitter.pre_tokenize_str(text)
        piece_ends, total = [], 0
        for piece, _ in pieces:
            total += len(piece)
            piece_ends.append(total)
        starts, offset = [], 0
        for index in ids:
            # Clamped: text cut mid-character decodes to '�', whose 3 bytes may outrun the tokens.
            starts.append(min(bisect_right(piece_ends, offset), len(pieces) - 1))
            offset += len(self._tokenizer.id_to_token(index))
        # Numbered 0, 1, 2, ...: a token spanning two pieces (never one from encode) skips none.
        dense = {piece: word for word, piece in enumerate(dict.fromkeys(starts))}
        return [dense[piece] for piece in starts]

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The model's prompt for a conversation, rendered from the GGUF's ``tokenizer.chat_template``.

        ``messages`` are ``{"role": "system" | "user" | "assistant", "content": str}`` dicts.
        Rendered as ``transformers`` renders it: a sandboxed Jinja environment with
        ``trim_blocks`` and ``lstrip_blocks``; with ``add_generation_prompt`` the text ends with
        the opening of the assistant's turn. Returns text; :meth:`encode` turns it into ids.
        Raises :class:`NoChatTemplateError` when the tokenizer has no template.
        """
        if self.chat_template is None:
            raise NoChatTemplateError("this model's tokenizer has no chat template; generate plain text "
                                      "instead of chatting")
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise TypeError(
                f"messages must be a list of {{'role': str, 'content': str}} dicts, got {messages!r:.120}"
            )
        return self._compiled_template().render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self._token(self.bos_token_id),
            eos_token=self._token(self.eos_token_id),
        )

    def _token(self, index: int | None) -> str:
        """The text of special token ``index``; "" for a tokenizer without one (templates that
        use ``bos_token`` then render nothing there)."""
        return "" if index is None else self._tokenizer.id_to_token(index)

    def _compiled_template(self):
        if self._template is None:
            import jinja2
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message):
                raise jinja2.exceptions.TemplateError(message)

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=["jinja2.ext.loopcontrols"])
            # As transformers: JSON without Jinja's HTML escaping, non-ASCII kept.
            env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False,
                                                                          indent=indent)
            env.globals["raise_exception"] = raise_exception
            self._template = env.from_string(self.chat_template)
        return self._template

    def _checked(self, ids) -> list[int]:
        """A list of ints from a list or 1-D tensor of ids, each checked to be in the vocabulary."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside the vocabulary of {self.vocab_size}")
        return ids
