"""BERT folders (``model_type: bert``, MiniLM-style sentence encoders too) as a :class:`BertEncoder`.

The encoder stack only: a task model's pooler and heads (``pooler.*``, ``cls.*``) are in the
file but unused; sentence embeddings come from :meth:`BertEncoder.embed`.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from attnlab.models.bert import BertConfig, BertEncoder
from attnlab.models.hf.architecture import Architecture
from attnlab.models.hf.files import build_config, refuse_other_values, required

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
_LAYER_TENSOR = re.compile(r"encoder\.layer\.(\d+)\.(.+\.)(weight|bias)")


def bert_config(hf: dict, source: Path, model_type: str) -> BertConfig:
    """The :class:`BertConfig` of a ``BertModel``'s ``config.json``; other activations, relative
    positions, decoders and cross-attention are refused."""
    refuse_other_values(hf, source, model_type, {
        "hidden_act": ("gelu", "gelu"),
        "position_embedding_type": ("absolute", "absolute"),
        "is_decoder": (False, False),
        "add_cross_attention": (False, False),
    })
    keys = {
        "vocab_size": "vocab_size", "embed_dim": "hidden_size", "num_layers": "num_hidden_layers",
        "num_heads": "num_attention_heads", "ffn_dim": "intermediate_size",
    }
    values = {field: (key, required(hf, key, source, model_type)) for field, key in keys.items()}
    values["max_positions"] = ("max_position_embeddings", hf.get("max_position_embeddings", 512))
    values["type_vocab_size"] = ("type_vocab_size", hf.get("type_vocab_size", 2))
    values["layer_norm_eps"] = ("layer_norm_eps", hf.get("layer_norm_eps", 1e-12))
    return build_config(BertConfig, values, source)


def bert_tensors(config: BertConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a ``BertModel`` file (pooler aside), with its shape."""
    d, f = config.embed_dim, config.ffn_dim
    shapes = {
        "embeddings.word_embeddings.weight": (config.vocab_size, d),
        "embeddings.position_embeddings.weight": (config.max_positions, d),
        "embeddings.token_type_embeddings.weight": (config.type_vocab_size, d),
        "embeddings.LayerNorm.weight": (d,),
        "embeddings.LayerNorm.bias": (d,),
    }
    per_layer = {
        "attention.self.query.weight": (d, d), "attention.self.key.weight": (d, d),
        "attention.self.value.weight": (d, d), "attention.output.dense.weight": (d, d),
        "intermediate.dense.weight": (f, d), "output.dense.weight": (d, f),
        "intermediate.dense.bias": (f,),
    }
    for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                 "attention.output.dense", "output.dense"):
        per_layer[f"{name}.bias"] = (d,)
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
        per_layer[f"{name}.weight"] = per_layer[f"{name}.bias"] = (d,)
    for layer in range(config.num_layers):
        shapes.update({f"encoder.layer.{layer}.{name}": shape for name, shape in per_layer.items()})
    return shapes


def _our_name(hf_name: str) -> str:
    for hf_prefix, prefix in _EMBEDDING_NAMES.items():
        if hf_name.startswith(hf_prefix):
            return prefix + hf_name[len(hf_prefix):]
    match = _LAYER_TENSOR.fullmatch(hf_name)
    return f"layers.{match[1]}.{_LAYER_NAMES[match[2]]}{match[3]}"


def bert_state(tensors: dict[str, torch.Tensor], config: BertConfig) -> dict[str, torch.Tensor]:
    """The :class:`BertEncoder` state of a file's tensors (named as :func:`bert_tensors`)."""
    return {_our_name(name): tensor for name, tensor in tensors.items()}


BERT = Architecture(
    model_class=BertEncoder,
    config=bert_config,
    tensors=bert_tensors,
    convert=bert_state,
    prefixes=("bert.", ""),
    marker="embeddings.word_embeddings.weight",
    # position_ids is arange(max_positions), recomputed in forward; the pooler (tanh over [CLS])
    # and cls.* are BERT's pretraining heads, not part of the sentence encoder.
    ignored=lambda config: r"embeddings\.position_ids|pooler\..*|cls\..*",
    encoder=True,
)
