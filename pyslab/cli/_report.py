"""Presenting results: the terminal table (rich), JSON, CSV and the PNG panel (matplotlib).

Every output carries the run's facts (seed, configurations, Python version, machine: see
:func:`pyslab.cli._common.environment`), so that a figure can always be traced to its run.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Final, TextIO

from pyslab.lab import RunResult

from ._common import STDOUT, CommandError, cli_extra

__all__ = ["METRICS", "print_table", "report", "write_csv", "write_json", "write_plot"]

Metric = tuple[str, str, Callable[[RunResult], float | None]]

METRICS: Final[tuple[Metric, ...]] = (
    ("ns per alloc (median)", "ns", lambda r: r.median_alloc_ns),
    ("ns per free (median)", "ns", lambda r: r.median_free_ns),
    ("peak mapped", "KiB", lambda r: r.peak_mapped_bytes / 1024),
    ("final mapped", "KiB", lambda r: r.final_mapped_bytes / 1024),
    ("internal fragmentation", "%", lambda r: _percent(r.final.internal_fragmentation)),
    ("external fragmentation", "%", lambda r: _percent(r.final.external_fragmentation)),
    ("utilisation", "%", lambda r: _percent(r.final.utilisation)),
    ("slabs created", "slabs", lambda r: r.slabs_created),
    ("slabs reclaimed", "slabs", lambda r: r.slabs_reclaimed),
)
"""(title, unit, value) of each metric in the table's order; None: nothing to measure."""

_LABELS: Final = (
    "ns/alloc", "ns/free", "peak KiB", "final KiB", "internal", "external", "utilised",
    "slabs +", "slabs -",
)
"""Short column titles of :data:`METRICS` for the table."""

NOTES: Final = (
    "ns/alloc, ns/free: median time of one call, timed from Python (means in --json/--csv).",
    "peak/final KiB: slab memory mapped at the peak / when the workload ends.",
    "internal, external fragmentation and utilised: the heap when the workload ends, slab "
    "blocks only ('-': no live block).",
    "slabs +/-: slabs mapped / given back to the OS during the run.",
)


def _percent(value: float | None) -> float | None:
    return None if value is None else 100 * value


def header(meta: dict[str, object]) -> str:
    """One line of the facts that make the run reproducible."""
    parts = [f"seed {meta['seed']}"] if "seed" in meta else []
    if "events" in meta:
        parts.append(f"{meta.get('trace', 'trace')}: {meta['events']:,} events")
    if "ops" in meta:
        parts.append(f"{meta['ops']:,} ops per workload")
    parts += [f"pyslab {meta['pyslab']}", f"Python {meta['python']}", str(meta["machine"])]
    return " | ".join(parts)


def report(
    results: Sequence[RunResult],
    meta: dict[str, object],
    json_path: str | None,
    csv_path: str | None,
    plot_path: str | None,
    out: TextIO | None = None,
) -> None:
    """Print the table to ``out`` (stdout) and write the files asked for; a path ``-`` is
    standard output (check the paths first with
    :func:`~pyslab.cli._common.check_report_outputs`, which also picks ``out``).

    Raises: CommandError when a file cannot be written; MissingExtra without rich or
        matplotlib; BrokenPipeError when standard output is closed.
    """
    stream = out if out is not None else sys.stdout
    print_table(results, meta, stream)
    for path, writer in ((json_path, write_json), (csv_path, write_csv), (plot_path, write_plot)):
        if path:
            with writing(path):
                writer(path, results, meta)
            if path != STDOUT:
                print(f"wrote {path}", file=stream)


@contextmanager
def writing(path: str) -> Iterator[None]:
    """Turn a failed write of ``path`` (a full disk, say) into one CommandError naming it;
    a closed standard output stays a BrokenPipeError (the command then stops quietly).

    Raises: CommandError, BrokenPipeError.
    """
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as error:
        reason = error.strerror or str(error)
        raise CommandError(f"cannot write {path!r}: {reason}") from None


@contextmanager
def _text_file(path: str, newline: str | None = None) -> Iterator[TextIO]:
    """``path`` opened for writing text, or standard output for ``-`` (left open)."""
    if path == STDOUT:
        yield sys.stdout
        sys.stdout.flush()
        return
    with open(path, "w", encoding="utf-8", newline=newline) as file:
        yield file


def _cell(value: float | None, unit: str) -> str:
    if value is None or math.isnan(value):
        return "-"
    if unit == "%":
        return f"{value:.1f}%"
    return f"{value:,.0f}"


def print_table(results: Sequence[RunResult], meta: dict[str, object], out: TextIO) -> None:
    """A rich table, one row per run, grouped by workload; plain text when ``out`` is no tty."""
    with cli_extra():
        from rich import box
        from rich.console import Console
        from rich.table import Table
    terminal = out.isatty()
    # Off a terminal rich would assume 80 columns and wrap the table: give it room instead.
    console = Console(file=out, width=None if terminal else 200, highlight=False)
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("workload", no_wrap=True)
    table.add_column("configuration", no_wrap=True)
    for label in _LABELS:
        table.add_column(label, justify="right", no_wrap=True)
    previous = None
    for result in results:
        if previous is not None and result.workload != previous:
            table.add_section()
        shown = result.workload if result.workload != previous else ""
        previous = result.workload
        table.add_row(
            shown, result.configuration, *(_cell(value(result), unit) for _, unit, value in METRICS)
        )
    console.print(header(meta))
    console.print(table)
    for note in NOTES:
        console.print(note)


def write_json(path: str, results: Sequence[RunResult], meta: dict[str, object]) -> None:
    """``{"meta": {...}, "runs": [RunResult.to_dict(), ...]}``, samples included; ``-``:
    standard output. Raises: OSError."""
    with _text_file(path) as file:
        json.dump({"meta": meta, "runs": [r.to_dict() for r in results]}, file, indent=1)
        file.write("\n")


_CSV_FIELDS: Final = (
    "workload", "configuration", "ops", "seed", "threads", "allocs", "frees", "reallocs",
    "median_alloc_ns", "median_free_ns", "median_realloc_ns", "ns_per_alloc", "ns_per_free",
    "ns_per_realloc", "peak_mapped_bytes", "final_mapped_bytes",
    "internal_fragmentation", "external_fragmentation", "utilisation", "slabs_created",
    "slabs_reclaimed", "seconds",
)


def write_csv(path: str, results: Sequence[RunResult], meta: dict[str, object]) -> None:
    """One row per run; the machine facts repeated in each row (a CSV has no header block);
    ``-``: standard output. Raises: OSError."""
    with _text_file(path, newline="") as file:
        writer = csv.writer(file)
        writer.writerow((*_CSV_FIELDS, "python", "machine", "pyslab"))
        for result in results:
            data = result.to_dict()
            writer.writerow((
                *("" if data[name] is None else data[name] for name in _CSV_FIELDS),
                meta["python"], meta["machine"], meta["pyslab"],
            ))


def write_plot(path: str, results: Sequence[RunResult], meta: dict[str, object]) -> None:
    """A PNG: one bar chart per metric (a bar per configuration, grouped by workload), then
    mapped bytes over each workload's run, a line per configuration, with the bytes the live
    blocks requested dashed underneath. The format is the extension's (checked beforehand by
    :func:`~pyslab.cli._common.check_output`): never one matplotlib would add.

    Raises: OSError, CommandError (a format matplotlib fails to write); MissingExtra.
    """
    with cli_extra():
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    workloads = list(dict.fromkeys(r.workload for r in results))
    configs = list(dict.fromkeys(r.configuration for r in results))
    by_key = {(r.workload, r.configuration): r for r in results}
    columns = 4
    bar_rows = math.ceil((len(METRICS) + 1) / columns)
    line_rows = math.ceil(len(workloads) / columns)
    figure = Figure(figsize=(4.6 * columns, 3.4 * (bar_rows + line_rows)), layout="constrained")
    FigureCanvasAgg(figure)  # drawn by Agg: no display, no pyplot state
    grid = figure.add_gridspec(bar_rows + line_rows, columns)
    colors = [f"C{i % 10}" for i in range(len(configs))]
    width = 0.8 / len(configs)
    for index, (title, unit, value) in enumerate(METRICS):
        axes = figure.add_subplot(grid[index // columns, index % columns])
        for c, config in enumerate(configs):
            heights = []
            for workload in workloads:
                result = by_key.get((workload, config))
                measured = value(result) if result is not None else None
                heights.append(math.nan if measured is None else measured)
            positions = [w + (c - (len(configs) - 1) / 2) * width for w in range(len(workloads))]
            axes.bar(positions, heights, width, color=colors[c], label=config)
        axes.set_title(title, fontsize=10)
        axes.set_ylabel(unit, fontsize=8)
        axes.set_xticks(range(len(workloads)), workloads, rotation=30, ha="right", fontsize=7)
        axes.tick_params(axis="y", labelsize=7)
        axes.grid(axis="y", alpha=0.3)
    legend_axes = figure.add_subplot(grid[len(METRICS) // columns, len(METRICS) % columns])
    legend_axes.axis("off")
    handles = [legend_axes.bar([0], [0], color=colors[c], label=config)[0]
               for c, config in enumerate(configs)]
    legend_axes.legend(handles, configs, title="configuration", loc="center", fontsize=9)
    legend_axes.text(0.5, 0.02, header(meta), fontsize=6, ha="center", wrap=True,
                     transform=legend_axes.transAxes)
    for index, workload in enumerate(workloads):
        axes = figure.add_subplot(grid[bar_rows + index // columns, index % columns])
        requested_drawn = False
        for c, config in enumerate(configs):
            result = by_key.get((workload, config))
            if result is None:
                continue
            calls = [s[0] for s in result.samples]
            # Thinner lines for later configurations, so that identical series stay visible.
            axes.plot(calls, [s[1] / 1024 for s in result.samples], color=colors[c],
                      linewidth=max(0.8, 3.2 - 0.8 * c), label=config)
            if not requested_drawn:
                axes.plot(calls, [s[2] / 1024 for s in result.samples], color="0.4",
                          linestyle="--", linewidth=1, label="requested")
                requested_drawn = True
        axes.set_title(f"{workload}: mapped KiB over the run", fontsize=10)
        axes.set_xlabel("calls", fontsize=8)
        axes.tick_params(labelsize=7)
        axes.grid(alpha=0.3)
        if index == 0:
            axes.legend(fontsize=7)
    figure.suptitle(f"pyslab {meta.get('command', 'compare')}: {', '.join(workloads)}"
                    if len(workloads) == 1 else f"pyslab {meta.get('command', 'compare')}")
    suffix = Path(path).suffix.lower().lstrip(".")
    try:
        figure.savefig(path, dpi=90, format=suffix)
    except (RuntimeError, ValueError) as error:  # a backend that cannot write this format
        raise CommandError(f"cannot write {path!r}: {error}") from None
