"""`attnlab generate` (continue a prompt with a pretrained model or a trained GPT checkpoint) and
`attnlab chat` (talk to a chat model), streamed."""

from __future__ import annotations

import argparse
import json
import time

from attnlab.commands.common import (
    UsageError,
    model_label,
    model_name_or_folder,
    non_negative_float,
    positive_int,
    probability,
    read_lines,
    seed,
    standard_input,
    whole_number_up_to,
)

GENERATIVE_MODELS = ["smollm2"]
# Generation slides its context past the model's window, so the length needs a bound of its own:
# SmolLM2's whole context, about 11 minutes at 12 tokens/s on 2 cores.
MAX_NEW_TOKENS = 8192
DEFAULT_MODEL = "smollm2"


def _sampling(args: argparse.Namespace) -> dict:
    return {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
            "seed": args.seed}


def _print_dim(text: str) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False).print(text, style="dim")


def _load_source(args: argparse.Namespace) -> tuple:
    """``(model, tokenizer, JSON fields naming them)`` from ``--checkpoint`` or ``--model``."""
    if args.checkpoint is not None:
        from attnlab.train.runs import load_gpt_run

        loaded = load_gpt_run(args.checkpoint)
        return loaded.model, loaded.tokenizer, {"model": "gpt", "checkpoint": str(loaded.folder)}
    name = args.model or DEFAULT_MODEL
    return *_load_decoder(name), {"model": name}


def _load_decoder(name: str) -> tuple:
    """``(model, tokenizer)`` of a pretrained model or model folder that writes text; an encoder
    (MiniLM, a BERT folder) is a one-line mistake."""
    from attnlab.models.pretrained import load_pretrained

    model, tokenizer = load_pretrained(name)
    if not model.is_causal:
        raise UsageError(f"--model {model_label(name)} is an encoder: it reads text but does not write "
                         "it; give a decoder (smollm2, or a llama, qwen2, mistral or gpt2 folder)")
    return model, tokenizer


def run_generate(args: argparse.Namespace) -> None:
    from attnlab.generation import stream_ids, stream_text

    if not args.prompt.strip():
        raise UsageError('the prompt is empty; give text to continue, '
                         'e.g. attnlab generate "Once upon a time"')
    model, tokenizer, source = _load_source(args)
    received: list[int] = []
    start = time.perf_counter()
    try:
        # A character outside a char-level vocabulary, a prompt longer than the model's context,
        # an empty --stop: all ValueErrors that name the problem.
        prompt_ids = tokenizer.encode(args.prompt)
        tokens = stream_ids(model, prompt_ids, args.max_new_tokens, **_sampling(args),
                            eos_ids=(tokenizer.eos_token_id,))
        stream = stream_text(tokenizer, tokens, args.stop, received=received)
    except ValueError as err:
        raise UsageError(str(err)) from None
    pieces = []
    for piece in stream:
        pieces.append(piece)
        if not args.json:
            print(piece, end="", flush=True)
    seconds = time.perf_counter() - start
    rate = len(received) / seconds
    if args.json:
        print(json.dumps({
            **source,
            "prompt": args.prompt,
            "text": "".join(pieces),
            "tokens": len(received),
            "seconds": seconds,
            "tokens_per_s": rate,
            **_sampling(args),
        }, indent=2))
    else:
        print(flush=True)
        _print_dim(f"{len(received)} tokens in {seconds:.2f} s ({rate:.1f} tokens/s)")


def _lines(stdin, interactive: bool):
    """The user's lines: ``input()`` with a prompt on a terminal, plain lines from a pipe."""
    if not interactive:
        for line in read_lines(stdin):
            yield line.rstrip("\n")
        return
    while True:
        try:
            yield input("> ")
        except EOFError:
            print()
            return


def run_chat(args: argparse.Namespace) -> None:
    from attnlab.generation import ChatSession

    # Before the model loads: a chat with no way to read messages ends at once.
    stdin = standard_input("chat reads your messages from it (type them, or pipe them in)")
    model, tokenizer = _load_decoder(args.model)
    if getattr(tokenizer, "chat_template", None) is None:
        raise UsageError(f"--model {model_label(args.model)} has no chat template (tokenizer_config.json "
                         "names none), so it cannot chat; use `attnlab generate` to continue a text")
    chat = ChatSession(model, tokenizer, system=args.system, max_new_tokens=args.max_new_tokens,
                       **_sampling(args))
    interactive = stdin.isatty()
    if interactive:
        _print_dim(f"Chatting with {args.model}. Ctrl-D or /exit to leave, /reset to start over.")
    for line in _lines(stdin, interactive):
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            return
        if text == "/reset":
            chat.reset()
            _print_dim("(conversation cleared)")
            continue
        try:
            reply = chat.send(text)
        except ValueError as err:  # the conversation outgrew the model's context
            _print_dim(f"{err}; /reset starts over")
            continue
        try:
            for piece in reply:
                print(piece, end="", flush=True)
        except KeyboardInterrupt:
            if not interactive:
                raise
            print(" [interrupted]", end="")  # back to the prompt; the partial reply is kept
        print(flush=True)


def _add_model_argument(parser, default: str | None) -> None:
    parser.add_argument("--model", type=model_name_or_folder(GENERATIVE_MODELS), default=default,
                        metavar="NAME|FOLDER",
                        help=f"the pretrained model: {', '.join(GENERATIVE_MODELS)}, or a local Hugging "
                        "Face model folder (llama, qwen2, mistral or gpt2; config.json, *.safetensors, "
                        f"tokenizer.json) (default: {DEFAULT_MODEL})")


def _add_sampling_arguments(parser: argparse.ArgumentParser, max_new_tokens: int) -> None:
    parser.add_argument("--max-new-tokens", type=whole_number_up_to(MAX_NEW_TOKENS), default=max_new_tokens,
                        help=f"most tokens to generate (default: {max_new_tokens})")
    parser.add_argument("--temperature", type=non_negative_float, default=0.7,
                        help="sampling temperature; 0 = greedy, always the likeliest token "
                        "(default: 0.7)")
    parser.add_argument("--top-k", type=positive_int, default=None,
                        help="sample only from the K likeliest tokens (default: all)")
    parser.add_argument("--top-p", type=probability, default=None,
                        help="sample only from the likeliest tokens that together hold "
                        "probability P (nucleus sampling; default: all)")
    parser.add_argument("--seed", type=seed, default=None,
                        help="random seed: the same seed gives the same text (default: random)")


def register(sub: argparse._SubParsersAction) -> None:
    generate = sub.add_parser(
        "generate",
        help="continue a text prompt with a pretrained language model or a trained GPT",
        description="Continue PROMPT with a pretrained decoder (--model) or a GPT trained with "
        "`attnlab train gpt` (--checkpoint), decoding with attnlab's KV cache. The text streams "
        "to stdout as it is produced; the speed follows on stderr.",
    )
    generate.add_argument("prompt", metavar="PROMPT", help="the text to continue")
    source = generate.add_mutually_exclusive_group()
    # No default here: argparse then knows whether --model was given alongside --checkpoint.
    _add_model_argument(source, default=None)
    source.add_argument("--checkpoint", metavar="DIR", default=None,
                        help="a GPT checkpoint folder, or a training --out folder (its latest "
                        "checkpoint), instead of --model")
    _add_sampling_arguments(generate, max_new_tokens=100)
    generate.add_argument("--stop", action="append", metavar="TEXT",
                          help="end the text right before TEXT (repeat for several)")
    generate.add_argument("--json", action="store_true",
                          help="print prompt, text, tokens and tokens/s as JSON instead of streaming")
    generate.set_defaults(run=run_generate)

    chat = sub.add_parser(
        "chat",
        help="chat with a pretrained instruction-tuned model",
        description="Talk to a chat model through its chat template; the KV cache carries over "
        "between turns. Each line you type is a message; replies stream as they are produced. "
        "/reset forgets the conversation, /exit or Ctrl-D leaves. With stdin piped, every line "
        "is answered in turn.",
    )
    _add_model_argument(chat, default=DEFAULT_MODEL)
    _add_sampling_arguments(chat, max_new_tokens=256)
    chat.add_argument("--system", metavar="TEXT", default=None,
                      help="system message that sets the assistant's behaviour "
                      "(default: the model's own)")
    chat.set_defaults(run=run_chat)
