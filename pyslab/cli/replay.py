"""``pyslab replay TRACE``: replay an allocation trace under each configuration.

``TRACE`` is a plain pyslab trace or a memray capture (told apart by their first bytes; the
formats and what is skipped of a capture are documented in :mod:`pyslab.lab.trace`). The table has
the columns of ``pyslab compare``, one row per configuration.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import get_args

import pyslab
import pyslab.lab
from pyslab.lab.trace import (
    Capture,
    Family,
    TraceError,
    TraceEvent,
    TraceWorkload,
    is_memray_capture,
    read_memray_capture,
    read_trace,
)

from ._common import (
    DEFAULT_CONFIGURATIONS,
    Subparsers,
    add_output_options,
    add_policy_option,
    check_extras,
    cli_extra,
    environment,
    positive_int,
    run_jobs,
    unique,
)
from ._report import report


def add_capture_options(parser: argparse.ArgumentParser) -> None:
    """``--allocators`` and ``--max-size``, for reading memray captures."""
    parser.add_argument(
        "--allocators", choices=get_args(Family), default="auto",
        help="which allocator family of a memray capture to keep: the Python object "
        "allocator (pymalloc), the native one (malloc...), or auto: python when the capture "
        "was recorded with --trace-python-allocators (default auto)",
    )
    parser.add_argument(
        "--max-size", type=positive_int, default=1024, metavar="BYTES",
        help="largest allocation of a memray capture kept (default 1024, the largest class)",
    )


def describe_capture(path: str, capture: Capture) -> str:
    """One line: what a capture held and what became of it."""
    summary = capture.summary
    skipped = ", ".join(f"{reason} {count:,}" for reason, count in sorted(summary.skipped.items()))
    implied = f"; {summary.implied_frees:,} implied frees" if summary.implied_frees else ""
    return (
        f"{path}: memray capture, {summary.family} allocators: {summary.records:,} records, "
        f"{summary.used:,} used, {summary.skipped_total:,} skipped"
        f"{f' ({skipped})' if skipped else ''}{implied} -> {len(capture.events):,} events"
    )


def load(path: str, allocators: Family, max_size: int) -> tuple[list[TraceEvent], str, object]:
    """The events of ``path``, a line describing them, and the capture summary (or None).

    Raises: TraceError, OSError; MissingExtra for a capture without memray installed.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"no such trace file: {path!r}")
    if is_memray_capture(path):
        with cli_extra():
            capture = read_memray_capture(path, allocators=allocators, max_size=max_size)
        return capture.events, describe_capture(path, capture), vars(capture.summary)
    events = read_trace(path)
    return events, f"{path}: pyslab trace, {len(events):,} events", None


def add_parser(subparsers: Subparsers) -> argparse.ArgumentParser:
    """Add ``replay`` and its options."""
    parser = subparsers.add_parser(
        "replay",
        help="replay a trace (pyslab format or memray capture) under each configuration",
        description="Replay an allocation trace through each policy configuration and print "
        "the metrics of 'pyslab compare'. TRACE is a pyslab trace (see 'pyslab trace') or a "
        "capture written by 'memray run -o capture.bin program.py' (record with "
        "--trace-python-allocators to see Python's small objects).",
    )
    parser.add_argument("trace", metavar="TRACE", help="the trace or memray capture")
    add_policy_option(parser)
    add_capture_options(parser)
    add_output_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Load the trace, replay it under each configuration, report. Returns 0."""
    check_extras(plot=bool(args.plot))
    events, described, capture = load(args.trace, args.allocators, args.max_size)
    print(described)
    if not events:
        raise TraceError(args.trace, 0, "nothing to replay: no event was kept")
    workload = TraceWorkload(events, label=Path(args.trace).name)
    configs = unique(args.policy or DEFAULT_CONFIGURATIONS)

    def one(_: str, config: str) -> pyslab.lab.RunResult:
        return pyslab.lab.run_workload(workload, config, ops=len(events))

    results = run_jobs([(workload.label, config) for config in configs], one)
    meta = environment(
        command="replay", trace=args.trace, events=len(events), configurations=configs,
        capture=capture,
    )
    report(results, meta, args.json, args.csv, args.plot)
    return 0
