"""Pictures of the heap: draw a :class:`~pyslab.observe.HeapMap` as an image with matplotlib.

:func:`render_map` draws one snapshot: a panel per size class, a row per slab (oldest at the
top), a cell per slot, coloured by what the slot holds (live, free on the free list, never
carved). Up to ``max_rows`` slabs every slot is drawn; past that each class becomes a strip of
occupancy bars, one column per slab, so that thousands of slabs still show how full each is.
:func:`render_comparison` draws several snapshots side by side on one shared layout (the frames
of ``pyslab animate``).

matplotlib and numpy are imported when a picture is drawn, never with pyslab: install them with
``pip install 'pyslab-alloc[viz]'``. Each figure gets its own non-interactive Agg canvas:
no display is needed, and neither ``pyplot`` nor matplotlib's global backend is touched.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pyslab.core.slab import SlabState

from .heapmap import ClassMap, HeapMap, SlotState

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["COLORS", "comparison_figure", "render_comparison", "render_map"]

COLORS: Final = {
    SlotState.LIVE: "#2b6cb0",
    SlotState.FREE: "#f0a030",
    SlotState.UNCARVED: "#e4e4e4",
}
"""The colour of each slot state: blue live, orange free-listed, light grey never carved."""
_NO_SLOT: Final = "#ffffff"  # cells past a slab's capacity, rows of slabs not made yet
_RELEASED: Final = "#f3c9c9"  # the row of a slab given back to the page source
_LIST_HEAD: Final = "#b34700"  # free-list order: the head is darkest, the tail lightest
_LIST_TAIL: Final = "#ffd9a0"
_CODES: Final = {SlotState.LIVE: 0, SlotState.FREE: 1, SlotState.UNCARVED: 2}

_FIGURE_WIDTH: Final = 11.0  # inches per snapshot column
_TITLE_HEIGHT: Final = 0.42  # inches above each class panel
_BAR_PANEL_HEIGHT: Final = 1.5  # inches of a class panel in occupancy-bar mode
_ROWS_HEIGHT: Final = 8.0  # inches shared by the slab rows of every panel in cell mode
_MAX_ARROW_ROWS: Final = 24  # free-list arrows are drawn for at most this many slabs ...
_MAX_ARROWS: Final = 48  # ... with at most this many links each; beyond, the shading tells
_MAX_BAR_COLUMNS: Final = 600  # occupancy-bar columns per panel, about one per 1.5 pixels


def render_map(
    snapshot: HeapMap,
    path: str | os.PathLike[str],
    show_free_list: bool = False,
    *,
    title: str | None = None,
    max_rows: int = 256,
    dpi: int = 100,
) -> Path:
    """Draw ``snapshot`` into the image file ``path`` (format from its suffix: png, svg, pdf...).

    One panel per size class that has slabs, headed by the class and its counts; one row per
    slab, one cell per slot: blue live, orange free on the free list, grey never carved. The
    class's ``current`` slab is marked with a triangle on the right. Past ``max_rows`` slabs a
    class panel shows one occupancy bar per slab instead, with a histogram beside it of how
    many slabs sit at each occupancy (the nearly empty ones are what reclamation can free).

    Args:
        snapshot: from :meth:`SlabAllocator.heap_map`.
        path: the image file to write (its directory must exist).
        show_free_list: shade each free-listed slot by its place in the free list (dark head,
            light tail), and for a few slabs number the slots or draw the list's arrows.
        title: the figure's title; default: the policy and the totals.
        max_rows: past this many slabs in all, each class is drawn as occupancy bars (one
            column per slab: live, free-listed and uncarved fractions) instead of cells.
        dpi: pixels per inch of a raster image; the figure is 11 inches wide.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: ``snapshot`` is not a :class:`HeapMap`, or ``max_rows``/``dpi`` not ints.
        ValueError: ``max_rows`` or ``dpi`` is not positive, or matplotlib does not know the
            suffix of ``path`` (the message names it).
        ImportError: matplotlib is not installed (install ``pyslab-alloc[viz]``).
        OSError: the file cannot be written.

    Complexity: O(slots) for cell mode, O(slabs) for bars; the rendering itself dominates.
    """
    return render_comparison(
        [snapshot], path, show_free_list=show_free_list,
        titles=None if title is None else [title], max_rows=max_rows, dpi=dpi,
    )


def render_comparison(
    snapshots: Sequence[HeapMap],
    path: str | os.PathLike[str],
    show_free_list: bool = False,
    *,
    titles: Sequence[str] | None = None,
    max_rows: int = 256,
    dpi: int = 100,
    history: Sequence[Sequence[HeapMap]] | None = None,
) -> Path:
    """Draw several snapshots side by side, in columns that share one layout.

    Every column gets the same panels, rows and scales, so that two policies (or two moments)
    compare cell for cell.

    Args:
        snapshots: one per column, left to right (at least one).
        titles: one per column; default: each snapshot's policy and totals.
        show_free_list, max_rows, dpi: as :func:`render_map` (``max_rows`` counts the rows of
            one column).
        history: for each column, every snapshot that column shows in a series of pictures
            (the frames of an animation). A slab then keeps one row in every picture (rows by
            slab serial, oldest first), a released slab leaves its row blank, and every
            picture of the series has the same size. Default: each column's own snapshot.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError, ValueError, ImportError, OSError: as :func:`render_map`; ValueError also
            when ``snapshots`` is empty, ``titles`` or ``history`` has another length, or the
            snapshots do not share one slab size and set of size classes.
    """
    _check_positive("dpi", dpi)
    target = Path(path)
    suffix = target.suffix.lstrip(".").lower()
    figure = comparison_figure(
        snapshots, show_free_list=show_free_list, titles=titles, max_rows=max_rows,
        history=history,
    )
    supported = figure.canvas.get_supported_filetypes()
    if suffix not in supported:
        raise ValueError(
            f"cannot write {str(path)!r}: the suffix {suffix!r} is not one of "
            f"{sorted(supported)}"
        )
    figure.savefig(target, dpi=dpi, facecolor="white")
    return target


def comparison_figure(
    snapshots: Sequence[HeapMap],
    show_free_list: bool = False,
    *,
    titles: Sequence[str] | None = None,
    max_rows: int = 256,
    history: Sequence[Sequence[HeapMap]] | None = None,
) -> Figure:
    """The matplotlib Figure :func:`render_comparison` saves (to draw on, or save elsewhere).

    The figure has its own Agg canvas: no ``pyplot``, no change to matplotlib's global backend.

    Raises:
        As :func:`render_comparison`, but OSError.
    """
    if isinstance(snapshots, HeapMap) or not snapshots:
        raise ValueError(f"expected a non-empty sequence of HeapMap snapshots, not {snapshots!r}")
    columns = [[s] for s in snapshots] if history is None else [list(h) for h in history]
    if len(columns) != len(snapshots):
        raise ValueError(f"history has {len(columns)} columns for {len(snapshots)} snapshots")
    for snapshot in (*snapshots, *(m for column in columns for m in column)):
        if not isinstance(snapshot, HeapMap):
            raise TypeError(f"expected a pyslab.observe.HeapMap, not {snapshot!r}")
    _check_positive("max_rows", max_rows)
    if titles is not None and len(titles) != len(snapshots):
        raise ValueError(f"{len(titles)} titles for {len(snapshots)} snapshots")
    layout = _Layout.of(snapshots, columns, max_rows)
    figure_type, _ = _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = figure_type(figsize=(_FIGURE_WIDTH * len(snapshots), layout.height), dpi=100)
    FigureCanvasAgg(figure)  # a canvas of its own: safe in any thread, no global state
    column_width = 1.0 / len(snapshots)
    for column, snapshot in enumerate(snapshots):
        heading = titles[column] if titles is not None else _default_title(snapshot)
        _draw_column(figure, layout, column, snapshot, heading, column * column_width,
                     column_width, show_free_list)
    released = any(
        _released(layout.rows[column][c.slot_size], c, snapshot.slabs_made)
        for column, snapshot in enumerate(snapshots) for c in snapshot.classes
        if c.slot_size in layout.rows[column]
    )
    _draw_legend(figure, layout, snapshots, show_free_list, released)
    return figure


# --- layout ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Panel:
    slot_size: int
    rows: int  # slab rows (cell mode) or slab columns (bar mode) the panel has room for
    capacity: int  # cells per row: the most slots a slab of the class has


@dataclass(frozen=True)
class _Layout:
    """Panels, rows and sizes (inches) shared by every column of a figure."""

    panels: tuple[_Panel, ...]
    rows: tuple[dict[int, dict[int, int]], ...]  # per column: slot size -> {serial: row}
    bars: bool  # occupancy bars instead of cells
    row_height: float  # inches per slab row in cell mode
    top: float = 0.55  # inches above the first panel (figure title)
    bottom: float = 0.75  # inches below the last panel (legend)

    @classmethod
    def of(
        cls, snapshots: Sequence[HeapMap], history: Sequence[Sequence[HeapMap]], max_rows: int
    ) -> _Layout:
        everything = [*snapshots, *(m for column in history for m in column)]
        shapes = {(s.slab_size, tuple(c.slot_size for c in s.classes)) for s in everything}
        if len(shapes) != 1:
            raise ValueError(
                f"snapshots of different layouts cannot share a figure: {sorted(shapes)}"
            )
        rows: list[dict[int, dict[int, int]]] = []
        for snapshot, column in zip(snapshots, history, strict=True):
            rows.append({})
            for index, class_map in enumerate(snapshot.classes):
                # A slab's row is its rank by serial among every slab the column ever shows:
                # oldest first, the same row in every picture of a series.
                serials = {s.serial for m in (snapshot, *column) for s in m.classes[index].slabs}
                rows[-1][class_map.slot_size] = {n: r for r, n in enumerate(sorted(serials))}
        panels = []
        for index, class_map in enumerate(snapshots[0].classes):
            height = max(len(column[class_map.slot_size]) for column in rows)
            if height:
                capacity = max(
                    slab.capacity for m in everything for slab in m.classes[index].slabs
                )
                panels.append(_Panel(class_map.slot_size, height, capacity))
        total = sum(p.rows for p in panels)
        # Rows share a fixed height until they would grow past 0.3 inch (a few slabs) or
        # shrink below 0.03 inch (3 pixels at 100 dpi: still one visible row each).
        row_height = min(0.3, max(0.03, _ROWS_HEIGHT / max(total, 1)))
        return cls(tuple(panels), tuple(rows), total > max_rows, row_height)

    def panel_height(self, panel: _Panel) -> float:
        if self.bars:  # room for the x-axis label under the bars too
            return _TITLE_HEIGHT + 0.2 + _BAR_PANEL_HEIGHT
        return _TITLE_HEIGHT + panel.rows * self.row_height

    @property
    def height(self) -> float:
        panels = sum(self.panel_height(p) for p in self.panels) or 0.6
        return self.top + panels + self.bottom


# --- drawing --------------------------------------------------------------------------------


def _matplotlib() -> tuple[type[Figure], Any]:
    """matplotlib's Figure and numpy, imported on first use (never with pyslab)."""
    try:
        import numpy
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "pyslab's pictures need matplotlib: pip install 'pyslab-alloc[viz]'"
        ) from exc
    return Figure, numpy


def _draw_column(
    figure: Figure, layout: _Layout, column: int, snapshot: HeapMap, heading: str, left: float,
    width: float, show_free_list: bool,
) -> None:
    height = layout.height
    figure.text(left + width / 2, 1 - 0.18 / height, heading, ha="center", va="top",
                fontsize=12, fontweight="bold")
    if not layout.panels:
        figure.text(left + width / 2, 0.5, "no slabs", ha="center", va="center", fontsize=11)
        return
    by_size = {c.slot_size: c for c in snapshot.classes}
    top = height - layout.top
    for panel in layout.panels:
        body = _BAR_PANEL_HEIGHT if layout.bars else panel.rows * layout.row_height
        bottom = (top - _TITLE_HEIGHT - body) / height
        class_map = by_size[panel.slot_size]
        rows = layout.rows[column][panel.slot_size]
        if layout.bars:
            # The strip of occupancy bars, and beside it how many slabs sit at each occupancy.
            axes = figure.add_axes((left + width * 0.08, bottom, width * 0.70, body / height))
            histogram = figure.add_axes(
                (left + width * 0.80, bottom, width * 0.14, body / height), sharey=axes
            )
            _draw_bars(axes, histogram, panel, class_map, rows, snapshot.slabs_made)
        else:
            axes = figure.add_axes((left + width * 0.08, bottom, width * 0.86, body / height))
            _draw_cells(axes, panel, class_map, rows, snapshot.slabs_made, layout.row_height,
                        show_free_list)
        axes.set_title(_class_title(class_map), fontsize=9, loc="left", pad=4)
        top -= layout.panel_height(panel)


def _draw_cells(
    axes: Axes, panel: _Panel, class_map: ClassMap, rows: dict[int, int], slabs_made: int,
    row_height: float, show_free_list: bool,
) -> None:
    _, numpy = _matplotlib()
    from matplotlib.colors import to_rgb

    palette = _palette()
    # Rows of slabs not in this snapshot stay blank when not made yet, pink when released.
    codes = numpy.full((panel.rows, panel.capacity), len(_CODES), dtype=numpy.uint8)
    for serial in _released(rows, class_map, slabs_made):
        codes[rows[serial]] = len(_CODES) + 1
    for slab in class_map.slabs:
        codes[rows[slab.serial], : slab.capacity] = [_CODES[s] for s in slab.slots]
    image = palette[codes]
    if show_free_list:
        head, tail = numpy.array(to_rgb(_LIST_HEAD)), numpy.array(to_rgb(_LIST_TAIL))
        for slab in class_map.slabs:
            if slab.free_list:
                # Position 0 (the head) gets the darkest shade, the tail the lightest.
                ramp = numpy.linspace(0.0, 1.0, len(slab.free_list))[:, None]
                image[rows[slab.serial], list(slab.free_list)] = head + (tail - head) * ramp
    axes.imshow(image, aspect="auto", interpolation="nearest",
                extent=(0, panel.capacity, panel.rows, 0))
    cell_width = 0.86 * _FIGURE_WIDTH * 72 / panel.capacity  # points per cell
    cell_height = row_height * 72
    if cell_width >= 5 and cell_height >= 5:
        # White grid lines separate the cells while cells are large enough to tell apart.
        axes.vlines(range(1, panel.capacity), 0, panel.rows, colors="white", linewidth=0.6)
        axes.hlines(range(1, panel.rows), 0, panel.capacity, colors="white", linewidth=1.2)
    _label_rows(axes, rows, cell_height)
    axes.set_xlim(0, panel.capacity)
    axes.set_ylim(panel.rows, 0)
    axes.tick_params(axis="x", labelsize=7, length=2, pad=1)
    if show_free_list:
        _draw_free_list_order(axes, class_map, rows, cell_width, cell_height)
    for slab in class_map.slabs:
        if slab.current:
            axes.plot([panel.capacity], [rows[slab.serial] + 0.5], marker="<", color="black",
                      markersize=max(3.0, min(7.0, cell_height * 0.8)), clip_on=False)


def _palette() -> Any:
    """RGB rows indexed by cell code: the slot states, then no slot, then released."""
    _, numpy = _matplotlib()
    from matplotlib.colors import to_rgb

    colors = [COLORS[s] for s in _CODES] + [_NO_SLOT, _RELEASED]
    return numpy.array([to_rgb(c) for c in colors])


def _released(rows: dict[int, int], class_map: ClassMap, slabs_made: int) -> list[int]:
    """Serials with a row that the snapshot does not hold although they were made: released."""
    present = {s.serial for s in class_map.slabs}
    return [serial for serial in rows if serial < slabs_made and serial not in present]


def _label_rows(axes: Axes, rows: dict[int, int], cell_height: float) -> None:
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

    serials = sorted(rows, key=rows.__getitem__)
    if cell_height >= 7 and len(serials) <= 32:
        axes.yaxis.set_major_locator(FixedLocator([r + 0.5 for r in range(len(serials))]))
    else:
        axes.yaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))

    def name(value: float, _: int) -> str:
        row = math.floor(value)
        return f"#{serials[row]}" if 0 <= row < len(serials) else ""

    axes.yaxis.set_major_formatter(FuncFormatter(name))
    axes.tick_params(axis="y", labelsize=7, length=2, pad=1)
    axes.xaxis.set_major_locator(MaxNLocator(nbins=16, integer=True))


def _draw_free_list_order(
    axes: Axes, class_map: ClassMap, rows: dict[int, int], cell_width: float,
    cell_height: float,
) -> None:
    slabs = class_map.slabs
    if cell_width >= 11 and cell_height >= 9:
        size = min(8.0, cell_height * 0.55, cell_width * 0.45)
        for slab in slabs:
            for place, index in enumerate(slab.free_list, start=1):
                axes.text(index + 0.5, rows[slab.serial] + 0.5, str(place), ha="center",
                          va="center", fontsize=size, color="black")
        return
    if len(slabs) > _MAX_ARROW_ROWS:
        return
    from matplotlib.patches import FancyArrowPatch

    for slab in slabs:
        row = rows[slab.serial]
        links = list(zip(slab.free_list, slab.free_list[1:], strict=False))[:_MAX_ARROWS]
        for source, target in links:
            # Arcs from cell centre to cell centre, bulging within the slab's own row.
            axes.add_patch(FancyArrowPatch(
                (source + 0.5, row + 0.55), (target + 0.5, row + 0.55),
                connectionstyle="arc3,rad=0.35", arrowstyle="-|>", mutation_scale=6,
                linewidth=0.6, color="black", shrinkA=1, shrinkB=1,
            ))


def _draw_bars(
    axes: Axes, histogram: Axes, panel: _Panel, class_map: ClassMap, rows: dict[int, int],
    slabs_made: int,
) -> None:
    _, numpy = _matplotlib()

    # Past _MAX_BAR_COLUMNS slabs, each column averages a run of consecutive slabs: a clean
    # mean rather than whatever single slab a resampling filter would happen to pick.
    per_column = max(1, math.ceil(panel.rows / _MAX_BAR_COLUMNS))
    columns = math.ceil(panel.rows / per_column)
    live = numpy.zeros(columns * per_column)
    linked = numpy.zeros(columns * per_column)
    present = numpy.zeros(columns * per_column)
    for slab in class_map.slabs:
        place = rows[slab.serial]
        live[place] = slab.used / slab.capacity
        linked[place] = slab.linked / slab.capacity
        present[place] = 1.0
    weight = present.reshape(columns, per_column).sum(axis=1)
    shown = weight > 0
    safe = numpy.where(shown, weight, 1.0)
    live_mean = live.reshape(columns, per_column).sum(axis=1) / safe * 100
    linked_mean = linked.reshape(columns, per_column).sum(axis=1) / safe * 100
    # Column j, from the bottom: live, then free-listed, then uncarved (in percent of slots).
    height = numpy.arange(100)[:, None] + 0.5
    codes = numpy.where(height < live_mean, 0,
                        numpy.where(height < live_mean + linked_mean, 1, 2))
    codes = numpy.where(shown, codes, 3).astype(numpy.uint8)
    released = numpy.zeros(columns * per_column, dtype=bool)
    released[[rows[serial] for serial in _released(rows, class_map, slabs_made)]] = True
    # A column whose slabs were all released is pink from top to bottom.
    codes[:, released.reshape(columns, per_column).all(axis=1) & ~shown] = len(_CODES) + 1
    axes.imshow(_palette()[codes], aspect="auto", interpolation="nearest", origin="lower",
                extent=(0, columns * per_column, 0, 100))
    axes.set_xlim(0, panel.rows)
    axes.set_ylim(0, 100)
    averaged = f" (a column averages {per_column})" if per_column > 1 else ""
    axes.set_ylabel("% of slots", fontsize=7)
    axes.set_xlabel(f"slabs, oldest first{averaged}", fontsize=7, labelpad=1)
    axes.tick_params(labelsize=7, length=2, pad=1)
    # Histogram of live occupancy: one bin per possible count for small slabs, else tenths.
    widest = panel.capacity
    edges = (numpy.arange(widest + 2) - 0.5) / widest * 100 if widest <= 16 else (
        numpy.linspace(0, 100, 11))
    occupancy = numpy.array([100 * s.used / s.capacity for s in class_map.slabs])
    counts, _ = numpy.histogram(occupancy, bins=edges)
    centres = (edges[:-1] + edges[1:]) / 2
    histogram.barh(centres, counts, height=(edges[1] - edges[0]) * 0.85,
                   color=COLORS[SlotState.LIVE])
    histogram.set_xlabel("slabs at each occupancy", fontsize=7, labelpad=1)
    histogram.tick_params(labelsize=7, length=2, pad=1, labelleft=False)
    histogram.set_ylim(0, 100)


def _draw_legend(
    figure: Figure, layout: _Layout, snapshots: Sequence[HeapMap], show_free_list: bool,
    released: bool,
) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    single = len(snapshots) == 1
    counts: dict[SlotState, str] = {}
    for state in _CODES:
        if single:
            total = sum(
                {SlotState.LIVE: s.used, SlotState.FREE: s.linked,
                 SlotState.UNCARVED: s.uncarved}[state] for s in snapshots[0].slabs
            )
            counts[state] = f" ({total})"
        else:
            counts[state] = ""
    handles: list[Any] = [
        Patch(color=COLORS[SlotState.LIVE], label=f"live{counts[SlotState.LIVE]}"),
        Patch(color=COLORS[SlotState.FREE],
              label=f"free, on the free list{counts[SlotState.FREE]}"),
        Patch(facecolor=COLORS[SlotState.UNCARVED], edgecolor="#b0b0b0",
              label=f"free, never carved{counts[SlotState.UNCARVED]}"),
    ]
    if released:
        handles.append(Patch(color=_RELEASED, label="slab released to the page source"))
    if not layout.bars:
        handles.append(Line2D([], [], marker="<", color="black", linestyle="none",
                              label="current slab"))
    if show_free_list and not layout.bars:
        handles.append(Patch(color=_LIST_HEAD, label="free-list head (dark) ..."))
        handles.append(Patch(color=_LIST_TAIL, label="... tail (light)"))
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9,
                  frameon=False, bbox_to_anchor=(0.5, 0.12 / layout.height))


def _class_title(class_map: ClassMap) -> str:
    if not class_map.slabs:
        return f"{class_map.slot_size}-byte class: no slabs"
    states = {state: class_map.count(state) for state in SlabState}
    return (
        f"{class_map.slot_size}-byte slots · {_plural(len(class_map.slabs), 'slab')} · "
        f"{class_map.used}/{class_map.capacity} live ({_percent(class_map)}%) · "
        f"{class_map.linked} free-listed · {class_map.uncarved} never carved · "
        f"{states[SlabState.FULL]} full, {states[SlabState.PARTIAL]} partial, "
        f"{states[SlabState.EMPTY]} empty"
    )


def _default_title(snapshot: HeapMap) -> str:
    slabs = snapshot.slabs
    live = f"{snapshot.used}/{snapshot.capacity} slots live" if slabs else "no slabs"
    return (
        f"policy {snapshot.policy}: {len(slabs)} slabs, {snapshot.mapped_bytes // 1024} KiB "
        f"mapped, {live}"
    )


def _percent(class_map: ClassMap) -> int:
    return round(100 * class_map.used / class_map.capacity) if class_map.capacity else 0


def _check_positive(name: str, value: object) -> None:
    if type(value) is not int:
        raise TypeError(f"{name} must be an int, not {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, not {value}")


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' * (count != 1)}"
