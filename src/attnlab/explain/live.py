"""What the live explorer (``attnlab serve``) computes: one run of a text, what-if comparisons,
and generation one token at a time, every number from the model's own forward passes.

- :func:`run_text`: ONE forward pass under :func:`attnlab.attention.record` (and, for a what-if,
  :func:`attnlab.attention.edit`) gives the explanation data of ``attnlab explain``, the
  next-token logits, the last token's path through the residual stream and, for an encoder, the
  sentence's meaning vector.
- :func:`compare_runs`: what an edit changed, in numbers and in plain words.
- :func:`generation_steps`: a generator of one dict per new token, from a KV-cached loop.

The JSON shapes are documented in ``docs/serve-api.md``.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attnlab.attention import edit as edit_attention
from attnlab.attention import record
from attnlab.explain.collect import (
    DIMS_SHOWN,
    check_text,
    explanation_from_traces,
    readable_token,
    round_significant,
)
from attnlab.explain.i18n import strings
from attnlab.generation import Sampling, new_generator

TOP_CANDIDATES = 100  # next-token candidates sent with their text; the rest only as logits
PATH_TOP = 5  # final candidates shown at the end of a token's path
WORDS_TOP = 3  # keys listed per word in a what-if comparison
SENTENCES_MAX = 4


@dataclass(frozen=True)
class Edit:
    """A what-if: key positions hidden from every query, heads and whole layers switched off."""

    hide: tuple[int, ...] = ()
    heads_off: tuple[tuple[int, int], ...] = ()
    layers_off: tuple[int, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.hide or self.heads_off or self.layers_off)

    def as_json(self) -> dict:
        return {"hide": list(self.hide), "heads_off": [list(p) for p in self.heads_off],
                "layers_off": list(self.layers_off)}

    def check(self, layers: int, heads: int, tokens: int) -> None:
        """ValueError (one readable sentence) when a value does not fit this model and text."""
        for position in self.hide:
            if not 0 <= position < tokens:
                raise ValueError(f"cannot hide token {position}: the text has tokens 0 to {tokens - 1}")
        if len(self.hide) >= tokens:
            raise ValueError("hiding every token leaves nothing to look at; keep at least one")
        for layer, head in self.heads_off:
            if not 0 <= layer < layers or not 0 <= head < heads:
                raise ValueError(f"there is no layer {layer}, head {head}: this model has layers "
                                 f"0 to {layers - 1} and heads 0 to {heads - 1}")
        for layer in self.layers_off:
            if not 0 <= layer < layers:
                raise ValueError(f"there is no layer {layer}: this model has layers 0 to {layers - 1}")

    def context(self, model, stack: ExitStack) -> None:
        """Enter :func:`attnlab.attention.edit` for this edit on ``stack`` (nothing if empty)."""
        if self:
            stack.enter_context(edit_attention(model, hide_keys=self.hide, heads_off=self.heads_off,
                                               layers_off=self.layers_off))


@dataclass
class Run:
    """One forward pass of a text: its explanation data and what surrounds it."""

    ids: list[int]
    explanation: dict
    edit: Edit
    logits: torch.Tensor | None = None  # (vocab,) after the last token, decoders
    path: dict | None = None  # the last token's way through the decoder
    embedding: torch.Tensor | None = None  # (embed_dim,) unit-length meaning vector, encoders
    elapsed_ms: float = 0.0

    def as_json(self, tokenizer) -> dict:
        return {
            "explanation": self.explanation,
            "edit": self.edit.as_json(),
            "next": None if self.logits is None else next_candidates(self.logits, tokenizer),
            "path": self.path,
            "embedding": None if self.embedding is None else round_significant(self.embedding).tolist(),
            "elapsed_ms": round(self.elapsed_ms, 2),
        }


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _b64_float32(values: torch.Tensor) -> str:
    """Little-endian float32 bytes of ``values``, base64: compact for thousands of numbers."""
    array = values.detach().to(torch.float32).cpu().contiguous().numpy().astype("<f4", copy=False)
    return base64.b64encode(array.tobytes()).decode("ascii")


def token_text(tokenizer, token_id: int) -> str:
    """How one token reads on the page (its own text; a leading space kept, as the model sees it)."""
    return tokenizer.token_strings([token_id])[0]


def next_candidates(logits: torch.Tensor, tokenizer, top: int = TOP_CANDIDATES) -> dict:
    """The ``Next`` object of the API: the ``top`` largest logits with their tokens, and all logits.

    ``logits`` is ``(vocab,)``; the page turns them into probabilities for any temperature,
    top-k and top-p exactly as :class:`attnlab.generation.Sampling` does.
    """
    logits = logits.detach().float()
    values, ids = torch.topk(logits, min(top, logits.numel()))
    ids = ids.tolist()
    texts = tokenizer.token_strings(ids)  # one call: per-token calls cost ~6% of a decoding step
    return {
        "vocab_size": int(logits.numel()),
        "top": [{"id": i, "text": text, "logit": v}
                for i, text, v in zip(ids, texts, values.tolist(), strict=True)],
        "logits": _b64_float32(logits),
    }


def _vector(x: torch.Tensor, dims: int) -> dict:
    return {"values": round_significant(x[:dims]).tolist(), "norm": float(x.double().norm())}


class _PathRecorder:
    """Forward hooks on each block (input, output) and its attention, for one position's path.

    A pre-norm block computes ``x + attention(norm(x))`` then adds the feed-forward step, so the
    feed-forward part is ``output - input - attention``: read off, not recomputed.
    """

    def __init__(self, model) -> None:
        self.model = model
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []
        self.attention: list[torch.Tensor] = []
        self.final: torch.Tensor | None = None

    def __enter__(self) -> _PathRecorder:
        handles = []
        for block in self.model.layers:
            handles.append(block.register_forward_hook(self._block_hook))
            handles.append(block.attn.register_forward_hook(self._attn_hook))
        handles.append(self.model.norm.register_forward_hook(self._norm_hook))
        self.handles = handles
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()

    def _block_hook(self, module, args, output) -> None:
        self.inputs.append(args[0])
        self.outputs.append(output[0] if isinstance(output, tuple) else output)

    def _attn_hook(self, module, args, output) -> None:
        self.attention.append(output[0] if isinstance(output, tuple) else output)

    def _norm_hook(self, module, args, output) -> None:
        self.final = output

    def path(self, model, tokenizer, ids: list[int], logits: torch.Tensor, position: int) -> dict:
        """The ``Path`` object of the API for ``position``."""
        dims = min(DIMS_SHOWN, model.config.embed_dim)
        layers = []
        for index, (before, after, attended) in enumerate(
                zip(self.inputs, self.outputs, self.attention, strict=True)):
            before, after, attended = before[0, position], after[0, position], attended[0, position]
            mid = before + attended
            layers.append({
                "layer": index,
                "before": _vector(before, dims),
                "attention": _vector(attended, dims),
                "after_attention": _vector(mid, dims),
                "ffn": _vector(after - mid, dims),
                "after_ffn": _vector(after, dims),
            })
        probabilities = torch.softmax(logits.double(), dim=-1)
        values, top = torch.topk(logits.float(), PATH_TOP)
        return {
            "position": position,
            "token": tokenizer.token_strings([ids[position]])[0],
            "dims_shown": dims,
            "embedding": _vector(self.inputs[0][0, position], dims),
            "layers": layers,
            "final": {**_vector(self.final[0, position], dims),
                      "top": [{"id": int(i), "text": token_text(tokenizer, int(i)), "logit": float(v),
                               "probability": float(probabilities[i])}
                              for v, i in zip(values.tolist(), top.tolist(), strict=True)]},
        }


@torch.no_grad()
def run_text(model, tokenizer, text: str, *, model_name: str, edit: Edit | None = None,
             layer: int | None = None, head: int | None = None, max_tokens: int | None = None) -> Run:
    """One recorded forward pass of ``text`` (with ``edit`` applied, if any).

    ``model`` is a ``BertEncoder`` (then the run carries the mean-pooled, unit-length
    ``embedding``) or a decoder (``GPT``, ``LlamaDecoder``: then the next-token ``logits`` and the
    last token's ``path``). Raises ``ValueError`` with one readable sentence for empty or
    too-long text, an edit that does not fit, or a layer/head out of range.
    """
    start = time.perf_counter()
    edit = edit or Edit()
    cfg = model.config
    ids = check_text(model, tokenizer, text, model_name=model_name, max_tokens=max_tokens)
    edit.check(cfg.num_layers, cfg.num_heads, len(ids))
    batch = torch.tensor([ids], dtype=torch.long, device=_device(model))  # (1, seq)
    causal = bool(model.is_causal)
    with ExitStack() as stack:
        edit.context(model, stack)
        recording = stack.enter_context(record(model))
        paths = stack.enter_context(_PathRecorder(model)) if causal else None
        output = model(batch)
    explanation = explanation_from_traces(model, tokenizer, text, ids, recording.traces,
                                          model_name=model_name, layer=layer, head=head)
    explanation["hidden"] = sorted(set(edit.hide))
    run = Run(ids=ids, explanation=explanation, edit=edit)
    if causal:
        run.logits = output[0, -1].float()
        run.path = paths.path(model, tokenizer, ids, run.logits, len(ids) - 1)
    else:
        hidden = output.last_hidden_state[0]  # (seq, embed_dim); every token is real here
        run.embedding = F.normalize(hidden.mean(dim=0), dim=-1)
    run.elapsed_ms = (time.perf_counter() - start) * 1000
    return run


# ---------- what-if ----------
#
# What an edit changed is sent twice: as ``notes`` ({"kind", ...values}), from which the page
# writes its sentences in the reader's language with the same templates (``serve.whatif.*`` keys
# of the string tables), and as ``sentences``, those templates filled here in English.

def _say(key: str, **values) -> str:
    """The English text of ``key`` in the pages' string table, ``{name}`` filled from ``values``."""
    return strings("en")[key].format(**values)


def shown(token: str) -> str:
    """A token quoted for a sentence: ``'animal'``, ``"'"`` for an apostrophe, ``a space``."""
    text = readable_token(token).strip()
    if not text:
        return _say("serve.whatif.newline" if "\n" in token else "serve.whatif.space")
    return _say("serve.whatif.quote_apostrophe" if "'" in text else "serve.whatif.quote", text=text)


def _percent(share: float) -> int:
    """A share as the whole percent the sentences give (``0.415`` -> 42)."""
    return round(float(share) * 100)


def edit_lead(edit: Edit, tokens: list[str]) -> dict:
    """What ``edit`` changed, for the start of a sentence: the hidden tokens' texts, the heads
    and the layers switched off: ``{"hide": [text...], "heads_off": [[layer, head]...],
    "layers_off": [layer...]}``."""
    return {"hide": [tokens[i] for i in sorted(edit.hide)],
            "heads_off": [list(pair) for pair in sorted(edit.heads_off)],
            "layers_off": sorted(edit.layers_off)}


def describe_edit(edit: Edit, tokens: list[str]) -> str:
    """``"Without 'animal'"``, ``"With layer 2 head 3 switched off"``... for the page's sentences."""
    lead = edit_lead(edit, tokens)
    parts = []
    if lead["hide"]:
        words = _say("serve.whatif.lead.and").join(shown(token) for token in lead["hide"])
        parts.append(_say("serve.whatif.lead.without", words=words))
    if lead["heads_off"]:
        heads = _say("serve.whatif.lead.list").join(_say("serve.whatif.lead.head", layer=layer, head=head)
                                                     for layer, head in lead["heads_off"])
        parts.append(_say("serve.whatif.lead.heads_off", heads=heads))
    if lead["layers_off"]:
        layers = _say("serve.whatif.lead.list").join(str(layer) for layer in lead["layers_off"])
        parts.append(_say("serve.whatif.lead.layers_off", layers=layers))
    text = _say("serve.whatif.lead.join").join(parts)
    return text[:1].upper() + text[1:]


# How a note's values are written in its sentence (the page writes them the same way).
NOTE_FORMATS = {"word": shown, "now": shown, "was": shown,
                "cosine_pct": "{:.1f}".format, "cosine": "{:.3f}".format}


def _english(note: dict, lead: str) -> str:
    """The English sentence of one note (see the comment at the top of this section)."""
    values = {name: NOTE_FORMATS.get(name, str)(value) for name, value in note.items() if name != "kind"}
    return _say(f"serve.whatif.note.{note['kind']}", lead=lead, **values)


def _top_keys(row: Sequence[float], exclude: set[int], top: int = WORDS_TOP) -> list[dict]:
    order = sorted((k for k in range(len(row)) if k not in exclude), key=lambda k: -row[k])
    return [{"token": k, "weight": round(float(row[k]), 6)} for k in order[:top]]


def _word_changes(original: dict, edited: dict, edit: Edit) -> tuple[list[dict], list[dict]]:
    """Per word of the edited run's selected head: the keys it looked at most, before and after;
    and notes on the words whose attention moved most."""
    layer, head = edited["selected"]["layer"], edited["selected"]["head"]
    before_rows = original["attention"][layer][head]
    after_rows = edited["attention"][layer][head]
    tokens, special = original["tokens"], original["special"]
    hidden = set(edit.hide)
    words, moved = [], []
    for q, (before, after) in enumerate(zip(before_rows, after_rows, strict=True)):
        if special[q] or q in hidden:
            continue
        # A word's link to itself and to the markers says little; name links to other words. In
        # a decoder the first token is where heads park attention they do not need (a "sink").
        exclude = {q} | {k for k, s in enumerate(special) if s}
        if original["model"]["causal"] and q > 1:
            exclude.add(0)
        entry = {"token": q, "before": _top_keys(before, exclude), "after": _top_keys(after, exclude)}
        words.append(entry)
        shift = 0.5 * sum(abs(a - b) for a, b in zip(after, before, strict=True))
        if entry["before"] and entry["after"]:
            moved.append((shift, q, entry))
    notes = []
    for shift, q, entry in sorted(moved, key=lambda m: -m[0])[:SENTENCES_MAX - 1]:
        was, now = entry["before"][0], entry["after"][0]
        if shift < 0.01:
            continue
        if was["token"] != now["token"]:
            notes.append({"kind": "moved", "word": tokens[q], "now": tokens[now["token"]],
                          "now_weight": _percent(now["weight"]), "was": tokens[was["token"]],
                          "was_weight": _percent(was["weight"]), "layer": layer, "head": head})
        else:
            notes.append({"kind": "kept", "word": tokens[q], "now": tokens[now["token"]],
                          "shift": _percent(shift), "layer": layer, "head": head})
    return words, notes


def _next_changes(before: torch.Tensor, after: torch.Tensor, tokenizer,
                  top: int = 5) -> tuple[list[dict], dict]:
    """Next-token probabilities (temperature 1) before and after, for the top tokens of either,
    and the note on the most likely one."""
    p_before = torch.softmax(before.double(), dim=-1)
    p_after = torch.softmax(after.double(), dim=-1)
    ids = list(dict.fromkeys(torch.topk(p_before, top).indices.tolist()
                             + torch.topk(p_after, top).indices.tolist()))
    ids.sort(key=lambda i: -float(p_before[i]))
    rows = [{"id": i, "text": token_text(tokenizer, i), "before": float(p_before[i]),
             "after": float(p_after[i])} for i in ids]
    was, now = int(p_before.argmax()), int(p_after.argmax())
    note = {"kind": "next_changed" if was != now else "next_same",
            "was": token_text(tokenizer, was), "was_p": _percent(p_before[was]),
            "now": token_text(tokenizer, now), "now_p": _percent(p_after[now])}
    return rows, note


def compare_runs(original: Run, edited: Run, tokenizer) -> dict:
    """The ``changes`` object of ``/api/whatif``: what ``edited.edit`` changed against ``original``:
    ``words``, ``next`` (decoders) or ``cosine`` (encoders), ``lead`` (:func:`edit_lead`),
    ``notes`` and their English ``sentences``."""
    tokens = original.explanation["tokens"]
    words, notes = _word_changes(original.explanation, edited.explanation, edited.edit)
    changes: dict = {"words": words, "cosine": None, "next": None, "lead": edit_lead(edited.edit, tokens)}
    if original.logits is not None:
        changes["next"], first = _next_changes(original.logits, edited.logits, tokenizer)
        notes = [first, *notes]
    else:
        cosine = float(torch.dot(original.embedding.double(), edited.embedding.double()))
        changes["cosine"] = cosine
        notes.append({"kind": "meaning", "cosine_pct": round(cosine * 100, 1), "cosine": round(cosine, 3)})
    if not notes:
        notes = [{"kind": "nothing"}]
    lead = describe_edit(edited.edit, tokens)
    changes["notes"] = notes
    changes["sentences"] = [_english(note, lead) for note in notes]
    return changes


# ---------- generation, one token at a time ----------

def _matmul_flops_per_token(model) -> int:
    """Multiply-adds x 2 of the weight matrices one token goes through (embedding lookup excluded,
    the output projection included): about 2 x parameters."""
    total = 0
    for name, parameter in model.named_parameters():
        if parameter.dim() == 2 and not name.startswith(("embed", "pos_embed")):
            total += parameter.numel()
    # Tied output projection: the embedding matrix multiplies every token's final vector.
    total += model.config.vocab_size * model.config.embed_dim
    return 2 * total


def generation_steps(model, tokenizer, ids: list[int], *, max_new_tokens: int, sampling: Sampling,
                     seed: int | None = None, edit: Edit | None = None) -> Iterator[dict]:
    """Yield one ``token`` event per new token (see ``docs/serve-api.md``), then a ``done`` event.

    Each step picks a token from the current logits, then feeds it through the model with the KV
    cache under :func:`attnlab.attention.record`: that pass gives the new token's attention over
    every earlier token and the logits for the next step. The model is only touched inside
    ``next()``, never across a ``yield``, so a caller may interleave other work on the model
    between steps (the server serializes each step behind the model's lock).
    """
    edit = edit or Edit()
    cfg = model.config
    device = _device(model)
    room = cfg.max_positions - len(ids)
    steps = min(max_new_tokens, room)
    generator = new_generator(device, seed)
    eos = getattr(tokenizer, "eos_token_id", None)
    flops_token = _matmul_flops_per_token(model)
    attention_flops = 4 * cfg.num_heads * cfg.head_dim * cfg.num_layers  # q.k and w.v per key

    start = time.perf_counter()
    with torch.inference_mode():
        caches = model.new_caches(1, len(ids) + steps, device=device)
    logits = _step(model, ids, caches, edit)[0]
    generated = 0
    reason = "length" if steps == max_new_tokens else "context"
    for step in range(steps):
        token = sampling.pick(logits, generator)
        probability = _sampling_probability(logits, sampling, token)
        event = {"type": "token", "step": step, "position": len(ids) + step, "id": token,
                 "text": token_text(tokenizer, token), "piece": tokenizer.decode([token]),
                 "probability": probability, "attention": None, "cache": None, "next": None}
        generated += 1
        if token == eos:
            yield event
            reason = "eos"
            break
        reused = caches[0].length
        began = time.perf_counter()
        logits, weights = _step(model, [token], caches, edit)
        keys = reused + 1
        event["attention"] = {"layers": cfg.num_layers, "heads": cfg.num_heads, "keys": keys,
                              "weights": _b64_float32(weights)}
        event["cache"] = {
            "reused": reused, "new": 1, "layers": cfg.num_layers, "kv_heads": cfg.num_kv_heads,
            "scores_now": cfg.num_layers * cfg.num_heads * keys,
            "scores_recompute": cfg.num_layers * cfg.num_heads * keys * keys,
            "flops_now": flops_token + attention_flops * keys,
            "flops_recompute": keys * flops_token + attention_flops * keys * (keys + 1) // 2,
            "ms": round((time.perf_counter() - began) * 1000, 2),
        }
        event["next"] = next_candidates(logits, tokenizer)
        yield event
    seconds = time.perf_counter() - start
    yield {"type": "done", "reason": reason, "generated": generated,
           "tokens_per_s": round(generated / seconds, 2) if seconds > 0 else None}


def _step(model, new_ids: list[int], caches, edit: Edit) -> tuple[torch.Tensor, torch.Tensor]:
    """Feed ``new_ids`` through the cached model: next logits ``(vocab,)`` and the last token's
    attention ``(layers, heads, keys)``."""
    batch = torch.tensor([new_ids], dtype=torch.long, device=_device(model))
    with torch.inference_mode(), ExitStack() as stack:
        edit.context(model, stack)
        recording = stack.enter_context(record(model))
        logits = model(batch, caches=caches)[0, -1].float()
    weights = torch.stack([t.attention.weights[0, :, -1] for t in recording.traces])
    return logits, weights


def _sampling_probability(logits: torch.Tensor, sampling: Sampling, token: int) -> float:
    """The probability ``sampling`` gave ``token`` (1 for greedy): the distribution it drew from."""
    if sampling.temperature == 0:
        return 1.0
    return float(torch.softmax(sampling.filtered(logits).double(), dim=-1)[token])


__all__ = ["Edit", "Run", "compare_runs", "describe_edit", "edit_lead", "generation_steps", "next_candidates",
           "run_text"]
