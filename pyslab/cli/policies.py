"""``pyslab policies``: every registered policy plugin with its description."""

from __future__ import annotations

import argparse

import pyslab

from ._common import Subparsers, print_listing


def add_parser(subparsers: Subparsers) -> argparse.ArgumentParser:
    """Add ``policies``."""
    return subparsers.add_parser(
        "policies",
        help="list the policy plugins (built-in and third-party)",
        description="List every policy registered under the entry-point group "
        "pyslab.policies, with its description. Compose them with '+' in --policy.",
    )


def run(args: argparse.Namespace) -> int:
    """Print one line per policy. Returns 0."""
    return print_listing(pyslab.policies())
