"""`attnlab serve`: the live attention explorer in the browser.

Loads the models named on the command line once, then serves one self-contained page and its
JSON API on 127.0.0.1 (by default) until Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import time

from attnlab.commands.common import UsageError

DEFAULT_MODEL = "minilm"


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be from 0 to 65535 (0 picks a free port), got {value}")
    return value


def _load(args: argparse.Namespace) -> list:
    from attnlab.serve.models import LoadError, load_checkpoint_part, load_named

    names = list(dict.fromkeys(args.model or ([] if args.checkpoint else [DEFAULT_MODEL])))
    models = []
    for source in [("model", n) for n in names] + [("checkpoint", c) for c in args.checkpoint or []]:
        kind, value = source
        start = time.perf_counter()
        print(f"Loading {value}...", end=" ", file=sys.stderr, flush=True)
        try:
            taken = {m.id for m in models}
            served = load_named(value, taken) if kind == "model" else load_checkpoint_part(value, taken)
        except LoadError as err:
            print("failed", file=sys.stderr)
            raise UsageError(str(err)) from None
        print(f"done in {time.perf_counter() - start:.1f} s ({served.title})", file=sys.stderr, flush=True)
        models.append(served)
    return models


def run(args: argparse.Namespace) -> None:
    from attnlab.serve.runner import bind, is_loopback, serve_forever

    if not is_loopback(args.host):
        print(f"warning: --host {args.host} lets other machines on the network use this explorer "
              "and the models it runs; it has no login", file=sys.stderr)
    # Fail on a taken port before spending seconds on the models.
    try:
        bind(args.host, args.port).close()
    except OSError as err:
        raise UsageError(str(err)) from None
    models = _load(args)

    def ready(url: str) -> None:
        print(f"attnlab explorer ready: open {url} (Ctrl-C stops it)", flush=True)

    try:
        serve_forever(models, args.host, args.port, on_ready=ready)
    except OSError as err:
        raise UsageError(str(err)) from None
    except KeyboardInterrupt:
        # uvicorn has already shut down gracefully and re-raises the Ctrl-C it caught: that is
        # the normal way to stop an explorer, not an interruption of unfinished work.
        pass
    print("attnlab explorer stopped", file=sys.stderr)


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve",
        help="open a live attention explorer in your browser",
        description="Serve a live explorer of attention: type a sentence and see, with a real "
        "model's own numbers, which words each word looks at, step by step; watch a chat model "
        "pick its next word and generate; hide a word or switch off a head and see what "
        "changes. Models load once, at start; the page works offline.",
        epilog="examples:\n  attnlab serve\n  attnlab serve --model minilm --model smollm2\n"
        "  attnlab serve --checkpoint runs/gpt --port 0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=_port, default=8000,
                       help="port to listen on; 0 picks a free one (default 8000)")
    serve.add_argument("--model", action="append", metavar="NAME|FOLDER",
                       help="a pretrained model to offer: minilm (a sentence encoder), smollm2 "
                       "(a small chat model), or the path of a local Hugging Face model folder "
                       "(bert, llama, qwen2, mistral, gpt2); repeat for several (default: minilm)")
    serve.add_argument("--checkpoint", action="append", metavar="DIR",
                       help="a model trained with attnlab: `train gpt` (Write), `train translate` "
                       "(Translate, Transformer or LSTM) or `train vit` (Recognise a picture); its "
                       "--out folder or a checkpoint folder, recognised by what it holds; repeat "
                       "for several")
    serve.set_defaults(run=run)
