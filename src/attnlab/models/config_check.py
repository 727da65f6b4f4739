"""One check for every model config: each field has its annotated type and a sane size.

A ``config.json`` read from disk is untrusted: it may hold a string where a size belongs, a NaN,
or a size so large that building the model would exhaust memory or never finish. Every attnlab
config dataclass calls :func:`check_config_fields` first thing in ``__post_init__``, so a bad
value is a one-line ``ValueError`` naming the field, before the class's own rules (divisibility,
allowed names) compare anything, and before any module is built. ``SafetensorsModel.load`` runs
it too, for config classes outside attnlab, and then caps the parameter count with
:data:`MAX_PARAMETERS`.

The limits are well above every model attnlab builds or loads (SmolLM2: 30 layers, 49,152 tokens,
8,192 positions; Llama-3.2-1B's 131,072 positions x 2,048 dims still fits the position-table
limit) and well below what would take minutes or gigabytes just to set up.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing

#: The most parameters a loaded model may have (8 GB in float32).
MAX_PARAMETERS = 2_000_000_000
#: The largest value of an integer field not named in :data:`SIZE_LIMITS` (vocabularies, ids...).
DEFAULT_SIZE_LIMIT = 1 << 20
#: Per-field limits, by field name (the names are shared by every attnlab config).
SIZE_LIMITS = {
    # Building a layer costs time even on the meta device: cap the count, not just the size.
    "num_layers": 512,
    "num_encoder_layers": 512,
    "num_decoder_layers": 512,
    "num_heads": 1024,
    "num_kv_heads": 1024,
    "embed_dim": 1 << 16,
    "hidden_dim": 1 << 16,
    "ffn_dim": 1 << 18,
    "image_size": 4096,
    "in_channels": 1024,
    "stem_channels": 4096,
    "patch_overlap": 1024,
}
#: ``max_positions * embed_dim`` at most this: position tables (RoPE's cos/sin, sinusoids) are
#: built from the config without being parameters, so :data:`MAX_PARAMETERS` does not see them.
MAX_POSITION_TABLE = 1 << 28


@functools.cache
def _field_types(config_class: type) -> dict[str, object]:
    """``{field name: resolved annotation}`` (configs use ``from __future__ import annotations``)."""
    hints = typing.get_type_hints(config_class)
    return {f.name: hints.get(f.name, typing.Any) for f in dataclasses.fields(config_class)}


def _has_type(value, hint) -> bool:
    """Whether ``value`` is a ``hint`` as JSON can spell it: an int is a valid float, a bool is
    not a number. Annotations other than bool/int/float/str/None and their unions are not
    checked."""
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is type(None):
        return value is None
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_has_type(value, arm) for arm in typing.get_args(hint))
    return True


def is_finite_number(value) -> bool:
    """Whether ``value`` is an int or float (not a bool) that a float can hold, NaN and infinity
    excluded; JSON ints can have thousands of digits."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _admits_float(hint) -> bool:
    return hint is float or float in typing.get_args(hint)


def _describe(hint) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(arm) for arm in typing.get_args(hint))
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string",
            type(None): "null"}.get(hint, str(hint))


def check_config_fields(config) -> None:
    """Raise ``ValueError`` unless every field of the dataclass ``config`` is sane.

    - its value has the field's annotated type (``bool``, ``int``, ``float``, ``str``, ``None``
      or a union of them; a ``bool`` is not accepted as a number);
    - a whole-number field lies in ``[0, limit]`` (:data:`SIZE_LIMITS`, else
      :data:`DEFAULT_SIZE_LIMIT`);
    - a float field is finite (no NaN, no infinity, no int too large for a float);
    - ``max_positions * embed_dim <= MAX_POSITION_TABLE`` when the config has both.

    The message names the class, the field, the value seen and the bound. Positivity and the
    rules between fields are each class's own ``__post_init__``'s.
    """
    name = type(config).__name__
    for field, hint in _field_types(type(config)).items():
        value = getattr(config, field)
        if not _has_type(value, hint):
            raise ValueError(f"{name}.{field} must be {_describe(hint)}, got {value!r:.60} "
                             f"({type(value).__name__})")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            continue
        if _admits_float(hint):  # a float field, even when JSON spells its value as an int
            if not is_finite_number(value):
                raise ValueError(f"{name}.{field} must be a finite number, got {value!s:.60}")
        elif isinstance(value, numbers.Integral):
            limit = SIZE_LIMITS.get(field, DEFAULT_SIZE_LIMIT)
            if not 0 <= value <= limit:
                raise ValueError(f"{name}.{field}={value!s:.60} is outside [0, {limit}], the range "
                                 f"attnlab accepts for {field}")
    positions, width = getattr(config, "max_positions", None), getattr(config, "embed_dim", None)
    if isinstance(positions, int) and isinstance(width, int) and positions * width > MAX_POSITION_TABLE:
        raise ValueError(f"{name}.max_positions * embed_dim = {positions} * {width} is above "
                         f"{MAX_POSITION_TABLE}, the largest position table attnlab builds")
