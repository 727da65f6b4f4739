"""The attention mechanism: one functional API, its backends, masks, positions, cache, modules,
and the one place where attention is recorded and edited (:mod:`attnlab.attention.record`)."""

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
from attnlab.attention.record import LayerTrace, Recording, edit, record
from attnlab.attention.ring import ring_attention

__all__ = [
    "BACKENDS",
    "AttentionTrace",
    "KVCache",
    "LayerTrace",
    "LearnedPositionalEmbedding",
    "MultiHeadAttention",
    "Recording",
    "RotaryEmbedding",
    "alibi_slopes",
    "attention",
    "attention_trace",
    "choose_backend",
    "edit",
    "elu_feature_map",
    "linear_attention",
    "record",
    "ring_attention",
    "sinusoidal_positions",
    "sinusoidal_positions_2d",
]
