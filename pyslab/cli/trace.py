"""``pyslab trace``: write traces in pyslab's plain format.

- ``pyslab trace convert CAPTURE OUT``: a memray capture to the plain format (what is kept and
  skipped is printed; rules in :mod:`pyslab.lab.trace`);
- ``pyslab trace record WORKLOAD OUT``: the calls a workload makes, for a seed.

The format (one event a line: ``a ID SIZE [ALIGN]``, ``f ID``, ``r ID SIZE [ALIGN]``, between a
``pyslab-trace 1`` line and an ``end COUNT`` line) is documented in :mod:`pyslab.lab.trace`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyslab
import pyslab.lab
from pyslab.lab.trace import (
    TraceError,
    is_memray_capture,
    read_memray_capture,
    record_workload,
    write_trace,
)

from ._common import Subparsers, cli_extra, positive_int, workload_name
from .compare import DEFAULT_OPS
from .replay import add_capture_options, describe_capture


def add_parser(subparsers: Subparsers) -> argparse.ArgumentParser:
    """Add ``trace`` with its own subcommands ``convert`` and ``record``."""
    parser = subparsers.add_parser(
        "trace",
        help="convert a memray capture, or record a workload, to a pyslab trace",
        description="Write pyslab's plain-text traces, one event a line: 'a ID SIZE [ALIGN]' "
        "allocates, 'f ID' frees, 'r ID SIZE [ALIGN]' reallocates, between a first line "
        "'pyslab-trace 1' and a last line 'end COUNT'. Replay them with 'pyslab replay'.",
    )
    actions = parser.add_subparsers(dest="trace_command", required=True, metavar="ACTION")
    convert = actions.add_parser(
        "convert", help="turn a memray capture into a pyslab trace",
        description="Turn a capture written by 'memray run -o CAPTURE program.py' into a "
        "pyslab trace, and say how many records were used and skipped (and why).",
    )
    convert.add_argument("capture", metavar="CAPTURE", help="the memray capture")
    convert.add_argument("out", metavar="OUT", help="the trace to write")
    add_capture_options(convert)
    record = actions.add_parser(
        "record", help="write the calls of a workload as a pyslab trace",
        description="Record the calls a workload makes for a seed, as a pyslab trace "
        "(threads' calls in the order they happened).",
    )
    record.add_argument("workload", type=workload_name, metavar="WORKLOAD")
    record.add_argument("out", metavar="OUT", help="the trace to write")
    record.add_argument("--ops", type=positive_int, default=DEFAULT_OPS, metavar="N",
                        help=f"calls the workload makes (default {DEFAULT_OPS:,})")
    record.add_argument("--seed", type=int, default=0, metavar="S", help="seed (default 0)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Convert or record, then say what was written. Returns 0."""
    if args.trace_command == "convert":
        if not Path(args.capture).is_file():
            raise FileNotFoundError(f"no such capture: {args.capture!r}")
        if not is_memray_capture(args.capture):
            raise TraceError(args.capture, 0, "not a memray capture")
        with cli_extra():
            capture = read_memray_capture(
                args.capture, allocators=args.allocators, max_size=args.max_size
            )
        print(describe_capture(args.capture, capture))
        count = write_trace(capture.events, args.out)
    else:
        events = record_workload(pyslab.lab.make_workload(args.workload), args.ops, args.seed)
        count = write_trace(events, args.out)
    print(f"wrote {count:,} events to {args.out}")
    return 0
