"""What the subcommands share: argument types, errors, the run loop with its progress display,
and the description of the machine a run was made on."""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final, TextIO, TypeAlias

import pyslab
import pyslab.lab
from pyslab.policy import parse_spec

if TYPE_CHECKING:
    from pyslab.lab import RunResult
    from pyslab.policy import PluginEntry

__all__ = [
    "DEFAULT_CONFIGURATIONS",
    "SPEC_HELP",
    "MissingExtra",
    "Subparsers",
    "UsageError",
    "add_output_options",
    "add_policy_option",
    "check_extras",
    "cli_extra",
    "configuration",
    "environment",
    "positive_int",
    "print_entries",
    "print_listing",
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


class UsageError(Exception):
    """The command line asks for something impossible (exit status 2)."""


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


def positive_int(text: str) -> int:
    """An int above 0; underscores allowed (``20_000``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {value}")
    return value


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


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """``--json``, ``--csv`` and ``--plot``."""
    parser.add_argument("--json", metavar="FILE", help="also write every result as JSON")
    parser.add_argument("--csv", metavar="FILE", help="also write one CSV row per run")
    parser.add_argument(
        "--plot", metavar="FILE.png",
        help="also draw a PNG: a bar chart per metric, and mapped bytes over each run",
    )


def unique(items: Sequence[str]) -> list[str]:
    """``items`` without repeats, in first-seen order."""
    return list(dict.fromkeys(items))


# --- running ------------------------------------------------------------------------------------


def run_jobs(
    jobs: Sequence[tuple[str, str]],
    run: Callable[[str, str], RunResult],
    stream: TextIO | None = None,
) -> list[RunResult]:
    """Run each (workload, configuration) job, showing progress on ``stream`` (stderr).

    A progress bar (rich) when ``stream`` is a terminal; otherwise one plain line per finished
    run, so that logs and pipes stay readable.
    """
    out = stream if stream is not None else sys.stderr
    results: list[RunResult] = []
    if not out.isatty():
        for number, (workload, config) in enumerate(jobs, start=1):
            result = run(workload, config)
            results.append(result)
            print(
                f"[{number}/{len(jobs)}] {workload} under {config}: {result.seconds:.2f} s",
                file=out, flush=True,
            )
        return results
    with cli_extra():
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(file=out), transient=True) as progress:
        task = progress.add_task("starting", total=len(jobs))
        for workload, config in jobs:
            progress.update(task, description=f"{workload} under {config}")
            results.append(run(workload, config))
            progress.advance(task)
    return results


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
