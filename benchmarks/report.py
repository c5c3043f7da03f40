"""Rendering a run: a rich table per measurement, markdown, JSON, and the plot.

``rich`` and ``matplotlib`` come from the ``bench`` extra and are imported here only, lazily
where they are optional (the plot), so the measurements themselves need neither.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .results import Column, Section, Table, Target

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["format_value", "print_header", "print_section", "print_summary", "write_json",
           "write_markdown", "write_plot"]

_MARK = {True: "✓", False: "✗", None: "?"}
_WIDTH = 150
"""Columns when the output is not a terminal (a log, CI): wide enough that no name is cut."""


def _console() -> Console:
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=_WIDTH)


def format_value(value: object, kind: str) -> str:
    """One cell: ``ns`` as ns/µs/ms, ``ratio`` as ``0.42x``, ``bytes`` in KiB/MiB..., None as -."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    number = float(value)
    if kind == "ns":
        if number < 1e3:
            return f"{number:.0f} ns"
        if number < 1e6:
            return f"{number / 1e3:.2f} µs"
        return f"{number / 1e6:.2f} ms"
    if kind == "ratio":
        return f"{number:.2f}x"
    if kind == "percent":
        return f"{number:.3%}" if abs(number) < 0.01 else f"{number:.1%}"
    if kind == "bytes":
        for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
            if abs(number) >= 1 << shift:
                return f"{number / (1 << shift):.1f} {unit}"
        return f"{number:.0f} B"
    if kind == "int":
        return f"{int(number):,}"
    if kind == "float":
        return f"{number:,.2f}"
    return str(value)


def _cells(table: Table) -> list[list[str]]:
    return [[format_value(row.get(c.key), c.kind) for c in table.columns] for row in table.rows]


def _right(column: Column) -> bool:
    return column.kind != "text"


BUSY = 0.8
"""Below this CPU share (CPU time / wall time of the timed batches) wall figures are suspect."""


def busy_share(section: Section) -> float | None:
    """The lowest CPU share of any timed row of ``section`` (None: nothing timed)."""
    shares = [
        float(value) for table in section.tables for row in table.rows
        for value in [row.get("cpu_share")] if isinstance(value, float)
    ]
    return min(shares) if shares else None


def _busy_note(section: Section) -> str | None:
    share = busy_share(section)
    if share is None or share >= BUSY:
        return None
    clocks = {row["clock"] for table in section.tables for row in table.rows if "clock" in row}
    if clocks == {"cpu"}:
        return (
            f"busy machine: some timed batches got only {share:.0%} of a CPU; the figures are "
            "CPU time (--clock cpu), which leaves out the time other processes ran but not "
            "the caches they disturbed."
        )
    return (
        f"warning: some timed batches got only {share:.0%} of a CPU (other processes ran): "
        "wall-clock figures here are inflated and noisy; rerun on an idle machine or with "
        "--clock cpu."
    )


def _meta_lines(meta: dict[str, object]) -> list[str]:
    memory = meta.get("memory_bytes")
    end = meta.get("load_average_end")
    return [
        f"machine: {meta['cpu']}, {meta['cores']} cores ({meta['usable_cores']} usable), "
        f"{format_value(memory, 'bytes')} RAM, {meta['os']}",
        f"Python: {meta['python']}; pyslab {meta['pyslab']}",
        f"load average (1, 5, 15 min) at start: {meta.get('load_average', '?')}"
        + (f", at end: {end}" if end else ""),
        f"date: {meta['date']}; clock: {meta.get('clock', 'wall')}",
        f"command: {meta['command']}",
    ]


def print_header(meta: dict[str, object], profile: str) -> None:
    """The machine, Python, date and command, before the first measurement."""
    from rich.panel import Panel

    _console().print(Panel("\n".join(_meta_lines(meta)), title=f"pyslab benchmarks ({profile})"))


def _target_line(target: Target) -> str:
    colour = {True: "green", False: "red", None: "yellow"}[target.met]
    return f"[{colour}]{_MARK[target.met]}[/{colour}] {target.text}: {target.detail}"


def print_section(section: Section) -> None:
    """One measurement: its tables, targets and notes."""
    from rich.markup import escape
    from rich.table import Table as RichTable

    console = _console()
    console.rule(f"[bold]{section.number}. {escape(section.title)}[/bold] "
                 f"({section.seconds:.1f} s)")
    for table in section.tables:
        rich_table = RichTable(title=escape(table.title), title_justify="left")
        for column in table.columns:
            rich_table.add_column(escape(column.header),
                                  justify="right" if _right(column) else "left")
        for cells in _cells(table):
            rich_table.add_row(*(escape(cell) for cell in cells))
        console.print(rich_table)
    for target in section.targets:
        console.print(_target_line(target), highlight=False)
    for note in section.notes:
        console.print(f"[dim]note: {escape(note)}[/dim]")
    busy = _busy_note(section)
    if busy:
        console.print(f"[yellow]{escape(busy)}[/yellow]")


def print_summary(sections: Sequence[Section]) -> None:
    """Every target of the run, met or missed, in one list at the end."""
    console = _console()
    targets = [(s, t) for s in sections for t in s.targets]
    if not targets:
        return
    console.rule("[bold]targets[/bold]")
    for section, target in targets:
        console.print(f"{section.number}. " + _target_line(target), highlight=False)
    met = sum(1 for _, t in targets if t.met)
    console.print(f"{met} of {len(targets)} targets met")


def markdown(meta: dict[str, object], sections: Sequence[Section]) -> str:
    """The whole run as markdown: the README's results section is pasted from this."""
    lines = ["## Results", ""]
    lines += [f"- {line}" for line in _meta_lines(meta)]
    for section in sections:
        lines += ["", f"### {section.number}. {section.title}", ""]
        for table in section.tables:
            lines += [f"*{table.title}*", ""]
            lines.append("| " + " | ".join(c.header for c in table.columns) + " |")
            lines.append("|" + "|".join("---:" if _right(c) else "---" for c in table.columns)
                         + "|")
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
                      for cells in _cells(table)]
            lines.append("")
        if section.targets:
            lines += [f"- {_MARK[t.met]} {t.text}: {t.detail}" for t in section.targets]
            lines.append("")
        lines += [f"> {note}" for note in section.notes]
        busy = _busy_note(section)
        if busy:
            lines.append(f"> **{busy}**")
    return "\n".join(lines).rstrip() + "\n"


def write_markdown(path: Path, meta: dict[str, object], sections: Sequence[Section]) -> None:
    """Write :func:`markdown` to ``path``."""
    path.write_text(markdown(meta, sections), encoding="utf-8")


def write_json(path: Path, meta: dict[str, object], sections: Sequence[Section]) -> None:
    """Every raw figure of the run, samples included."""
    data = {"meta": meta, "sections": [s.to_dict() for s in sections]}
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def write_plot(path: Path, sections: Sequence[Section]) -> None:
    """Free-cost-vs-slabs curves (log x) and the ratio-to-libc bars, in one PNG.

    Raises:
        ModuleNotFoundError: matplotlib is missing (``pip install -e ".[bench]"``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_key = {s.key: s for s in sections}
    curves = by_key["scaling"].plot.get("curves") if "scaling" in by_key else None
    bars = by_key["pairs"].plot.get("ratios_to_libc") if "pairs" in by_key else None
    figure, (left, right) = plt.subplots(1, 2, figsize=(15, 6.5))
    if isinstance(curves, dict) and curves:
        for name, points in curves.items():
            xs = sorted(int(k) for k in points)
            left.plot(xs, [points[str(x)] for x in xs], marker="o", label=name)
        left.set_xscale("log")
        left.set_yscale("log")
        left.set_xlabel("live slabs")
        left.set_ylabel("ns per random free + realloc (median)")
        left.set_title("4. free cost as live slabs grow")
        left.grid(True, which="both", alpha=0.3)
        left.legend(fontsize=8)
    else:
        left.text(0.5, 0.5, "measurement 4 not run", ha="center", transform=left.transAxes)
    if isinstance(bars, dict) and bars:
        sizes = list(bars)
        labels = list(next(iter(bars.values())))
        height = 0.8 / len(sizes)
        for i, size in enumerate(sizes):
            ratios = bars[size]
            positions = [y + i * height for y in range(len(labels))]
            right.barh(positions, [ratios[label] for label in labels], height,
                       label=f"{size} B")
        right.set_yticks([y + 0.4 - height / 2 for y in range(len(labels))], labels,
                         fontsize=7)
        right.invert_yaxis()
        right.axvline(1.0, color="black", linewidth=1, label="libc")
        right.axvline(1 / 1.3, color="green", linestyle="--", linewidth=1,
                      label="fastest: 1.3x as fast")
        right.set_xlabel("time / libc malloc+free via ctypes (lower is faster)")
        right.set_title("1. alloc+free pair, ratio to libc")
        right.legend(fontsize=8)
    else:
        right.text(0.5, 0.5, "measurement 1 not run", ha="center", transform=right.transAxes)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
