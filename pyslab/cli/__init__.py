"""The ``pyslab`` command: compare policies on workloads and on real programs' traces.

``pyslab COMMAND --help`` documents each command; :mod:`pyslab.cli.commands` lists them and
says how to add one. Exit status: 0 success, 2 usage error (bad option, unknown policy or
workload name, a number beyond its option's limit, an output format that cannot be written),
1 failure (a bad trace, a file that cannot be read or written, a missing library of the
``cli`` extra, an error of the allocator, memory exhausted), 130 interrupted. Each error is one
``pyslab COMMAND: error: ...`` line on stderr, never a traceback. When the reader of standard
output goes away (``pyslab map | head -1``), the command stops quietly with status 1, as
Python's documentation recommends for SIGPIPE.

The core (``pyslab`` outside this package) never imports this package; its libraries (rich,
matplotlib, memray: ``pip install 'pyslab-alloc[cli]'``) are imported only by the commands that
use them.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import TextIO

import pyslab

from ._common import CommandError, MissingExtra, UsageError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command in :data:`pyslab.cli.commands.COMMANDS`."""
    from .commands import COMMANDS

    parser = argparse.ArgumentParser(
        prog="pyslab",
        description="Experiments with pyslab, a slab allocator on real mmap'd memory whose "
        "every decision is a swappable policy.",
        epilog="Start with 'pyslab compare'. Exit status: 0 success, 1 failure, 2 usage error.",
    )
    parser.add_argument("--version", action="version", version=f"pyslab {pyslab.__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers).set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pyslab`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status.

    Never raises for a usage error or a failure: the message goes to stderr and the status
    says which (0, 1, 2, or 130 on Ctrl-C). A :class:`~pyslab.PyslabWarning` (a plugin left out
    because it fails to load) is one ``pyslab COMMAND: warning: ...`` line on stderr. A closed
    standard output (``BrokenPipeError``) ends the command quietly with status 1.
    """
    try:
        return _main(argv)
    except BrokenPipeError:
        return _stdout_gone()


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a usage error
        _flush_stdout()
        return _status(exit_.code)
    name = f"pyslab {args.command}"
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warning_line(name, warnings.showwarning)
            status: int = args.run(args)
            _flush_stdout()
    except UsageError as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        raise
    except (pyslab.PyslabError, OSError, MissingExtra, CommandError) as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        return 1
    except MemoryError as error:
        print(f"{name}: error: out of memory: {error or 'no detail'}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    return status


def _flush_stdout() -> None:
    """Flush standard output: what is still buffered would otherwise meet a closed pipe or a
    full disk only at exit, where Python reports it on stderr with a traceback.

    Raises: BrokenPipeError; CommandError for any other failed write.
    """
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as error:
        raise CommandError(
            f"cannot write standard output: {error.strerror or error}"
        ) from None


def _stdout_gone() -> int:
    """Standard output was closed by its reader: point it at /dev/null, so that the flush at
    exit does not fail again, and return status 1 (the recipe of Python's documentation on
    SIGPIPE)."""
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test's capture)
        return 1
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, descriptor)
    finally:
        os.close(devnull)
    return 1


def _warning_line(name: str, default: Callable[..., None]) -> Callable[..., None]:
    """Show a PyslabWarning as ``NAME: warning: MESSAGE``; any other as ``default`` does."""

    def show(
        message: Warning | str, category: type[Warning], filename: str, lineno: int,
        file: TextIO | None = None, line: str | None = None,
    ) -> None:
        if issubclass(category, pyslab.PyslabWarning):
            print(f"{name}: warning: {message}", file=file if file is not None else sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    return show


def _status(code: object) -> int:
    if code is None:
        return 0
    return code if isinstance(code, int) else 1
