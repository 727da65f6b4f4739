"""The attention mechanism: one functional API, its backends, masks, positions, cache, modules."""

from attnlab.attention.cache import KVCache
from attnlab.attention.functional import (
    BACKENDS,
    AttentionTrace,
    attention,
    attention_trace,
    choose_backend,
)
from attnlab.attention.linear import elu_feature_map, linear_attention
from attnlab.attention.modules import MultiHeadAttention
from attnlab.attention.positions import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    alibi_slopes,
    sinusoidal_positions,
    sinusoidal_positions_2d,
)
from attnlab.attention.ring import ring_attention

__all__ = [
    "BACKENDS",
    "AttentionTrace",
    "KVCache",
    "LearnedPositionalEmbedding",
    "MultiHeadAttention",
    "RotaryEmbedding",
    "alibi_slopes",
    "attention",
    "attention_trace",
    "choose_backend",
    "elu_feature_map",
    "linear_attention",
    "ring_attention",
    "sinusoidal_positions",
    "sinusoidal_positions_2d",
]
