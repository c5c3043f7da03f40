"""``pyslab workloads``: every registered workload with its description."""

from __future__ import annotations

import argparse

import pyslab

from ._common import Subparsers


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
    listed = pyslab.workloads()
    width = max(map(len, listed), default=0)
    for name, description in listed.items():
        print(f"{name:<{width}}  {description}")
    return 0
