"""What the subcommands share: argument types, errors, the run loop with its progress display,
and the description of the machine a run was made on."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shutil
import sys
import textwrap
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Final, TextIO, TypeAlias

import pyslab
import pyslab.lab
from pyslab.policy import parse_spec

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from pyslab.lab import RunResult
    from pyslab.policy import PluginEntry

__all__ = [
    "DEFAULT_CONFIGURATIONS",
    "MAX_OPS",
    "SPEC_HELP",
    "STDOUT",
    "CommandError",
    "Display",
    "MissingExtra",
    "Subparsers",
    "Tick",
    "UsageError",
    "add_output_options",
    "add_policy_option",
    "add_quiet_option",
    "check_directory",
    "check_extras",
    "check_output",
    "check_report_outputs",
    "cli_extra",
    "configuration",
    "count",
    "environment",
    "plot_formats",
    "positive_int",
    "print_entries",
    "print_listing",
    "progress_line",
    "run_jobs",
    "unique",
    "workload_name",
]

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

DEFAULT_CONFIGURATIONS: Final = ("first-fit", "dict-lookup", "reclaim", "dict-lookup+reclaim")
"""The seed's design, each built-in improvement alone, and both together."""

SPEC_HELP: Final = (
    "registered policies joined by '+', each NAME or NAME(KEY=VALUE, ...) with Python "
    "literal values, e.g. dict-lookup+reclaim(keep=4) (see 'pyslab policies')"
)
"""How ``-p`` documents the spec syntax (:mod:`pyslab.policy.registry`)."""


MAX_OPS: Final = 100_000_000
"""The most calls ``--ops`` (and ``--every``) accepts: the harness keeps 8 bytes of timing per
call, so 10**8 calls hold 800 MB, and take hours in pure Python."""

STDOUT: Final = "-"
"""The name of standard output for the text outputs (``--json``, ``--csv``, a trace's OUT)."""


class UsageError(Exception):
    """The command line asks for something impossible (exit status 2)."""


class CommandError(Exception):
    """The command cannot be carried out: an output that cannot be written, say (exit
    status 1, the message on stderr)."""


class MissingExtra(ImportError):
    """A library of the ``cli`` extra is not installed (exit status 1, with the pip command)."""


@contextmanager
def cli_extra() -> Iterator[None]:
    """Turn an ImportError inside the block into :class:`MissingExtra` naming the extra::

        with cli_extra():
            from rich.console import Console
    """
    try:
        yield
    except ImportError as error:
        missing = (error.name or "a library").split(".")[0]
        raise MissingExtra(
            f"this command needs {missing}: pip install 'pyslab-alloc[cli]'"
        ) from None


def check_extras(plot: bool) -> None:
    """Fail before any work when rich (always) or matplotlib (for ``--plot``) is missing.

    Raises: MissingExtra.
    """
    with cli_extra():
        import rich  # noqa: F401
    if plot:
        with cli_extra():
            import matplotlib  # noqa: F401


# --- argument types (argparse turns ArgumentTypeError into a usage error, exit 2) --------------


def print_listing(listed: dict[str, str]) -> int:
    """Print ``name  description`` lines, names aligned, each description wrapped to the
    terminal's width (80 columns when piped) under its own column. Returns 0."""
    width = max(map(len, listed), default=0)
    columns = max(shutil.get_terminal_size().columns, width + 40)
    for name, description in listed.items():
        lines = textwrap.wrap(description, columns - width - 2, break_on_hyphens=False) or [""]
        print(f"{name:<{width}}  {lines[0]}")
        for line in lines[1:]:
            print(f"{'':<{width}}  {line}")
    return 0


def print_entries(entries: Sequence[PluginEntry]) -> int:
    """Print ``name  description`` per plugin, with ``takes: keep=1`` after the description of
    a plugin whose constructor takes parameters, and ``name  (broken: Error: message)`` for
    one whose entry point fails to load. Returns 0: a broken plugin is reported, not fatal."""
    return print_listing({
        entry.name: f"(broken: {entry.problem})" if entry.broken else (
            f"{entry.description}; takes: {entry.parameters}" if entry.parameters
            else str(entry.description)
        )
        for entry in entries
    })


_DECIMAL: Final = re.compile(r"[0-9]+(?:_[0-9]+)*")


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 40 else f"{text[:40]!r}... ({len(text):,} characters)"


def count(maximum: int, minimum: int = 1) -> Callable[[str], int]:
    """An argparse type: an int from ``minimum`` to ``maximum``, in ASCII digits (underscores
    between them allowed: ``20_000``). ``int()`` alone would take other scripts' digits and
    spaces, and refuse more than 4,300 digits with a message of its own.

    The returned function raises argparse.ArgumentTypeError naming the value and the bound it
    breaks (a usage error, exit status 2).
    """

    def parse(text: str) -> int:
        if not _DECIMAL.fullmatch(text):
            raise argparse.ArgumentTypeError(f"expected a positive integer, not {_shown(text)}")
        digits = text.replace("_", "").lstrip("0") or "0"
        if len(digits) > len(str(maximum)) or int(digits) > maximum:
            raise argparse.ArgumentTypeError(
                f"{_shown(text)} is more than the largest accepted, {maximum:,}"
            )
        value = int(digits)
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f"expected a positive integer, not {value}" if minimum == 1
                else f"{value} is less than the smallest accepted, {minimum:,}"
            )
        return value

    parse.__name__ = "count"
    return parse


positive_int: Final = count(10**12)
"""An int from 1 to 10**12 (a count option without a bound of its own)."""


def configuration(text: str) -> str:
    """A policy spec that builds, checked by building (and closing) an allocator, returned as
    written with its whitespace normalised (``reclaim( keep=4 )`` gives ``reclaim(keep=4)``):
    the label of its results.

    Raises: argparse.ArgumentTypeError with the reason (a usage error, exit status 2).
    """
    try:
        normalised = "+".join(part.text for part in parse_spec(text))
        pyslab.SlabAllocator(policy=normalised).close()
    except (pyslab.PolicyError, TypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return normalised


def workload_name(text: str) -> str:
    """The name of a registered workload."""
    try:
        pyslab.lab.make_workload(text)
    except pyslab.lab.WorkloadError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def add_policy_option(parser: argparse.ArgumentParser) -> None:
    """``--policy CONFIG``, repeatable."""
    parser.add_argument(
        "-p", "--policy", action="append", type=configuration, metavar="CONFIG",
        help=f"a policy configuration: {SPEC_HELP} (repeat for several; default: "
        + ", ".join(DEFAULT_CONFIGURATIONS) + ")",
    )


def add_quiet_option(parser: argparse.ArgumentParser) -> None:
    """``-q/--quiet``: no progress on stderr (errors and warnings still go there)."""
    parser.add_argument(
        "-q", "--quiet", action="store_true",
        help="show no progress on stderr: neither the bars drawn on a terminal nor the line "
        "per finished run written elsewhere (errors and warnings are still shown)",
    )


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """``--json``, ``--csv`` and ``--plot``."""
    parser.add_argument(
        "--json", metavar="FILE",
        help="also write every result as JSON ('-': to stdout, the table then goes to stderr)",
    )
    parser.add_argument(
        "--csv", metavar="FILE",
        help="also write one CSV row per run ('-': to stdout, the table then goes to stderr)",
    )
    parser.add_argument(
        "--plot", metavar="FILE.png",
        help="also draw a picture: a bar chart per metric, and mapped bytes over each run "
        "(the format from the extension: .png, .svg, .pdf...)",
    )


# --- output paths: checked before any work --------------------------------------------------


def plot_formats() -> frozenset[str]:
    """The extensions (without the dot) matplotlib can write a figure as.

    Raises: MissingExtra without matplotlib.
    """
    with cli_extra():
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    # pgf needs a LaTeX installation: leave it out rather than fail after the work.
    return frozenset(FigureCanvasAgg.get_supported_filetypes()) - {"pgf"}


def check_output(
    path: str, option: str, formats: Collection[str] | None = None, *, text: bool = True,
) -> None:
    """Fail before any work when ``path`` cannot be the file ``option`` writes.

    ``-`` is standard output, accepted for a text output only. Otherwise the path must not be
    a directory, its directory must exist and take new files (or the file itself be
    writable), and with ``formats`` its extension must be one of them (a writer that picks
    its format from the extension would otherwise add one of its own).

    Raises:
        UsageError: ``-`` for a binary output, or an extension not in ``formats``.
        CommandError: the path is a directory, its directory is missing, or it cannot be
            written.
    """
    if path == STDOUT:
        if not text:
            raise UsageError(
                f"{option} {STDOUT}: standard output takes text only; give a file name"
            )
        return
    target = Path(path)
    if target.is_dir():
        raise CommandError(f"{option} {path!r} is a directory, not a file")
    if formats is not None:
        suffix = target.suffix.lower().lstrip(".")
        if suffix not in formats:
            known = ", ".join(f".{name}" for name in sorted(formats))
            problem = f"'.{suffix}' is not a format it can write" if suffix else (
                "no extension to tell the format"
            )
            raise UsageError(f"{option} {path!r}: {problem}; use one of {known}")
    parent = target.parent
    if not parent.exists():
        raise CommandError(f"{option} {path!r}: no such directory: {str(parent)!r}")
    if not parent.is_dir():
        raise CommandError(f"{option} {path!r}: {str(parent)!r} is not a directory")
    if target.exists():
        if not os.access(target, os.W_OK):
            raise CommandError(f"{option} {path!r}: the file is not writable")
    elif not os.access(parent, os.W_OK | os.X_OK):
        raise CommandError(f"{option} {path!r}: cannot create files in {str(parent)!r}")


def check_directory(path: str, option: str) -> None:
    """Fail before any work when ``path`` cannot be a directory to write files into (created
    with its missing parents when it does not exist).

    Raises: CommandError naming the path and what is wrong.
    """
    target = Path(path)
    if target.exists():
        if not target.is_dir():
            raise CommandError(f"{option} {path!r} exists and is not a directory")
        if not os.access(target, os.W_OK | os.X_OK):
            raise CommandError(f"{option} {path!r}: the directory is not writable")
        return
    ancestor = target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise CommandError(f"{option} {path!r}: {str(ancestor)!r} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise CommandError(f"{option} {path!r}: cannot create it in {str(ancestor)!r}")


def check_report_outputs(args: argparse.Namespace) -> TextIO:
    """Check ``--json``, ``--csv`` and ``--plot`` (see :func:`check_output`) and return the
    stream for the table and messages: stderr when a text output goes to stdout.

    Raises: UsageError, CommandError, MissingExtra (``--plot`` without matplotlib).
    """
    if args.json == STDOUT and args.csv == STDOUT:
        raise UsageError(f"--json and --csv cannot both write to standard output ({STDOUT!r})")
    if args.json:
        check_output(args.json, "--json")
    if args.csv:
        check_output(args.csv, "--csv")
    if args.plot:
        check_output(args.plot, "--plot", plot_formats(), text=False)
    return sys.stderr if STDOUT in (args.json, args.csv) else sys.stdout


def unique(items: Sequence[str]) -> list[str]:
    """``items`` without repeats, in first-seen order."""
    return list(dict.fromkeys(items))


# --- running ------------------------------------------------------------------------------------


Tick: TypeAlias = Callable[[int], None]
"""What a run calls with the calls (or events) it has made so far, for its progress bar."""


class Display:
    """The progress shown on ``stream`` (stderr): one rich display of progress bars when it is
    a terminal and ``quiet`` is false, nothing otherwise (:attr:`shown` says which). Use it as
    a context manager; its tasks are rich task ids, or None when nothing is shown.

    Each task shows its description, a bar and done/total, then: for a task with a ``unit``
    (events, records), its rate and the time it has left; for any other, the time since it
    started.

    Raises (on entering): MissingExtra without rich, when it is shown.
    """

    def __init__(self, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.stream: Final = stream if stream is not None else sys.stderr
        self.shown: Final = not quiet and self.stream.isatty()
        self._progress: Progress | None = None

    def __enter__(self) -> Display:
        if self.shown:
            self._progress = _progress(self.stream)
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def add(
        self, description: str, total: int | None = None, unit: str | None = None
    ) -> TaskID | None:
        """A new task (None when nothing is shown)."""
        if self._progress is None:
            return None
        return self._progress.add_task(description, total=total, unit=unit)

    def update(
        self, task: TaskID | None, *, completed: int | None = None, total: int | None = None,
        description: str | None = None, advance: int | None = None,
    ) -> None:
        """Change what ``task`` shows (nothing for None)."""
        if self._progress is None or task is None:
            return
        changes: dict[str, object] = {}
        if total is not None:
            changes["total"] = total
        self._progress.update(
            task, completed=completed, description=description, advance=advance,
            **changes,  # type: ignore[arg-type]
        )

    def remove(self, task: TaskID | None) -> None:
        """Take ``task`` off the display."""
        if self._progress is not None and task is not None:
            self._progress.remove_task(task)


def _progress(stream: TextIO) -> Progress:
    """The rich progress display of :class:`Display`. Raises: MissingExtra without rich."""
    with cli_extra():
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            Task,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

    remaining, elapsed = TimeRemainingColumn(), TimeElapsedColumn()

    class Timing(ProgressColumn):
        """``1,234,567 events/s  0:00:12 left`` for a counted task; its elapsed time else."""

        def render(self, task: Task) -> Text:
            unit = task.fields.get("unit")
            if unit is None:
                return elapsed.render(task)
            speed = task.finished_speed or task.speed
            rate = Text("" if speed is None else f"{speed:>10,.0f} {unit}/s  ")
            if task.total is None:  # not known yet: no time left to tell
                return rate
            return rate + remaining.render(task) + Text(" left")

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Timing())
    return Progress(*columns, console=Console(file=stream), transient=True)


@contextmanager
def progress_line(
    description: str, unit: str, *, quiet: bool = False, display: Display | None = None,
) -> Iterator[Callable[[int, int | None], None]]:
    """A progress bar for one long step (``reading capture.bin``) on ``display`` (a new one on
    stderr by default: shown on a terminal unless ``quiet``); yields the function to call with
    (done, total; None: not known yet), which does nothing where nothing is shown. The bar
    goes when the block ends.

    Raises: MissingExtra without rich (on a terminal only).
    """
    with contextlib.ExitStack() as stack:
        if display is None:
            display = stack.enter_context(Display(quiet))
        task = display.add(description, unit=unit)
        shown = display

        def update(done: int, total: int | None) -> None:
            shown.update(task, completed=done, total=total)

        try:
            yield update
        finally:
            display.remove(task)


def run_jobs(
    jobs: Sequence[tuple[str, str]],
    run: Callable[[str, str, Tick], RunResult],
    stream: TextIO | None = None,
    *,
    quiet: bool = False,
    steps: int | Callable[[], int | None] | None = None,
    unit: str = "calls",
    display: Display | None = None,
) -> list[RunResult]:
    """Run each (workload, configuration) job, showing progress on ``stream`` (stderr), or on
    ``display``.

    ``run(workload, configuration, tick)`` runs one job, calling ``tick`` with the ``unit``
    it has done so far; ``steps`` is how many there are in a job (or a function asked before
    each job; None: not known). On a terminal: a progress bar (rich) over the jobs, and one
    over the job running, with its rate and the time it has left. Elsewhere: one plain line
    per finished run, so that logs and pipes stay readable. ``quiet``: neither.
    """
    with contextlib.ExitStack() as stack:
        if display is None:
            display = stack.enter_context(Display(quiet, stream))
        if not display.shown:
            return _run_plainly(jobs, run, display.stream, quiet)
        results: list[RunResult] = []
        task = display.add("starting", total=len(jobs))
        for workload, config in jobs:
            display.update(task, description=f"{workload} under {config}")
            total = steps() if callable(steps) else steps
            part = display.add(f"  {unit}", total=total, unit=unit)

            def tick(done: int, part: TaskID | None = part, shown: Display = display) -> None:
                shown.update(part, completed=done)

            results.append(run(workload, config, tick))
            display.remove(part)
            display.update(task, advance=1)
        display.remove(task)
        return results


def _run_plainly(
    jobs: Sequence[tuple[str, str]], run: Callable[[str, str, Tick], RunResult],
    out: TextIO, quiet: bool,
) -> list[RunResult]:
    """:func:`run_jobs` off a terminal: a line per finished run (none when ``quiet``)."""
    results: list[RunResult] = []
    for number, (workload, config) in enumerate(jobs, start=1):
        result = run(workload, config, _ignore)
        results.append(result)
        if not quiet:
            print(
                f"[{number}/{len(jobs)}] {workload} under {config}: {result.seconds:.2f} s",
                file=out, flush=True,
            )
    return results


def _ignore(done: int) -> None:
    """A tick that shows nothing."""


def environment(**facts: object) -> dict[str, object]:
    """The facts of this run (``facts``) and of this machine, for headers and files."""
    return {
        **facts,
        "pyslab": pyslab.__version__,
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "machine": _machine(),
    }


def _machine() -> str:
    cpus = os.cpu_count() or 1
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = " ".join(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    described = f"{platform.system()} {platform.machine()}, {cpus} CPU{'s' if cpus > 1 else ''}"
    return f"{described} ({model})" if model else described
