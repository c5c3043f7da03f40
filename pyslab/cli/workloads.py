"""``pyslab workloads``: every registered workload with its description."""

from __future__ import annotations

import argparse

from pyslab.lab import workload_entries

from ._common import Subparsers, print_entries


def add_parser(subparsers: Subparsers) -> argparse.ArgumentParser:
    """Add ``workloads``."""
    return subparsers.add_parser(
        "workloads",
        help="list the workloads 'pyslab compare' can run",
        description="List every workload registered under the entry-point group "
        "pyslab.workloads, with its description; one whose plugin fails to load is listed "
        "as broken, with its error.",
    )


def run(args: argparse.Namespace) -> int:
    """Print one line per workload, broken ones with their error. Returns 0."""
    return print_entries(workload_entries())
