"""The `trigpt` command.

Each subcommand module exposes `register(subparsers)`, which adds its parser and sets
`handler` to a function taking the parsed arguments and returning an exit status. A user
mistake raises UserError (or ValueError, ImportError, FileNotFoundError, CheckpointError),
which main() prints as one line on stderr with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Sequence

# OpenBLAS worker threads keep spinning after each call, which slows torch down in a process
# that runs both NumPy and torch. OpenBLAS reads the timeout when numpy is first imported.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")

from shared.errors import UserError  # noqa: E402

# Modules that add subcommands, in the order `trigpt --help` lists them.
COMMAND_MODULES = [
    "shared.commands",
    "shared.train",
    "shared.compare",
    "shared.convert",
    "shared.bench",
    "shared.demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trigpt",
        description="One GPT-2-style model in PyTorch, JAX/Flax and NumPy: one config, one weight format.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("trigpt: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output (for example `head`) closed the pipe: stop quietly.
        sys.stderr.close()
        return 141
    except (UserError, ValueError, ImportError, OSError) as error:
        if args.verbose:
            raise
        print(f"trigpt {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
