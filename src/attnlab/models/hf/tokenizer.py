"""A model folder's tokenizer (``tokenizer.json`` through ``tokenizers``), special tokens, chat
template, and the sentence-transformers pooling of an encoder.

Decoders get a :class:`~attnlab.models.pretrained.bpe_tokenizer.LlamaTokenizer` (the
``tokenizers.Tokenizer`` plus special ids and the chat template of ``tokenizer_config.json`` or
``chat_template.jinja``); encoders a :class:`BertTokenizer`. Both are what attnlab's generation,
explanations and embeddings call: ``encode``, ``decode``, ``token_strings``, ``word_ids``,
``vocab_size``, ``max_length``, ``eos_token_id``...
"""

from __future__ import annotations

from pathlib import Path

import torch

from attnlab.models.bert import Pooling
from attnlab.models.checkpoint import SavedFileError, one_line, read_json
from attnlab.models.hf.files import ModelFolderError, read_json_file
from attnlab.models.pretrained.bpe_tokenizer import LlamaTokenizer

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
MODULES_FILE = "modules.json"
#: The largest tokenizer.json read (Llama 3's and Qwen2's are 7-9 MB).
MAX_TOKENIZER_BYTES = 64 << 20
#: tokenizer_config.json may list every added token; chat templates are a few KiB.
MAX_TOKENIZER_CONFIG_BYTES = 8 << 20
MAX_TEMPLATE_BYTES = 1 << 20
_ST = "sentence_transformers.models."
# sentence-transformers pooling flags -> Pooling.mode (the others are not implemented).
_POOLING_FLAGS = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
                  "pooling_mode_max_tokens": "max"}
_OTHER_POOLING_FLAGS = ("pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens",
                        "pooling_mode_lasttoken")


class BertTokenizer:
    """WordPiece tokenizer of a BERT folder (``tokenizers.Tokenizer`` over ``tokenizer.json``).

    Lower-cases, strips accents, splits punctuation, and frames each text as ``[CLS] ... [SEP]``
    (as the file's normalizer and post-processor say). Never truncates: all-MiniLM-L6-v2's
    ``tokenizer.json`` asks for truncation and padding to 128 tokens, both switched off here;
    callers compare lengths with ``max_length`` (the model's positions).
    """

    def __init__(self, tokenizer, max_length: int = 512) -> None:
        self._tokenizer = tokenizer
        self._tokenizer.no_truncation()
        self.max_length = max_length
        self.pad_id = self._tokenizer.token_to_id("[PAD]")
        # Pads batches to their longest text only (not to a fixed 128).
        self._tokenizer.enable_padding(pad_id=self.pad_id, pad_token="[PAD]")
        self.vocab_size = self._tokenizer.get_vocab_size()
        self.special_ids = {
            index for index, token in self._tokenizer.get_added_tokens_decoder().items() if token.special
        }
        # Added around the text, so they belong to no word; [UNK] and [MASK] stand for text.
        self._framing_ids = {self._tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]")}

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` framed as ``[CLS] ... [SEP]``, however long."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self._tokenizer.encode(text).ids

    def encode_batch(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids, attention_mask)``, both long ``(n, seq)``: rows padded with ``[PAD]`` to the
        longest text, mask 1 at real tokens and 0 at padding."""
        if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"texts must be a non-empty list of str, got {texts!r:.80}")
        encodings = self._tokenizer.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        return ids, mask

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Text of ``ids`` (a list or 1-D tensor); WordPiece ``##`` pieces are joined back."""
        return self._tokenizer.decode(_id_list(ids), skip_special_tokens=skip_special_tokens)

    def token_strings(self, ids) -> list[str]:
        """Readable text of each token: ``'[CLS]'``, ``'animal'``, ``'##ing'``."""
        strings = []
        for index in _id_list(ids):
            token = self._tokenizer.id_to_token(index)
            if token is None:
                raise ValueError(f"token id {index} is outside the vocabulary of {self.vocab_size}")
            strings.append(token)
        return strings

    def word_ids(self, ids) -> list[int | None]:
        """For each token, the index of the word of the text it belongs to (None for ``[CLS]``,
        ``[SEP]``, ``[PAD]``). A ``##`` piece continues the previous token's word, so
        ``['[CLS]', 'animal', '##ising', '!', '[SEP]']`` gives ``[None, 0, 0, 1, None]``
        (punctuation is a word of its own, as in Hugging Face's ``word_ids``)."""
        words: list[int | None] = []
        word = -1
        for index, token in zip(_id_list(ids), self.token_strings(ids), strict=True):
            if index in self._framing_ids:
                words.append(None)
                continue
            if not token.startswith("##") or word < 0:
                word += 1
            words.append(word)
        return words


def _id_list(ids) -> list[int]:
    """A list of ints from a list or a 1-D tensor of token ids."""
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
        return ids.tolist()
    return [int(i) for i in ids]


def _read_tokenizer(folder: Path, vocab_size: int):
    """``tokenizers.Tokenizer`` of ``folder/tokenizer.json``, no larger than the model's vocabulary."""
    from tokenizers import Tokenizer

    path = folder / TOKENIZER_FILE
    if not path.is_file():
        raise ModelFolderError(f"{path} not found: attnlab reads a model folder's tokenizer from "
                               f"tokenizer.json")
    if path.stat().st_size > MAX_TOKENIZER_BYTES:
        raise ModelFolderError(f"{path} is larger than {MAX_TOKENIZER_BYTES} bytes, too large for a "
                               f"tokenizer")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception for every malformed file
        raise ModelFolderError(f"{path} is not a tokenizer tokenizers can read ({one_line(error)})") from None
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > vocab_size:
        raise ModelFolderError(f"{path} has {size} tokens, more than the model's vocab_size={vocab_size} "
                               f"(config.json): the files do not belong together")
    return tokenizer


def _special_id(tokenizer, settings: dict, key: str, source: Path) -> int | None:
    """The id of special token ``settings[key]`` (a string or ``{"content": ...}``), or None."""
    token = settings.get(key)
    if isinstance(token, dict):
        token = token.get("content")
    if token is None:
        return None
    index = tokenizer.token_to_id(token) if isinstance(token, str) else None
    if index is None:
        raise ModelFolderError(f"{source}: {key}={token!r:.60} is not a token of tokenizer.json")
    return index


def _config_id(hf: dict, key: str, vocab_size: int, source: Path) -> int | None:
    """``config.json``'s ``key`` (an id, or a list whose first id counts), checked in range."""
    value = hf.get(key)
    if isinstance(value, list) and value:
        value = value[0]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab_size:
        raise ModelFolderError(f"{source}: {key}={value!r:.40} is not a token id below "
                               f"vocab_size={vocab_size}")
    return value


def _chat_template(folder: Path, settings: dict) -> str | None:
    """The chat template of ``tokenizer_config.json`` (a string, or named templates of which
    ``default`` counts) or of ``chat_template.jinja``; None when there is none."""
    source = folder / TOKENIZER_CONFIG_FILE
    template = settings.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is None and (folder / CHAT_TEMPLATE_FILE).is_file():
        source = folder / CHAT_TEMPLATE_FILE
        if source.stat().st_size > MAX_TEMPLATE_BYTES:
            raise ModelFolderError(f"{source} is larger than {MAX_TEMPLATE_BYTES} bytes, too large for a "
                                   f"template")
        try:
            template = source.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ModelFolderError(f"{source} cannot be read as UTF-8 text ({one_line(error)})") from None
    if template is not None and not isinstance(template, str):
        raise ModelFolderError(f"{source}: chat_template must be a string, got {type(template).__name__}")
    return template


def decoder_tokenizer(folder: Path, hf: dict, vocab_size: int, max_positions: int) -> LlamaTokenizer:
    """The tokenizer of a decoder folder: special ids from ``tokenizer_config.json`` (else
    ``config.json``), its chat template compiled in a sandbox (so a broken one is refused now,
    not at the first chat). ``encode`` adds no BOS: chat templates write it themselves."""
    tokenizer = _read_tokenizer(folder, vocab_size)
    source = folder / TOKENIZER_CONFIG_FILE
    settings = read_json_file(source, max_bytes=MAX_TOKENIZER_CONFIG_BYTES, required=False) or {}
    if "auto_map" in settings:
        raise ModelFolderError(f"{source} asks for remote code (auto_map); attnlab never runs code from a "
                               f"model folder")
    config_source = folder / "config.json"
    ids = {}
    for role in ("bos", "eos", "pad"):
        ids[role] = _special_id(tokenizer, settings, f"{role}_token", source)
        if ids[role] is None:
            ids[role] = _config_id(hf, f"{role}_token_id", vocab_size, config_source)
    result = LlamaTokenizer(tokenizer, bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                            pad_token_id=ids["pad"], chat_template=_chat_template(folder, settings),
                            max_length=max_positions)
    if result.chat_template is not None:
        try:
            result._compiled_template()
        except Exception as error:  # jinja2.TemplateError and whatever else a broken template raises
            raise ModelFolderError(f"{source}: the chat template does not compile "
                                   f"({one_line(error)})") from None
    return result


def encoder_tokenizer(folder: Path, vocab_size: int, max_positions: int) -> BertTokenizer:
    """The WordPiece tokenizer of a BERT folder; it must have ``[CLS]``, ``[SEP]`` and ``[PAD]``."""
    tokenizer = _read_tokenizer(folder, vocab_size)
    absent = [token for token in ("[CLS]", "[SEP]", "[PAD]") if tokenizer.token_to_id(token) is None]
    if absent:
        raise ModelFolderError(f"{folder / TOKENIZER_FILE} has no {absent[0]} token, which a BERT tokenizer "
                               f"needs (with [CLS], [SEP] and [PAD])")
    return BertTokenizer(tokenizer, max_length=max_positions)


def _pooling_mode(path: Path) -> str:
    """The :data:`~attnlab.models.bert.POOLING_MODES` mode a ``1_Pooling/config.json`` asks for."""
    settings = read_json_file(path)
    other = [flag for flag in _OTHER_POOLING_FLAGS if settings.get(flag)]
    modes = [mode for flag, mode in _POOLING_FLAGS.items() if settings.get(flag)]
    if other or len(modes) != 1:
        raise ModelFolderError(f"{path} asks for {other[0] if other else f'{len(modes)} pooling modes'}; "
                               f"attnlab pools with exactly one of {', '.join(_POOLING_FLAGS)}")
    return modes[0]


def pooling(folder: Path) -> Pooling:
    """How ``embed`` pools, from sentence-transformers' ``modules.json`` (its Pooling module's
    config; unit length when it lists Normalize) or, without one, ``1_Pooling/config.json``'s
    mode made unit length; mean to unit length when the folder has neither."""
    modules_path = folder / MODULES_FILE
    if not modules_path.is_file():
        default = folder / "1_Pooling" / "config.json"
        return Pooling(_pooling_mode(default)) if default.is_file() else Pooling()
    try:
        modules = read_json(modules_path)
    except SavedFileError as error:
        raise ModelFolderError(str(error)) from None
    if not isinstance(modules, list):
        raise ModelFolderError(f"{modules_path} must hold a JSON list of modules, got "
                               f"{type(modules).__name__}")
    mode, normalize = "mean", False
    for module in modules:
        kind = module.get("type") if isinstance(module, dict) else None
        if kind == _ST + "Pooling":
            sub = module.get("path")
            if not isinstance(sub, str) or Path(sub).name != sub or sub in ("", ".", ".."):
                raise ModelFolderError(f"{modules_path}: the Pooling module's path {sub!r:.60} is not a "
                                       f"folder of the model folder")
            mode = _pooling_mode(folder / sub / "config.json")
        elif kind == _ST + "Normalize":
            normalize = True
        elif kind != _ST + "Transformer":
            raise ModelFolderError(f"{modules_path} lists module {kind!r:.80}; attnlab implements "
                                   f"Transformer, Pooling and Normalize")
    return Pooling(mode, normalize)
