"""GPT-2 folders (``model_type: gpt2``) as attnlab's :class:`GPT` with learned positions.

GPT-2's checkpoints store linear layers as ``Conv1D``: weights ``(in_features, out_features)``,
the transpose of ``nn.Linear``'s; and one fused ``c_attn`` computes queries, keys and values::

    c_attn.weight (D, 3D) -> .T (3D, D) -> rows [0, D) q_proj, [D, 2D) k_proj, [2D, 3D) v_proj
"""

from __future__ import annotations

from pathlib import Path

import torch

from attnlab.models.gpt import GPT, GPTConfig
from attnlab.models.hf.architecture import Architecture
from attnlab.models.hf.files import build_config, refuse_other_values, required

# activation_function -> GPTConfig.ffn_activation: gelu_new is the tanh approximation.
_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
# Hugging Face names inside h.N -> GPT names inside layers.N, for the tensors used as they are.
_LAYER_NAMES = {
    "ln_1.weight": "attn_norm.weight", "ln_1.bias": "attn_norm.bias",
    "ln_2.weight": "mlp_norm.weight", "ln_2.bias": "mlp_norm.bias",
    "attn.c_proj.bias": "attn.out_proj.bias", "mlp.c_fc.bias": "mlp.up.bias",
    "mlp.c_proj.bias": "mlp.down.bias",
}
# Conv1D weights, transposed into nn.Linear ones.
_TRANSPOSED = {"attn.c_proj.weight": "attn.out_proj.weight", "mlp.c_fc.weight": "mlp.up.weight",
               "mlp.c_proj.weight": "mlp.down.weight"}
_NAMES = {"wte.weight": "embed.weight", "wpe.weight": "pos_embed.weight", "ln_f.weight": "norm.weight",
          "ln_f.bias": "norm.bias"}


def gpt2_config(hf: dict, source: Path, model_type: str) -> GPTConfig:
    """The :class:`GPTConfig` of a ``GPT2Model``'s ``config.json``.

    Refused: an untied output layer (attnlab's GPT always ties it), unscaled or layer-scaled
    attention, cross-attention, an activation other than GELU (exact or tanh).
    """
    refuse_other_values(hf, source, model_type, {
        "tie_word_embeddings": (True, True),
        "scale_attn_weights": (True, True),
        "scale_attn_by_inverse_layer_idx": (False, False),
        "add_cross_attention": (False, False),
        "activation_function": ("gelu_new", *_ACTIVATIONS),
    })
    keys = {"vocab_size": "vocab_size", "embed_dim": "n_embd", "num_layers": "n_layer", "num_heads": "n_head"}
    values = {field: (key, required(hf, key, source, model_type)) for field, key in keys.items()}
    values["max_positions"] = ("n_positions", hf.get("n_positions", 1024))
    values["ffn_dim"] = ("n_inner", hf.get("n_inner"))
    values["norm_eps"] = ("layer_norm_epsilon", hf.get("layer_norm_epsilon", 1e-5))
    activation = _ACTIVATIONS[hf.get("activation_function", "gelu_new")]
    values["ffn_activation"] = ("activation_function", activation)
    values["positions"] = ("model_type", "learned")
    values["bias"] = ("model_type", True)
    return build_config(GPTConfig, values, source)


def gpt2_tensors(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a ``GPT2Model`` file, with its (Conv1D) shape."""
    d = config.embed_dim
    f = 4 * d if config.ffn_dim is None else config.ffn_dim
    per_layer = {
        "ln_1.weight": (d,), "ln_1.bias": (d,), "ln_2.weight": (d,), "ln_2.bias": (d,),
        "attn.c_attn.weight": (d, 3 * d), "attn.c_attn.bias": (3 * d,),
        "attn.c_proj.weight": (d, d), "attn.c_proj.bias": (d,),
        "mlp.c_fc.weight": (d, f), "mlp.c_fc.bias": (f,),
        "mlp.c_proj.weight": (f, d), "mlp.c_proj.bias": (d,),
    }
    shapes = {"wte.weight": (config.vocab_size, d), "wpe.weight": (config.max_positions, d),
              "ln_f.weight": (d,), "ln_f.bias": (d,)}
    for layer in range(config.num_layers):
        shapes.update({f"h.{layer}.{name}": shape for name, shape in per_layer.items()})
    return shapes


def gpt2_state(tensors: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """The :class:`GPT` state of a file's tensors: Conv1D weights transposed, ``c_attn`` split."""
    state = {}
    for name, tensor in tensors.items():
        if not name.startswith("h."):
            state[_NAMES[name]] = tensor
            continue
        _, layer, rest = name.split(".", 2)
        ours = f"layers.{layer}."
        if rest in ("attn.c_attn.weight", "attn.c_attn.bias"):
            kind = rest.rsplit(".", 1)[1]
            fused = tensor.T if kind == "weight" else tensor  # (3D, D) or (3D,)
            for part, chunk in zip(("q_proj", "k_proj", "v_proj"), fused.chunk(3, dim=0), strict=True):
                state[f"{ours}attn.{part}.{kind}"] = chunk.contiguous()
        elif rest in _TRANSPOSED:
            state[ours + _TRANSPOSED[rest]] = tensor.T.contiguous()
        else:
            state[ours + _LAYER_NAMES[rest]] = tensor
    return state


GPT2 = Architecture(
    model_class=GPT,
    config=gpt2_config,
    tensors=gpt2_tensors,
    convert=gpt2_state,
    prefixes=("transformer.", ""),
    marker="wte.weight",
    # Older files keep each layer's causal mask as a buffer (attn.bias, attn.masked_bias), and
    # some the tied output layer.
    ignored=lambda config: r"h\.\d+\.attn\.(masked_)?bias|lm_head\.weight",
)
