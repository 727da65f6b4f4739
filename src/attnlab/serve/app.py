"""The explorer's ASGI app: one self-contained page and the JSON API of ``docs/serve-api.md``.

Safety, because a local server that runs models is an attack surface:
- every request's ``Host`` header must name the address served (a page on another site that
  points a DNS name at 127.0.0.1 gets 403: DNS rebinding), and a POST from another ``Origin`` is
  refused;
- bodies are bounded (``MAX_REQUEST_BYTES``) and must be JSON; texts, edits and generation
  lengths are checked before any model work;
- the browser never names a file: models come only from the command line (:class:`ServedModel`);
- model work runs in a worker thread, one job at a time per model, behind a bounded queue
  (:class:`ModelQueue`): a full queue answers 503 at once instead of piling up memory;
- a generation checks between tokens whether its client is still there and stops if not.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio
import anyio.to_thread
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from attnlab.explain.collect import default_max_tokens
from attnlab.explain.files import fill_template
from attnlab.explain.i18n import page_strings
from attnlab.explain.live import Edit, Run, compare_runs, generation_steps, run_text
from attnlab.generation import Sampling

log = logging.getLogger("attnlab.serve")

MAX_REQUEST_BYTES = 16 * 1024
MAX_TEXT_CHARS = 2000
MAX_NEW_TOKENS = 200
MAX_PROMPT_TOKENS = 512  # generation prompts; explanations have their own, smaller, limit
MAX_EDIT_ITEMS = 64
QUEUE_LIMIT = 8  # jobs waiting or running per model before 503
RECENT_RUNS = 8  # original runs kept per model, so that a what-if costs one model run
MAX_TEMPERATURE = 100.0


class FastJSONResponse(JSONResponse):
    """Starlette's JSON response, serialized by orjson: an explanation holds up to a few million
    numbers, and the standard library's encoder took 9x longer on them (0.41 s vs 0.05 s for 64
    MiniLM tokens), more than the model itself."""

    def render(self, content) -> bytes:
        return orjson.dumps(content)


class RequestError(Exception):
    """A request the server refuses: an HTTP status and one readable sentence."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ModelQueue:
    """One job at a time on a model, at most ``limit`` jobs waiting or running.

    Jobs run in a worker thread (torch releases the GIL), so the event loop keeps answering
    other requests. :meth:`run` raises a 503 :class:`RequestError` when the queue is full.
    """

    def __init__(self, limit: int = QUEUE_LIMIT) -> None:
        self.limit = limit
        self.pending = 0
        self._lock = anyio.Lock()

    def admit(self) -> None:
        if self.pending >= self.limit:
            raise RequestError(503, "The model is busy with other requests; try again in a moment.")

    async def run(self, function, *args, admitted: bool = False):
        """``function(*args)`` in a worker thread once the model is free."""
        if not admitted:
            self.admit()
        self.pending += 1
        try:
            async with self._lock:
                # Not abandoned on cancellation: a disconnecting client waits for its step to end,
                # so the lock is never released while a thread still uses the model.
                return await anyio.to_thread.run_sync(function, *args)
        finally:
            self.pending -= 1


@dataclass
class ServedModel:
    """A model the server offers, loaded once at start from the command line."""

    id: str
    title: str
    description: str
    model: object
    tokenizer: object
    example: str
    queue: ModelQueue = field(default_factory=ModelQueue)
    recent: OrderedDict = field(default_factory=OrderedDict)

    @property
    def causal(self) -> bool:
        return bool(self.model.is_causal)

    @property
    def max_tokens(self) -> int:
        """The longest text the explanation takes (every weight of every head goes to the page)."""
        cfg = self.model.config
        limit = self.tokenizer.max_length or cfg.max_positions
        return min(default_max_tokens(cfg.num_layers, cfg.num_heads), limit)

    @property
    def max_prompt_tokens(self) -> int:
        """The longest text generation starts from (it leaves room for one new token at least)."""
        return min(MAX_PROMPT_TOKENS, self.model.config.max_positions - 1)

    def describe(self) -> dict:
        cfg = self.model.config
        return {"id": self.id, "title": self.title, "kind": "decoder" if self.causal else "encoder",
                "description": self.description, "num_layers": cfg.num_layers,
                "num_heads": cfg.num_heads, "num_kv_heads": cfg.num_kv_heads,
                "max_tokens": self.max_tokens, "max_positions": cfg.max_positions,
                "max_prompt_tokens": self.max_prompt_tokens if self.causal else None,
                "generates": self.causal, "example": self.example}

    def remember(self, key, run: Run) -> None:
        self.recent[key] = run
        self.recent.move_to_end(key)
        while len(self.recent) > RECENT_RUNS:
            self.recent.popitem(last=False)


# ---------- request checks ----------

def whole_number(value, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(400, f"{name} must be a whole number, got {json.dumps(value)}")
    if value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise RequestError(400, f"{name} must be {bound}, got {value}")
    return value


def _optional_whole(body: dict, name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    return None if value is None else whole_number(value, name, low, high)


def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError(400, f"{name} must be a number, got {json.dumps(value)}")
    return float(value)


def _edit(body: dict) -> Edit:
    raw = body.get("edit")
    if raw is None:
        return Edit()
    if not isinstance(raw, dict) or set(raw) - {"hide", "heads_off", "layers_off"}:
        raise RequestError(400, "edit must be an object with hide, heads_off and layers_off lists")

    def items(name: str) -> list:
        value = raw.get(name) or []
        if not isinstance(value, list) or len(value) > MAX_EDIT_ITEMS:
            raise RequestError(400, f"edit.{name} must be a list of at most {MAX_EDIT_ITEMS} items")
        return value

    hide = tuple(sorted({whole_number(v, "edit.hide", 0) for v in items("hide")}))
    layers = tuple(sorted({whole_number(v, "edit.layers_off", 0) for v in items("layers_off")}))
    heads = set()
    for pair in items("heads_off"):
        if not isinstance(pair, list) or len(pair) != 2:
            raise RequestError(400, "edit.heads_off must hold [layer, head] pairs")
        heads.add((whole_number(pair[0], "edit.heads_off layer", 0),
                   whole_number(pair[1], "edit.heads_off head", 0)))
    return Edit(hide=hide, heads_off=tuple(sorted(heads)), layers_off=layers)


def text_field(body: dict) -> str:
    text = body.get("text")
    if not isinstance(text, str):
        raise RequestError(400, "text must be a string")
    if not text.strip():
        raise RequestError(400, "The text is empty: type a sentence first.")
    if len(text) > MAX_TEXT_CHARS:
        raise RequestError(400, f"The text is {len(text):,} characters long; the explorer takes at "
                                f"most {MAX_TEXT_CHARS:,}.")
    return text


def _sampling(body: dict) -> tuple[Sampling, int | None]:
    temperature = _number(body.get("temperature", 1.0), "temperature")
    if not 0 <= temperature <= MAX_TEMPERATURE:
        raise RequestError(400, f"temperature must be from 0 to {MAX_TEMPERATURE:g}, got {temperature}")
    top_k = _optional_whole(body, "top_k", 1)
    top_p = body.get("top_p")
    if top_p is not None:
        top_p = _number(top_p, "top_p")
        if not 0 < top_p <= 1:
            raise RequestError(400, f"top_p must be above 0 and at most 1, got {top_p}")
    seed = _optional_whole(body, "seed", 0, 2**63 - 1)
    return Sampling(temperature, top_k, top_p), seed


# ---------- the app ----------

class Explorer:
    """The routes, over the models given at start."""

    def __init__(self, models: list[ServedModel], apps: Sequence = ()) -> None:
        if not models and not apps:
            raise ValueError("the explorer needs at least one model")
        self.models = {m.id: m for m in models}
        # Translators and picture classifiers (serve/translate.py, serve/vision.py): each has an
        # ``id``, a ``kind`` ("translate" or "vision"), ``describe()`` and a ``queue``.
        self.apps = {a.id: a for a in apps}
        self.stats = {"generations_started": 0, "generations_finished": 0,
                      "generations_stopped": 0, "tokens_generated": 0}

    def config(self) -> dict:
        return {"version": 1, "models": [m.describe() for m in self.models.values()],
                "apps": [a.describe() for a in self.apps.values()],
                "limits": {"max_text_chars": MAX_TEXT_CHARS, "max_new_tokens": MAX_NEW_TOKENS,
                           "max_request_bytes": MAX_REQUEST_BYTES}}

    def app(self, body: dict, kind: str):
        """The translator or classifier ``body["app"]`` names; 400 when it is not one of ``kind``."""
        name = body.get("app")
        served = self.apps.get(name)
        if served is None or served.kind != kind:
            ids = [a.id for a in self.apps.values() if a.kind == kind]
            raise RequestError(400, f"unknown {kind} model {json.dumps(name)}; this server has: "
                                    f"{', '.join(ids) or 'none'}")
        return served

    def _model(self, body: dict) -> ServedModel:
        name = body.get("model")
        if name not in self.models:
            raise RequestError(400, f"unknown model {json.dumps(name)}; this server has: "
                                    f"{', '.join(self.models)}")
        return self.models[name]

    @staticmethod
    def _head(served: ServedModel, body: dict) -> tuple[int | None, int | None]:
        cfg = served.model.config
        layer = _optional_whole(body, "layer", 0, cfg.num_layers - 1)
        head = _optional_whole(body, "head", 0, cfg.num_heads - 1)
        if head is not None and layer is None:
            raise RequestError(400, "head needs a layer too")
        return layer, head

    @staticmethod
    def _run(served: ServedModel, text: str, edit: Edit, layer: int | None, head: int | None) -> Run:
        """One run of ``text`` (in the worker thread)."""
        count = len(served.tokenizer.encode(text))
        if count > served.max_tokens:
            raise RequestError(400, f"The text is {count} tokens long; the explorer shows every "
                                    f"attention weight of {served.title} for at most "
                                    f"{served.max_tokens} tokens. Shorten it.")
        run = run_text(served.model, served.tokenizer, text, model_name=served.id, edit=edit,
                       layer=layer, head=head, max_tokens=served.max_tokens)
        run.explanation["model"].update(title=served.title, description=served.description)
        return run

    async def page(self, request: Request) -> Response:
        page = fill_template("serve.html", title="attnlab: explore attention", data=self.config(),
                             strings=page_strings(follow_browser=True))
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    async def models_list(self, request: Request) -> Response:
        return FastJSONResponse(self.config())

    async def explain(self, request: Request) -> Response:
        body = await json_body(request)
        served = self._model(body)
        text, edit = text_field(body), _edit(body)
        layer, head = self._head(served, body)

        def job():
            run = self._run(served, text, edit, layer, head)
            if not edit:
                # Remembered by its text alone: the head chosen changes only which head the
                # explanation preselects, not one number of the run.
                served.remember(text, run)
            return run.as_json(served.tokenizer)

        return FastJSONResponse(await served.queue.run(_as_request_error(job)))

    async def whatif(self, request: Request) -> Response:
        body = await json_body(request)
        served = self._model(body)
        text, edit = text_field(body), _edit(body)
        if not edit:
            raise RequestError(400, "a what-if needs an edit: hide a word or switch off a head")
        send_original = body.get("original", True)
        if not isinstance(send_original, bool):
            raise RequestError(400, "original must be true or false")
        layer, head = self._head(served, body)

        def job():
            start = time.perf_counter()
            original = served.recent.get(text)
            if original is None:
                original = self._run(served, text, Edit(), layer, head)
                served.remember(text, original)
            chosen = (layer, head)
            if layer is None:  # compare in the head the original run showed
                chosen = original.explanation["selected"]["layer"], original.explanation["selected"]["head"]
            edited = self._run(served, text, edit, *chosen)
            return {"original": original.as_json(served.tokenizer) if send_original else None,
                    "edited": edited.as_json(served.tokenizer),
                    "changes": compare_runs(original, edited, served.tokenizer),
                    "elapsed_ms": round((time.perf_counter() - start) * 1000, 2)}

        return FastJSONResponse(await served.queue.run(_as_request_error(job)))

    async def generate(self, request: Request) -> Response:
        body = await json_body(request)
        served = self._model(body)
        if not served.causal:
            raise RequestError(400, f"{served.title} reads text but does not write it; pick a "
                                    "model that generates")
        text, edit = text_field(body), _edit(body)
        sampling, seed = _sampling(body)
        max_new = whole_number(body.get("max_new_tokens", 20), "max_new_tokens", 1, MAX_NEW_TOKENS)
        try:
            ids = served.tokenizer.encode(text)
        except ValueError as err:  # e.g. a character a character-level vocabulary lacks
            raise RequestError(400, str(err)) from None
        limit = served.max_prompt_tokens
        if not ids:
            raise RequestError(400, "The text has no tokens the model knows.")
        if len(ids) > limit:
            raise RequestError(400, f"The text is {len(ids)} tokens long; generation here starts "
                                    f"from at most {limit} tokens.")
        try:
            edit.check(served.model.config.num_layers, served.model.config.num_heads, len(ids))
        except ValueError as err:
            raise RequestError(400, str(err)) from None
        served.queue.admit()
        steps = generation_steps(served.model, served.tokenizer, ids, max_new_tokens=max_new,
                                 sampling=sampling, seed=seed, edit=edit)
        tokens = served.tokenizer.token_strings(ids)
        return StreamingResponse(self._stream(request, served, steps, ids, tokens),
                                 media_type="application/x-ndjson",
                                 headers={"Cache-Control": "no-store"})

    async def _stream(self, request: Request, served: ServedModel, steps, ids, tokens):
        self.stats["generations_started"] += 1
        finished = False
        try:
            yield ndjson_line({"type": "start", "tokens": tokens, "ids": ids})
            while True:
                if await request.is_disconnected():
                    break
                # Admitted once, at the start: a running generation is never cut off by a full queue.
                event = await served.queue.run(next_event, steps, admitted=True)
                if event is None:
                    finished = True
                    break
                if event["type"] == "token":
                    self.stats["tokens_generated"] += 1
                yield ndjson_line(event)
        except RequestError as err:
            yield ndjson_line({"type": "error", "error": sentence(str(err))})
        except Exception as err:  # one line to the page and the log, never a dead stream
            note(request, f"generation failed: {type(err).__name__}: {err}")
            yield ndjson_line({"type": "error", "error": f"The generation failed: {err}"})
        finally:
            steps.close()
            self.stats["generations_finished" if finished else "generations_stopped"] += 1
            note(request, "generation finished" if finished else "generation stopped: its client left")


def next_event(steps):
    try:
        return next(steps)
    except StopIteration:
        return None
    except ValueError as err:
        raise RequestError(400, str(err)) from None


def ndjson_line(event: dict) -> bytes:
    return orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)


def _as_request_error(job):
    """``job`` with the library's ValueErrors (bad text, edit, layer) turned into 400s."""
    def wrapped():
        try:
            return job()
        except ValueError as err:
            raise RequestError(400, sentence(str(err))) from None
    return wrapped


def sentence(message: str) -> str:
    message = message.strip()
    message = message[:1].upper() + message[1:]
    return message if message.endswith((".", "!", "?")) else message + "."


async def read_body(request: Request, limit: int = MAX_REQUEST_BYTES) -> bytes:
    """The raw body of a POST, refused with 413 past ``limit`` bytes (declared or streamed)."""
    if request.method != "POST":
        raise RequestError(405, "use POST")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise RequestError(413, f"the request is larger than {limit:,} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the request is larger than {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def json_body(request: Request, limit: int = MAX_REQUEST_BYTES) -> dict:
    if request.method != "POST":
        raise RequestError(405, "use POST")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise RequestError(415, "send the request body as JSON (Content-Type: application/json)")
    raw = await read_body(request, limit)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise RequestError(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    return body


def note(request: Request, text: str) -> None:
    """Add ``text`` to the request's one log line (written by :class:`GuardMiddleware`)."""
    request.scope.setdefault("state", {}).setdefault("attnlab_notes", []).append(text)


class GuardMiddleware:
    """Refuse requests whose ``Host`` is not ours (DNS rebinding) and POSTs from other origins,
    and write ONE log line per request: method, path, status, time and any note."""

    def __init__(self, app, allowed_hosts: set[str]) -> None:
        self.app = app
        self.allowed_hosts = {h.lower() for h in allowed_hosts}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": None}

        async def send_and_see(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "").lower()
        problem = None
        if host not in self.allowed_hosts:
            problem = f"this server answers only requests for {sorted(self.allowed_hosts)[0]}"
        elif scope["method"] not in ("GET", "HEAD"):
            origin = headers.get("origin")
            if origin is not None and origin.lower() not in {f"http://{h}" for h in self.allowed_hosts}:
                problem = "requests from other web pages are refused"
        notes = scope.setdefault("state", {}).setdefault("attnlab_notes", [])
        try:
            if problem is not None:
                notes.append(f"refused: Host {host!r}, Origin {headers.get('origin')!r}")
                refusal = FastJSONResponse({"error": sentence(problem)}, status_code=403)
                await refusal(scope, receive, send_and_see)
            else:
                await self.app(scope, receive, send_and_see)
        finally:
            elapsed = (time.perf_counter() - start) * 1000
            note = "; ".join(notes)
            log.info("%s %s %s %.0f ms%s", scope["method"], scope["path"], status["code"] or "-",
                     elapsed, f" ({note})" if note else "")


def allowed_hosts(host: str, port: int) -> set[str]:
    """The ``Host`` header values that name this server: ``host:port`` and, on loopback, the
    other loopback spellings a browser may use."""
    names = {host}
    if host in ("127.0.0.1", "localhost", "::1"):
        names |= {"127.0.0.1", "localhost", "[::1]"}
    if ":" in host and not host.startswith("["):
        names = (names - {host}) | {f"[{host}]"}
    values = {f"{name}:{port}" for name in names}
    if port == 80:
        values |= names
    return values


def create_app(models: list[ServedModel], *, host: str = "127.0.0.1", port: int = 8000,
               apps: Sequence = ()) -> Starlette:
    """The explorer for ``models`` (language models) and ``apps`` (translators and picture
    classifiers), answering requests addressed to ``host:port``."""
    from attnlab.serve import translate, vision

    # The runner passes every part in one list: language models, then translators and classifiers.
    apps = [*(m for m in models if not isinstance(m, ServedModel)), *apps]
    explorer = Explorer([m for m in models if isinstance(m, ServedModel)], apps)

    def route(path, endpoint, methods):
        async def handler(request: Request) -> Response:
            try:
                return await endpoint(request)
            except RequestError as err:
                headers = {"Retry-After": "1"} if err.status == 503 else None
                note(request, str(err))
                return FastJSONResponse({"error": sentence(str(err))}, status_code=err.status,
                                    headers=headers)
            except Exception as err:
                note(request, f"failed: {type(err).__name__}: {err}")
                return FastJSONResponse({"error": f"The server failed on this request ({err})."},
                                    status_code=500)
        return Route(path, handler, methods=methods)

    async def not_found(request: Request, exc) -> Response:
        status = getattr(exc, "status_code", 404)
        message = "no such page" if status == 404 else "this address does not take that method"
        return FastJSONResponse({"error": message}, status_code=status)

    app = Starlette(routes=[
        route("/", explorer.page, ["GET"]),
        route("/api/models", explorer.models_list, ["GET"]),
        route("/api/explain", explorer.explain, ["POST"]),
        route("/api/whatif", explorer.whatif, ["POST"]),
        route("/api/generate", explorer.generate, ["POST"]),
        *(route(path, endpoint, methods) for part in (translate, vision)
          for path, endpoint, methods in part.routes(explorer)),
    ], exception_handlers={404: not_found, 405: not_found})
    app.state.explorer = explorer
    app.add_middleware(GuardMiddleware, allowed_hosts=allowed_hosts(host, port))
    return app
