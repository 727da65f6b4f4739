"""The ``attnlab`` command line. Every subcommand: complete ``--help``, one-line errors, ``--json``.

Each subcommand lives in :mod:`attnlab.commands` and registers itself here.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from attnlab.commands.common import UsageError

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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except UsageError as err:
        print(f"attnlab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        sys.stderr.close()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
