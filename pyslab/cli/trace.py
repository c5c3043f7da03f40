"""``pyslab trace``: write traces in pyslab's plain format.

- ``pyslab trace convert CAPTURE OUT``: a memray capture to the plain format (what is kept and
  skipped is printed; rules in :mod:`pyslab.lab.trace`);
- ``pyslab trace record WORKLOAD OUT``: the calls a workload makes, for a seed.

The format (one event a line: ``a ID SIZE [ALIGN]``, ``f ID``, ``r ID SIZE [ALIGN]``, between a
``pyslab-trace 1`` line and an ``end COUNT`` line) is documented in :mod:`pyslab.lab.trace`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

import pyslab
import pyslab.lab
from pyslab.lab.trace import (
    TraceError,
    TraceEvent,
    is_memray_capture,
    record_workload,
    write_trace,
)

from ._common import (
    MAX_OPS,
    STDOUT,
    Subparsers,
    add_quiet_option,
    check_output,
    count,
    workload_name,
)
from ._report import writing
from .compare import DEFAULT_OPS
from .replay import add_capture_options, check_input, describe_capture, load_capture


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
    convert.add_argument("out", metavar="OUT", help="the trace to write ('-': stdout)")
    add_capture_options(convert)
    add_quiet_option(convert)
    record = actions.add_parser(
        "record", help="write the calls of a workload as a pyslab trace",
        description="Record the calls a workload makes for a seed, as a pyslab trace "
        "(threads' calls in the order they happened).",
    )
    record.add_argument("workload", type=workload_name, metavar="WORKLOAD")
    record.add_argument("out", metavar="OUT", help="the trace to write ('-': stdout)")
    record.add_argument("--ops", type=count(MAX_OPS), default=DEFAULT_OPS, metavar="N",
                        help=f"calls the workload makes (default {DEFAULT_OPS:,}; at most "
                        f"{MAX_OPS:,})")
    record.add_argument("--seed", type=int, default=0, metavar="S", help="seed (default 0)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Convert or record, then say what was written (on stderr when OUT is ``-``). Returns 0.

    Raises: TraceError, OSError, CommandError (OUT cannot be written), MissingExtra: the main
        function reports each.
    """
    check_output(args.out, "OUT")
    messages = sys.stderr if args.out == STDOUT else sys.stdout
    if args.trace_command == "convert":
        check_input(args.capture, "capture")
        if not is_memray_capture(args.capture):
            raise TraceError(args.capture, 0, "not a memray capture")
        capture = load_capture(
            args.capture, args.allocators, args.max_size, args.accept_partial, args.quiet
        )
        print(describe_capture(args.capture, capture), file=messages)
        events: Iterable[TraceEvent] = capture.trace
    else:
        events = record_workload(pyslab.lab.make_workload(args.workload), args.ops, args.seed)
    with writing(args.out):
        written = write_trace(events, sys.stdout if args.out == STDOUT else args.out)
    print(f"wrote {written:,} events to {args.out}", file=messages)
    return 0
