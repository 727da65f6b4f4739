"""Fuzzing the checkpoint loader: a damaged checkpoint that passes its manifest never crashes it.

A real tiny GPT checkpoint (weights, optimizer, RNG, trainer state, character tokenizer) is built
once. Each case damages a copy in one way (truncates a file, flips a byte, rewrites a config
value, adds or removes a field or a file, turns a file into a folder) and then rewrites the
manifest's sizes and hashes so that the damage passes the integrity check, as a clumsy or hostile
hand would. Every load must end, within seconds, in a model that runs a forward pass or in one
``CheckpointError`` line; no other exception, no multi-line message, no hang.
"""

import hashlib
import json
import math
import random
import shutil
import time

import pytest
import torch
from toy import one_thread  # noqa: F401 (autouse fixture)

from attnlab.data.tokenizers import META_FILE, CharTokenizer
from attnlab.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.train import CheckpointError, TrainConfig, load_checkpoint
from attnlab.train.checkpoint import (
    FORMAT,
    MANIFEST_FILE,
    OPTIMIZER_FILE,
    RNG_FILE,
    STATE_FILE,
    TOKENIZER_FILE,
    capture_rng,
    restore_training_state,
    save_checkpoint,
)

FILES = (WEIGHTS_FILE, CONFIG_FILE, OPTIMIZER_FILE, RNG_FILE, STATE_FILE, TOKENIZER_FILE, META_FILE)
JSON_FILES = (CONFIG_FILE, STATE_FILE, TOKENIZER_FILE, META_FILE)
TENSOR_FILES = (WEIGHTS_FILE, OPTIMIZER_FILE, RNG_FILE)
SECONDS = 5  # a load slower than this counts as a hang
TEXT = "to be or not to be"
TRAIN_CONFIG = TrainConfig(batch_size=2, block_size=16, max_steps=1)
DELETE = object()  # the value that removes a field
ODD_VALUES = {"-1": -1, "0": 0, "1e12": 10**12, "2.5": 2.5, "str": "8", "list": [8], "object": {"a": 8},
              "null": None, "true": True, "NaN": math.nan, "inf": math.inf, "deleted": DELETE}


class _TokenizerAssets:
    """The one part of a training task that ``save_checkpoint`` uses: it writes the tokenizer."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def save_assets(self, folder) -> None:
        self.tokenizer.save(folder)


@pytest.fixture(scope="module")
def pristine_model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=len(set(TEXT)), max_positions=16, num_layers=2, num_heads=2,
                         embed_dim=16))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, pristine_model):
    """The checkpoint folder of a real (tiny) run: every file ``save_checkpoint`` writes."""
    optimizer = torch.optim.AdamW(pristine_model.parameters())
    pristine_model(torch.tensor([[0, 1, 2]])).sum().backward()
    optimizer.step()  # so that the optimizer file holds moments
    return save_checkpoint(tmp_path_factory.mktemp("run"), step=1, model=pristine_model, optimizer=optimizer,
                           train_config=TRAIN_CONFIG, rng_states=[capture_rng()],
                           task=_TokenizerAssets(CharTokenizer.train(TEXT)))


def _rewrite_manifest(folder):
    """Make the damage "valid": record every file's new size and sha256."""
    (folder / MANIFEST_FILE).unlink(missing_ok=True)
    files = {path.relative_to(folder).as_posix(): {"bytes": path.stat().st_size,
                                                   "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
             for path in sorted(folder.rglob("*")) if path.is_file()}
    (folder / MANIFEST_FILE).write_text(json.dumps({"format": FORMAT, "step": 1, "files": files}))


# ---------------------------------------------------------------------------------------------
# Damages: each returns a function of the checkpoint folder.


def _truncate(name, keep):
    def damage(folder):
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[:keep(len(data))])
    return damage


def _flip(name, offset, mask):
    """XOR one byte; ``offset(data)`` picks it. Mask 0x01 turns a digit into its neighbour."""
    def damage(folder):
        data = bytearray((folder / name).read_bytes())
        data[offset(data)] ^= mask
        (folder / name).write_bytes(bytes(data))
    return damage


def _header_length(data) -> int:
    return int.from_bytes(data[:8], "little")


def _set(name, keys, value):
    """Set (or, with ``DELETE``, remove) the field at path ``keys`` of JSON file ``name``."""
    def damage(folder):
        data = json.loads((folder / name).read_text())
        target = data
        for key in keys[:-1]:
            target = target[key]
        if value is DELETE:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value
        (folder / name).write_text(json.dumps(data))
    return damage


def _write(name, content):
    def damage(folder):
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return damage


def _remove(name):
    return lambda folder: (folder / name).unlink()


def _into_folder(name):
    def damage(folder):
        (folder / name).unlink()
        (folder / name).mkdir()
    return damage


def _edit_header(name, edit):
    """Rewrite the safetensors header of ``name`` consistently: the file stays well-formed."""
    def damage(folder):
        data = (folder / name).read_bytes()
        length = _header_length(data)
        header = json.loads(data[8:8 + length])
        edit(header)
        text = json.dumps(header).encode()
        (folder / name).write_bytes(len(text).to_bytes(8, "little") + text + data[8 + length:])
    return damage


def _first_tensor(header):
    return header[sorted(k for k in header if k != "__metadata__")[0]]


def _retype(header):
    _first_tensor(header)["dtype"] = "I32"  # same size as F32: only the dtype check can tell


def _transpose(header):
    tensor = header["embed.weight"]
    tensor["shape"] = tensor["shape"][::-1]


def _transpose_moment(header):
    """Transpose the first 2-D moment: same bytes, the shape of no parameter it belongs to."""
    tensor = next(t for k, t in sorted(header.items()) if k != "__metadata__" and len(t["shape"]) == 2
                  and t["shape"][0] != t["shape"][1])
    tensor["shape"] = tensor["shape"][::-1]


def _rename_first(new_name):
    def edit(header):
        header[new_name] = header.pop(sorted(k for k in header if k != "__metadata__")[0])
    return edit


def _tag(header):
    header["__metadata__"] = {"format": "pt", "note": "harmless"}


# ---------------------------------------------------------------------------------------------
# Cases: (id, damage, outcome of load_checkpoint, outcome of resuming, rewrite the manifest?).
# An outcome is "loaded", "refused" or None (either will do); load_checkpoint reads the model, the
# config, the trainer state and the tokenizer, resuming everything but the tokenizer.

L, R = "loaded", "refused"
DEFAULTED = ("dropout", "positions", "bias", "backend")  # GPTConfig fields saved at their defaults


def _cases():
    cuts = {"empty": lambda n: 0, "1-byte": lambda n: 1, "9-bytes": lambda n: 9, "half": lambda n: n // 2,
            "last-byte-off": lambda n: n - 1}
    for name in FILES:
        for cut, keep in cuts.items():
            load = L if name in (OPTIMIZER_FILE, RNG_FILE) else R
            resume = None if name in (TOKENIZER_FILE, META_FILE) else R
            if name in JSON_FILES and cut == "last-byte-off":  # JSON files end in a newline
                load = resume = None
            yield f"truncate-{name}-{cut}", _truncate(name, keep), load, resume, True
    picks = random.Random(0)
    for name in TENSOR_FILES:
        for byte in (0, 3, 7):  # the header length
            yield f"flip-{name}-length-byte-{byte}", _flip(name, lambda d, b=byte: b, 0xFF), None, None, True
        for mask in (0x01, 0xFF):
            for fraction in sorted(picks.random() for _ in range(4)):
                def where(data, fraction=fraction):
                    return 8 + int(fraction * _header_length(data))
                yield f"flip-{name}-header-{fraction:.2f}-{mask:#x}", _flip(name, where, mask), None, None, \
                    True
        for fraction in (0.0, 0.5, 0.999):
            def where(data, fraction=fraction):
                start = 8 + _header_length(data)
                return start + int(fraction * (len(data) - start))
            yield f"flip-{name}-data-{fraction}", _flip(name, where, 0xFF), None, None, True
    for field in ("model_type", "vocab_size", "max_positions", "num_layers", "num_heads", "embed_dim",
                  "dropout", "positions", "bias", "backend"):
        for label, value in ODD_VALUES.items():
            # 0 is a valid float; a deleted field takes its default, which these four were saved with.
            valid = (field, label) == ("dropout", "0") or (label == "deleted" and field in DEFAULTED)
            load = L if valid else R
            # Resuming compares the saved config with the model's, and 0 == 0.0 == False in Python.
            resume = L if (field, label) in (("dropout", "0"), ("bias", "0")) else R
            yield f"config-{field}-{label}", _set(CONFIG_FILE, (field,), value), load, resume, True
    yield "config-extra-field", _set(CONFIG_FILE, ("flash",), True), R, R, True
    for field in ("format", "step", "world_size", "train_config", "meta", "metrics", "optimizer", "rng"):
        for label in ("-1", "str", "list", "null", "deleted"):
            load = L if (field, label) == ("rng", "list") else R  # loading does not read the RNG states
            yield f"state-{field}-{label}", _set(STATE_FILE, (field,), ODD_VALUES[label]), load, R, True
    yield "state-step-1e12", _set(STATE_FILE, ("step",), 10**12), L, L, True
    yield "state-extra-field", _set(STATE_FILE, ("comment",), "hi"), L, L, True
    for field in ("lr", "batch_size", "betas", "grad_clip", "max_minutes"):
        for label in ("-1", "str", "list", "object", "NaN"):
            damage = _set(STATE_FILE, ("train_config", field), ODD_VALUES[label])
            yield f"train-config-{field}-{label}", damage, R, R, True
    yield "train-config-unknown-field", _set(STATE_FILE, ("train_config", "turbo"), 1), R, R, True
    for key, value in {"lr": "x", "betas": [0.9], "eps": math.nan, "amsgrad": 1, "params": [0, "1"]}.items():
        damage = _set(STATE_FILE, ("optimizer", "param_groups", 0, key), value)
        yield f"optimizer-group-{key}", damage, L, R, True
    yield "optimizer-groups-empty", _set(STATE_FILE, ("optimizer", "param_groups"), []), L, R, True
    yield "optimizer-scalars-list", _set(STATE_FILE, ("optimizer", "scalars"), []), L, R, True
    renamed = _rename_first("state.99.exp_avg")  # a parameter the optimizer does not have
    yield "optimizer-header-renamed", _edit_header(OPTIMIZER_FILE, renamed), L, R, True
    yield "optimizer-header-transposed", _edit_header(OPTIMIZER_FILE, _transpose_moment), L, R, True
    yield "rng-header-renamed", _edit_header(RNG_FILE, _rename_first("rank7.torch_cpu")), L, R, True
    for key, value in {"python": "x", "numpy": [], "extra": 1}.items():
        yield f"rng-state-{key}", _set(STATE_FILE, ("rng", 0, key), value), L, R, True
    for label, keys in {"negative": [-1, 2], "short": [1, 2, 3]}.items():
        yield f"rng-state-numpy-keys-{label}", _set(STATE_FILE, ("rng", 0, "numpy", "keys"), keys), L, R, True
    for label, vocab in {"ints": [1, 2], "empty": [], "repeated": ["a", "a"], "string": "abc",
                         "words": ["ab", "c"], "object": {"a": 0}}.items():
        yield f"tokenizer-vocab-{label}", _set(TOKENIZER_FILE, ("vocab",), vocab), R, None, True
    large = [chr(65 + i) for i in range(40)]
    yield "tokenizer-vocab-larger-than-model", _set(TOKENIZER_FILE, ("vocab",), large), R, None, True
    yield "tokenizer-vocab-smaller", _set(TOKENIZER_FILE, ("vocab",), ["t", "o"]), L, None, True
    for label, kind in {"bpe": "bpe", "pickle": "pickle", "list": ["char"], "null": None}.items():
        yield f"tokenizer-kind-{label}", _set(META_FILE, ("kind",), kind), R, None, True
    for name in JSON_FILES:
        resume = R if name in (CONFIG_FILE, STATE_FILE) else None
        for label, text in {"array": "[]", "string": '"x"', "number": "3", "null": "null", "open-brace": "{",
                            "deep-nesting": "[" * 100_000, "not-utf8": b"\xff\xfe\x00{"}.items():
            yield f"{name}-{label}", _write(name, text), R, resume, True
    for name in FILES:
        # Without tokenizer.json the checkpoint has no tokenizer; without its meta file it is broken.
        load = L if name == TOKENIZER_FILE else R
        resume = None if name in (TOKENIZER_FILE, META_FILE) else R
        yield f"remove-{name}", _remove(name), load, resume, True
        yield f"folder-for-{name}", _into_folder(name), load, resume, True
    yield "add-pickle-file", _write("model.pt", b"\x80\x04\x95cos\nsystem\n"), L, L, True
    yield "add-text-file", _write("notes.txt", "hello"), L, L, True
    yield "header-int-dtype", _edit_header(WEIGHTS_FILE, _retype), R, R, True
    yield "header-transposed-shape", _edit_header(WEIGHTS_FILE, _transpose), R, R, True
    yield "header-renamed-tensor", _edit_header(WEIGHTS_FILE, _rename_first("embed.weights")), R, R, True
    yield "header-metadata", _edit_header(WEIGHTS_FILE, _tag), L, L, True
    # The manifest itself, damaged and not rewritten.
    yield "manifest-truncated", _truncate(MANIFEST_FILE, lambda n: n // 2), R, R, False
    yield "manifest-array", _write(MANIFEST_FILE, "[]"), R, R, False
    yield "manifest-deep-nesting", _write(MANIFEST_FILE, "[" * 100_000), R, R, False
    outside = json.dumps({"files": {name: {"bytes": 0, "sha256": ""} for name in FILES}
                          | {"../../outside": {"bytes": 0, "sha256": ""}}})
    yield "manifest-path-outside", _write(MANIFEST_FILE, outside), R, R, False


CASES = list(_cases())


def _outcome(load):
    """``("loaded", value)`` or ``("refused", message)`` of ``load()``, which must take under
    :data:`SECONDS` and may raise nothing but a one-line :class:`CheckpointError`."""
    start = time.perf_counter()
    try:
        outcome = (L, load())
    except CheckpointError as error:
        outcome = (R, str(error))
        assert outcome[1] and "\n" not in outcome[1], repr(outcome[1])
    assert time.perf_counter() - start < SECONDS
    return outcome


def _assert_works(loaded):
    config = loaded.model.config
    ids = torch.arange(min(4, config.vocab_size, config.max_positions))[None]
    with torch.no_grad():
        logits = loaded.model(ids)
    assert logits.shape == (1, ids.shape[1], config.vocab_size)
    tokenizer = loaded.tokenizer
    if tokenizer is not None:
        assert tokenizer.vocab_size <= config.vocab_size
        assert len(tokenizer.decode(list(range(tokenizer.vocab_size)))) == tokenizer.vocab_size


def _resume(folder, pristine_model):
    """Restore ``folder`` into a fresh model and optimizer of the saved run's kind and take one
    training step (a malformed optimizer state would fail here, not at loading)."""
    torch.manual_seed(1)
    model = GPT(pristine_model.config)
    optimizer = torch.optim.AdamW(model.parameters())
    outcome = _outcome(lambda: restore_training_state(folder, model, optimizer, TRAIN_CONFIG, rank=0,
                                                       world_size=1))
    if outcome[0] == L:
        model(torch.tensor([[0, 1, 2]])).sum().backward()
        optimizer.step()
    return outcome


def test_the_pristine_checkpoint_loads_works_and_resumes(pristine):
    outcome, loaded = _outcome(lambda: load_checkpoint(pristine))
    assert outcome == L
    _assert_works(loaded)
    assert loaded.tokenizer.decode(loaded.tokenizer.encode("be or not")) == "be or not"
    assert _resume(pristine, loaded.model)[0] == L


@pytest.mark.parametrize(("damage", "load", "resume", "rewrite"), [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_a_damaged_checkpoint_works_or_is_refused_in_one_line(pristine, pristine_model, tmp_path, damage,
                                                             load, resume, rewrite):
    folder = shutil.copytree(pristine, tmp_path / pristine.name)
    damage(folder)
    if rewrite:
        _rewrite_manifest(folder)
    outcome, result = _outcome(lambda: load_checkpoint(folder))
    if outcome == L:
        _assert_works(result)
    assert load is None or outcome == load, result
    outcome, result = _resume(folder, pristine_model)
    assert resume is None or outcome == resume, result


@pytest.mark.parametrize(("damage", "name"), [
    (_set(CONFIG_FILE, ("embed_dim",), "16"), CONFIG_FILE),
    (_set(CONFIG_FILE, ("num_layers",), 10**12), CONFIG_FILE),
    (_truncate(WEIGHTS_FILE, lambda n: n // 2), WEIGHTS_FILE),
    (_edit_header(WEIGHTS_FILE, _transpose), WEIGHTS_FILE),
    (_set(TOKENIZER_FILE, ("vocab",), [1, 2]), TOKENIZER_FILE),
    (_set(META_FILE, ("kind",), "pickle"), META_FILE),
    (_set(STATE_FILE, ("step",), "x"), STATE_FILE),
    (_set(STATE_FILE, ("train_config", "lr"), "x"), STATE_FILE),
], ids=["config-type", "config-size", "weights-truncated", "weights-shape", "tokenizer", "tokenizer-kind",
        "state", "train-config"])
def test_the_refusal_names_the_damaged_file(pristine, tmp_path, damage, name):
    folder = shutil.copytree(pristine, tmp_path / pristine.name)
    damage(folder)
    _rewrite_manifest(folder)
    outcome, message = _outcome(lambda: load_checkpoint(folder))
    assert outcome == R
    assert str(folder / name) in message
