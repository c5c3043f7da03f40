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
    MAX_SIZE,
    Capture,
    Family,
    PartialCaptureError,
    TraceError,
    TraceEvent,
    TraceWorkload,
    is_memray_capture,
    read_memray_capture_isolated,
    read_trace,
)

from ._common import (
    DEFAULT_CONFIGURATIONS,
    CommandError,
    Subparsers,
    add_output_options,
    add_policy_option,
    check_extras,
    check_report_outputs,
    cli_extra,
    count,
    environment,
    run_jobs,
    unique,
)
from ._report import report


def add_capture_options(parser: argparse.ArgumentParser) -> None:
    """``--allocators``, ``--max-size`` and ``--accept-partial``, for reading memray captures."""
    parser.add_argument(
        "--allocators", choices=get_args(Family), default="auto",
        help="which allocator family of a memray capture to keep: the Python object "
        "allocator (pymalloc), the native one (malloc...), or auto: python when the capture "
        "was recorded with --trace-python-allocators (default auto)",
    )
    parser.add_argument(
        "--max-size", type=count(MAX_SIZE), default=1024, metavar="BYTES",
        help="largest allocation of a memray capture kept (default 1024, the largest class; "
        f"at most {MAX_SIZE:,})",
    )
    parser.add_argument(
        "--accept-partial", action="store_true",
        help="use the records of a memray capture that is cut short, damaged or unfinished "
        "(fewer records than its header announces) instead of refusing it",
    )


def describe_capture(path: str, capture: Capture) -> str:
    """One line: what a capture held and what became of it."""
    summary = capture.summary
    skipped = ", ".join(f"{reason} {count:,}" for reason, count in sorted(summary.skipped.items()))
    implied = f"; {summary.implied_frees:,} implied frees" if summary.implied_frees else ""
    partial = "" if not summary.partial else (
        " (partial: its recording never finished)" if summary.announced == 0
        else f" (partial: its header announces {summary.announced:,})"
    )
    return (
        f"{path}: memray capture, {summary.family} allocators: {summary.records:,} records"
        f"{partial}, "
        f"{summary.used:,} used, {summary.skipped_total:,} skipped"
        f"{f' ({skipped})' if skipped else ''}{implied} -> {len(capture.events):,} events"
    )


def check_input(path: str, what: str) -> None:
    """Fail unless ``path`` is a regular file (a directory, a pipe or a device is not a trace).

    Raises: FileNotFoundError, CommandError, naming the path.
    """
    target = Path(path)
    if not target.exists():
        raise FileNotFoundError(f"no such {what}: {path!r}")
    if not target.is_file():
        kind = "a directory" if target.is_dir() else "not a regular file"
        raise CommandError(f"{what} {path!r} is {kind}")


def load_capture(
    path: str, allocators: Family, max_size: int, accept_partial: bool
) -> Capture:
    """Read the memray capture ``path`` in a child process (see
    :func:`~pyslab.lab.trace.read_memray_capture_isolated`: a damaged capture can crash memray's
    reader).

    Raises: TraceError (a partial capture's message says how to accept it), OSError;
        MissingExtra without memray.
    """
    with cli_extra():
        import memray  # noqa: F401  (missing: say so here, not from the child)
    try:
        with cli_extra():
            return read_memray_capture_isolated(
                path, allocators=allocators, max_size=max_size, accept_partial=accept_partial
            )
    except PartialCaptureError as error:
        raise TraceError(
            error.source, 0, f"{error.reason} (--accept-partial uses the "
            f"{error.records:,} records that can be read)"
        ) from None


def load(
    path: str, allocators: Family, max_size: int, accept_partial: bool = False,
) -> tuple[list[TraceEvent], str, object]:
    """The events of ``path``, a line describing them, and the capture summary (or None).

    Raises: TraceError, OSError, CommandError (not a regular file); MissingExtra for a
        capture without memray installed.
    """
    check_input(path, "trace file")
    if is_memray_capture(path):
        capture = load_capture(path, allocators, max_size, accept_partial)
        summary = {**vars(capture.summary), "partial": capture.summary.partial}
        return capture.events, describe_capture(path, capture), summary
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
    """Load the trace, replay it under each configuration, report. Returns 0.

    Raises: TraceError, OSError, CommandError, UsageError, MissingExtra, MemoryError (an
        event the machine cannot serve): the main function reports each.
    """
    check_extras(plot=bool(args.plot))
    out = check_report_outputs(args)
    events, described, capture = load(
        args.trace, args.allocators, args.max_size, args.accept_partial
    )
    print(described, file=out)
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
    report(results, meta, args.json, args.csv, args.plot, out)
    return 0
