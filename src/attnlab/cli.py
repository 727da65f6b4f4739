"""The ``attnlab`` command line. Every subcommand: complete ``--help``, one-line errors, ``--json``.

Each subcommand lives in :mod:`attnlab.commands` and registers itself here.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from attnlab.errors import AttnlabError

# Order = order in `attnlab --help`.
COMMAND_MODULES = ["explain", "serve", "demo", "generate", "train", "eval", "translate", "classify", "cost"]


class OneLineErrorParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line (not the whole usage block)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="attnlab",
        description="attnlab: self-attention made understandable and fast.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=OneLineErrorParser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"attnlab.commands.{name}").register(sub)
    debug_help = "show the full traceback of an unexpected error (also: ATTNLAB_DEBUG=1)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    _add_debug(sub, debug_help)
    return parser


def _add_debug(sub: argparse._SubParsersAction, debug_help: str) -> None:
    """``--debug`` on every (sub)command too, so ``attnlab train gpt ... --debug`` works."""
    for command in sub.choices.values():
        nested = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            _add_debug(nested[0], debug_help)
        else:
            command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                 help=debug_help)


def _message(error: BaseException) -> str:
    """``error``'s message on one line (a path or a quoted value may hold line breaks)."""
    return " ".join(str(error).split()) or "no message"


def _one_line(error: BaseException) -> str:
    """What failed, on one line: the exception's type and message."""
    return f"{type(error).__name__}: {_message(error)}"


def main(argv: list[str] | None = None) -> int:
    """Run ``attnlab ARGV``; the exit status: 0 done, 2 a user mistake (an :class:`AttnlabError`
    or argparse's refusal, one line on stderr), 1 anything unforeseen (one line, unless
    ``--debug``), 130 Ctrl-C."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except AttnlabError as err:  # the user's input or environment: the one place they are told
        print(f"attnlab {args.command}: error: {_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        sys.stderr.close()
        return 0
    except Exception as err:  # anything unforeseen is still one line, unless asked for more
        if args.debug or os.environ.get("ATTNLAB_DEBUG", "") not in ("", "0"):
            raise
        print(f"attnlab {args.command}: unexpected error: {_one_line(err)} (run again with --debug, "
              "or ATTNLAB_DEBUG=1, to see where it happened)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
