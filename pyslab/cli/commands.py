"""The registry of ``pyslab`` subcommands: one module per subcommand, listed in :data:`COMMANDS`.

A subcommand module exposes two functions (the :class:`Command` protocol):

- ``add_parser(subparsers) -> argparse.ArgumentParser``: add its parser, with
  ``subparsers.add_parser(NAME, help=ONE_LINE, description=PARAGRAPH)``, and its options;
- ``run(args) -> int``: do the work and return the exit code (0 success, 1 failure).

Errors are the main function's business: ``run`` raises :class:`~pyslab.cli._common.UsageError`
for a usage error (exit 2), or a :class:`~pyslab.PyslabError`, ``OSError`` or
:class:`~pyslab.cli._common.MissingExtra` for a failure (exit 1, message on stderr). Heavy
imports (rich, matplotlib, memray) belong inside ``run``, so that ``--help`` stays fast.

To add a subcommand, write ``pyslab/cli/NAME.py`` and append the module to :data:`COMMANDS`::

    from . import compare, map, policies, replay, trace, workloads

    COMMANDS = (compare, replay, trace, policies, workloads, map)

The order of :data:`COMMANDS` is the order of ``pyslab --help``.
"""

from __future__ import annotations

import argparse
from typing import Protocol

from . import animate_command, compare, map_command, policies, replay, trace, workloads
from ._common import Subparsers

__all__ = ["COMMANDS", "Command"]


class Command(Protocol):
    """What a subcommand module provides (modules satisfy this protocol structurally)."""

    def add_parser(self, subparsers: Subparsers) -> argparse.ArgumentParser:
        """Add the subcommand's parser to ``subparsers`` and return it."""
        ...

    def run(self, args: argparse.Namespace) -> int:
        """Run the subcommand with the parsed ``args``; return the exit code."""
        ...


COMMANDS: tuple[Command, ...] = (
    compare, replay, trace, policies, workloads, map_command, animate_command
)
