"""LLaMA-family folders as a :class:`LlamaDecoder`: ``llama`` (SmolLM, TinyLlama), ``qwen2``
(query/key/value biases) and ``mistral`` (a sliding window).

The three share one layout (RMSNorm, grouped-query attention with rotate-half RoPE, SwiGLU) and
Hugging Face's tensor names; they differ only in the config keys this module reads.
"""

from __future__ import annotations

from pathlib import Path

import torch

from attnlab.models.hf.architecture import Architecture
from attnlab.models.hf.files import ModelFolderError, build_config, refuse_other_values, required
from attnlab.models.llama import LlamaConfig, LlamaDecoder

# Hugging Face names inside layers.N -> LlamaDecoder names inside layers.N.
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn.q_proj.weight",
    "self_attn.k_proj.weight": "attn.k_proj.weight",
    "self_attn.v_proj.weight": "attn.v_proj.weight",
    "self_attn.o_proj.weight": "attn.out_proj.weight",
    "self_attn.q_proj.bias": "attn.q_proj.bias",
    "self_attn.k_proj.bias": "attn.k_proj.bias",
    "self_attn.v_proj.bias": "attn.v_proj.bias",
    "self_attn.o_proj.bias": "attn.out_proj.bias",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn.gate.weight",
    "mlp.up_proj.weight": "ffn.up.weight",
    "mlp.down_proj.weight": "ffn.down.weight",
}
_NAMES = {"embed_tokens.weight": "embed.weight", "norm.weight": "norm.weight",
          "lm_head.weight": "lm_head.weight"}
# transformers' defaults for keys a config.json may leave out, per model_type.
_MAX_POSITIONS = {"llama": 2048, "mistral": 131072, "qwen2": 32768}


def _rope_theta(hf: dict, source: Path, model_type: str) -> object:
    """The RoPE base: ``rope_parameters.rope_theta`` (transformers 5) or ``rope_theta``; any
    RoPE scaling (llama3, yarn, linear...) is refused."""
    parameters = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if not isinstance(parameters, dict):
        raise ModelFolderError(f"{source}: rope_parameters must be an object, got {parameters!r:.60}")
    refuse_other_values(parameters, source, model_type, {"rope_type": ("default", "default")})
    return parameters.get("rope_theta", hf.get("rope_theta", 10000.0))


def llama_config(hf: dict, source: Path, model_type: str) -> LlamaConfig:
    """The :class:`LlamaConfig` of a ``llama``, ``qwen2`` or ``mistral`` ``config.json``.

    Refused: another activation, RoPE scaling, MLP biases, Qwen2's per-layer sliding windows,
    and a ``head_dim`` other than ``hidden_size / num_attention_heads``.
    """
    rules = {"hidden_act": ("silu", "silu"), "mlp_bias": (False, False)}
    if model_type == "qwen2":
        rules["use_sliding_window"] = (False, False)
    refuse_other_values(hf, source, model_type, rules)
    layer_types = hf.get("layer_types")
    if layer_types is not None and (not isinstance(layer_types, list)
                                    or any(kind != "full_attention" for kind in layer_types)):
        raise ModelFolderError(f"{source}: layer_types={layer_types!r:.60} is not supported for {model_type} "
                               f"(attnlab implements layers of one kind, 'full_attention')")
    keys = {
        "vocab_size": "vocab_size", "embed_dim": "hidden_size", "num_layers": "num_hidden_layers",
        "num_heads": "num_attention_heads", "ffn_dim": "intermediate_size",
    }
    values = {field: (key, required(hf, key, source, model_type)) for field, key in keys.items()}
    kv_heads = hf.get("num_key_value_heads")
    values["num_kv_heads"] = ("num_key_value_heads", values["num_heads"][1] if kv_heads is None else kv_heads)
    values["max_positions"] = ("max_position_embeddings",
                               hf.get("max_position_embeddings", _MAX_POSITIONS[model_type]))
    values["rope_theta"] = ("rope_theta", _rope_theta(hf, source, model_type))
    values["norm_eps"] = ("rms_norm_eps", hf.get("rms_norm_eps", 1e-6))
    values["tie_embeddings"] = ("tie_word_embeddings", hf.get("tie_word_embeddings", False))
    if model_type == "qwen2":
        values["qkv_bias"] = ("model_type", True)
    else:
        bias = hf.get("attention_bias", False)
        values["qkv_bias"] = values["out_bias"] = ("attention_bias", bias)
    if model_type == "mistral":
        values["window"] = ("sliding_window", hf.get("sliding_window"))
    config = build_config(LlamaConfig, values, source)
    head_dim = hf.get("head_dim")
    if head_dim is not None and head_dim != config.head_dim:
        raise ModelFolderError(f"{source}: head_dim={head_dim!r:.30} is not supported (attnlab needs "
                               f"head_dim = hidden_size / num_attention_heads = {config.head_dim})")
    return config


def llama_tensors(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a ``LlamaModel`` file (plus ``lm_head`` when untied), with its shape."""
    d, f, kv = config.embed_dim, config.ffn_dim, config.num_kv_heads * config.head_dim
    per_layer = {
        "input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,),
        "self_attn.q_proj.weight": (d, d), "self_attn.k_proj.weight": (kv, d),
        "self_attn.v_proj.weight": (kv, d), "self_attn.o_proj.weight": (d, d),
        "mlp.gate_proj.weight": (f, d), "mlp.up_proj.weight": (f, d), "mlp.down_proj.weight": (d, f),
    }
    if config.qkv_bias:
        per_layer.update({"self_attn.q_proj.bias": (d,), "self_attn.k_proj.bias": (kv,),
                          "self_attn.v_proj.bias": (kv,)})
    if config.out_bias:
        per_layer["self_attn.o_proj.bias"] = (d,)
    shapes = {"embed_tokens.weight": (config.vocab_size, d), "norm.weight": (d,)}
    if not config.tie_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, d)
    for layer in range(config.num_layers):
        shapes.update({f"layers.{layer}.{name}": shape for name, shape in per_layer.items()})
    return shapes


def llama_state(tensors: dict[str, torch.Tensor], config: LlamaConfig) -> dict[str, torch.Tensor]:
    """The :class:`LlamaDecoder` state of a file's tensors. Hugging Face stores the query and key
    rows in rotate-half order, attnlab's RoPE layout, so nothing is permuted (unlike GGUF)."""
    state = {}
    for name, tensor in tensors.items():
        if name.startswith("layers."):
            _, layer, rest = name.split(".", 2)
            state[f"layers.{layer}.{_LAYER_NAMES[rest]}"] = tensor
        else:
            state[_NAMES[name]] = tensor
    return state


LLAMA = Architecture(
    model_class=LlamaDecoder,
    config=llama_config,
    tensors=llama_tensors,
    convert=llama_state,
    prefixes=("model.", ""),
    marker="embed_tokens.weight",
    # Older files keep each layer's RoPE frequencies (recomputed here), and tied ones may keep
    # a copy of the embeddings as the output layer.
    ignored=lambda config: r"(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq"
                           + (r"|lm_head\.weight" if config.tie_embeddings else ""),
)
