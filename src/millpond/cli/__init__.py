"""The ``millpond`` command line (console script ``millpond``, or ``python -m millpond``).

Subcommands live in their own modules and use millpond's public API only. rich, from the
``cli`` extra, is optional: without it the output is plain text.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import NoReturn

import millpond
from millpond.cli import bench

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors on one line (and exit status 2, as argparse does)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="millpond", description="millpond, a database connection pool.")
    parser.add_argument("--version", action="version", version=f"millpond {millpond.__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)
    bench.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version or a usage error: argparse has printed it
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code: int = handler(args)
    except KeyboardInterrupt:  # a command that did not handle Ctrl-C itself: no traceback
        sys.stderr.write(f"{parser.prog}: interrupted\n")
        return 130
    except BrokenPipeError:
        # the reader went away (`millpond bench | head`): say nothing more, and keep Python
        # from reporting the same broken pipe again when it flushes stdout at exit
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 141
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
