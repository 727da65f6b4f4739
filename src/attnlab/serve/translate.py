"""The explorer's Translate part: a translator trained with ``attnlab train translate``
(Transformer or LSTM baseline), translating a sentence token by token on ``POST /api/translate``
(see ``docs/serve-api.md``, "Translate"; the computation is :mod:`attnlab.explain.live_translate`).

Every check (text, decoding, beam, hidden positions, token count) runs before any model work;
the translation then runs one model step per queued job, and the stream stops when its client
leaves: between greedy steps, and inside a beam search (its ``stop`` flag is set by a watcher).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from attnlab.explain.live_translate import (
    MAX_BEAM,
    TranslationStopped,
    check_hide,
    compare_translations,
    is_transformer,
    source_ids,
    translate_live,
    translation_steps,
)
from attnlab.serve.app import (
    MAX_EDIT_ITEMS,
    ModelQueue,
    RequestError,
    json_body,
    ndjson_line,
    next_event,
    note,
    sentence,
    text_field,
    whole_number,
)

EXAMPLE = "In the beginning God created the heaven and the earth."
DEFAULT_BEAM = 4
RECENT_RUNS = 8  # original translations kept per translator, so that a what-if costs one run
DISCONNECT_POLL_S = 0.05


@dataclass
class ServedTranslator:
    """A translator the explorer offers (one ``--checkpoint`` of a ``translate`` run)."""

    id: str
    title: str
    arch: str
    model: object
    tokenizer: object
    step: int
    example: str = EXAMPLE
    kind: str = "translate"
    queue: ModelQueue = field(default_factory=ModelQueue)
    recent: OrderedDict = field(default_factory=OrderedDict)

    @property
    def max_tokens(self) -> int:
        """The longest English text it takes, in tokens (its end token makes ``max_positions``)."""
        return self.model.config.max_positions - 1

    def describe(self) -> dict:
        cfg = self.model.config
        # The LSTM has one attention: no layers or heads.
        layers = ((cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.num_heads)
                  if self.arch == "transformer" else (None, None, None))
        return {"id": self.id, "kind": self.kind, "arch": self.arch, "title": self.title,
                "description": self.description, "num_encoder_layers": layers[0],
                "num_layers": layers[1], "num_heads": layers[2], "steps": self.step,
                "max_tokens": self.max_tokens, "max_positions": cfg.max_positions,
                "max_beam": MAX_BEAM, "example": self.example}

    @property
    def description(self) -> str:
        cfg = self.model.config
        if self.arch == "transformer":
            return (f"A Transformer translator trained with attnlab ({cfg.num_encoder_layers} encoder "
                    f"and {cfg.num_decoder_layers} decoder layers of {cfg.num_heads} heads, "
                    f"{self.step:,} steps).")
        return (f"An LSTM translator with one attention (the recurrent baseline), trained with "
                f"attnlab for {self.step:,} steps.")

    def remember(self, key, end: dict) -> None:
        self.recent[key] = end
        self.recent.move_to_end(key)
        while len(self.recent) > RECENT_RUNS:
            self.recent.popitem(last=False)


def translator_part(folder, loaded, taken: set[str]) -> ServedTranslator:
    """The Translate part for a checkpoint ``loaded`` from ``folder`` (a ``translate`` run)."""
    from attnlab.serve.models import LoadError, unique_id
    from attnlab.train.checkpoint import CheckpointError
    from attnlab.train.runs import check_translator

    try:
        check_translator(loaded)
    except CheckpointError as err:
        raise LoadError(f"--checkpoint {folder}: {err}") from None
    arch = "transformer" if is_transformer(loaded.model) else "lstm"
    name = Path(folder).resolve().name or "checkpoint"
    return ServedTranslator(id=unique_id(f"translate-{arch}-{name}", taken),
                            title=f"{'Transformer' if arch == 'transformer' else 'LSTM'} ({name})",
                            arch=arch, model=loaded.model, tokenizer=loaded.tokenizer,
                            step=loaded.step)


@dataclass(frozen=True)
class _Request:
    text: str
    beam: int | None  # None: greedy
    hide: tuple[int, ...]


def _translate_request(body: dict, served: ServedTranslator) -> _Request:
    """The checked request; RequestError (400) for anything the translator cannot take."""
    text = text_field(body)
    decoding = body.get("decoding", "greedy")
    if decoding not in ("greedy", "beam"):
        raise RequestError(400, f"decoding must be \"greedy\" or \"beam\", got {json.dumps(decoding)}")
    beam = whole_number(body.get("beam", DEFAULT_BEAM), "beam", 1, MAX_BEAM) if decoding == "beam" else None
    raw = body.get("hide") or []
    if not isinstance(raw, list) or len(raw) > MAX_EDIT_ITEMS:
        raise RequestError(400, f"hide must be a list of at most {MAX_EDIT_ITEMS} source positions")
    try:
        source = source_ids(served.model, served.tokenizer, text)
        hide = check_hide([whole_number(v, "hide", 0) for v in raw], len(source))
    except ValueError as err:
        raise RequestError(400, str(err)) from None
    return _Request(text, beam, hide)


async def _watch(request: Request, stop: threading.Event, running) -> None:
    """Set ``stop`` when the client leaves, or when this watch is cancelled while ``running()``
    (the whole stream was cancelled: Starlette saw the client leave first)."""
    try:
        while not await request.is_disconnected():
            await anyio.sleep(DISCONNECT_POLL_S)
        stop.set()
    except anyio.get_cancelled_exc_class():
        if running():
            stop.set()
        raise


async def _next_watched(request: Request, served: ServedTranslator, steps, stop: threading.Event):
    """The next event of ``steps`` (one queued job), with ``stop`` set should the client leave
    meanwhile: a beam search runs in one job and checks the flag at every step."""
    outcome: dict = {}
    async with anyio.create_task_group() as group:
        group.start_soon(_watch, request, stop, lambda: not outcome)
        try:
            # Admitted once, at the start: a running translation is never cut off by a full queue.
            outcome["event"] = await served.queue.run(next_event, steps, admitted=True)
        except Exception as err:  # raised below, not wrapped in the task group's ExceptionGroup
            outcome["error"] = err
        group.cancel_scope.cancel()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["event"]


def _with_original(served: ServedTranslator, asked: _Request, end: dict) -> dict:
    """``end`` of a what-if with ``original`` (the translation without hidden words: a recent one
    or one run now, in the worker thread) and ``comparison``."""
    key = (asked.text, asked.beam)
    original = served.recent.get(key)
    if original is None:
        original = translate_live(served.model, served.tokenizer, asked.text, beam=asked.beam)
        served.remember(key, original)
    shown = {name: original[name] for name in ("translation", "target_tokens", "target_ids", "alignment")}
    return {**end, "original": shown, "comparison": compare_translations(original, end)}


async def _stream(request: Request, served: ServedTranslator, asked: _Request):
    stop = threading.Event()
    steps = translation_steps(served.model, served.tokenizer, asked.text, beam=asked.beam,
                              hide=asked.hide, stop=stop.is_set)
    finished = False
    try:
        while True:
            if await request.is_disconnected():
                break
            event = await _next_watched(request, served, steps, stop)
            if event is None:
                finished = True
                break
            if event["type"] == "end":
                if asked.hide:
                    event = await served.queue.run(_with_original, served, asked, event, admitted=True)
                else:
                    served.remember((asked.text, asked.beam), event)
                    event = {**event, "original": None, "comparison": None}
            yield ndjson_line(event)
    except TranslationStopped:
        pass  # its client left during a beam search
    except RequestError as err:
        yield ndjson_line({"type": "error", "error": sentence(str(err))})
    except Exception as err:  # one line to the page and the log, never a dead stream
        note(request, f"translation failed: {type(err).__name__}: {err}")
        yield ndjson_line({"type": "error", "error": f"The translation failed: {err}"})
    finally:
        steps.close()
        note(request, "translation finished" if finished else "translation stopped: its client left")


def routes(explorer) -> list:
    """``[(path, endpoint, methods), ...]`` this part adds to the app."""

    async def translate(request: Request) -> Response:
        body = await json_body(request)
        served = explorer.app(body, "translate")
        asked = _translate_request(body, served)
        served.queue.admit()
        return StreamingResponse(_stream(request, served, asked), media_type="application/x-ndjson",
                                 headers={"Cache-Control": "no-store"})

    return [("/api/translate", translate, ["POST"])]
