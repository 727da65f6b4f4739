"""Scores of trained models on data they never saw: a GPT's loss on the held-out works of
Shakespeare, a translator's BLEU and chrF on the held-out Bible books (overall, by source length,
best and worst verses), a ViT's accuracy and confusion matrix on the test pictures.

Each ``evaluate_*`` takes a :class:`attnlab.train.checkpoint.LoadedCheckpoint` (see
:mod:`attnlab.train.runs`) and returns a JSON-ready dict. Missing data is the data module's own
:class:`attnlab.errors.AttnlabError` (``MissingPackageError``, ``BibleDataError``,
``ImageDataError``). The long loops take ``progress``, a wrapper ``progress(iterable,
description) -> iterable`` that may show how far they are (``attnlab eval`` passes a progress bar
on stderr); by default nothing is shown.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

from attnlab.train.checkpoint import CheckpointError

#: ``progress(iterable, description)``: the iterable, possibly shown as a progress bar.
Progress = Callable[[Iterable, str], Iterable]

#: Upper ends (English words, inclusive) of the source-length buckets BLEU is also reported by.
LENGTH_BUCKETS = (15, 25, 35, 50)


def _silent(iterable: Iterable, description: str) -> Iterable:
    """The default ``progress``: shows nothing."""
    return iterable


def evaluate_lm(loaded, max_tokens: int | None = None) -> dict:
    """Loss of a loaded GPT checkpoint on the held-out works
    (:data:`attnlab.data.shakespeare.VALIDATION_WORKS`): all of them, cut into consecutive
    windows of the training block size, or windows holding about ``max_tokens`` tokens spread
    evenly over them. Returns the loss in nats per token, the
    perplexity per token and bits per character; raises ``MissingPackageError`` without the
    Shakespeare package."""
    from attnlab.data.lm import encode_corpus
    from attnlab.data.shakespeare import VALIDATION_WORKS, load_works, split_works
    from attnlab.train.lm_task import bits_per_char, spread_windows, text_loss

    _, val_text = split_works(load_works())
    tokens = encode_corpus(loaded.tokenizer, val_text)
    block = min(loaded.train_config.block_size, loaded.model.config.max_positions)
    start = time.perf_counter()
    total, predicted = text_loss(loaded.model, spread_windows(tokens, block, max_tokens))
    nats = total / predicted
    return {
        "checkpoint": str(loaded.folder),
        "step": loaded.step,
        "preset": loaded.meta.get("preset"),
        "validation_works": list(VALIDATION_WORKS),
        "characters": len(val_text),
        "tokens": tokens.numel(),
        "tokens_scored": predicted,
        "val_loss_nats_per_token": nats,
        "perplexity": math.exp(nats),
        # From the mean over the tokens scored and the whole text's characters per token.
        "bits_per_char": bits_per_char(nats, tokens.numel(), len(val_text)),
        "seconds": time.perf_counter() - start,
    }


def bucket_label(words: int, edges=LENGTH_BUCKETS) -> str:
    """The bucket of a ``words``-long source: ``"1-15"``, ``"16-25"``, ..., ``"51+"``."""
    low = 1
    for high in edges:
        if words <= high:
            return f"{low}-{high}"
        low = high + 1
    return f"{low}+"


def scores_by_length(sources, hypotheses, references, edges=LENGTH_BUCKETS) -> list[dict]:
    """Corpus BLEU and chrF of the verses in each source-length bucket (English words), shortest
    first: ``[{"bucket", "sentences", "bleu", "chrf"}, ...]`` (empty buckets left out)."""
    from sacrebleu.metrics import BLEU, CHRF

    groups: dict[str, list[int]] = {}
    for index, source in enumerate(sources):
        groups.setdefault(bucket_label(len(source.split()), edges), []).append(index)
    order = [bucket_label(edge, edges) for edge in edges] + [bucket_label(edges[-1] + 1, edges)]
    rows = []
    for label in order:
        members = groups.get(label, [])
        if members:
            hyps, refs = [hypotheses[i] for i in members], [[references[i] for i in members]]
            rows.append({"bucket": label, "sentences": len(members),
                         "bleu": BLEU().corpus_score(hyps, refs).score,
                         "chrf": CHRF().corpus_score(hyps, refs).score})
    return rows


def verse_ref(pair) -> str:
    """``"Mark 4:3"``."""
    return f"{pair.book} {pair.chapter}:{pair.verse}"


def best_and_worst(pairs, hypotheses, count: int = 3, min_words: int = 8) -> dict[str, list[dict]]:
    """The ``count`` best and worst translations by sentence-level chrF among sources of at least
    ``min_words`` English words (short verses score erratically): samples of what works and not."""
    from sacrebleu.metrics import CHRF

    chrf = CHRF()
    scored = sorted(
        ((chrf.sentence_score(hyp, [pair.es]).score, pair, hyp)
         for pair, hyp in zip(pairs, hypotheses, strict=True) if len(pair.en.split()) >= min_words),
        key=lambda item: item[0])

    def rows(items):
        return [{"ref": verse_ref(pair), "chrf": score, "en": pair.en, "reference": pair.es,
                 "hypothesis": hyp} for score, pair, hyp in items]

    return {"best": rows(scored[::-1][:count]), "worst": rows(scored[:count])}


def evaluate_translation(loaded, max_sentences: int | None, beam: int, batch_size: int = 16,
                         progress: Progress = _silent, split: str = "test",
                         length_penalty: float = 1.0) -> dict:
    """sacreBLEU corpus BLEU and chrF of a loaded translator on the held-out test books, or with
    ``split="validation"`` on the validation books (to choose settings without looking at the
    test books): all their verses, or ``max_sentences`` spread evenly over them, translated
    ``batch_size`` at a time with ``beam`` beams and GNMT ``length_penalty``; also by source
    length (:func:`scores_by_length`), the best and worst verses (:func:`best_and_worst`), and
    every translation. Raises ``BibleDataError`` without the Bible packages."""
    from sacrebleu.metrics import BLEU, CHRF

    from attnlab.data.bible import HELD_OUT_BOOKS, VALIDATION_BOOKS, split_pairs, verse_pairs
    from attnlab.train.translate_task import spread, translate

    if split not in ("test", "validation"):
        raise ValueError(f"split must be 'test' or 'validation', got {split!r}")
    _, validation, test = split_pairs(verse_pairs())
    pairs = spread(test if split == "test" else validation, max_sentences)
    start = time.perf_counter()
    hypotheses: list[str] = []
    for first in progress(range(0, len(pairs), batch_size), "translating"):
        group = pairs[first:first + batch_size]
        hypotheses += translate(loaded.model, loaded.tokenizer, [pair.en for pair in group], beam=beam,
                                length_penalty=length_penalty)
    seconds = time.perf_counter() - start
    references = [pair.es for pair in pairs]
    bleu, chrf = BLEU(), CHRF()
    bleu_score = bleu.corpus_score(hypotheses, [references])
    chrf_score = chrf.corpus_score(hypotheses, [references])
    return {
        "checkpoint": str(loaded.folder),
        "step": loaded.step,
        "preset": loaded.meta.get("preset"),
        "arch": loaded.meta.get("arch"),
        "split": split,
        "books": list(HELD_OUT_BOOKS if split == "test" else VALIDATION_BOOKS),
        "test_books": list(HELD_OUT_BOOKS),
        "sentences": len(pairs),
        "beam": beam,
        "length_penalty": length_penalty,
        "bleu": bleu_score.score,
        "chrf": chrf_score.score,
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "by_source_length": scores_by_length([p.en for p in pairs], hypotheses, references),
        **best_and_worst(pairs, hypotheses),
        "seconds": seconds,
        "translations": [{"ref": verse_ref(p), "en": p.en, "reference": p.es, "hypothesis": h}
                         for p, h in zip(pairs, hypotheses, strict=True)],
    }


def predict_classes(model, pictures, normalization, views=((0, 0),)):
    """The class ``model`` gives each of ``pictures`` ``(batch, C, H, W)`` (uint8), ``(batch,)``:
    the highest mean log-probability over ``views``, shifts ``(dy, dx)`` of each picture (see
    :func:`attnlab.data.images.shift`; the default is the picture alone)."""
    from attnlab.data.images import shift

    scores = sum(model(normalization(shift(pictures, dy, dx))).log_softmax(dim=-1) for dy, dx in views)
    return scores.argmax(dim=-1)


def _classifier_split(loaded, dataset: str, split: str):
    """The pictures :func:`evaluate_classifier` scores: the test split, or the validation split
    the run held out (drawn again from its preset's ``val_fraction`` and its seed)."""
    from attnlab.data.images import dataset_splits, load_test_split
    from attnlab.train.vit_task import VIT_TRAIN_PRESETS

    if split == "test":
        return load_test_split(dataset)
    preset = VIT_TRAIN_PRESETS.get(loaded.meta.get("preset"))
    if preset is None:
        raise CheckpointError(f"{loaded.folder}: trained with preset {loaded.meta.get('preset')!r}, not "
                              f"one of {', '.join(VIT_TRAIN_PRESETS)}, so its validation split is unknown")
    return dataset_splits(dataset, preset.val_fraction, seed=loaded.train_config.seed)[1]


def evaluate_classifier(loaded, dataset: str, classes, normalization, batch_size: int = 500,
                        tta: bool = False, split: str = "test", progress: Progress = _silent) -> dict:
    """Accuracy, per-class accuracy and the confusion matrix of a loaded ViT on ``dataset``'s test
    split (Fashion-MNIST: the official 10,000; MNIST-5k: its fixed held-out 1,000), or with
    ``split="validation"`` on the validation pictures the run held out; also inference
    pictures/s (batches of ``batch_size``). ``tta`` classifies each picture by its average with
    its four one-pixel shifts (:data:`attnlab.data.images.ONE_PIXEL_SHIFTS`; five times the
    inference work). Raises ``ImageDataError`` without the dataset and :class:`CheckpointError`
    for the validation split of a run whose preset is unknown."""
    import torch

    from attnlab.data.images import ONE_PIXEL_SHIFTS

    held_out = _classifier_split(loaded, dataset, split)
    model = loaded.model.eval()
    views = ONE_PIXEL_SHIFTS if tta else ((0, 0),)
    predictions = []
    start = time.perf_counter()
    with torch.inference_mode():
        for first in progress(range(0, len(held_out), batch_size), "classifying"):
            pictures = held_out.images[first:first + batch_size]
            predictions.append(predict_classes(model, pictures, normalization, views))
    seconds = time.perf_counter() - start
    predicted = torch.cat(predictions)
    size = len(classes)
    confusion = torch.zeros(size, size, dtype=torch.long)
    confusion.index_put_((held_out.labels, predicted), torch.ones_like(predicted), accumulate=True)
    per_class = (confusion.diag().double() / confusion.sum(dim=1).clamp(min=1)).tolist()
    return {
        "checkpoint": str(loaded.folder),
        "step": loaded.step,
        "preset": loaded.meta.get("preset"),
        "dataset": dataset,
        "split": split,
        "pictures": len(held_out),
        "views": len(views),
        "accuracy": float((predicted == held_out.labels).double().mean()),
        "per_class_accuracy": dict(zip(classes, per_class, strict=True)),
        "confusion_matrix": confusion.tolist(),
        "images_per_s": len(held_out) / seconds,
        "seconds": seconds,
    }
