"""The explorer's "Recognise a picture" part: a ViT trained with ``attnlab train vit``.

One endpoint, ``POST /api/classify?app=ID&hide=3,17``, takes the picture itself as the raw
request body (``Content-Type: image/...``) rather than JSON with a base64 data URL: the bytes
arrive as they are (a third smaller, no 11 MB JSON string to parse), :func:`read_body` bounds
them while they stream in, and the browser sends a ``File`` or a canvas ``Blob`` without
encoding it. The picture lives in memory only: it is decoded by
:func:`attnlab.data.images.load_image` from bytes and never written to disk. Requiring an image
(or octet-stream) type also keeps out the bodies an HTML form on another site could send without
a CORS preflight (``text/plain``, ``multipart/form-data``), on top of the app's Origin check.

Every input (the classifier, the hidden patches, the type and size of the body) is checked
before any work; decoding and the model runs happen in the classifier's :class:`ModelQueue`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from attnlab.data.images import MAX_IMAGE_BYTES, ImageDataError, Normalization, load_image
from attnlab.explain.live_vision import check_hidden_patches, classify_picture, compare_pictures
from attnlab.serve.app import FastJSONResponse, ModelQueue, RequestError, read_body

PICTURE_TYPES = "image/png, image/jpeg, image/gif, image/bmp, image/webp"
QUERY_NAMES = ("app", "hide")
TOP_PREDICTIONS = 3


@dataclass
class ServedClassifier:
    """A picture classifier the explorer offers, loaded once at start from a checkpoint folder.

    ``model`` is a :class:`~attnlab.models.vit.ViT` in eval mode; ``classes`` its class names by
    label, ``normalization`` and ``dataset`` from the run's ``preprocessing.json``; ``examples``
    ``[{"label", "image"}]``: one test picture per class (PNG data URLs), empty when the dataset
    is not installed here.
    """

    id: str
    name: str
    title: str
    description: str
    model: object
    classes: tuple[str, ...]
    normalization: Normalization
    dataset: str
    step: int
    examples: list[dict] = field(default_factory=list)
    queue: ModelQueue = field(default_factory=ModelQueue)
    kind: str = "vision"

    def describe(self) -> dict:
        """What the page needs to draw this part (see docs/serve-api.md)."""
        cfg = self.model.config
        return {"id": self.id, "kind": self.kind, "name": self.name, "title": self.title,
                "description": self.description, "dataset": self.dataset, "steps": self.step,
                "classes": list(self.classes), "image_size": cfg.image_size,
                "patch_size": cfg.patch_size, "grid": cfg.grid_size, "patches": cfg.num_patches,
                "in_channels": cfg.in_channels, "num_layers": cfg.num_layers,
                "num_heads": cfg.num_heads, "max_upload_bytes": MAX_IMAGE_BYTES,
                "picture_types": PICTURE_TYPES, "examples": self.examples}

    def classify(self, picture: bytes, hidden: tuple[int, ...]) -> dict:
        """The answer of ``/api/classify`` for ``picture`` (in the worker thread)."""
        start = time.perf_counter()
        cfg = self.model.config
        try:
            pixels, original = load_image(picture, size=cfg.image_size, channels=cfg.in_channels)
        except ImageDataError as err:
            raise RequestError(400, str(err)) from None
        run = {"model": self.model, "pixels": pixels, "normalization": self.normalization,
               "classes": self.classes, "original": original, "top": TOP_PREDICTIONS}
        before = classify_picture(**run)
        after = changes = None
        if hidden:
            after = classify_picture(**run, hidden_patches=hidden)
            changes = compare_pictures(before, after)
            # The same picture as the original's: sent once.
            del after["image"], after["input_image"]
        return {"app": self.id, "original": before, "edited": after, "changes": changes,
                "elapsed_ms": round((time.perf_counter() - start) * 1000, 2)}


def classifier_part(folder, loaded, taken: set[str]) -> ServedClassifier:
    """The "Recognise a picture" part for a ``attnlab train vit`` checkpoint ``loaded`` from
    ``folder``; ``taken`` holds the ids already in use. Raises
    :class:`~attnlab.serve.models.LoadError` (one line) when it holds no ViT or its
    ``preprocessing.json`` is missing, damaged or does not fit the model."""
    from attnlab.serve.models import LoadError, unique_id
    from attnlab.train.checkpoint import CheckpointError
    from attnlab.train.runs import classifier_preprocessing

    try:
        # The checks of a ViT run, shared with `attnlab classify`.
        dataset, classes, normalization = classifier_preprocessing(loaded)
    except CheckpointError as err:
        raise LoadError(f"--checkpoint {folder}: {err}") from None
    cfg = loaded.model.config
    name = Path(folder).resolve().name or "checkpoint"
    description = (f"Your own Vision Transformer, trained with attnlab on {dataset} "
                   f"({cfg.num_layers} layers x {cfg.num_heads} heads, {loaded.step:,} steps). It "
                   f"cuts a {cfg.image_size} x {cfg.image_size} picture into {cfg.grid_size} x "
                   f"{cfg.grid_size} patches and names one of {len(classes)} classes.")
    return ServedClassifier(id=unique_id("vit-" + name, taken), name=name,
                            title=f"Your picture classifier ({name})", description=description,
                            model=loaded.model, classes=tuple(classes), normalization=normalization,
                            dataset=dataset, step=loaded.step, examples=_examples(dataset, cfg))


def _examples(dataset: str, cfg) -> list[dict]:
    """The first test picture of each class, as the model sees it; none when the dataset is not
    installed on this computer or its pictures do not fit the model."""
    from attnlab.data.images import load_test_split
    from attnlab.explain.vision import png_data_url

    try:
        test = load_test_split(dataset)
    except (ImageDataError, ValueError, OSError):
        return []
    if tuple(test.images.shape[1:]) != (cfg.in_channels, cfg.image_size, cfg.image_size):
        return []
    examples = []
    for label, name in enumerate(test.classes):
        found = (test.labels == label).nonzero().flatten()
        if len(found):
            examples.append({"label": name, "image": png_data_url(test.images[int(found[0])])})
    return examples


# ---------- request checks ----------

def _hidden(request: Request, patches: int) -> tuple[int, ...]:
    """The ``hide`` query parameter (``3,17``: patch indices) as sorted unique patches."""
    given = request.query_params.getlist("hide")
    if len(given) > 1:
        raise RequestError(400, "give hide once, as a comma-separated list such as hide=3,17")
    text = given[0].strip() if given else ""
    if not text:
        return ()
    items = text.split(",")
    if len(items) > patches:
        raise RequestError(400, f"hide lists {len(items)} patches; this model has only {patches}")
    numbers = []
    for item in items:
        item = item.strip()
        if not (item.isascii() and item.isdigit()):
            raise RequestError(400, f"hide must list patch numbers separated by commas, got {item[:20]!r}")
        numbers.append(int(item))
    try:
        return check_hidden_patches(numbers, patches)
    except ValueError as err:
        raise RequestError(400, str(err)) from None


def _picture_type(request: Request) -> None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (content_type.startswith("image/") or content_type == "application/octet-stream"):
        raise RequestError(415, f"send the picture itself as the request body, with Content-Type "
                                f"{PICTURE_TYPES} (got {content_type or 'none'})")


def routes(explorer) -> list:
    """``[(path, endpoint, methods), ...]`` this part adds to the app."""

    async def classify(request: Request) -> Response:
        unknown = sorted(set(request.query_params) - set(QUERY_NAMES))
        if unknown:
            raise RequestError(400, f"unknown query parameter {unknown[0]!r}; /api/classify takes "
                                    f"{' and '.join(QUERY_NAMES)}")
        served = explorer.app({"app": request.query_params.get("app")}, "vision")
        hidden = _hidden(request, served.model.config.num_patches)
        _picture_type(request)
        served.queue.admit()  # a full queue refuses before the upload is read
        picture = await read_body(request, MAX_IMAGE_BYTES)
        return FastJSONResponse(await served.queue.run(served.classify, picture, hidden))

    return [("/api/classify", classify, ["POST"])]
