"""``pyslab workloads``: every registered workload with its description."""

from __future__ import annotations

import argparse

import pyslab
import pyslab.lab

from ._common import Subparsers, print_listing


def add_parser(subparsers: Subparsers) -> argparse.ArgumentParser:
    """Add ``workloads``."""
    return subparsers.add_parser(
        "workloads",
        help="list the workloads 'pyslab compare' can run",
        description="List every workload registered under the entry-point group "
        "pyslab.workloads, with its description.",
    )


def run(args: argparse.Namespace) -> int:
    """Print one line per workload. Returns 0."""
    return print_listing(pyslab.lab.workloads())
