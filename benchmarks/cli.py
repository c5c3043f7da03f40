"""``python -m benchmarks``: run the measurements, print the tables, write JSON/markdown/plot."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import report
from .context import Context
from .heaps import discover
from .machine import describe
from .results import FULL, QUICK
from .suite import MEASUREMENTS, resolve_names, run

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    """The command line."""
    listing = "; ".join(f"{m.number} {m.key}: {m.summary}" for m in MEASUREMENTS)
    command = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="pyslab against libc malloc/free and PyMem through ctypes, and "
        "ctypes.create_string_buffer, as ratios of medians of interleaved rounds. "
        f"Measurements: {listing}.",
    )
    command.add_argument("--quick", action="store_true",
                         help="small sizes and few rounds (what CI runs; under 3 minutes)")
    command.add_argument("--only", nargs="+", metavar="NAME",
                         help="run only these measurements (key or number)")
    command.add_argument("--json", type=Path, metavar="FILE", help="write every figure here")
    command.add_argument("--markdown", type=Path, metavar="FILE",
                         help="write the results as markdown (the README's results section)")
    command.add_argument("--plot", type=Path, metavar="FILE.png",
                         help="draw the free-cost curves and the ratio bars (needs matplotlib)")
    command.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall",
        help="report wall time (perf_counter_ns, the default) or the thread's CPU time, for a "
        "machine too busy for wall-clock figures (every table shows the CPU share either way)",
    )
    command.add_argument("--list", action="store_true", help="list the measurements and exit")
    return command


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks; 0 on success, 2 on a bad command line. Never fails on a target."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = parser()
    args = command.parse_args(args_list)
    if args.list:
        for m in MEASUREMENTS:
            print(f"{m.number}  {m.key:<10} {m.summary}")
        return 0
    try:
        chosen = resolve_names(args.only) if args.only else list(MEASUREMENTS)
    except ValueError as error:
        command.error(str(error))
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ModuleNotFoundError:
            command.error('--plot needs matplotlib: pip install -e ".[bench]"')
    profile = QUICK if args.quick else FULL
    meta = describe(args_list)
    meta["profile"] = profile.name
    meta["clock"] = args.clock
    report.print_header(meta, profile.name)
    context = Context(profile, discover(profile.config_limit), args.clock)
    sections = run(context, chosen, report.print_section)
    report.print_summary(sections)
    meta["seconds"] = sum(s.seconds for s in sections)
    meta["load_average_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if args.json is not None:
        report.write_json(args.json, meta, sections)
    if args.markdown is not None:
        report.write_markdown(args.markdown, meta, sections)
    if args.plot is not None:
        report.write_plot(args.plot, sections)
    return 0
