"""Models built from :mod:`attnlab.attention`: pretrained BERT (MiniLM) and LLaMA (SmolLM2), a GPT,
and translators (a Transformer and an LSTM baseline); Hugging Face model folders (BERT, LLaMA,
Qwen2, Mistral, GPT-2) load into the same modules (:mod:`attnlab.models.hf`).

Classes are imported lazily so that ``import attnlab.models`` stays cheap.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "BertEncoder": "attnlab.models.bert",
    "BertConfig": "attnlab.models.bert",
    "LlamaDecoder": "attnlab.models.llama",
    "LlamaConfig": "attnlab.models.llama",
    "GPT": "attnlab.models.gpt",
    "GPTConfig": "attnlab.models.gpt",
    "Seq2SeqTransformer": "attnlab.models.seq2seq",
    "Seq2SeqConfig": "attnlab.models.seq2seq",
    "LSTMSeq2Seq": "attnlab.models.lstm_seq2seq",
    "LSTMSeq2SeqConfig": "attnlab.models.lstm_seq2seq",
    "ViT": "attnlab.models.vit",
    "ViTConfig": "attnlab.models.vit",
    "VIT_PRESETS": "attnlab.models.vit",
    "load_pretrained": "attnlab.models.pretrained",
    "MissingPackageError": "attnlab.models.pretrained",
    "PRETRAINED": "attnlab.models.pretrained",
    "load_folder": "attnlab.models.hf",
    "ModelFolderError": "attnlab.models.hf",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'attnlab.models' has no attribute {name!r}")


__all__ = sorted(_LAZY)
