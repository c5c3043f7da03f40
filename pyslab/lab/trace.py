"""Allocation traces: pyslab's plain-text format, memray captures, and replaying either.

The plain format
----------------
A UTF-8 text file, one event a line::

    pyslab-trace 1
    # '#' starts a comment, to the end of the line; blank lines are ignored
    a 0 24          # allocate block 0: 24 bytes, default alignment
    a 1 100 64      # allocate block 1: 100 bytes aligned to 64
    r 0 48          # resize block 0 to 48 bytes (an optional ALIGN may follow)
    f 1             # free block 1
    end 4

- The first line is exactly ``pyslab-trace 1`` (the format's version).
- ``a ID SIZE [ALIGN]`` allocates, ``f ID`` frees, ``r ID SIZE [ALIGN]`` reallocates. ``ID`` is
  a decimal int >= 0 naming a block; it may be reused once its block is freed. ``SIZE`` is a
  positive int; ``ALIGN`` a power of two (default: the allocator's, the pointer size).
- The last line is ``end COUNT``, COUNT being the number of events: a file cut short has no
  such line and is rejected as truncated.
- Blocks still live at ``end`` are allowed: they are part of the final state a replay measures.

Every violation (unknown event, malformed number, free or realloc of a block that is not live,
allocation of a live id, missing or wrong ``end``) raises :class:`TraceError` naming the file
and line: nothing in a plain trace is skipped.

memray captures
---------------
:func:`read_memray_capture` turns a capture written by ``memray run -o capture.bin program.py``
into events, with memray's own ``FileReader`` (``pip install 'pyslab-alloc[cli]'``). It reads
one allocator family: the Python object allocator (``PYMALLOC_*``, in captures recorded with
``--trace-python-allocators``: the default then) or the native one (``malloc``, ``calloc``,
``realloc``, ``posix_memalign``, ``aligned_alloc``, ``memalign``, ``valloc``, ``pvalloc``,
``free``), since a Python object larger than 512 bytes appears in both. Addresses become ids.
memray records a ``realloc`` as a free of the old address followed by a realloc record for the
new one, on the same thread: the pair becomes one ``r`` event. Records are counted here, one by
one (memray's own totals count frees as allocations). These are skipped, and counted by reason:

- ``other-allocator``: records of the family not chosen, and ``mmap``/``munmap``;
- ``too-large``: allocations larger than ``max_size`` (default 1024, the largest size class):
  pyslab serves them from libc, so they say nothing about slabs. A realloc of a kept block
  beyond it frees the block (its memory leaves the slabs);
- ``zero-size``: allocations of 0 bytes (pyslab rejects them);
- ``unknown-address``: frees of an address no kept allocation returned (allocated before the
  capture began, or skipped above).

An allocation at an address that is still live means its free was not recorded in the chosen
family: the old block is freed just before (an *implied free*, counted). memray does not record
alignments (``posix_memalign`` blocks get the default), and the threads' events become one
sequence in the order memray wrote them. memray's reader cannot tell a truncated capture from
a complete one: a cut capture is read up to its last whole record, or, when the cut leaves
its compressed header unreadable, refused as not a capture.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final, Literal, NamedTuple, TypeAlias

from pyslab.errors import PyslabError

from .workload import Workload, WorkloadError, WorkloadHeap

if TYPE_CHECKING:
    from memray import AllocationRecord

__all__ = [
    "MAGIC",
    "Capture",
    "CaptureSummary",
    "TraceError",
    "TraceEvent",
    "TraceRecorder",
    "TraceWorkload",
    "format_trace",
    "is_memray_capture",
    "parse_trace",
    "read_memray_capture",
    "read_trace",
    "record_workload",
    "write_trace",
]

MAGIC: Final = "pyslab-trace 1"
"""The first line of every plain trace."""

_LZ4_MAGIC: Final = b"\x04\x22\x4d\x18"  # memray compresses captures with LZ4 by default
_MEMRAY_MAGIC: Final = b"memray"  # ... and starts uncompressed ones (--no-compress) with this

StrPath: TypeAlias = "str | os.PathLike[str]"
Family: TypeAlias = Literal["auto", "python", "native"]


class TraceError(PyslabError, ValueError):
    """A trace cannot be read: the message names the file and line and what is wrong there.

    ``source`` is the file (or a label), ``line`` the 1-based line number (0: the whole file).
    """

    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source}:{line}: {message}" if line else f"{source}: {message}")
        self.source = source
        self.line = line


class TraceEvent(NamedTuple):
    """One event: ``op`` is ``"a"`` (allocate), ``"f"`` (free) or ``"r"`` (reallocate)."""

    op: Literal["a", "f", "r"]
    block: int
    size: int = 0
    """Bytes requested (0 for a free)."""
    align: int | None = None
    """Alignment requested; None: the allocator's default."""


# --- the plain format -------------------------------------------------------------------------


def format_trace(events: Iterable[TraceEvent]) -> Iterator[str]:
    """The lines (without newlines) of a plain trace holding ``events``. Complexity: O(events)."""
    yield MAGIC
    count = 0
    for op, block, size, align in events:
        if op == "f":
            yield f"f {block}"
        elif align is None:
            yield f"{op} {block} {size}"
        else:
            yield f"{op} {block} {size} {align}"
        count += 1
    yield f"end {count}"


def write_trace(events: Iterable[TraceEvent], out: StrPath | IO[str]) -> int:
    """Write ``events`` as a plain trace to a path or an open text file; return their number.

    The events are not checked: write what :func:`parse_trace` accepts (as every producer in
    pyslab does).

    Raises:
        OSError: the file cannot be written.

    Complexity: O(events).
    """
    if isinstance(out, (str, os.PathLike)):
        with open(out, "w", encoding="utf-8") as file:
            return write_trace(events, file)
    count = -2  # the header and end lines are not events
    for line in format_trace(events):
        out.write(line + "\n")
        count += 1
    return count


def read_trace(path: StrPath) -> list[TraceEvent]:
    """Read and check a plain trace (format in the module docstring).

    Raises:
        TraceError: the file breaks the format (the message names the line), or is not text.
        OSError: the file cannot be read.

    Complexity: O(lines).
    """
    with open(path, encoding="utf-8", newline="") as file:
        try:
            return parse_trace(file, os.fspath(path))
        except UnicodeDecodeError:
            raise TraceError(os.fspath(path), 0, "not a pyslab trace: not UTF-8 text") from None


def parse_trace(lines: Iterable[str], source: str = "<trace>") -> list[TraceEvent]:
    """Parse and check the lines of a plain trace (with or without their newlines).

    Raises:
        TraceError: naming ``source`` and the line.

    Complexity: O(lines); one dict entry per live block.
    """
    events: list[TraceEvent] = []
    live: dict[int, int] = {}  # block id -> line that allocated it
    freed: dict[int, int] = {}  # block id -> line that last freed it (for the error message)
    number = 0
    ended = 0
    for number, raw in enumerate(lines, start=1):
        if number == 1:
            line = raw.strip()
            if line != MAGIC:
                found = line[:40] + ("..." if len(line) > 40 else "")
                raise TraceError(
                    source, 1, f"not a pyslab trace: expected {MAGIC!r}, found {found!r}"
                )
            continue
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if ended:
            raise TraceError(source, number, f"event after the 'end' line {ended}")
        fields = line.split()
        op = fields[0]
        if op == "end":
            count = _number(fields, 1, 2, source, number, "end COUNT")
            if count != len(events):
                raise TraceError(
                    source, number, f"'end {count}' but the trace has {len(events)} events"
                )
            ended = number
            continue
        if op == "a":
            block = _number(fields, 1, (3, 4), source, number, "a ID SIZE [ALIGN]")
            if block in live:
                raise TraceError(
                    source, number,
                    f"block {block} allocated again while live (since line {live[block]})",
                )
            size, align = _size_align(fields, source, number)
            live[block] = number
            freed.pop(block, None)
            events.append(TraceEvent("a", block, size, align))
        elif op in ("f", "r"):
            usage = "f ID" if op == "f" else "r ID SIZE [ALIGN]"
            block = _number(fields, 1, 2 if op == "f" else (3, 4), source, number, usage)
            if block not in live:
                why = f"freed at line {freed[block]}" if block in freed else "never allocated"
                what = "free" if op == "f" else "realloc"
                raise TraceError(source, number, f"{what} of unknown block {block} ({why})")
            if op == "f":
                del live[block]
                freed[block] = number
                events.append(TraceEvent("f", block))
            else:
                size, align = _size_align(fields, source, number)
                events.append(TraceEvent("r", block, size, align))
        else:
            raise TraceError(source, number, f"unknown event {op!r} (expected a, f, r or end)")
    if number == 0:
        raise TraceError(source, 0, "empty file: not a pyslab trace")
    if not ended:
        raise TraceError(
            source, number, f"truncated: no 'end' line after {len(events)} events"
        )
    return events


def _number(
    fields: list[str], index: int, arity: int | tuple[int, int], source: str, line: int,
    usage: str,
) -> int:
    low, high = (arity, arity) if isinstance(arity, int) else arity
    if not low <= len(fields) <= high:
        raise TraceError(source, line, f"expected '{usage}', found {' '.join(fields)!r}")
    text = fields[index]
    if not text.isdigit():
        raise TraceError(source, line, f"expected a non-negative integer, found {text!r}")
    return int(text)


def _size_align(fields: list[str], source: str, line: int) -> tuple[int, int | None]:
    size = _number(fields, 2, len(fields), source, line, "SIZE")
    if size == 0:
        raise TraceError(source, line, "size must be positive, not 0")
    if len(fields) == 3:
        return size, None
    align = _number(fields, 3, len(fields), source, line, "ALIGN")
    if align == 0 or align & (align - 1):
        raise TraceError(source, line, f"alignment must be a power of two, not {align}")
    return size, align


# --- recording and replaying ------------------------------------------------------------------


class TraceRecorder:
    """A :class:`~pyslab.lab.WorkloadHeap` that allocates nothing and writes every call down.

    Thread-safe: each call is appended under a lock, so a threaded workload's events form one
    valid sequence (a block's free always comes after its allocation).
    """

    def __init__(self) -> None:
        self.events: list[TraceEvent] = []
        self._live: set[int] = set()
        self._next = 0
        self._lock = threading.Lock()

    def alloc(self, size: int, align: int | None = None) -> int:
        """Record an allocation; return the new block id. Complexity: O(1)."""
        _check_request(size, align)
        with self._lock:
            block = self._next
            self._next = block + 1
            self._live.add(block)
            self.events.append(TraceEvent("a", block, size, align))
            return block

    def free(self, block: int) -> None:
        """Record a free. Raises: WorkloadError: ``block`` is not live. Complexity: O(1)."""
        with self._lock:
            if block not in self._live:
                raise WorkloadError(f"free of block {block!r}, which is not live")
            self._live.remove(block)
            self.events.append(TraceEvent("f", block))

    def realloc(self, block: int, size: int, align: int | None = None) -> None:
        """Record a realloc. Raises: WorkloadError: ``block`` is not live. Complexity: O(1)."""
        _check_request(size, align)
        with self._lock:
            if block not in self._live:
                raise WorkloadError(f"realloc of block {block!r}, which is not live")
            self.events.append(TraceEvent("r", block, size, align))


def _check_request(size: int, align: int | None) -> None:
    if type(size) is not int or size <= 0:
        raise WorkloadError(f"a workload asked for {size!r} bytes: sizes are positive ints")
    if align is not None and (type(align) is not int or align <= 0 or align & (align - 1)):
        raise WorkloadError(f"a workload asked for alignment {align!r}: not a power of two")


def record_workload(workload: Workload, ops: int, seed: int) -> list[TraceEvent]:
    """Run ``workload`` against a :class:`TraceRecorder` and return its events.

    Write them with :func:`write_trace`. Complexity: that of the workload, O(1) per call.
    """
    recorder = TraceRecorder()
    workload.run(recorder, ops, seed)
    return recorder.events


class TraceWorkload(Workload):
    """Replays a checked sequence of events (from :func:`read_trace` or a capture).

    ``ops`` and ``seed`` are ignored: the trace is the whole program.
    """

    name = "trace"
    description = "replay an allocation trace"

    def __init__(self, events: Sequence[TraceEvent], label: str = "trace") -> None:
        self.events = events
        self._label = label

    @property
    def label(self) -> str:
        """The trace's name (its file name, for the CLI)."""
        return self._label

    def run(self, heap: WorkloadHeap, ops: int, seed: int) -> None:
        """Issue every event in order. Complexity: O(events)."""
        blocks: dict[int, int] = {}  # trace id -> heap block id
        alloc, free, realloc = heap.alloc, heap.free, heap.realloc
        for op, block, size, align in self.events:
            if op == "a":
                blocks[block] = alloc(size, align)
            elif op == "f":
                free(blocks.pop(block))
            else:
                realloc(blocks[block], size, align)


# --- memray captures --------------------------------------------------------------------------


def is_memray_capture(path: StrPath) -> bool:
    """True when ``path`` starts like a memray capture (compressed or not). Complexity: O(1)."""
    with open(path, "rb") as file:
        head = file.read(len(_MEMRAY_MAGIC))
    return head.startswith(_LZ4_MAGIC) or head == _MEMRAY_MAGIC


@dataclass
class CaptureSummary:
    """What :func:`read_memray_capture` made of a capture: every record is used or skipped."""

    records: int = 0
    """Allocation records read (frees included)."""
    family: str = ""
    """``"python"`` or ``"native"``: the allocator family kept."""
    used: int = 0
    """Records that became (or joined) an event."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Records skipped, by reason (see the module docstring)."""
    implied_frees: int = 0
    """Frees added for allocations at a still-live address."""

    @property
    def skipped_total(self) -> int:
        """Every skipped record."""
        return sum(self.skipped.values())

    def skip(self, reason: str) -> None:
        """Count one skipped record."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


@dataclass
class Capture:
    """The events of a capture and the summary of the conversion."""

    events: list[TraceEvent]
    summary: CaptureSummary


_PYTHON_FAMILY: Final = frozenset({"PYMALLOC_MALLOC", "PYMALLOC_CALLOC", "PYMALLOC_REALLOC"})
_NATIVE_FAMILY: Final = frozenset({
    "MALLOC", "CALLOC", "REALLOC", "POSIX_MEMALIGN", "ALIGNED_ALLOC", "MEMALIGN", "VALLOC",
    "PVALLOC",
})


def read_memray_capture(
    path: StrPath, *, allocators: Family = "auto", max_size: int = 1024
) -> Capture:
    """Turn a memray capture into checked events (rules in the module docstring).

    Args:
        allocators: ``"python"``, ``"native"``, or ``"auto"``: python when the capture was
            recorded with ``--trace-python-allocators``, native otherwise.
        max_size: the largest allocation kept (default 1024, the largest default class).

    Raises:
        TraceError: the file is not a memray capture, or an aggregated one (``--aggregate``)
            that has no per-allocation records.
        ValueError: ``allocators`` or ``max_size`` is invalid.
        ImportError: memray is not installed (it comes with ``pyslab-alloc[cli]``).

    Complexity: O(records); one dict entry per live kept address.
    """
    if allocators not in ("auto", "python", "native"):
        raise ValueError(f"allocators must be 'auto', 'python' or 'native', not {allocators!r}")
    if type(max_size) is not int or max_size <= 0:
        raise ValueError(f"max_size must be a positive int, not {max_size!r}")
    try:
        import memray
    except ImportError as exc:  # pragma: no cover - memray is in the cli and dev extras
        raise ImportError(
            "reading memray captures needs memray: pip install 'pyslab-alloc[cli]'"
        ) from exc
    source = os.fspath(path)
    if not Path(source).is_file():
        raise FileNotFoundError(f"no such capture: {source!r}")
    try:
        reader = memray.FileReader(source)
    except OSError as exc:
        raise TraceError(source, 0, f"not a memray capture ({exc})") from None
    try:
        if reader.metadata.file_format == memray.FileFormat.AGGREGATED_ALLOCATIONS:
            raise TraceError(
                source, 0, "an aggregated capture (memray run --aggregate) has no per-allocation "
                "records: record it again without --aggregate",
            )
        if allocators == "auto":
            allocators = "python" if reader.metadata.trace_python_allocators else "native"
        return _convert(reader.get_allocation_records(), allocators, max_size)
    finally:
        reader.close()


def _convert(records: Iterable[AllocationRecord], family: str, max_size: int) -> Capture:
    import memray

    names = {int(kind): kind.name for kind in memray.AllocatorType}
    allocating = _PYTHON_FAMILY if family == "python" else _NATIVE_FAMILY
    freeing = "PYMALLOC_FREE" if family == "python" else "FREE"
    reallocating = "PYMALLOC_REALLOC" if family == "python" else "REALLOC"
    summary = CaptureSummary(family=family)
    events: list[TraceEvent] = []
    ids: dict[int, int] = {}  # live kept address -> block id
    next_id = 0
    # tid -> index in ``events`` of the free that thread's previous record emitted: memray
    # writes a realloc as that free followed by the realloc record, on the same thread.
    pending_free: dict[int, int] = {}
    for record in records:
        summary.records += 1
        previous_free = pending_free.pop(record.tid, None)
        kind = names.get(record.allocator, "?")
        if kind == freeing:
            block = ids.pop(record.address, None)
            if block is None:
                summary.skip("unknown-address")
                continue
            pending_free[record.tid] = len(events)
            events.append(TraceEvent("f", block))
            summary.used += 1
            continue
        if kind not in allocating:
            summary.skip("other-allocator")
            continue
        if record.size == 0:
            summary.skip("zero-size")
            continue
        if record.size > max_size:
            summary.skip("too-large")
            continue
        stale = ids.pop(record.address, None)
        if stale is not None:
            events.append(TraceEvent("f", stale))
            summary.implied_frees += 1
        if kind == reallocating and previous_free is not None:
            block = events[previous_free].block
            events[previous_free] = TraceEvent("r", block, record.size)
        else:
            block = next_id
            next_id += 1
            events.append(TraceEvent("a", block, record.size))
        ids[record.address] = block
        summary.used += 1
    return Capture(events, summary)
