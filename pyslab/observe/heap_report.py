"""The statistics report: :func:`report` as text, :func:`report_dict` as data.

In the manner of Linux's ``/proc/slabinfo`` and CPython's ``sys._debugmallocstats()``: one line
per size class, then the whole heap. The core's figures are always there (slabs, live and peak
blocks, free slots, mapped bytes, large blocks); the counters only a policy watching every event
can keep (allocations, frees, requested bytes, slabs created and reclaimed, peaks) appear when a
policy of the composition follows the :class:`CountsAllocations` protocol, as the ``stats``
plugin does. The report finds it in ``allocator.policy.policies``; the core never imports a
plugin.

Fragmentation, as defined here and in the README
------------------------------------------------
Every ratio counts slab memory only (large blocks are reported apart), over the live blocks of
the moment, and is None (``-`` in the text) when its denominator is zero.

internal
    ``(slot bytes - requested bytes) / slot bytes``, over the live slab blocks: the share of the
    slots handed out that rounding up to a class wastes. Needs the requested sizes (``stats``).
external
    ``free slot bytes in slabs that are not empty / mapped bytes``: memory held in partial slabs
    that no request of another class can use, and that the page source cannot take back until
    the slab empties. Empty slabs kept as a cache are not counted (``shrink()`` returns them).
utilisation
    ``requested bytes / mapped bytes``: the share of the slab memory held from the page source
    that callers asked for. Needs the requested sizes (``stats``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pyslab.core import SlabAllocator

__all__ = [
    "ClassCounters",
    "ClassReport",
    "CountsAllocations",
    "HeapReport",
    "PolicyCounters",
    "build_report",
    "report",
    "report_dict",
]


@dataclass(frozen=True)
class ClassCounters:
    """What a counting policy knows of one size class, since it was attached."""

    allocations: int
    """Blocks handed out."""
    frees: int
    """Blocks given back."""
    slabs_peak: int
    """The most slabs the class held at once."""
    slabs_created: int
    """Slabs mapped for the class."""
    slabs_reclaimed: int
    """Slabs given back to the page source (by ``reclaim`` or ``shrink``)."""
    requested_bytes: int
    """Bytes the callers of the live blocks asked for."""


@dataclass(frozen=True)
class PolicyCounters:
    """The counters of a :class:`CountsAllocations` policy."""

    classes: tuple[ClassCounters, ...]
    """One entry per size class, smallest first (as ``allocator.size_classes``)."""
    mapped_peak: int
    """The most slab bytes held from the page source at once."""


@runtime_checkable
class CountsAllocations(Protocol):
    """The optional protocol of a policy whose counters the report shows.

    ``counters()`` is called under the allocator's lock, so it sees a consistent heap; it
    must not call the allocator.
    """

    def counters(self) -> PolicyCounters:
        """A snapshot of the policy's counters."""
        ...


@dataclass(frozen=True)
class ClassReport:
    """One size class in a :class:`HeapReport`. Counter fields are None without ``stats``."""

    slot_size: int
    slots_per_slab: int
    slabs: int
    empty_slabs: int
    live: int
    """Live blocks."""
    peak_live: int
    """The most live blocks at once, since the allocator was built."""
    free_slots: int
    """Free slots in every slab of the class, empty ones included."""
    slot_bytes: int
    """``live * slot_size``."""
    partial_free_bytes: int
    """Free slot bytes in the slabs that are not empty (the external fragmentation)."""
    cached_slots: int = 0
    """Of the live blocks, those a policy holds (per-thread caches) rather than a caller."""
    allocations: int | None = None
    frees: int | None = None
    slabs_peak: int | None = None
    slabs_created: int | None = None
    slabs_reclaimed: int | None = None
    requested_bytes: int | None = None
    internal_fragmentation: float | None = None
    """``(slot_bytes - requested_bytes) / slot_bytes``."""


@dataclass(frozen=True)
class HeapReport:
    """The whole allocator: every class, then the heap's totals and fragmentation ratios."""

    policy: str
    page_source: str
    slab_size: int
    classes: tuple[ClassReport, ...]
    mapped_bytes: int
    """Slab bytes held from the page source."""
    mapped_peak: int | None
    """The most slab bytes held at once (``stats`` only)."""
    large_blocks: int
    large_bytes: int
    reentrant_allocs: int
    deferred_frees: int
    requested_bytes: int | None
    """Bytes requested by the live slab blocks (``stats`` only)."""
    internal_fragmentation: float | None
    external_fragmentation: float | None
    utilisation: float | None
    counted: bool
    """True when a :class:`CountsAllocations` policy supplied the counters."""
    caches: tuple[dict[str, object], ...] = ()
    """The object caches of ``AllocatorStats.caches`` by name (their fields as data), when the
    allocator has any; their slabs are blocks counted in ``classes`` too."""
    policy_sections: tuple[str, ...] = ()
    """What policies with a ``report_section() -> str`` method add (``debug``: live blocks,
    allocation sites, quarantined slots)."""

    def to_dict(self) -> dict[str, object]:
        """The report as plain data (dicts, lists, numbers, None), ready for ``json.dumps``."""
        plain = _plain(asdict(self))
        assert isinstance(plain, dict)
        return plain

    def format(self) -> str:
        """The report as text, one line per size class that holds or held anything."""
        return _format(self)


def _plain(value: object) -> object:
    """Tuples become lists, recursively, so that the data survives a JSON round trip."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def report(heap: SlabAllocator) -> str:
    """A readable report of ``heap``, like ``/proc/slabinfo``: a line per size class, the
    mapped and large bytes, and the fragmentation ratios defined above.

    With the ``stats`` policy in the composition it also shows allocations, frees, requested
    bytes and peaks. From inside a call of ``heap`` (a policy hook) it reads the heap as the
    interrupted call left it.

    Raises:
        AllocatorClosedError: the allocator was closed.

    Complexity: O(slabs).
    """
    return heap.inspect("report", lambda: build_report(heap).format(), consistent=False)


def report_dict(heap: SlabAllocator) -> dict[str, object]:
    """The same report as plain data (:meth:`HeapReport.to_dict`), ready for ``json.dumps``.

    Raises:
        AllocatorClosedError: the allocator was closed.

    Complexity: O(slabs).
    """
    return heap.inspect("report_dict", lambda: build_report(heap).to_dict(), consistent=False)


def build_report(allocator: SlabAllocator) -> HeapReport:
    """Gather the report of ``allocator``. Call it under the allocator's lock.

    Complexity: O(slabs), to count the free slots of partial slabs.
    """
    stats = allocator.stats()
    counting = next(
        (p for p in allocator.policy.policies if isinstance(p, CountsAllocations)), None
    )
    counters = counting.counters() if counting is not None else None
    classes: list[ClassReport] = []
    pairs = zip(allocator.size_classes, stats.classes, strict=True)
    for index, (size_class, core) in enumerate(pairs):
        partial_free = sum(
            slab.capacity - slab.used for slab in size_class.slabs if slab.used
        ) * size_class.slot_size
        slot_bytes = core.used_slots * core.slot_size
        extra: dict[str, int | float | None] = {}
        if counters is not None:
            counted = counters.classes[index]
            extra = asdict(counted)
            extra["internal_fragmentation"] = _ratio(
                slot_bytes - counted.requested_bytes, slot_bytes
            )
        classes.append(
            ClassReport(
                slot_size=core.slot_size,
                slots_per_slab=size_class.slots_per_slab,
                slabs=core.slabs,
                empty_slabs=core.empty_slabs,
                live=core.used_slots,
                peak_live=core.peak_used,
                free_slots=core.free_slots,
                slot_bytes=slot_bytes,
                partial_free_bytes=partial_free,
                cached_slots=getattr(core, "cached_slots", 0),
                **extra,  # type: ignore[arg-type]
            )
        )
    requested = (
        sum(c.requested_bytes for c in counters.classes) if counters is not None else None
    )
    slot_bytes = sum(c.slot_bytes for c in classes)
    return HeapReport(
        policy=stats.policy,
        page_source=type(allocator.page_source).__name__,
        slab_size=stats.slab_size,
        classes=tuple(classes),
        mapped_bytes=stats.mapped_bytes,
        mapped_peak=counters.mapped_peak if counters is not None else None,
        large_blocks=stats.large_blocks,
        large_bytes=stats.large_bytes,
        reentrant_allocs=stats.reentrant_allocs,
        deferred_frees=stats.deferred_frees,
        requested_bytes=requested,
        internal_fragmentation=(
            _ratio(slot_bytes - requested, slot_bytes) if requested is not None else None
        ),
        external_fragmentation=_ratio(
            sum(c.partial_free_bytes for c in classes), stats.mapped_bytes
        ),
        utilisation=_ratio(requested, stats.mapped_bytes) if requested is not None else None,
        counted=counters is not None,
        caches=_caches(stats),
        policy_sections=tuple(
            section()
            for policy in allocator.policy.policies
            if callable(section := getattr(policy, "report_section", None))
        ),
    )


def _caches(stats: object) -> tuple[dict[str, object], ...]:
    """``stats.caches`` as plain data, if the allocator has object caches.

    Read by name, not by type, so that the report does not depend on the cache module."""
    found = getattr(stats, "caches", None) or ()
    result: list[dict[str, object]] = []
    for cache in found:
        if hasattr(cache, "__dataclass_fields__"):
            result.append(asdict(cache))
        elif isinstance(cache, dict):
            result.append(dict(cache))
        else:
            result.append({"cache": repr(cache)})
    return tuple(result)


# --- text -------------------------------------------------------------------------------------

_CORE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("size", "slot_size"),
    ("per-slab", "slots_per_slab"),
    ("slabs", "slabs"),
    ("empty", "empty_slabs"),
    ("live", "live"),
    ("peak", "peak_live"),
    ("free", "free_slots"),
    ("slot-bytes", "slot_bytes"),
    ("ext-bytes", "partial_free_bytes"),
)
_COUNTED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("allocs", "allocations"),
    ("frees", "frees"),
    ("slab-peak", "slabs_peak"),
    ("created", "slabs_created"),
    ("reclaimed", "slabs_reclaimed"),
    ("requested", "requested_bytes"),
    ("int-frag", "internal_fragmentation"),
)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1%}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    return [
        "  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True))
        for line in (header, *rows)
    ]


def _format(report: HeapReport) -> str:
    cached = (("cached", "cached_slots"),) if any(c.cached_slots for c in report.classes) else ()
    columns = _CORE_COLUMNS + cached + (_COUNTED_COLUMNS if report.counted else ())
    rows = [
        [_cell(getattr(c, field)) for _, field in columns]
        for c in report.classes
        if c.slabs or c.peak_live or (c.allocations or 0)
    ]
    lines = [
        f"pyslab heap report: policy {report.policy}, page source {report.page_source}, "
        f"slabs of {report.slab_size} bytes",
        *_table([title for title, _ in columns], rows),
        f"mapped {report.mapped_bytes} bytes in slabs (peak {_cell(report.mapped_peak)}); "
        f"large blocks {report.large_blocks} ({report.large_bytes} bytes)",
        f"requested {_cell(report.requested_bytes)} bytes; "
        f"fragmentation: internal {_cell(report.internal_fragmentation)}, "
        f"external {_cell(report.external_fragmentation)}, "
        f"utilisation {_cell(report.utilisation)}",
        f"re-entrant allocs {report.reentrant_allocs}, deferred frees {report.deferred_frees}",
    ]
    if not report.counted:
        lines.append("(add the `stats` policy for allocation counts and requested bytes)")
    if report.caches:
        header = list(report.caches[0])
        lines.append("object caches:")
        lines += _table(
            [key.replace("_", "-") for key in header],
            [[_cell(cache.get(key)) for key in header] for cache in report.caches],
        )
    lines += [section.rstrip("\n") for section in report.policy_sections]
    return "\n".join(lines) + "\n"
