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
  a decimal int from 0 to :data:`MAX_ID` (2**63 - 1) naming a block; it may be reused once its
  block is freed. ``SIZE`` is an int from 1 to :data:`MAX_SIZE` (2**32 bytes, 4 GiB); ``ALIGN``
  a power of two up to :data:`MAX_ALIGNMENT` (2**20, 1 MiB; default: the allocator's, the
  pointer size).
- Numbers are written with the ASCII digits ``0``-``9`` only (no sign, no underscore, no other
  script's digits), and fields are separated by ASCII blanks (spaces, tabs).
- The last line is ``end COUNT``, COUNT being the number of events: a file cut short has no
  such line and is rejected as truncated.
- Blocks still live at ``end`` are allowed: they are part of the final state a replay measures.

Every violation (unknown event, malformed number, a number beyond its limit, free or realloc
of a block that is not live, allocation of a live id, missing or wrong ``end``) raises
:class:`TraceError` naming the file, the line and the value: nothing in a plain trace is
skipped.

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
sequence in the order memray wrote them.

A cut or damaged capture is refused, not read as a shorter program. memray's ``FileReader``
reads a capture up to the first record it cannot decode and says nothing (it even replaces
the record count of the header with the number it could read), so pyslab checks the count
itself: memray rewrites the header when the recording ends, with the number of records
written, and a capture whose readable records are not that number raises
:class:`PartialCaptureError` (with ``accept_partial=True``, the records that can be read are
used and :attr:`CaptureSummary.announced` keeps the header's number). A capture whose header
was never finished (the recording was killed) is partial the same way. The check reads the
header's layout of memray's file format versions 11 to 13; for another version it is skipped,
with a :class:`~pyslab.PyslabWarning`. memray writes no checksum: a damaged byte that still
decodes as a record goes unnoticed. No more records are read than memray's own first pass
over the file found readable, but memray's native reader can still crash on a damaged capture
(a segmentation fault on one flipped byte, among records it counts as readable):
:func:`read_memray_capture_isolated` reads in a child process and turns such a crash into a
:class:`TraceError`, as the ``pyslab`` command does.

Compact traces
--------------
A capture is read once, straight into a :class:`CompactTrace`: parallel arrays of op codes,
dense block ids and sizes, about 17 bytes an event, with no Python object kept per record.
Replays run from those arrays (:func:`pyslab.lab.replay_trace`), several configurations from
one reading. :class:`CaptureReader` reads in a child process and hands the events over as
they are converted, so that a replay can start before the reading ends.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import os
import pickle
import re
import signal
import string
import subprocess
import sys
import tempfile
import threading
import warnings
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from operator import attrgetter
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final, Literal, NamedTuple, TypeAlias

from pyslab.errors import PyslabError, PyslabWarning

from .workload import Workload, WorkloadError, WorkloadHeap

if TYPE_CHECKING:
    from types import ModuleType

__all__ = [
    "MAGIC",
    "MAX_ALIGNMENT",
    "MAX_ID",
    "MAX_SIZE",
    "OP_ALLOC",
    "OP_FREE",
    "OP_REALLOC",
    "Capture",
    "CaptureReader",
    "CaptureSummary",
    "CompactTrace",
    "PartialCaptureError",
    "TraceError",
    "TraceEvent",
    "TraceRecorder",
    "TraceWorkload",
    "format_trace",
    "is_memray_capture",
    "parse_trace",
    "read_memray_capture",
    "read_memray_capture_isolated",
    "read_trace",
    "record_workload",
    "write_trace",
]

MAGIC: Final = "pyslab-trace 1"
"""The first line of every plain trace."""

MAX_SIZE: Final = 1 << 32
"""The largest block a trace may ask for: 4 GiB, four million times the largest size class.
Larger requests say nothing about slabs, and libc would refuse them on most machines."""

MAX_ALIGNMENT: Final = 1 << 20
"""The largest alignment a trace may ask for: 1 MiB, beyond any page, huge page or slab."""

MAX_ID: Final = (1 << 63) - 1
"""The largest block id (and ``end`` count) of a plain trace."""

_LZ4_MAGIC: Final = b"\x04\x22\x4d\x18"  # memray compresses captures with LZ4 by default
_MEMRAY_MAGIC: Final = b"memray"  # ... and starts uncompressed ones (--no-compress) with this

StrPath: TypeAlias = "str | os.PathLike[str]"
Family: TypeAlias = Literal["auto", "python", "native"]
Progress: TypeAlias = "Callable[[int, int | None], None]"
"""What reading a capture reports as it goes: (records read so far, records in all; None
when the capture does not say)."""


class TraceError(PyslabError, ValueError):
    """A trace cannot be read: the message names the file and line and what is wrong there.

    ``source`` is the file (or a label), ``line`` the 1-based line number (0: the whole file),
    ``reason`` the message without them.
    """

    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source}:{line}: {message}" if line else f"{source}: {message}")
        self.source = source
        self.line = line
        self.reason = message

    def __reduce__(self) -> tuple[type[TraceError], tuple[object, ...]]:
        return type(self), (self.source, self.line, self.reason)


class PartialCaptureError(TraceError):
    """A memray capture holds fewer (or more) readable records than its header announces: it
    was cut short, damaged, or its recording never finished.

    ``records`` is the number of records that can be read; ``announced`` the number the header
    gives (0: the header was never finished).
    """

    def __init__(self, source: str, message: str, records: int, announced: int) -> None:
        super().__init__(source, 0, message)
        self.records = records
        self.announced = announced

    def __reduce__(self) -> tuple[type[TraceError], tuple[object, ...]]:
        return type(self), (self.source, self.reason, self.records, self.announced)


class TraceEvent(NamedTuple):
    """One event: ``op`` is ``"a"`` (allocate), ``"f"`` (free) or ``"r"`` (reallocate)."""

    op: Literal["a", "f", "r"]
    block: int
    size: int = 0
    """Bytes requested (0 for a free)."""
    align: int | None = None
    """Alignment requested; None: the allocator's default."""


# --- compact traces ---------------------------------------------------------------------------

OP_ALLOC: Final = 0
"""The op code of an allocation in :attr:`CompactTrace.ops`."""
OP_FREE: Final = 1
"""The op code of a free."""
OP_REALLOC: Final = 2
"""The op code of a realloc."""
_OP_LETTERS: Final = ("a", "f", "r")


@dataclass(eq=False)
class CompactTrace:
    """A checked trace as parallel arrays, one entry per event: what replays run from.

    About 17 bytes an event (a :class:`TraceEvent` list takes about 100), and pickled as raw
    bytes, so that a capture read in a child process comes back at the speed of a copy.

    Build one with :meth:`from_events`, or read a capture (:func:`read_memray_capture`);
    iterating gives the events back as :class:`TraceEvent` (:meth:`events` as a list).
    """

    ops: array[int]
    """``array('B')``: :data:`OP_ALLOC`, :data:`OP_FREE` or :data:`OP_REALLOC`, per event."""
    blocks: array[int]
    """``array('q')``: the block of each event as a dense id: block ``k`` is the one the
    ``k``-th allocation made, so ids run from 0 to ``block_count - 1`` and none is reused (a
    replay keeps each block's address in a list indexed by it)."""
    sizes: array[int]
    """``array('q')``: the bytes an allocation or a realloc asks for; for a free, minus the
    size of the block freed (its latest request). The sum of a stretch of ``sizes``, less the
    sizes the reallocs in it replaced (:attr:`realloc_old`), is how much the bytes requested by
    live blocks changed over it."""
    block_count: int
    """Allocations in the trace: the number of dense ids."""
    realloc_at: array[int] = field(default_factory=lambda: array("q"))
    """``array('q')``: the index of each realloc, ascending."""
    realloc_old: array[int] = field(default_factory=lambda: array("q"))
    """``array('q')``: the size of the block before each realloc of :attr:`realloc_at`."""
    final_blocks: array[int] = field(default_factory=lambda: array("q"))
    """``array('q')``: the blocks live after the last event."""
    final_sizes: array[int] = field(default_factory=lambda: array("q"))
    """``array('q')``: the sizes of :attr:`final_blocks`."""
    aligns: array[int] | None = None
    """None when no event asks for an alignment; else ``array('q')``, per event, the
    alignment asked for (0: the allocator's default)."""
    labels: array[int] | None = None
    """None when each block's id in the source is its dense id (memray captures); else
    ``array('q')``, per dense id, the block's id in the source trace (a plain trace may reuse
    an id once its block is freed)."""

    @classmethod
    def from_events(cls, events: Iterable[TraceEvent]) -> CompactTrace:
        """The compact form of ``events``.

        Raises:
            WorkloadError: an event frees or reallocates a block that is not live, allocates
                a live one, or is not ``a``, ``f`` or ``r`` (:func:`parse_trace` refuses such
                traces, naming the line).

        Complexity: O(events); one dict entry per live block.
        """
        ops, blocks, sizes = array("B"), array("q"), array("q")
        aligns, labels = array("q"), array("q")
        realloc_at, realloc_old = array("q"), array("q")
        live: dict[int, int] = {}  # source id -> dense id
        size_of: list[int] = []  # dense id -> latest size
        aligned = False
        for index, (op, block, size, align) in enumerate(events):
            if op == "a":
                if block in live:
                    raise WorkloadError(
                        f"event {index + 1:,} allocates block {block}, which is live"
                    )
                dense = len(size_of)
                live[block] = dense
                size_of.append(size)
                labels.append(block)
                ops.append(OP_ALLOC)
                sizes.append(size)
            elif op in ("f", "r"):
                found = live.get(block)
                if found is None:
                    what = "frees" if op == "f" else "reallocates"
                    raise WorkloadError(
                        f"event {index + 1:,} {what} block {block}, which is not live"
                    )
                dense = found
                if op == "f":
                    del live[block]
                    ops.append(OP_FREE)
                    sizes.append(-size_of[dense])
                else:
                    realloc_at.append(index)
                    realloc_old.append(size_of[dense])
                    size_of[dense] = size
                    ops.append(OP_REALLOC)
                    sizes.append(size)
            else:
                raise WorkloadError(f"event {index + 1:,} is {op!r}: not 'a', 'f' or 'r'")
            blocks.append(dense)
            if align is None:
                aligns.append(0)
            else:
                aligns.append(align)
                aligned = True
        count = len(size_of)
        return cls(
            ops, blocks, sizes, count, realloc_at, realloc_old,
            array("q", live.values()), array("q", (size_of[b] for b in live.values())),
            aligns if aligned else None,
            None if labels == array("q", range(count)) else labels,
        )

    def __len__(self) -> int:
        return len(self.ops)

    def __iter__(self) -> Iterator[TraceEvent]:
        """The events, as :class:`TraceEvent`, with the block ids of the source."""
        for index in range(len(self.ops)):
            yield self.event(index)

    def events(self) -> list[TraceEvent]:
        """Every event, as a list. Complexity: O(events), about 100 bytes an event."""
        return list(self)

    def event(self, index: int) -> TraceEvent:
        """The event at ``index`` (0-based), with its block id in the source. Raises:
        IndexError."""
        op = self.ops[index]
        block = self.blocks[index]
        align = 0 if self.aligns is None else self.aligns[index]
        return TraceEvent(
            _OP_LETTERS[op],
            block if self.labels is None else self.labels[block],
            0 if op == OP_FREE else self.sizes[index],
            align or None,
        )

    def describe(self, index: int) -> str:
        """The event at ``index`` as the plain format writes it, ``a 7 24`` (a free: ``f 7 0``)."""
        op, block, size, align = self.event(index)
        return f"{op} {block} {size}" + ("" if align is None else f" {align}")

    @property
    def allocs(self) -> int:
        """Allocation events. Complexity: O(events), at the speed of a memory scan."""
        return self.ops.count(OP_ALLOC)

    @property
    def frees(self) -> int:
        """Free events."""
        return self.ops.count(OP_FREE)

    @property
    def reallocs(self) -> int:
        """Realloc events."""
        return len(self.realloc_at)

    def requested_bytes(self, largest: int, points: Sequence[int]) -> list[int]:
        """The bytes requested by live blocks of at most ``largest`` bytes, after each event
        count in ``points`` (ascending, each at most ``len(self)``).

        A series of the trace alone, the same under every configuration: a replay takes its
        samples from here instead of keeping the count on every call.

        Complexity: O(events) at the speed of ``sum`` over an array when no size is above
        ``largest``, a Python loop over the events otherwise.
        """
        sizes = self.sizes
        if max(sizes, default=0) <= largest and max(self.realloc_old, default=0) <= largest:
            replaced = list(itertools.accumulate(self.realloc_old, initial=0))
            out: list[int] = []
            total = low = 0
            for point in points:
                total += sum(sizes[low:point])
                low = point
                out.append(total - replaced[bisect.bisect_left(self.realloc_at, point)])
            return out
        return self._requested_slowly(largest, points)

    def _requested_slowly(self, largest: int, points: Sequence[int]) -> list[int]:
        old = dict(zip(self.realloc_at, self.realloc_old, strict=True))
        ops, sizes = self.ops, self.sizes
        out: list[int] = []
        total = low = 0
        for point in points:
            for index in range(low, point):
                size = sizes[index]
                op = ops[index]
                if op == OP_ALLOC:
                    if size <= largest:
                        total += size
                elif op == OP_FREE:
                    if -size <= largest:
                        total += size
                else:
                    before = old[index]
                    total += (size if size <= largest else 0) - (
                        before if before <= largest else 0
                    )
            low = point
            out.append(total)
        return out


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
            line = raw.strip(string.whitespace)
            if line != MAGIC:
                raise TraceError(
                    source, 1, f"not a pyslab trace: expected {MAGIC!r}, found {_shown(line)}"
                )
            continue
        line = raw.split("#", 1)[0].strip(string.whitespace)
        if not line:
            continue
        if ended:
            raise TraceError(source, number, f"event after the 'end' line {ended}")
        fields = _BLANKS.split(line)
        op = fields[0]
        if op == "end":
            count = _number(fields, 1, 2, source, number, "end COUNT", "event count", MAX_ID)
            if count != len(events):
                raise TraceError(
                    source, number, f"'end {count}' but the trace has {len(events)} events"
                )
            ended = number
            continue
        if op == "a":
            block = _number(fields, 1, (3, 4), source, number, "a ID SIZE [ALIGN]", "block id",
                            MAX_ID)
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
            block = _number(fields, 1, 2 if op == "f" else (3, 4), source, number, usage,
                            "block id", MAX_ID)
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
            raise TraceError(
                source, number, f"unknown event {_shown(op)} (expected a, f, r or end)"
            )
    if number == 0:
        raise TraceError(source, 0, "empty file: not a pyslab trace")
    if not ended:
        raise TraceError(
            source, number, f"truncated: no 'end' line after {len(events)} events"
        )
    return events


_BLANKS: Final = re.compile(f"[{re.escape(string.whitespace)}]+")
"""What separates the fields of a line: ASCII blanks only (``str.split`` takes any Unicode
space)."""

_DIGITS: Final = frozenset(string.digits)


def _shown(text: str, limit: int = 40) -> str:
    """``repr(text)``, or its start and its length when it is longer than ``limit``."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


def _number(
    fields: list[str], index: int, arity: int | tuple[int, int], source: str, line: int,
    usage: str, what: str, maximum: int,
) -> int:
    """The non-negative int ``fields[index]``, at most ``maximum``, in ASCII digits only.

    ``str.isdigit`` accepts superscripts (which ``int`` refuses) and ``int`` accepts every
    script's digits and refuses more than 4,300 of them: both are bypassed, so that every bad
    number gets the same kind of message.

    Raises:
        TraceError: the line has the wrong number of fields, or the field is not a number of
            at most ``maximum`` (named as ``what``).
    """
    low, high = (arity, arity) if isinstance(arity, int) else arity
    if not low <= len(fields) <= high:
        raise TraceError(source, line, f"expected '{usage}', found {_shown(' '.join(fields))}")
    text = fields[index]
    if not _DIGITS.issuperset(text):
        hint = (
            " (numbers are written in ASCII digits 0-9)"
            if any(not c.isascii() and (c.isdigit() or c.isnumeric()) for c in text) else ""
        )
        raise TraceError(
            source, line, f"expected a non-negative integer, found {_shown(text)}{hint}"
        )
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(maximum)) or int(digits) > maximum:
        raise TraceError(
            source, line, f"{what} {_shown(text)} is larger than the largest a trace may hold, "
            f"{maximum:,}",
        )
    return int(digits)


def _size_align(fields: list[str], source: str, line: int) -> tuple[int, int | None]:
    size = _number(fields, 2, len(fields), source, line, "SIZE", "size", MAX_SIZE)
    if size == 0:
        raise TraceError(source, line, "size must be positive, not 0")
    if len(fields) == 3:
        return size, None
    align = _number(fields, 3, len(fields), source, line, "ALIGN", "alignment", MAX_ALIGNMENT)
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
    """Refuse what a plain trace cannot hold. Raises: WorkloadError naming the value."""
    if type(size) is not int or size <= 0:
        raise WorkloadError(f"a workload asked for {size!r} bytes: sizes are positive ints")
    if size > MAX_SIZE:
        raise WorkloadError(
            f"a workload asked for {size:,} bytes: a trace holds at most {MAX_SIZE:,}"
        )
    if align is not None and (type(align) is not int or align <= 0 or align & (align - 1)):
        raise WorkloadError(f"a workload asked for alignment {align!r}: not a power of two")
    if align is not None and align > MAX_ALIGNMENT:
        raise WorkloadError(
            f"a workload asked for alignment {align:,}: a trace holds at most {MAX_ALIGNMENT:,}"
        )


def record_workload(workload: Workload, ops: int, seed: int) -> list[TraceEvent]:
    """Run ``workload`` against a :class:`TraceRecorder` and return its events.

    Write them with :func:`write_trace`. Complexity: that of the workload, O(1) per call.
    """
    recorder = TraceRecorder()
    workload.run(recorder, ops, seed)
    return recorder.events


class TraceWorkload(Workload):
    """Replays a checked trace: events (from :func:`read_trace`) or a :class:`CompactTrace`
    (from a capture), kept in the compact form.

    ``ops`` and ``seed`` are ignored: the trace is the whole program.
    :func:`~pyslab.lab.run_workload` replays it with a loop of its own over the arrays
    (:func:`~pyslab.lab.harness.replay_trace`); :meth:`run` drives any other heap.

    Raises (on construction): WorkloadError: ``events`` is not a valid trace.
    """

    name = "trace"
    description = "replay an allocation trace"

    def __init__(
        self, events: Iterable[TraceEvent] | CompactTrace, label: str = "trace"
    ) -> None:
        self.trace: Final = (
            events if isinstance(events, CompactTrace) else CompactTrace.from_events(events)
        )
        self._label = label

    @property
    def label(self) -> str:
        """The trace's name (its file name, for the CLI)."""
        return self._label

    @property
    def events(self) -> list[TraceEvent]:
        """The events, as a list (built on each access: O(events))."""
        return self.trace.events()

    def cannot_serve(self, index: int, error: BaseException) -> MemoryError:
        """The error for the event at ``index`` (0-based) the heap could not serve: it names
        the trace, the event (1-based) and its request."""
        return MemoryError(
            f"{self._label}: event {index + 1:,} ({self.trace.describe(index)!r}) cannot be "
            f"served: {error or 'out of memory'}"
        )

    def run(self, heap: WorkloadHeap, ops: int, seed: int) -> None:
        """Issue every event in order.

        Raises:
            MemoryError: the heap could not serve an event; the message names the trace, the
                event (1-based) and its request.

        Complexity: O(events).
        """
        trace = self.trace
        handles = [0] * trace.block_count  # dense id -> heap block id
        alloc, free, realloc = heap.alloc, heap.free, heap.realloc
        aligns = trace.aligns
        index = 0
        try:
            for index, (op, block, size) in enumerate(
                zip(trace.ops, trace.blocks, trace.sizes, strict=True)
            ):
                align = None if aligns is None else aligns[index] or None
                if op == OP_ALLOC:
                    handles[block] = alloc(size, align)
                elif op == OP_FREE:
                    free(handles[block])
                else:
                    realloc(handles[block], size, align)
        except MemoryError as error:
            raise self.cannot_serve(index, error) from None


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
    announced: int | None = None
    """Records the capture's header announces (0: its recording never finished); None when
    the header could not be checked. Differs from ``records`` only in a partial capture read
    with ``accept_partial=True``."""

    @property
    def partial(self) -> bool:
        """True when fewer (or more) records were read than the header announces."""
        return self.announced is not None and self.announced != self.records

    @property
    def skipped_total(self) -> int:
        """Every skipped record."""
        return sum(self.skipped.values())

    def skip(self, reason: str) -> None:
        """Count one skipped record."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


@dataclass
class Capture:
    """What a capture became: its events as a :class:`CompactTrace`, and the summary of the
    conversion."""

    trace: CompactTrace
    summary: CaptureSummary

    @cached_property
    def events(self) -> list[TraceEvent]:
        """The events as a list of :class:`TraceEvent` (built on first access: about 100
        bytes an event; replays and conversions use :attr:`trace`)."""
        return self.trace.events()


_PYTHON_FAMILY: Final = frozenset({"PYMALLOC_MALLOC", "PYMALLOC_CALLOC", "PYMALLOC_REALLOC"})
_NATIVE_FAMILY: Final = frozenset({
    "MALLOC", "CALLOC", "REALLOC", "POSIX_MEMALIGN", "ALIGNED_ALLOC", "MEMALIGN", "VALLOC",
    "PVALLOC",
})


def read_memray_capture(
    path: StrPath, *, allocators: Family = "auto", max_size: int = 1024,
    accept_partial: bool = False, progress: Progress | None = None,
) -> Capture:
    """Turn a memray capture into checked events (rules in the module docstring), read once
    with memray's ``FileReader`` straight into a :class:`CompactTrace`.

    Args:
        allocators: ``"python"``, ``"native"``, or ``"auto"``: python when the capture was
            recorded with ``--trace-python-allocators``, native otherwise.
        max_size: the largest allocation kept (default 1024, the largest default class; at
            most :data:`MAX_SIZE`).
        accept_partial: read a capture that is cut short, damaged or unfinished up to the
            last record memray can read, instead of raising :class:`PartialCaptureError`
            (:attr:`CaptureSummary.announced` then tells how many records it should hold).
        progress: called with (records read, records to read) once memray's first pass has
            counted them, then every 65,536 records and at the end.

    Raises:
        PartialCaptureError: the capture holds another number of readable records than its
            header announces (cut short, damaged, or never finished), and ``accept_partial``
            is false. The message gives both numbers.
        TraceError: the file is not a memray capture, memray cannot read it at all (cut or
            damaged in its first bytes), or it is an aggregated one (``--aggregate``) that has
            no per-allocation records.
        ValueError: ``allocators`` or ``max_size`` is invalid.
        ImportError: memray is not installed (it comes with ``pyslab-alloc[cli]``).
        OSError: the file cannot be read.

    Warns:
        PyslabWarning: the header is of a memray file format version whose layout pyslab does
            not know, so the capture's completeness cannot be checked.

    Complexity: O(records), about 17 bytes an event; one dict entry per live kept address.
    memray's reader makes two passes (its ``FileReader`` counts the records first), the
    second one yielding a Python object per record: that pass is most of the time.
    """
    return _read_memray_capture(path, allocators, max_size, accept_partial, progress, None)


Sink: TypeAlias = "Callable[[array[int], array[int], array[int], int, int], None]"
"""Where a reading hands on events as soon as they are final: ``(ops, blocks, sizes, start,
end)``, the events ``start`` to ``end`` (excluded) of the arrays being filled."""


def _read_memray_capture(
    path: StrPath, allocators: Family, max_size: int, accept_partial: bool,
    progress: Progress | None, sink: Sink | None,
) -> Capture:
    """:func:`read_memray_capture`, handing the events to ``sink`` as they become final."""
    if allocators not in ("auto", "python", "native"):
        raise ValueError(f"allocators must be 'auto', 'python' or 'native', not {allocators!r}")
    if type(max_size) is not int or not 0 < max_size <= MAX_SIZE:
        raise ValueError(
            f"max_size must be a positive int of at most {MAX_SIZE:,}, not {max_size!r}"
        )
    try:
        import memray
    except ImportError as exc:  # pragma: no cover - memray is in the cli and dev extras
        raise ImportError(
            "reading memray captures needs memray: pip install 'pyslab-alloc[cli]'"
        ) from exc
    source = os.fspath(path)
    if not Path(source).is_file():
        raise FileNotFoundError(f"no such capture: {source!r}")
    version, announced = _capture_header(source)
    # memray logs each record it cannot decode on stderr; the error raised here says it once.
    set_log_level = getattr(memray, "set_log_level", lambda level: None)
    set_log_level(logging.CRITICAL)
    try:
        return _read_capture(
            memray, source, allocators, max_size, accept_partial, version, announced, progress,
            sink,
        )
    finally:
        set_log_level(logging.WARNING)  # memray's default


def read_memray_capture_isolated(
    path: StrPath, *, allocators: Family = "auto", max_size: int = 1024,
    accept_partial: bool = False, progress: Progress | None = None,
) -> Capture:
    """:func:`read_memray_capture` in a child process, so that a damaged capture that crashes
    memray's native reader (a segmentation fault or an abort, seen on single flipped bytes,
    even among records memray counts as readable) becomes a :class:`TraceError`, not the end
    of this process. The arrays come back as raw bytes (:class:`CaptureReader`).

    Args and Raises: as :func:`read_memray_capture` (its warnings are warned again here), and
        TraceError when the child dies of a signal or fails in another way.

    Complexity: that of :func:`read_memray_capture`, plus starting Python and copying the
    arrays.
    """
    with CaptureReader(
        path, allocators=allocators, max_size=max_size, accept_partial=accept_partial,
        progress=progress,
    ) as reader:
        return reader.finish()


class CaptureReader:
    """A memray capture being read in a child process (see
    :func:`read_memray_capture_isolated`), whose events can be used while it reads.

    The child converts the capture as :func:`read_memray_capture` does and, after each
    65,536 records, appends the events that are final to a file, then says so on a pipe;
    :meth:`more` waits for events and adds them to :attr:`trace`, whose ``ops``, ``blocks``
    and ``sizes`` grow while the rest of it stays empty until :meth:`finish`. So a replay can
    run on one core while the capture is read on another
    (:func:`~pyslab.lab.harness.replay_trace` with ``arriving=reader.more``).

    Use it as a context manager: leaving it ends the child if it still runs.

    Raises (on construction): FileNotFoundError: no such capture; OSError: the child cannot
        be started.
    """

    def __init__(
        self, path: StrPath, *, allocators: Family = "auto", max_size: int = 1024,
        accept_partial: bool = False, progress: Progress | None = None,
    ) -> None:
        self.source: Final = os.fspath(path)
        if not Path(self.source).is_file():
            raise FileNotFoundError(f"no such capture: {self.source!r}")
        self.trace: Final = CompactTrace(array("B"), array("q"), array("q"), 0)
        """The events arrived so far; complete once :meth:`finish` returns."""
        self._progress = progress
        self._directory = tempfile.TemporaryDirectory(prefix="pyslab-capture-")
        folder = Path(self._directory.name)
        self._result = folder / "capture.pickle"
        self._errors = open(folder / "stderr", "w+b")  # noqa: SIM115 (closed in close())
        data = folder / "events"
        data.touch()
        self._data = open(data, "rb")  # noqa: SIM115 (closed in close())
        self._announced = 0  # events the child has written to the data file
        self._ended = False
        self._capture: Capture | None = None
        root = str(Path(__file__).resolve().parent.parent.parent)  # the pyslab being run
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [root, *filter(None, [os.environ.get("PYTHONPATH")])]
        )}
        code = "import sys; from pyslab.lab.trace import _read_in_child; _read_in_child(sys.argv)"
        # stderr goes to a file: a pipe left unread could fill and stop the child.
        self._child = subprocess.Popen(
            [sys.executable, "-c", code, self.source, str(allocators), repr(max_size),
             "1" if accept_partial else "0", str(self._result), str(data)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._errors, env=env,
        )

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def more(self, wanted: int) -> int:
        """Wait until the trace holds at least ``wanted`` events or the reading has ended, and
        return how many it holds. Fewer than ``wanted``: the reading has ended, and the trace
        is complete (:meth:`finish` has run).

        Raises: as :meth:`finish`, once the reading has ended.
        """
        while len(self.trace) < wanted and not self._ended:
            self._next_message()
        if len(self.trace) < wanted:
            self.finish()
        return len(self.trace)

    def finish(self) -> Capture:
        """Wait for the end of the reading and return the capture (its trace is
        :attr:`trace`, now complete).

        Raises: as :func:`read_memray_capture_isolated`.
        """
        if self._capture is not None:
            return self._capture
        while not self._ended:
            self._next_message()
        returncode = self._child.wait()
        self._errors.seek(0)
        stderr = self._errors.read()
        source = self.source
        if returncode < 0:
            try:
                name = signal.Signals(-returncode).name
            except ValueError:
                name = f"signal {-returncode}"
            raise TraceError(
                source, 0, f"damaged memray capture: memray's reader crashed on it ({name})"
            )
        if returncode != 0 or not self._result.is_file():
            lines = stderr.decode(errors="replace").strip().splitlines() or ["no message"]
            raise TraceError(source, 0, f"the capture cannot be read: {lines[-1][:300]}")
        kind, value, warned = pickle.loads(self._result.read_bytes())
        for message in warned:
            warnings.warn(message, PyslabWarning, stacklevel=3)
        if kind == "error":
            raise value
        capture: Capture = value
        rest = capture.trace
        trace = self.trace
        trace.block_count = rest.block_count
        trace.realloc_at, trace.realloc_old = rest.realloc_at, rest.realloc_old
        trace.final_blocks, trace.final_sizes = rest.final_blocks, rest.final_sizes
        self._capture = Capture(trace, capture.summary)
        return self._capture

    def close(self) -> None:
        """End the child if it still runs, and remove its files."""
        if self._child.poll() is None:
            self._child.kill()
            self._child.wait()
        if self._child.stdout is not None:
            self._child.stdout.close()
        self._data.close()
        self._errors.close()
        self._directory.cleanup()

    def _next_message(self) -> None:
        """Read one line from the child: ``P DONE TOTAL`` (progress: records read, and to
        read) or ``E COUNT`` (the data file holds COUNT events); the end of the pipe ends the
        reading."""
        assert self._child.stdout is not None
        line = self._child.stdout.readline()
        if not line:
            self._ended = True
            return
        kind, _, rest = line.decode("ascii", "replace").strip().partition(" ")
        if kind == "E" and rest.isdigit():
            self._take(int(rest))
        elif kind == "P" and self._progress is not None:
            done, _, total = rest.partition(" ")
            if done.isdigit():
                self._progress(int(done), int(total) if total.isdigit() else None)

    def _take(self, count: int) -> None:
        """Add the events the data file holds up to ``count`` to :attr:`trace`."""
        new = count - self._announced
        self._announced = count
        trace = self.trace
        trace.ops.fromfile(self._data, new)
        trace.blocks.fromfile(self._data, new)
        trace.sizes.fromfile(self._data, new)


def _read_in_child(argv: list[str]) -> None:
    """The child of :class:`CaptureReader`: ``argv`` is ``[-c, SOURCE, ALLOCATORS, MAX_SIZE,
    ACCEPT_PARTIAL, RESULT, DATA]``. The events go to the file DATA as they become final
    (each stretch as its ops, blocks and sizes, raw), each followed by an ``E COUNT`` line on
    stdout, with ``P DONE TOTAL`` lines for the progress; at the end, the outcome (the capture
    without those three arrays, or the error raised) and the warnings go to the pickle file
    RESULT."""
    _, source, allocators, max_size, accept, result, data = argv
    out = sys.stdout

    def report(done: int, total: int | None) -> None:
        out.write(f"P {done} {'' if total is None else total}\n")
        out.flush()

    with open(data, "wb", buffering=0) as events:

        def sink(
            ops: array[int], blocks: array[int], sizes: array[int], start: int, end: int
        ) -> None:
            for column in (ops, blocks, sizes):
                events.write(memoryview(column)[start:end])
            out.write(f"E {end}\n")
            out.flush()

        outcome: tuple[str, object, list[str]]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                capture = _read_memray_capture(
                    source, allocators, int(max_size),  # type: ignore[arg-type]
                    accept == "1", report, sink,
                )
                trace = capture.trace
                # The events went through DATA: the result carries the rest.
                trace.ops, trace.blocks, trace.sizes = array("B"), array("q"), array("q")
                outcome = ("capture", capture, [])
            except (TraceError, ValueError, OSError, ImportError) as error:
                outcome = ("error", error, [])
        outcome[2].extend(
            str(w.message) for w in caught if issubclass(w.category, PyslabWarning)
        )
    Path(result).write_bytes(pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL))


def _read_capture(
    memray: ModuleType, source: str, allocators: Family, max_size: int, accept_partial: bool,
    version: int | None, announced: int | None, progress: Progress | None, sink: Sink | None,
) -> Capture:
    """:func:`read_memray_capture` once the header is read. Raises: as it does."""
    # memray's reader is native code reading untrusted bytes: whatever it raises (OSError,
    # UnicodeDecodeError, KeyError, ValueError... all seen on damaged captures) means that
    # the file cannot be read, and becomes a TraceError naming the file.
    if progress is not None:
        progress(0, announced or None)  # memray's first pass, which counts the records, runs now
    try:
        reader = memray.FileReader(source)
    except Exception as exc:  # see above
        if announced is not None:
            raise TraceError(
                source, 0, f"truncated or damaged memray capture: none of the {announced:,} "
                f"records its header announces can be read ({_reason(exc)})",
            ) from None
        raise TraceError(source, 0, f"not a memray capture ({_reason(exc)})") from None
    try:
        try:
            metadata = reader.metadata
            aggregated = metadata.file_format == memray.FileFormat.AGGREGATED_ALLOCATIONS
            traced = bool(metadata.trace_python_allocators)
            readable = int(metadata.total_allocations)  # what memray's first pass could read
        except Exception as exc:  # as above
            raise TraceError(
                source, 0, f"damaged memray capture: its header cannot be read ({_reason(exc)})"
            ) from None
        if aggregated:
            raise TraceError(
                source, 0, "an aggregated capture (memray run --aggregate) has no per-allocation "
                "records: record it again without --aggregate",
            )
        if announced is None:
            warnings.warn(
                f"{source}: cannot check that the capture is complete: pyslab does not know "
                f"the header of memray's file format version {version}",
                PyslabWarning, stacklevel=3,
            )
        elif readable != announced and not accept_partial:
            raise _partial(source, readable, announced)
        family = ("python" if traced else "native") if allocators == "auto" else allocators
        # Never past what the first pass read: memray's reader can crash past a damaged record.
        capture = _convert(
            memray, reader.get_allocation_records(), readable, family, max_size, source, progress,
            sink,
        )
    finally:
        reader.close()
    capture.summary.announced = announced
    if announced is not None and capture.summary.records != announced and not accept_partial:
        raise _partial(source, capture.summary.records, announced)
    return capture


def _partial(source: str, records: int, announced: int) -> PartialCaptureError:
    if announced == 0:
        message = (
            f"incomplete memray capture: its recording never finished (was the program "
            f"killed?); {records:,} records can be read"
        )
    elif records < announced:
        message = (
            f"truncated or damaged memray capture: only {records:,} of the {announced:,} "
            "records its header announces can be read"
        )
    else:
        message = (
            f"damaged memray capture: {records:,} records can be read, but its header "
            f"announces {announced:,}"
        )
    return PartialCaptureError(source, message, records, announced)


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


_HEADER_MAGIC: Final = b"memray\0"
_COUNT_OFFSETS: Final = {11: 13, 12: 17, 13: 17}
"""Where the header's record count (a little-endian u64, ``stats.n_allocations``) sits, by
memray file format version: after the magic, the version, the Python version (12 and later),
``native_traces`` and ``file_format``."""
_HEADER_BYTES: Final = max(_COUNT_OFFSETS.values()) + 8


def _capture_header(source: str) -> tuple[int | None, int | None]:
    """(file format version, records announced) from the header of the capture ``source``;
    None for what cannot be read (not a capture, cut in its first bytes, unknown version).

    Raises: OSError: the file cannot be read. Complexity: O(1).
    """
    with open(source, "rb") as file:
        head: bytes | None = file.read(4096)
    if head is not None and head.startswith(_LZ4_MAGIC):
        head = _lz4_start(head, _HEADER_BYTES)
    if head is None or len(head) < 11 or not head.startswith(_HEADER_MAGIC):
        return None, None
    version = int.from_bytes(head[7:11], "little")
    offset = _COUNT_OFFSETS.get(version)
    if offset is None or len(head) < offset + 8:
        return version, None
    return version, int.from_bytes(head[offset:offset + 8], "little")


def _lz4_start(frame: bytes, want: int) -> bytes | None:
    """The first ``want`` bytes of the data an LZ4 frame holds (memray compresses captures so),
    decoded from the start of its first block; None when ``frame`` ends or breaks first.

    Complexity: O(want + the bytes of ``frame`` read).
    """
    if len(frame) < 7:
        return None
    flags = frame[4]
    # magic, FLG, BD, [content size], [dictionary id], header checksum
    pos = 6 + (8 if flags & 0x08 else 0) + (4 if flags & 0x01 else 0) + 1
    if len(frame) < pos + 4:
        return None
    size = int.from_bytes(frame[pos:pos + 4], "little")
    pos += 4
    if size & 0x80000000:  # a block stored as is
        stored = frame[pos:pos + (size & 0x7FFFFFFF)]
        return stored[:want] if len(stored) >= want else None
    end = min(len(frame), pos + size)
    out = bytearray()

    def length(base: int) -> int | None:
        nonlocal pos
        if base != 15:
            return base
        while pos < end:
            byte = frame[pos]
            pos += 1
            base += byte
            if byte != 255:
                return base
        return None

    while len(out) < want and pos < end:
        token = frame[pos]
        pos += 1
        literals = length(token >> 4)
        if literals is None:
            return None
        out += frame[pos:min(pos + literals, end)]
        pos += literals
        if len(out) >= want or pos + 2 > end:
            break
        offset = frame[pos] | frame[pos + 1] << 8
        pos += 2
        match = length(token & 15)
        if match is None or not 0 < offset <= len(out):
            return None
        for _ in range(min(match + 4, want - len(out))):
            out.append(out[-offset])
    return bytes(out[:want]) if len(out) >= want else None


_CHUNK: Final = 1 << 16
"""Records converted between two progress reports."""

_FIELDS: Final = attrgetter("tid", "address", "size", "allocator")
"""The fields of a memray ``AllocationRecord`` that a conversion reads, in one C call."""


def _convert(
    memray: ModuleType, records: Iterable[object], readable: int, family: str, max_size: int,
    source: str, progress: Progress | None, sink: Sink | None = None,
) -> Capture:
    """The capture of at most ``readable`` memray ``records`` (rules in the module docstring).

    One pass, straight into arrays: no object is kept per record, so the cyclic collector,
    which a list of millions of tuples would set off again and again, has nothing to scan.
    Every record is counted without a counter of its own: a record is used or skipped, and
    the used ones are the events, less the implied frees, plus the frees a realloc joined.

    After each stretch of records, the events before the oldest free still waiting for its
    thread's next record (which may make it a realloc) are final, and go to ``sink``.

    Raises: TraceError: memray fails while reading (named with the records read before).
    """
    codes = {kind.name: int(kind) for kind in memray.AllocatorType}
    allocating = frozenset(
        codes[name] for name in (_PYTHON_FAMILY if family == "python" else _NATIVE_FAMILY)
        if name in codes
    )
    freeing = codes["PYMALLOC_FREE" if family == "python" else "FREE"]
    reallocating = codes["PYMALLOC_REALLOC" if family == "python" else "REALLOC"]
    alloc_op, free_op, realloc_op = OP_ALLOC, OP_FREE, OP_REALLOC
    ops, blocks, sizes = array("B"), array("q"), array("q")
    realloc_at, realloc_old = array("q"), array("q")
    put_op, put_block, put_size = ops.append, blocks.append, sizes.append
    ids: dict[int, int] = {}  # live kept address -> block id
    take = ids.pop
    size_of: list[int] = []  # block id -> its latest size
    new_block = size_of.append
    # tid -> index in ``ops`` of the free that thread's previous record emitted: memray
    # writes a realloc as that free followed by the realloc record, on the same thread.
    pending: dict[int, int] = {}
    unknown = other = zero = large = implied = joined = 0
    iterator = iter(records)
    sent = 0  # events handed to sink
    if progress is not None:
        progress(0, readable)
    try:
        for start in range(0, readable, _CHUNK):
            chunk = itertools.islice(iterator, min(_CHUNK, readable - start))
            for tid, address, size, kind in map(_FIELDS, chunk):
                previous = pending.pop(tid, -1) if pending else -1
                if kind == freeing:
                    block = take(address, -1)
                    if block < 0:
                        unknown += 1
                        continue
                    pending[tid] = len(ops)
                    put_op(free_op)
                    put_block(block)
                    put_size(-size_of[block])
                    continue
                if kind not in allocating:
                    other += 1
                    continue
                if size == 0:
                    zero += 1
                    continue
                if size > max_size:
                    large += 1
                    continue
                stale = take(address, -1)
                if stale >= 0:
                    put_op(free_op)
                    put_block(stale)
                    put_size(-size_of[stale])
                    implied += 1
                if kind == reallocating and previous >= 0:
                    block = blocks[previous]
                    ops[previous] = realloc_op
                    sizes[previous] = size
                    realloc_at.append(previous)
                    realloc_old.append(size_of[block])
                    size_of[block] = size
                    joined += 1
                else:
                    block = len(size_of)
                    new_block(size)
                    put_op(alloc_op)
                    put_block(block)
                    put_size(size)
                ids[address] = block
            if sink is not None:
                final = min(pending.values(), default=len(ops))
                if final > sent:
                    sink(ops, blocks, sizes, sent, final)
                    sent = final
            if progress is not None:
                progress(min(start + _CHUNK, readable), readable)
    except MemoryError:
        raise
    except Exception as exc:  # see _read_capture
        count = len(ops) - implied + joined + unknown + other + zero + large
        raise TraceError(
            source, 0, f"damaged memray capture: memray fails after {count:,} records "
            f"({_reason(exc)})",
        ) from None
    summary = CaptureSummary(family=family)
    summary.used = len(ops) - implied + joined
    summary.records = summary.used + unknown + other + zero + large
    summary.implied_frees = implied
    for reason, count in (("other-allocator", other), ("too-large", large),
                          ("unknown-address", unknown), ("zero-size", zero)):
        if count:
            summary.skipped[reason] = count
    if len(realloc_at) > 1 and any(a > b for a, b in itertools.pairwise(realloc_at)):
        # Threads' realloc pairs can end out of order: sort the pairs by index.
        ordered = sorted(zip(realloc_at, realloc_old, strict=True))
        realloc_at = array("q", (index for index, _ in ordered))
        realloc_old = array("q", (old for _, old in ordered))
    if sink is not None and len(ops) > sent:
        sink(ops, blocks, sizes, sent, len(ops))
    live = array("q", ids.values())
    trace = CompactTrace(
        ops, blocks, sizes, len(size_of), realloc_at, realloc_old, live,
        array("q", (size_of[block] for block in live)),
    )
    return Capture(trace, summary)
