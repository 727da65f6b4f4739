"""Reading a LLaMA-family GGUF file (llama.cpp's format) into a :class:`LlamaConfig` and float32
tensors named for :class:`attnlab.models.llama.LlamaDecoder`.

Three things differ from a PyTorch checkpoint:

- Sizes are metadata keys (``llama.embedding_length``, ...) instead of a ``config.json``.
- Weights are quantized (SmolLM2's file: Q8_0 embeddings, Q4_1 projections, float32 norms);
  ``gguf.quants.dequantize`` turns them back into float32 ``(out_features, in_features)`` arrays
  (the file lists each shape fastest-dimension first, the reverse of PyTorch's order).
- llama.cpp's converter reorders the rows of the query and key projections, head by head, for
  its RoPE that rotates neighbouring pairs ``(2i, 2i+1)``. attnlab's :class:`RotaryEmbedding`
  pairs dimension ``i`` with ``i + head_dim/2`` (Hugging Face's ``rotate_half``), so
  :func:`unpermute_rope_rows` puts the rows back in that order.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from attnlab.models.llama import LlamaConfig

# GGUF tensor names -> LlamaDecoder parameter names.
_GLOBAL_NAMES = {
    "token_embd.weight": "embed.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {  # inside blk.N / layers.N
    "attn_norm": "attn_norm",
    "attn_q": "attn.q_proj",
    "attn_k": "attn.k_proj",
    "attn_v": "attn.v_proj",
    "attn_output": "attn.out_proj",
    "ffn_norm": "ffn_norm",
    "ffn_gate": "ffn.gate",
    "ffn_up": "ffn.up",
    "ffn_down": "ffn.down",
}
_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.weight")


def open_gguf(path: str | Path):
    """A ``gguf.GGUFReader`` over ``path`` (memory-mapped; parsing its metadata takes ~2 s)."""
    import gguf

    return gguf.GGUFReader(str(path))


def metadata(reader, key: str):
    """The value of metadata ``key`` (a number, string, or list); ``KeyError`` naming a missing key."""
    field = reader.fields.get(key)
    if field is None:
        raise KeyError(f"GGUF metadata has no {key!r}")
    return field.contents()


def llama_config(reader) -> LlamaConfig:
    """The model's sizes from the ``llama.*`` metadata.

    Embeddings are tied when the file has no ``output.weight`` tensor. Raises ``ValueError``
    when the file is not a LLaMA model or uses a RoPE variant attnlab does not implement.
    """
    architecture = metadata(reader, "general.architecture")
    if architecture != "llama":
        raise ValueError(f"expected a 'llama' GGUF model, got general.architecture={architecture!r}")
    # Older files lack llama.vocab_size; the vocabulary is then the tokenizer's token list.
    vocab = reader.fields.get("llama.vocab_size") or reader.fields["tokenizer.ggml.tokens"]
    config = LlamaConfig(
        vocab_size=vocab.contents() if vocab.name == "llama.vocab_size" else len(vocab.data),
        embed_dim=metadata(reader, "llama.embedding_length"),
        num_layers=metadata(reader, "llama.block_count"),
        num_heads=metadata(reader, "llama.attention.head_count"),
        num_kv_heads=metadata(reader, "llama.attention.head_count_kv"),
        ffn_dim=metadata(reader, "llama.feed_forward_length"),
        max_positions=metadata(reader, "llama.context_length"),
        rope_theta=metadata(reader, "llama.rope.freq_base"),
        norm_eps=metadata(reader, "llama.attention.layer_norm_rms_epsilon"),
        tie_embeddings=all(t.name != "output.weight" for t in reader.tensors),
    )
    rope_dim = reader.fields.get("llama.rope.dimension_count")
    if rope_dim is not None and rope_dim.contents() != config.head_dim:
        raise ValueError(
            f"partial RoPE is not supported: llama.rope.dimension_count={rope_dim.contents()} "
            f"!= head_dim={config.head_dim}"
        )
    if "llama.rope.scaling.type" in reader.fields:
        raise ValueError(f"RoPE scaling {metadata(reader, 'llama.rope.scaling.type')!r} is not supported")
    return config


def unpermute_rope_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's row order of a query/key projection ``(heads * head_dim, in_features)``.

    Within each head, llama.cpp stores row ``i`` of the first half and row ``i`` of the second
    half next to each other (index ``(head, i, half)``); this returns them as ``(head, half, i)``,
    the order whose RoPE rotates dimension ``i`` with ``i + head_dim/2``.
    """
    rows, features = weight.shape
    half = rows // heads // 2
    return weight.reshape(heads, half, 2, features).swapaxes(1, 2).reshape(rows, features)


def parameter_name(gguf_name: str) -> str:
    """The :class:`LlamaDecoder` parameter that GGUF tensor ``gguf_name`` fills.

    Raises ``ValueError`` for a tensor the decoder has no place for.
    """
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _LAYER_TENSOR.fullmatch(gguf_name)
    if match is None or match[2] not in _LAYER_NAMES:
        raise ValueError(f"GGUF tensor {gguf_name!r} has no place in a LlamaDecoder")
    return f"layers.{match[1]}.{_LAYER_NAMES[match[2]]}.weight"


def load_tensor(tensor, config: LlamaConfig) -> tuple[str, torch.Tensor]:
    """``(parameter name, float32 tensor)`` for one ``gguf.ReaderTensor``: dequantized, in
    PyTorch's ``(out_features, in_features)`` shape, query/key rows in rotate-half order.

    Raises ``ValueError`` when the dequantized shape is not the reverse of the file's shape.
    """
    from gguf.quants import dequantize

    weight = dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
    expected = tuple(int(n) for n in reversed(tensor.shape))
    if weight.shape != expected:
        raise ValueError(f"GGUF tensor {tensor.name!r} dequantized to {weight.shape}, expected {expected}")
    name = parameter_name(tensor.name)
    if name.endswith("q_proj.weight"):
        weight = unpermute_rope_rows(weight, config.num_heads)
    elif name.endswith("k_proj.weight"):
        weight = unpermute_rope_rows(weight, config.num_kv_heads)
    # A writable copy only where needed: float32 tensors come back as views of the read-only map.
    return name, torch.from_numpy(np.require(weight, np.float32, ["C_CONTIGUOUS", "WRITEABLE"]))
