"""``pyslab replay TRACE``: replay an allocation trace under each configuration.

``TRACE`` is a plain pyslab trace or a memray capture (told apart by their first bytes; the
formats and what is skipped of a capture are documented in :mod:`pyslab.lab.trace`). The table has
the columns of ``pyslab compare``, one row per configuration.

The trace is read once, into a :class:`~pyslab.lab.trace.CompactTrace` (a memray capture in a
child process, whose reader is native code), and each configuration replays those arrays
(:func:`pyslab.lab.replay_trace`). On a terminal, both the reading and each replay show a
progress bar with their rate and the time left (``-q``: none). Before a configuration whose
frees walk every slab (``first-fit``) replays a trace that would keep it busy for long, a
warning says how long it should take (:func:`pyslab.lab.estimate_replay`).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final, get_args

import pyslab
import pyslab.lab
from pyslab.lab.trace import (
    MAX_SIZE,
    Capture,
    CaptureReader,
    CompactTrace,
    Family,
    PartialCaptureError,
    TraceError,
    TraceWorkload,
    is_memray_capture,
    read_memray_capture_isolated,
    read_trace,
)

from ._common import (
    DEFAULT_CONFIGURATIONS,
    CommandError,
    Display,
    Subparsers,
    Tick,
    add_output_options,
    add_policy_option,
    add_quiet_option,
    check_extras,
    check_report_outputs,
    cli_extra,
    count,
    environment,
    progress_line,
    run_jobs,
    unique,
)
from ._report import report

SLOW_SECONDS: Final = 30.0
"""A configuration whose replay is estimated to take longer than this gets a warning first."""


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
        f"{f' ({skipped})' if skipped else ''}{implied} -> {len(capture.trace):,} events"
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
    path: str, allocators: Family, max_size: int, accept_partial: bool, quiet: bool = False,
) -> Capture:
    """Read the memray capture ``path`` in a child process (see
    :func:`~pyslab.lab.trace.read_memray_capture_isolated`: a damaged capture can crash memray's
    reader), with a progress bar on a terminal unless ``quiet``.

    Raises: TraceError (a partial capture's message says how to accept it), OSError;
        MissingExtra without memray.
    """
    with cli_extra():
        import memray  # noqa: F401  (missing: say so here, not from the child)
    with explained_partial(), cli_extra(), progress_line(
        f"reading {Path(path).name}", "records", quiet=quiet
    ) as progress:
        return read_memray_capture_isolated(
            path, allocators=allocators, max_size=max_size, accept_partial=accept_partial,
            progress=progress,
        )


@contextmanager
def explained_partial() -> Iterator[None]:
    """Turn a PartialCaptureError into a TraceError that says how to accept the capture."""
    try:
        yield
    except PartialCaptureError as error:
        raise TraceError(
            error.source, 0, f"{error.reason} (--accept-partial uses the "
            f"{error.records:,} records that can be read)"
        ) from None


class _Loading:
    """The trace of ``pyslab replay``: a plain trace, read whole, or a memray capture, read in
    a child process (:class:`~pyslab.lab.trace.CaptureReader`) while the first configuration
    replays the events as they arrive. :meth:`finish` is called once every event is there,
    before any other configuration runs."""

    def __init__(
        self, args: argparse.Namespace, configs: list[str], display: Display,
        stack: contextlib.ExitStack, to_stderr: bool,
    ) -> None:
        self.to_stderr: Final = to_stderr
        """Where the line saying what was read goes: standard error when standard output
        takes --json or --csv."""
        self.path: Final = args.trace
        self.label: Final = Path(args.trace).name
        self.configs = configs
        self.display = display
        self.summary: object = None
        self.finished = False
        self.reader: CaptureReader | None = None
        check_input(self.path, "trace file")
        if is_memray_capture(self.path):
            with cli_extra():
                import memray  # noqa: F401  (missing: say so here, not from the child)
            task = display.add(f"reading {self.label}", unit="records")
            self._task = task
            self.reader = stack.enter_context(CaptureReader(
                self.path, allocators=args.allocators, max_size=args.max_size,
                accept_partial=args.accept_partial,
                progress=lambda done, total: display.update(task, completed=done, total=total),
            ))
            self.trace = self.reader.trace
        else:
            self.trace = CompactTrace.from_events(read_trace(self.path))
        self.workload: Final = TraceWorkload(self.trace, label=self.label)
        # The first configuration replays the capture as it is read, unless its frees walk
        # the slabs: then the warning, which needs the whole trace, comes first.
        self.streaming = self.reader is not None and not pyslab.lab.walks_slabs(configs[0])
        if not self.streaming:
            self.finish()

    def finish(self) -> None:
        """Every event is there: say what was read, refuse an empty trace, warn about slow
        configurations. Raises: TraceError, OSError."""
        if self.finished:
            return
        if self.reader is not None:
            with explained_partial():
                capture = self.reader.finish()
            self.display.remove(self._task)
            self.summary = {**vars(capture.summary), "partial": capture.summary.partial}
            described = describe_capture(self.path, capture)
        else:
            described = f"{self.path}: pyslab trace, {len(self.trace):,} events"
        self.finished = True
        # Printed now, through whatever stream is standard output while the bars show.
        print(described, file=sys.stderr if self.to_stderr else sys.stdout, flush=True)
        if not len(self.trace):
            raise TraceError(self.path, 0, "nothing to replay: no event was kept")
        warn_if_slow(self.trace, self.configs, self.label)

    def replay(self, config: str, tick: Tick) -> pyslab.lab.RunResult:
        """Replay the trace under ``config`` (as it arrives, for the first one)."""
        if self.finished:
            return pyslab.lab.replay_trace(self.workload, config, progress=tick)
        assert self.reader is not None
        with explained_partial():
            result = pyslab.lab.replay_trace(
                self.workload, config, progress=tick, arriving=self.reader.more
            )
        self.finish()
        return result


def warn_if_slow(trace: CompactTrace, configs: list[str], label: str) -> None:
    """Warn (a PyslabWarning: one ``warning:`` line) about each configuration whose frees walk
    every slab and whose replay of ``trace`` is estimated to take more than
    :data:`SLOW_SECONDS`, with the estimate. Complexity: O(events) for such a configuration
    (the estimate reads the trace once), nothing for the others."""
    for config in configs:
        estimate = pyslab.lab.estimate_replay(trace, config)
        if estimate is None or estimate.seconds < SLOW_SECONDS:
            continue
        warnings.warn(
            f"{config}: every free walks the slabs (O(slabs)): on {label}, about "
            f"{estimate.mean_walk:,.0f} slabs a free ({estimate.peak_slabs:,} at the peak), "
            f"{estimate.per_slab_ns:,.0f} ns a slab on this machine: its replay should take "
            f"about {_duration(estimate.seconds)} (an O(1) configuration such as dict-lookup: "
            f"about {_duration(estimate.base_seconds)})",
            pyslab.PyslabWarning, stacklevel=2,
        )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:,.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:,.0f} min"
    return f"{seconds / 3600:,.1f} h"


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
    add_quiet_option(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Read the trace, replay it under each configuration, report. Returns 0.

    Raises: TraceError, OSError, CommandError, UsageError, MissingExtra, MemoryError (an
        event the machine cannot serve): the main function reports each.
    """
    check_extras(plot=bool(args.plot))
    out = check_report_outputs(args)
    configs = unique(args.policy or DEFAULT_CONFIGURATIONS)
    with contextlib.ExitStack() as stack:
        display = stack.enter_context(Display(args.quiet))
        loading = _Loading(args, configs, display, stack, to_stderr=out is sys.stderr)

        def one(_: str, config: str, tick: Tick) -> pyslab.lab.RunResult:
            return loading.replay(config, tick)

        results = run_jobs(
            [(loading.label, config) for config in configs], one, quiet=args.quiet,
            steps=lambda: len(loading.trace) if loading.finished else None, unit="events",
            display=display,
        )
    meta = environment(
        command="replay", trace=args.trace, events=len(loading.trace), configurations=configs,
        capture=loading.summary,
    )
    report(results, meta, args.json, args.csv, args.plot, out)
    return 0
