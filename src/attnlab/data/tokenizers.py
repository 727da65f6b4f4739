"""Tokenizers trained on a corpus and saved beside a checkpoint: characters or byte-level BPE.

- :class:`CharTokenizer` — one id per character; the vocabulary is the sorted set of characters of
  the training text, so the same text always gives the same ids.
- :class:`BPETokenizer` — byte-level BPE (GPT-2's scheme) trained with the ``tokenizers`` library,
  with ``<|endoftext|>`` as its end-of-sequence token. Any text encodes (bytes are the base
  alphabet).

Both answer the interface :func:`attnlab.generate` and the explainer use (``encode``, ``decode``,
``vocab_size``, ``eos_token_id``, ``special_ids``, ``token_strings``, ``word_ids``,
``max_length``) and ``save(folder)``, which writes ``tokenizer.json`` and
``tokenizer_meta.json`` (``{"kind": "char" | "bpe"}``); :func:`load_tokenizer` reads either
back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch

from attnlab.files import write_text
from attnlab.models.checkpoint import SavedFileError, one_line, read_json_object
from attnlab.models.pretrained.bpe_tokenizer import LlamaTokenizer

TOKENIZER_FILE = "tokenizer.json"
META_FILE = "tokenizer_meta.json"
EOS_TOKEN = "<|endoftext|>"
# A BPE tokenizer.json of 50k tokens is about 2 MB; a much larger one is not a tokenizer of ours.
MAX_TOKENIZER_BYTES = 64 << 20
# Unknown characters named in an encoding error; a long foreign text would flood the line.
_MAX_NAMED = 5


def _write_meta(folder: Path, kind: str) -> None:
    # Written after tokenizer.json: a folder with the meta file holds a complete tokenizer.
    write_text(folder / META_FILE, json.dumps({"kind": kind}) + "\n")


def _word_splitter():
    """GPT-2's pre-tokenizer: what ``word_ids`` calls a word (a run of letters with its space...)."""
    from tokenizers import pre_tokenizers

    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


class CharTokenizer:
    """One token per character: ``vocab[i]`` is the character of id ``i``.

    Build it with :meth:`train` (the sorted set of characters of a text) or :meth:`load`. There are
    no special tokens, hence no end-of-sequence id: generation stops at its length limit.
    """

    kind = "char"
    eos_token_id = None
    special_ids: frozenset[int] = frozenset()
    max_length = None

    def __init__(self, vocab: Iterable[str]) -> None:
        self.vocab = list(vocab)
        if not self.vocab or any(not isinstance(c, str) or len(c) != 1 for c in self.vocab):
            raise ValueError(f"vocab must be non-empty single characters, got {self.vocab!r:.80}")
        self._ids = {c: i for i, c in enumerate(self.vocab)}
        if len(self._ids) != len(self.vocab):
            raise ValueError(f"vocab has repeated characters: {self.vocab!r:.80}")

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        """The tokenizer whose vocabulary is every character of ``text``, in sorted order."""
        if not isinstance(text, str) or not text:
            raise ValueError(f"text must be a non-empty str, got {text!r:.40}")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        """The id of each character of ``text``.

        Raises ``ValueError`` naming the characters outside the vocabulary (with the position of
        their first occurrence); the vocabulary is fixed by the training text.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        try:
            return [self._ids[c] for c in text]
        except KeyError:
            first_seen: dict[str, int] = {}
            for position, c in enumerate(text):
                if c not in self._ids:
                    first_seen.setdefault(c, position)
            named = ", ".join(f"{c!r} (position {p})" for c, p in list(first_seen.items())[:_MAX_NAMED])
            more = f" and {len(first_seen) - _MAX_NAMED} more" if len(first_seen) > _MAX_NAMED else ""
            raise ValueError(
                f"characters not in this model's vocabulary: {named}{more}; a character-level "
                f"vocabulary holds only the {self.vocab_size} characters of the training text"
            ) from None

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """The text of ``ids`` (a list or 1-D tensor). ``skip_special_tokens`` changes nothing:
        there are none."""
        return "".join(self.token_strings(ids))

    def token_strings(self, ids) -> list[str]:
        """The character of each id. Raises ``ValueError`` for ids outside the vocabulary."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.dim() != 1:
            raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
        outside = ids[(ids < 0) | (ids >= self.vocab_size)]
        if outside.numel():
            raise ValueError(
                f"token ids {outside[:_MAX_NAMED].tolist()} are outside the vocabulary of {self.vocab_size}"
            )
        return [self.vocab[i] for i in ids.tolist()]

    def word_ids(self, ids) -> list[int | None]:
        """For each character, the index of its word, as GPT-2's pre-tokenizer splits the text:
        ``"Hi, you"`` gives ``[0, 0, 1, 2, 2, 2, 2]`` (``"Hi"``, ``","``, ``" you"``)."""
        text = self.decode(ids)
        words: list[int | None] = [None] * len(text)
        for word, (_, (start, end)) in enumerate(_word_splitter().pre_tokenize_str(text)):
            words[start:end] = [word] * (end - start)
        return words

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` (``{"vocab": [characters]}``) and ``tokenizer_meta.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_text(folder / TOKENIZER_FILE, json.dumps({"vocab": self.vocab}) + "\n")
        _write_meta(folder, self.kind)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> CharTokenizer:
        """From a folder written by :meth:`save`; :class:`SavedFileError` naming ``tokenizer.json``
        when it is not ``{"vocab": [distinct characters]}``."""
        path = Path(folder) / TOKENIZER_FILE
        vocab = read_json_object(path, max_bytes=MAX_TOKENIZER_BYTES).get("vocab")
        if not isinstance(vocab, list):
            raise SavedFileError(f'{path} must hold {{"vocab": [characters]}}, got vocab={vocab!r:.40}')
        try:
            return cls(vocab)
        except ValueError as error:
            raise SavedFileError(f"{path}: {error}") from None


class BPETokenizer(LlamaTokenizer):
    """Byte-level BPE trained on a corpus, with ``<|endoftext|>`` as end of sequence.

    Encoding, decoding, ``token_strings`` and ``word_ids`` are :class:`LlamaTokenizer`'s: the
    scheme is the same (GPT-2's pre-tokenizer and byte alphabet) without the digit split, and
    there is no chat template. Build it with :meth:`train` or :meth:`load`.
    """

    kind = "bpe"

    def __init__(self, tokenizer) -> None:
        eos = tokenizer.token_to_id(EOS_TOKEN)
        if eos is None:
            raise ValueError(f"a BPETokenizer needs the special token {EOS_TOKEN!r}; the tokenizer has none")
        super().__init__(
            tokenizer,
            bos_token_id=None,
            eos_token_id=eos,
            pad_token_id=None,
            chat_template=None,
            max_length=None,
        )

    @classmethod
    def train(cls, text: str | Iterable[str], vocab_size: int) -> BPETokenizer:
        """Learn ``vocab_size`` tokens (256 bytes, ``<|endoftext|>``, then merges) from the text.

        ``text`` is one string (trained line by line) or an iterable of strings. Raises
        ``ValueError`` for a ``vocab_size`` below 258 (bytes and end token leave no merge).
        """
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 258:
            raise ValueError(
                f"vocab_size must be a whole number >= 258 (256 bytes + end token + "
                f"merges), got {vocab_size!r}"
            )
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = _word_splitter()
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOS_TOKEN],
            # Every byte is a token from the start, so any text encodes, even unseen characters.
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        lines = text.splitlines(keepends=True) if isinstance(text, str) else text
        tokenizer.train_from_iterator(lines, trainer=trainer)
        return cls(tokenizer)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        raise ValueError("a BPETokenizer trained on plain text has no chat template")

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the ``tokenizers`` library's ``tokenizer.json`` and ``tokenizer_meta.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_text(folder / TOKENIZER_FILE, self._tokenizer.to_str())
        _write_meta(folder, self.kind)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> BPETokenizer:
        """From a folder written by :meth:`save`; :class:`SavedFileError` naming ``tokenizer.json``
        when the ``tokenizers`` library cannot read it or it has no ``<|endoftext|>``."""
        from tokenizers import Tokenizer

        path = Path(folder) / TOKENIZER_FILE
        if path.stat().st_size > MAX_TOKENIZER_BYTES:
            raise SavedFileError(
                f"{path} is larger than {MAX_TOKENIZER_BYTES} bytes, too large for a tokenizer"
            )
        try:
            return cls(Tokenizer.from_file(str(path)))
        # The tokenizers library reports every malformed file as a bare Exception.
        except Exception as error:
            raise SavedFileError(f"{path} is not a readable BPE tokenizer ({one_line(error)})") from None


TOKENIZERS = {cls.kind: cls for cls in (CharTokenizer, BPETokenizer)}


def load_tokenizer(folder: str | os.PathLike) -> CharTokenizer | BPETokenizer:
    """The tokenizer saved in ``folder``, of the class its ``tokenizer_meta.json`` names.

    Both files are untrusted: raises ``FileNotFoundError`` naming a missing file and
    :class:`~attnlab.models.checkpoint.SavedFileError` (a ``ValueError``), one line naming the
    file, for an unknown kind or a file that is malformed or too large.
    """
    folder = Path(folder)
    for name in (META_FILE, TOKENIZER_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} not found (is {folder} a saved tokenizer?)")
    kind = read_json_object(folder / META_FILE).get("kind")
    if not isinstance(kind, str) or kind not in TOKENIZERS:
        raise SavedFileError(
            f"{folder / META_FILE} names tokenizer kind {kind!r:.40}; known: {sorted(TOKENIZERS)}"
        )
    return TOKENIZERS[kind].load(folder)
