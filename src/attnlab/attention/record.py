"""Recording and editing attention: the one interception point every model shares.

Models return their outputs only. To see or change what their attention does, wrap a call::

    with record(model) as rec:                      # every step of every attention call
        logits = model(ids)
    rec.traces                                      # list[LayerTrace], in call order

    with edit(model, hide_keys=[3], heads_off=[(2, 1)], layers_off=[4]):
        logits = model(ids)                         # the what-if run

Entering a context appends a small hook to ``_attention_hooks`` of each selected
:class:`~attnlab.attention.MultiHeadAttention`; leaving it (also through an exception) removes
it. A module with no hooks runs exactly its usual fast path: the only cost is one truthiness test
of an empty list. With hooks, :func:`hooked_attention` runs instead, plainly::

    allowed = module's mask AND (key column j not in hide_keys)        (Lq, Lk) columns
    heads = attention_trace(q, k, v, ...).output    if recording       the reference formula
          = attention(q, k, v, backend=module.backend, ...)  otherwise  the fast backend
    heads[:, h] = 0   for every switched-off head h of this layer     before out_proj

Hooks live on the model's modules, so one context per model at a time across threads (nesting
``record`` and ``edit`` in one thread is fine); the server serializes work per model.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from attnlab.attention.functional import AttentionTrace, attention, attention_trace
from attnlab.attention.masks import combine_masks

ModuleFilter = Callable[[str, nn.Module], bool]


@dataclass
class LayerTrace:
    """One call of one attention module, every step kept.

    ``layer``: the module's index among the selected :class:`MultiHeadAttention` modules of the
    model, in ``model.modules()`` order; ``name``: its qualified name (``"layers.3.attn"``).
    ``attn_input`` ``(batch, Lq, embed_dim)`` is exactly what ``q_proj`` read (after the
    LayerNorm/RMSNorm in pre-norm models, the block input in post-norm ones). ``attention`` is
    the call's :class:`AttentionTrace` by the reference formula: ``query`` ``(batch, heads, Lq,
    head_dim)`` (after RoPE where the model uses it), ``key``/``value`` ``(batch, kv_heads, Lk,
    head_dim)`` (cached keys included), ``scores``/``scaled``/``masked``/``weights`` ``(batch,
    heads, Lq, Lk)`` and ``output`` ``(batch, heads, Lq, head_dim)``. ``offset``: the cache length
    before this call, so the queries sit at positions ``offset .. offset + Lq - 1`` (0 for
    cross-attention, whose keys are the context); ``cross``: a cross-attention call.
    """

    layer: int
    name: str
    attn_input: torch.Tensor
    attention: AttentionTrace
    offset: int = 0
    cross: bool = False


class Recording:
    """What :func:`record` yields: ``traces``, one :class:`LayerTrace` per attention call."""

    def __init__(self) -> None:
        self.traces: list[LayerTrace] = []

    def clear(self) -> None:
        """Drop what was recorded so far; recording goes on."""
        self.traces.clear()


@dataclass(frozen=True)
class _Edit:
    """One :func:`edit` context: key columns hidden everywhere, heads off per layer."""

    hide_keys: tuple[int, ...]
    heads_off: dict[int, tuple[int, ...]]  # layer -> query heads whose output is zeroed


@dataclass(frozen=True)
class _Hook:
    """What one context attaches to one module: its owner and the module's place in the model."""

    owner: Recording | _Edit
    layer: int
    name: str


def hooked_attention(
    module: nn.Module,
    x: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    offset: int,
    cross: bool,
    kwargs: dict,
) -> torch.Tensor:
    """The head outputs ``(batch, heads, Lq, head_dim)`` of ``module`` under its hooks.

    ``x`` ``(batch, Lq, embed_dim)`` is what ``q_proj`` read; ``q`` ``(batch, heads, Lq,
    head_dim)``, ``k``/``v`` ``(batch, kv_heads, Lk, head_dim)`` and ``kwargs`` are exactly what
    the module would pass to :func:`attention`. Raises ``ValueError`` for a hidden key position
    outside ``0 .. Lk - 1``.
    """
    hooks = module._attention_hooks
    edits = [hook for hook in hooks if isinstance(hook.owner, _Edit)]
    k_len = k.shape[-2]
    hidden = sorted({p for hook in edits for p in hook.owner.hide_keys})
    if hidden:
        bad = [p for p in hidden if not 0 <= p < k_len]
        if bad:
            raise ValueError(
                f"hide_keys position {bad[0]} is out of range for {edits[0].name or 'the model'}: "
                f"it attends over Lk={k_len} keys (positions 0 to {k_len - 1})"
            )
        keep = torch.ones(k_len, dtype=torch.bool, device=q.device)  # (Lk,) broadcasts over rows
        keep[hidden] = False
        mask_dtype = torch.promote_types(q.dtype, torch.float32)  # as the module builds its masks
        kwargs = {**kwargs, "attn_mask": combine_masks(kwargs["attn_mask"], keep, dtype=mask_dtype)}

    recordings = [hook for hook in hooks if isinstance(hook.owner, Recording)]
    trace = attention_trace(q, k, v, **kwargs) if recordings else None
    heads = trace.output if recordings else attention(q, k, v, backend=module.backend, **kwargs)
    off = sorted({h for hook in edits for h in hook.owner.heads_off.get(hook.layer, ())})
    if off:
        heads = heads.index_fill(1, torch.tensor(off, device=heads.device), 0.0)
        if trace is not None:
            # The trace keeps the switched-off heads' weights (where they would have looked);
            # its output is what out_proj reads: zero for those heads.
            trace = dataclasses.replace(trace, output=heads)
    for hook in recordings:
        hook.owner.traces.append(LayerTrace(layer=hook.layer, name=hook.name, attn_input=x,
                                            attention=trace, offset=offset, cross=cross))
    return heads


def _selected(model: nn.Module, modules: ModuleFilter | None) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the model's selected MultiHeadAttention modules, in modules() order."""
    # Imported here: modules.py imports this file for hooked_attention.
    from attnlab.attention.modules import MultiHeadAttention

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if modules is not None and not callable(modules):
        raise TypeError(f"modules must be None or a callable (name, module) -> bool, got {modules!r}")
    chosen = [(name, m) for name, m in model.named_modules()
              if isinstance(m, MultiHeadAttention) and (modules is None or modules(name, m))]
    if not chosen:
        raise ValueError(f"no MultiHeadAttention module selected in {type(model).__name__}")
    linear = [name or type(m).__name__ for name, m in chosen if m.linear]
    if linear:
        raise ValueError(f"linear attention forms no attention weights to record or edit: "
                         f"{', '.join(linear)}; leave them out with modules=")
    return chosen


@contextmanager
def _hooked(chosen: list[tuple[str, nn.Module]], owner: Recording | _Edit) -> Iterator[None]:
    """Attach one hook per chosen module for the duration of the block, removed even on errors."""
    attached = []
    try:
        for layer, (name, module) in enumerate(chosen):
            hook = _Hook(owner, layer, name)
            module._attention_hooks.append(hook)
            attached.append((module, hook))
        yield
    finally:
        for module, hook in attached:
            # By identity: a nested context's hooks on the same module stay.
            module._attention_hooks[:] = [h for h in module._attention_hooks if h is not hook]


@contextmanager
def record(model: nn.Module, *, modules: ModuleFilter | None = None) -> Iterator[Recording]:
    """Record every attention call of ``model`` inside the block.

    Args:
        model: any ``nn.Module`` holding :class:`MultiHeadAttention` modules (or one itself).
        modules: ``None`` for all of them, or ``(name, module) -> bool`` choosing some (names as
            in ``model.named_modules()``); ``LayerTrace.layer`` counts the chosen ones only.

    Yields a :class:`Recording` whose ``traces`` gain one :class:`LayerTrace` per module call, in
    call order (a cached decoding loop appends one per layer per step). Recorded calls run the
    reference formula (:func:`attention_trace`), so outputs equal the unrecorded ones to float
    round-off. Inside :func:`edit` the traces show the edited computation.

    Raises ``TypeError`` for a model that is not an ``nn.Module`` or a non-callable ``modules``,
    ``ValueError`` if nothing is selected or a selected module uses linear attention.
    """
    recording = Recording()
    with _hooked(_selected(model, modules), recording):
        yield recording


def _positions(values, what: str) -> tuple[int, ...]:
    """``values`` as a tuple of ints; ``TypeError`` naming ``what`` for anything else."""
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise TypeError(f"{what} must be an iterable of ints, got {values!r}")
    out = []
    for value in values:
        if isinstance(value, bool):
            raise TypeError(f"{what} must hold ints, got {value!r}")
        try:
            out.append(operator.index(value))
        except TypeError:
            raise TypeError(f"{what} must hold ints, got {value!r}") from None
    return tuple(out)


def _check_layer(layer: int, what: str, layers: int) -> None:
    if not 0 <= layer < layers:
        raise ValueError(f"{what} layer {layer} is out of range: the selected modules are layers "
                         f"0 to {layers - 1}")


def _heads_off(heads_off, layers_off, chosen: list[tuple[str, nn.Module]]) -> dict[int, tuple[int, ...]]:
    """``layer -> query heads switched off``, checked against the chosen modules."""
    off: dict[int, set[int]] = {}
    if isinstance(heads_off, str | bytes) or not isinstance(heads_off, Iterable):
        raise TypeError(f"heads_off must be an iterable of (layer, head) pairs, got {heads_off!r}")
    for pair in heads_off:
        if isinstance(pair, str | bytes) or not isinstance(pair, Iterable):
            raise TypeError(f"heads_off must hold (layer, head) pairs, got {pair!r}")
        pair = _positions(pair, "heads_off pairs")
        if len(pair) != 2:
            raise TypeError(f"heads_off must hold (layer, head) pairs, got {pair!r}")
        layer, head = pair
        _check_layer(layer, "heads_off", len(chosen))
        name, module = chosen[layer]
        if not 0 <= head < module.num_heads:
            raise ValueError(f"heads_off head {head} is out of range for layer {layer} ({name}): "
                             f"it has heads 0 to {module.num_heads - 1}")
        off.setdefault(layer, set()).add(head)
    for layer in _positions(layers_off, "layers_off"):
        _check_layer(layer, "layers_off", len(chosen))
        off[layer] = set(range(chosen[layer][1].num_heads))
    return {layer: tuple(sorted(heads)) for layer, heads in off.items()}


@contextmanager
def edit(
    model: nn.Module,
    *,
    hide_keys: Iterable[int] = (),
    heads_off: Iterable[tuple[int, int]] = (),
    layers_off: Iterable[int] = (),
    modules: ModuleFilter | None = None,
) -> Iterator[None]:
    """Run ``model`` with its attention edited inside the block.

    Args:
        model, modules: as for :func:`record`; layers count the selected modules only.
        hide_keys: key positions (absolute, cached keys counted: columns of the ``(Lq, Lk)``
            scores) that no query of any selected module may attend to. A query left with no
            key outputs zeros.
        heads_off: ``(layer, head)`` pairs: that query head's output (before ``out_proj``) is 0.
        layers_off: layers whose every head is off (the layer adds only ``out_proj``'s bias).

    Without :func:`record` the edited attention runs on each module's own backend; with it, on
    the reference formula, and the traces show hidden keys as masked (``-inf``, weight 0).

    Raises ``TypeError`` for arguments of the wrong type, ``ValueError`` at entry for a layer or
    head out of range, and ``ValueError`` at a call whose ``Lk`` a hidden position exceeds (the
    message names the position, the module and ``Lk``); and as :func:`record` does.
    """
    chosen = _selected(model, modules)
    owner = _Edit(hide_keys=_positions(hide_keys, "hide_keys"),
                  heads_off=_heads_off(heads_off, layers_off, chosen))
    with _hooked(chosen, owner):
        yield
