"""The attention mechanism: one functional API, its backends, masks, positions, cache, modules."""

from attnlab.attention.functional import (
    BACKENDS,
    AttentionTrace,
    attention,
    attention_trace,
    choose_backend,
)

__all__ = ["BACKENDS", "AttentionTrace", "attention", "attention_trace", "choose_backend"]
