"""``pyslab compare``: run workloads under policy configurations and compare what they cost.

Each workload runs under each configuration on a fresh allocator
(:func:`pyslab.lab.run_workload`); the table shows one row per run. Without options: every
registered workload under :data:`~pyslab.cli._common.DEFAULT_CONFIGURATIONS`, 20,000 calls
each, seed 0 (a few seconds on a 2-core machine).
"""

from __future__ import annotations

import argparse

import pyslab
import pyslab.lab

from ._common import (
    DEFAULT_CONFIGURATIONS,
    MAX_OPS,
    Subparsers,
    Tick,
    add_output_options,
    add_policy_option,
    add_quiet_option,
    check_extras,
    check_report_outputs,
    count,
    environment,
    run_jobs,
    unique,
    workload_name,
)
from ._report import report

DEFAULT_OPS = 20_000


def add_parser(subparsers: Subparsers) -> argparse.ArgumentParser:
    """Add ``compare`` and its options."""
    parser = subparsers.add_parser(
        "compare",
        help="run workloads under policy configurations and compare them",
        description="Run each workload under each policy configuration, each run on a fresh "
        "allocator, and print a table: ns per alloc and per free, peak and final mapped "
        "bytes, internal and external fragmentation, utilisation, slabs created and "
        "reclaimed. The same seed gives the same operations.",
    )
    add_policy_option(parser)
    parser.add_argument(
        "-w", "--workload", action="append", type=workload_name, metavar="W",
        help="a registered workload (repeat for several; default: all; see 'pyslab workloads')",
    )
    parser.add_argument(
        "--ops", type=count(MAX_OPS), default=DEFAULT_OPS, metavar="N",
        help=f"calls each workload makes (default {DEFAULT_OPS:,}; at most {MAX_OPS:,})",
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed (default 0)")
    add_output_options(parser)
    add_quiet_option(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run every (workload, configuration) pair and report. Returns 0."""
    check_extras(plot=bool(args.plot))
    out = check_report_outputs(args)
    configs = unique(args.policy or DEFAULT_CONFIGURATIONS)
    names = unique(args.workload or list(pyslab.lab.workloads()))
    ops, seed = args.ops, args.seed

    def one(name: str, config: str, tick: Tick) -> pyslab.lab.RunResult:
        return pyslab.lab.run_workload(
            pyslab.lab.make_workload(name), config, ops=ops, seed=seed, progress=tick
        )

    results = run_jobs(
        [(name, config) for name in names for config in configs], one, quiet=args.quiet,
        steps=ops,
    )
    meta = environment(
        command="compare", seed=seed, ops=ops, configurations=configs, workloads=names
    )
    report(results, meta, args.json, args.csv, args.plot, out)
    return 0
