"""``pyslab policies``: every registered policy plugin with its description."""

from __future__ import annotations

import argparse

from pyslab.policy import DEFAULT_POLICY, policy_entries

from ._common import SPEC_HELP, Subparsers, print_entries


def add_parser(subparsers: Subparsers) -> argparse.ArgumentParser:
    """Add ``policies``."""
    return subparsers.add_parser(
        "policies",
        help="list the policy plugins (built-in and third-party)",
        description="List every policy registered under the entry-point group "
        "pyslab.policies, with its description; one whose plugin fails to load is listed as "
        f"broken, with its error. In --policy: {SPEC_HELP}.",
    )


def run(args: argparse.Namespace) -> int:
    """Print one line per policy, broken ones with their error, then the composition that
    ``SlabAllocator()`` builds. Returns 0."""
    status = print_entries(policy_entries())
    print(f"\ndefault: {DEFAULT_POLICY}")
    return status
