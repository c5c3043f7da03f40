"""The experiment harness: run a workload on a fresh allocator under one policy and measure it.

:func:`run_workload` builds a :class:`~pyslab.SlabAllocator` with the configuration asked for
(a composition string such as ``"dict-lookup+reclaim"``) on a :class:`MeasuringPageSource`,
lets the workload drive it through a timing :class:`~pyslab.lab.WorkloadHeap`, and returns a
:class:`RunResult`. The ``pyslab compare`` and ``pyslab replay`` commands are this function in
a loop; it needs nothing beyond pyslab itself.

What is measured, and how
-------------------------
- *ns per alloc / free / realloc*: each allocator call is timed on its own with
  ``time.perf_counter_ns`` (the bound-method call included, the harness's bookkeeping not).
  Both the median and the mean are kept: the median is the cost of a typical call and shrugs
  off a preemption by another process; the mean also carries the rare slow calls (a slab
  mapped, an O(slabs) walk that grew long). The cyclic garbage collector is paused during the
  run, so that its pauses do not land in one configuration's figures.
- *mapped bytes*: read from the page source, which sees every slab mapped and released: the
  peak is exact, and the series over the run is sampled every ``ops // samples`` calls.
- *slabs created / reclaimed*: slabs the page source mapped / took back during the run.
- The state when the workload returns (its live blocks stay live), from what the harness
  knows (the size it requested for each live block, ``usable_size``, ``slabs()``), with slab
  blocks only (a block of the system fallback has no slot):

  - internal fragmentation = (slot bytes - requested bytes) / slot bytes, over live blocks;
  - external fragmentation = free slot bytes in slabs that are not empty / mapped bytes;
  - utilisation = requested bytes / mapped bytes.

  Each is None when its denominator is 0 (no live slab block, or nothing mapped).
"""

from __future__ import annotations

import bisect
import gc
import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Final, TypeAlias

from pyslab.core.allocator import SlabAllocator
from pyslab.core.pages import MmapPageSource, PageSource
from pyslab.policy import PolicySpec

from .trace import OP_ALLOC, OP_FREE, CompactTrace, TraceWorkload
from .workload import Workload, WorkloadError, make_workload

__all__ = [
    "HeapMetrics",
    "MeasuringPageSource",
    "ReplayEstimate",
    "RunResult",
    "estimate_replay",
    "measure_heap",
    "replay_trace",
    "run_workload",
    "walks_slabs",
]

DEFAULT_SAMPLES: Final = 200
"""Points of the mapped-bytes series taken during a run (plus the start and the end)."""


class MeasuringPageSource:
    """A :class:`~pyslab.core.PageSource` that passes every call on and counts what goes through.

    Args:
        inner: the source that really maps memory (default: a new :class:`MmapPageSource`).

    Counters: ``slabs_mapped``, ``slabs_released`` and ``peak_mapped_bytes`` (the most bytes
    held at once). With ``position`` set (a function giving how far the run is: calls made so
    far), every slab mapped or released also appends (position, mapped bytes after it) to
    ``changes``, from which the mapped bytes at any point of the run follow. Complexity: O(1)
    on top of ``inner`` per call.
    """

    def __init__(self, inner: PageSource | None = None) -> None:
        self.inner: Final = inner if inner is not None else MmapPageSource()
        self.slabs_mapped = 0
        self.slabs_released = 0
        self.peak_mapped_bytes = self.inner.mapped_bytes
        self.position: Callable[[], int] | None = None
        self.changes: list[tuple[int, int]] = []

    @property
    def page_size(self) -> int:
        """The inner source's page size."""
        return self.inner.page_size

    @property
    def mapped_bytes(self) -> int:
        """Bytes the inner source has handed out and not taken back."""
        return self.inner.mapped_bytes

    def map_slab(self, size: int) -> int:
        """Map a slab through the inner source. Raises: as the inner source (nothing counted)."""
        address = self.inner.map_slab(size)
        self.slabs_mapped += 1
        mapped = self.inner.mapped_bytes
        if mapped > self.peak_mapped_bytes:
            self.peak_mapped_bytes = mapped
        if self.position is not None:
            self.changes.append((self.position(), mapped))
        return address

    def release_slab(self, address: int, size: int) -> None:
        """Give a slab back to the inner source."""
        self.inner.release_slab(address, size)
        self.slabs_released += 1
        if self.position is not None:
            self.changes.append((self.position(), self.inner.mapped_bytes))

    def close(self) -> None:
        """Close the inner source."""
        self.inner.close()


@dataclass(frozen=True)
class HeapMetrics:
    """The allocator's state measured against the sizes requested (definitions: module doc)."""

    mapped_bytes: int
    live_blocks: int
    """Live slab blocks."""
    requested_bytes: int
    """Bytes requested for the live slab blocks."""
    slot_bytes: int
    """Bytes of the slots holding them."""
    free_slot_bytes: int
    """Bytes of the free slots of slabs that hold at least one live block."""
    large_blocks: int
    """Live blocks of the system fallback (not counted above)."""

    @property
    def internal_fragmentation(self) -> float | None:
        """(slot bytes - requested bytes) / slot bytes of live blocks; None without any."""
        if not self.slot_bytes:
            return None
        return (self.slot_bytes - self.requested_bytes) / self.slot_bytes

    @property
    def external_fragmentation(self) -> float | None:
        """Free slot bytes in non-empty slabs / mapped bytes; None when nothing is mapped."""
        return self.free_slot_bytes / self.mapped_bytes if self.mapped_bytes else None

    @property
    def utilisation(self) -> float | None:
        """Requested bytes / mapped bytes; None when nothing is mapped."""
        return self.requested_bytes / self.mapped_bytes if self.mapped_bytes else None


def measure_heap(allocator: SlabAllocator, blocks: Iterable[tuple[int, int]]) -> HeapMetrics:
    """Measure ``allocator`` given ``blocks``, the (address, requested size) of every live block.

    A block is a slab block when the slab its address rounds down to is one of ``slabs()``
    (slabs are aligned to their size: invariant 1); its slot bytes are ``usable_size``.

    Raises:
        InvalidFreeError: an address is not a live block of ``allocator``.

    Complexity: O(slabs + blocks).
    """
    slabs = allocator.slabs()
    bases = {slab.base for slab in slabs}
    mask = ~(allocator.slab_size - 1)
    live = requested = slot = large = 0
    for address, size in blocks:
        usable = allocator.usable_size(address)
        if address & mask in bases:
            live += 1
            requested += size
            slot += usable
        else:
            large += 1
    free_slots = sum((s.capacity - s.used) * s.slot_size for s in slabs if s.used)
    return HeapMetrics(
        mapped_bytes=allocator.stats().mapped_bytes,
        live_blocks=live,
        requested_bytes=requested,
        slot_bytes=slot,
        free_slot_bytes=free_slots,
        large_blocks=large,
    )


@dataclass(frozen=True)
class RunResult:
    """One workload run under one configuration: what :func:`run_workload` measured."""

    workload: str
    configuration: str
    """The policy composition: as given when it was a string (``"dict-lookup+reclaim"``),
    else the name of the resolved composition."""
    ops: int
    """The operation budget given to the workload."""
    seed: int
    threads: int
    allocs: int
    frees: int
    reallocs: int
    alloc_ns: int
    """Total nanoseconds spent in ``alloc`` calls."""
    free_ns: int
    realloc_ns: int
    median_alloc_ns: float | None
    """Median nanoseconds of one ``alloc`` call; None without any."""
    median_free_ns: float | None
    median_realloc_ns: float | None
    peak_mapped_bytes: int
    final_mapped_bytes: int
    slabs_created: int
    slabs_reclaimed: int
    final: HeapMetrics
    """The state when the workload returned."""
    seconds: float
    """Wall time of the workload, bookkeeping included."""
    samples: tuple[tuple[int, int, int], ...]
    """(calls so far, mapped bytes, bytes requested by live blocks of slab sizes) over the run."""

    @property
    def ns_per_alloc(self) -> float | None:
        """Mean nanoseconds per ``alloc``; None without any (the median is a field)."""
        return self.alloc_ns / self.allocs if self.allocs else None

    @property
    def ns_per_free(self) -> float | None:
        """Mean nanoseconds per ``free``; None without any."""
        return self.free_ns / self.frees if self.frees else None

    @property
    def ns_per_realloc(self) -> float | None:
        """Mean nanoseconds per ``realloc``; None without any."""
        return self.realloc_ns / self.reallocs if self.reallocs else None

    def to_dict(self) -> dict[str, object]:
        """Plain data for ``json.dumps``: every field and every derived metric."""
        data = asdict(self)
        data["samples"] = [list(sample) for sample in self.samples]
        data.update(
            ns_per_alloc=self.ns_per_alloc,
            ns_per_free=self.ns_per_free,
            ns_per_realloc=self.ns_per_realloc,
            internal_fragmentation=self.final.internal_fragmentation,
            external_fragmentation=self.final.external_fragmentation,
            utilisation=self.final.utilisation,
        )
        return data


class _MeasuredHeap:
    """The :class:`~pyslab.lab.WorkloadHeap` of a run: times each allocator call, keeps books.

    Only the allocator call is inside the timed interval; bookkeeping runs after it under
    ``_lock``, so threads of a threaded workload still contend for the allocator itself.
    """

    def __init__(
        self, allocator: SlabAllocator, source: PageSource, interval: int,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self._progress = progress
        self._alloc = allocator.alloc
        self._free = allocator.free
        self._realloc = allocator.realloc
        self._source = source
        self._largest = allocator.size_classes[-1].slot_size
        self._interval = interval
        self._lock = threading.Lock()
        self._next_id = 0
        self._next_sample = interval
        # block id -> (address, requested size); exactly the live blocks of the workload.
        self.blocks: dict[int, tuple[int, int]] = {}
        self.calls = self.allocs = self.frees = self.reallocs = 0
        self.alloc_ns = self.free_ns = self.realloc_ns = 0
        # Every call's duration, for the medians: 8 bytes a call.
        self.alloc_times = array("q")
        self.free_times = array("q")
        self.realloc_times = array("q")
        self.small_requested = 0  # requested bytes of live blocks of at most the largest class
        self.samples: list[tuple[int, int, int]] = [(0, source.mapped_bytes, 0)]

    def alloc(self, size: int, align: int | None = None) -> int:
        clock = time.perf_counter_ns
        if align is None:
            start = clock()
            address = self._alloc(size)
            elapsed = clock() - start
        else:
            start = clock()
            address = self._alloc(size, align)
            elapsed = clock() - start
        with self._lock:
            self.alloc_ns += elapsed
            self.alloc_times.append(elapsed)
            self.allocs += 1
            block = self._next_id
            self._next_id = block + 1
            self.blocks[block] = (address, size)
            if size <= self._largest:
                self.small_requested += size
            self._count_call()
        return block

    def free(self, block: int) -> None:
        with self._lock:
            entry = self.blocks.pop(block, None)
        if entry is None:
            raise WorkloadError(f"free of block {block!r}, which is not live")
        address, size = entry
        clock = time.perf_counter_ns
        start = clock()
        self._free(address)
        elapsed = clock() - start
        with self._lock:
            self.free_ns += elapsed
            self.free_times.append(elapsed)
            self.frees += 1
            if size <= self._largest:
                self.small_requested -= size
            self._count_call()

    def realloc(self, block: int, size: int, align: int | None = None) -> None:
        with self._lock:
            entry = self.blocks.get(block)
        if entry is None:
            raise WorkloadError(f"realloc of block {block!r}, which is not live")
        address, old_size = entry
        clock = time.perf_counter_ns
        if align is None:
            start = clock()
            new = self._realloc(address, size)
            elapsed = clock() - start
        else:
            start = clock()
            new = self._realloc(address, size, align)
            elapsed = clock() - start
        with self._lock:
            self.realloc_ns += elapsed
            self.realloc_times.append(elapsed)
            self.reallocs += 1
            self.blocks[block] = (new, size)
            largest = self._largest
            self.small_requested += (size if size <= largest else 0) - (
                old_size if old_size <= largest else 0
            )
            self._count_call()

    def _count_call(self) -> None:
        # Lock held.
        self.calls += 1
        if self.calls >= self._next_sample:
            self._next_sample += self._interval
            self.sample()
            if self._progress is not None:
                self._progress(self.calls)

    def sample(self) -> None:
        """Append (calls, mapped bytes, small requested bytes) to the series."""
        self.samples.append((self.calls, self._source.mapped_bytes, self.small_requested))


def run_workload(
    workload: Workload | str,
    configuration: PolicySpec = None,
    *,
    ops: int = 20_000,
    seed: int = 0,
    samples: int = DEFAULT_SAMPLES,
    progress: Callable[[int], None] | None = None,
) -> RunResult:
    """Run ``workload`` on a fresh allocator under ``configuration`` and measure it.

    Args:
        workload: a :class:`~pyslab.lab.Workload` or the name of a registered one.
        configuration: what ``SlabAllocator(policy=...)`` takes (None: the allocator's
            default, :data:`pyslab.policy.DEFAULT_POLICY`): a composition such as ``"first-fit"`` or
            ``"fullest-first+reclaim"``; policy instances (``make_policy("reclaim", keep=4)``)
            are bound to this run's allocator and released when it closes.
        ops: the workload's operation budget; seed: its seed.
        samples: points of the mapped-bytes series.
        progress: called with the calls made so far at each point of the series (and, for
            a trace, every :data:`PROGRESS_EVENTS` events).

    The allocator is validated when the workload returns, measured, then closed (which frees
    whatever the workload left live). A :class:`~pyslab.lab.trace.TraceWorkload` is replayed
    by :func:`replay_trace`, which measures the same things with less work between calls.

    Raises:
        UnknownWorkloadError, UnknownPolicyError, PolicyError: a name is not registered.
        ValueError: ``ops`` or ``samples`` is not a positive int.
        WorkloadError: the workload freed a block that is not live.
        CorruptionError: an invariant of the heap broke during the run.

    Complexity: the workload's, plus O(1) per call and O(slabs + live blocks) at the end.
    """
    for what, value in (("ops", ops), ("samples", samples)):
        if type(value) is not int or value <= 0:
            raise ValueError(f"{what} must be a positive int, not {value!r}")
    if isinstance(workload, TraceWorkload):
        return replay_trace(
            workload, configuration, ops=ops, seed=seed, samples=samples, progress=progress
        )
    if isinstance(workload, str):
        workload = make_workload(workload)
    source = MeasuringPageSource()
    with SlabAllocator(policy=configuration, page_source=source) as allocator:
        heap = _MeasuredHeap(allocator, source, max(1, ops // samples), progress)
        collecting = gc.isenabled()
        gc.collect()
        gc.disable()
        started = time.perf_counter()
        try:
            workload.run(heap, ops, seed)
        finally:
            if collecting:
                gc.enable()
        seconds = time.perf_counter() - started
        heap.sample()
        allocator.validate()
        final = measure_heap(allocator, heap.blocks.values())
        return RunResult(
            workload=workload.label,
            configuration=(
                configuration if isinstance(configuration, str) else allocator.policy.name
            ),
            ops=ops,
            seed=seed,
            threads=workload.threads,
            allocs=heap.allocs,
            frees=heap.frees,
            reallocs=heap.reallocs,
            alloc_ns=heap.alloc_ns,
            free_ns=heap.free_ns,
            realloc_ns=heap.realloc_ns,
            median_alloc_ns=_median(heap.alloc_times),
            median_free_ns=_median(heap.free_times),
            median_realloc_ns=_median(heap.realloc_times),
            peak_mapped_bytes=source.peak_mapped_bytes,
            final_mapped_bytes=source.mapped_bytes,
            slabs_created=source.slabs_mapped,
            slabs_reclaimed=source.slabs_released,
            final=final,
            seconds=seconds,
            samples=tuple(heap.samples),
        )


PROGRESS_EVENTS: Final = 1 << 16
"""A replay runs its events in stretches of this many, calling its ``progress`` after each."""


def replay_trace(
    trace: TraceWorkload | CompactTrace,
    configuration: PolicySpec = None,
    *,
    ops: int | None = None,
    seed: int = 0,
    samples: int = DEFAULT_SAMPLES,
    progress: Callable[[int], None] | None = None,
    arriving: Callable[[int], int] | None = None,
) -> RunResult:
    """Replay ``trace`` on a fresh allocator under ``configuration`` and measure it: the
    :class:`RunResult` :func:`run_workload` gives for the same trace, from a loop that does
    little more than the allocator calls.

    Every event is one call of the allocator's public ``alloc``, ``free`` or ``realloc`` on
    real memory, each timed on its own as in :func:`run_workload`. What depends on the trace
    alone is not kept on each call: the bytes requested by live blocks come from
    :meth:`~pyslab.lab.trace.CompactTrace.requested_bytes`, the final live blocks from the
    trace, and the mapped bytes of the series from the slabs mapped and released, each noted
    with the number of calls made before it (:class:`MeasuringPageSource`). A block's address
    is kept in a list indexed by its dense id (block ``k`` is the ``k``-th allocation).

    Args:
        trace: a :class:`~pyslab.lab.trace.TraceWorkload` (its label names the result) or a
            :class:`~pyslab.lab.trace.CompactTrace` (named ``trace``).
        ops: recorded as the run's operation budget; the series is sampled every
            ``ops // samples`` calls (default: the number of events).
        progress: called with the events replayed so far, every :data:`PROGRESS_EVENTS`
            events and at the end.
        arriving: for a trace still being read (a
            :class:`~pyslab.lab.trace.CaptureReader`'s ``more``): called with the events the
            replay wants to have, it waits for them and returns how many the trace holds,
            fewer at the end. The trace must be complete when it has said so. The time spent
            waiting is left out of the result's ``seconds``.
        configuration, seed, samples: as :func:`run_workload`.

    Raises:
        MemoryError: the allocator could not serve an event; the message names the trace,
            the event (1-based) and its request.
        UnknownPolicyError, PolicyError, ValueError, CorruptionError: as :func:`run_workload`.
        Whatever ``arriving`` raises.

    Complexity: O(events) calls, plus O(slabs + live blocks) at the end.
    """
    workload = trace if isinstance(trace, TraceWorkload) else TraceWorkload(trace)
    events = workload.trace
    for what, value in (("ops", ops), ("samples", samples)):
        if value is not None and (type(value) is not int or value <= 0):
            raise ValueError(f"{what} must be a positive int, not {value!r}")
    waited = 0.0  # seconds spent waiting for events to arrive: not the replay's time
    if arriving is None:
        def wait(wanted: int) -> int:
            return min(wanted, len(events))
    else:
        more = arriving

        def wait(wanted: int) -> int:
            nonlocal waited
            began = time.perf_counter()
            try:
                return more(wanted)
            finally:
                waited += time.perf_counter() - began
    source = MeasuringPageSource()
    with SlabAllocator(policy=configuration, page_source=source) as allocator:
        times: Times = (array("q"), array("q"), array("q"))  # every alloc, free, realloc's ns
        alloc_times, free_times, realloc_times = times
        source.position = lambda: len(alloc_times) + len(free_times) + len(realloc_times)
        start_mapped = source.mapped_bytes
        addresses: list[int] = []
        drive = _drive if events.aligns is None else _drive_aligned
        collecting = gc.isenabled()
        gc.collect()
        gc.disable()
        started = time.perf_counter()
        try:
            drive(events, allocator, addresses, times, wait, progress)
        except MemoryError as error:
            raise workload.cannot_serve(sum(map(len, times)), error) from None
        finally:
            if collecting:
                gc.enable()
        seconds = time.perf_counter() - started - waited
        count = len(events)
        ops = count if ops is None else ops
        interval = max(1, ops // samples)
        marks = [*range(interval, count + 1, interval), count]  # run_workload's points
        requested = events.requested_bytes(allocator.size_classes[-1].slot_size, marks)
        positions = [position for position, _ in source.changes]
        mapped = [start_mapped, *(bytes_ for _, bytes_ in source.changes)]
        series = [(0, start_mapped, 0)] + [
            (mark, mapped[bisect.bisect_left(positions, mark)], wanted)
            for mark, wanted in zip(marks, requested, strict=True)
        ]
        allocator.validate()
        final = measure_heap(
            allocator,
            zip([addresses[b] for b in events.final_blocks], events.final_sizes, strict=True),
        )
        return RunResult(
            workload=workload.label,
            configuration=(
                configuration if isinstance(configuration, str) else allocator.policy.name
            ),
            ops=ops,
            seed=seed,
            threads=1,
            allocs=len(alloc_times),
            frees=len(free_times),
            reallocs=len(realloc_times),
            alloc_ns=sum(alloc_times),
            free_ns=sum(free_times),
            realloc_ns=sum(realloc_times),
            median_alloc_ns=_median(alloc_times),
            median_free_ns=_median(free_times),
            median_realloc_ns=_median(realloc_times),
            peak_mapped_bytes=source.peak_mapped_bytes,
            final_mapped_bytes=source.mapped_bytes,
            slabs_created=source.slabs_mapped,
            slabs_reclaimed=source.slabs_released,
            final=final,
            seconds=seconds,
            samples=tuple(series),
        )


@dataclass(frozen=True)
class ReplayEstimate:
    """How long :func:`replay_trace` should take under a configuration whose frees walk the
    slabs (:func:`estimate_replay`)."""

    configuration: str
    seconds: float
    """The whole replay, walks included."""
    base_seconds: float
    """The same calls without the walks: about what an O(1) owner lookup takes."""
    mean_walk: float
    """Slabs a free (or a realloc) walks, on average."""
    peak_slabs: int
    """Slabs mapped at the peak, by the model."""
    per_call_ns: float
    """Measured: one timed call, the walk aside."""
    per_slab_ns: float
    """Measured: each slab a walk passes."""


def walks_slabs(configuration: PolicySpec) -> bool:
    """True when the frees of ``configuration`` find their slab by the base policy's walk over
    every slab (``first-fit``'s ``find_owner``, O(slabs)), no other policy providing an owner
    lookup. Complexity: building one empty allocator."""
    with SlabAllocator(policy=configuration) as allocator:
        resolved = allocator.policy
        return getattr(resolved.find_owner, "__self__", None) is resolved.policies[0]


def estimate_replay(trace: CompactTrace, configuration: PolicySpec) -> ReplayEstimate | None:
    """How long replaying ``trace`` under ``configuration`` should take, when its frees walk
    every slab (:func:`walks_slabs`); None for any other configuration.

    The cost model: a call costs ``per_call_ns``, plus ``per_slab_ns`` for each slab a walk
    passes. Both are measured here, on this machine, under ``configuration``: timed pairs of a
    free and an allocation of a block in the newest slab, behind 4 and then 256 full slabs.
    The walks come from the trace alone: a walk goes through the size classes smallest
    first and each class's slabs oldest first, so a free passes every slab of the smaller
    classes and then the slabs of its own up to the block's. The model takes them all: blocks
    die young, and the young ones are in the newest slabs, where ``first-fit`` allocates (on
    ``python -m json.tool`` captures the walks measured came within 5% of this). A block
    larger than the largest class is looked for in every slab. A class holds as many slabs as
    its live blocks at their peak need when the base keeps every empty slab (``first-fit``
    maps a slab only when every slab of the class is full: this count is exact), as many as
    its live blocks need at the time otherwise.

    Complexity: O(events) in Python (about as long as a tenth of an O(1) replay), plus about
    0.1 s of measurement.
    """
    with SlabAllocator(policy=configuration) as allocator:
        resolved = allocator.policy
        if getattr(resolved.find_owner, "__self__", None) is not resolved.policies[0]:
            return None
        keeps = getattr(resolved.keep_empty, "__self__", None) is resolved.policies[0]
        classes = [(c.slot_size, c.slots_per_slab) for c in allocator.size_classes]
        name = configuration if isinstance(configuration, str) else resolved.name
    # Measured on allocators of their own: a policy instance is rebuilt from its spec.
    per_call_ns, per_slab_ns = _walk_cost(name)
    walked, peak = _walks(trace, classes, keeps)
    walks = trace.frees + trace.reallocs
    seconds = (len(trace) * per_call_ns + walked * per_slab_ns) / 1e9
    return ReplayEstimate(
        configuration=name,
        seconds=seconds,
        base_seconds=len(trace) * per_call_ns / 1e9,
        mean_walk=walked / walks if walks else 0.0,
        peak_slabs=peak,
        per_call_ns=per_call_ns,
        per_slab_ns=per_slab_ns,
    )


def _walk_cost(configuration: PolicySpec) -> tuple[float, float]:
    """(ns of one timed call apart from the walk, ns per slab walked) under ``configuration``,
    from timed free+alloc pairs, each call timed as :func:`replay_trace` times it. Each figure
    is the least of five rounds in CPU time of this thread, so that another process taking
    the CPU during a round does not count."""
    clock, cpu = time.perf_counter_ns, time.thread_time_ns
    pair_ns: dict[int, float] = {}
    for slabs in (4, 256):
        with SlabAllocator(policy=configuration) as allocator:
            size_class = allocator.size_classes[-1]  # the fewest blocks a slab
            size = size_class.slot_size
            blocks = [allocator.alloc(size) for _ in range(slabs * size_class.slots_per_slab)]
            address = blocks[-1]  # in the newest slab: a walk passes every other one first
            free, alloc = allocator.free, allocator.alloc
            times = array("q")
            record = times.append
            pairs = max(40, 4_000 // slabs)
            best = float("inf")
            for _ in range(5):
                began = cpu()
                for _ in range(pairs):
                    start = clock()
                    free(address)
                    record(clock() - start)
                    start = clock()
                    address = alloc(size)
                    record(clock() - start)
                best = min(best, (cpu() - began) / pairs)
            pair_ns[slabs] = best
    per_slab = max(0.0, (pair_ns[256] - pair_ns[4]) / 252)
    per_call = max(1.0, (pair_ns[4] - 4 * per_slab) / 2)
    return per_call, per_slab


def _walks(
    trace: CompactTrace, classes: list[tuple[int, int]], keeps: bool
) -> tuple[int, int]:
    """(slabs walked by every free and realloc of ``trace``, most slabs at once) by the model
    of :func:`estimate_replay`; ``classes`` are (slot size, slots a slab), ascending."""
    count = len(classes)
    largest = classes[-1][0]
    table = bytearray(largest + 1)  # size -> class index
    index = 0
    for size in range(1, largest + 1):
        while classes[index][0] < size:
            index += 1
        table[size] = index
    capacity = [slots for _, slots in classes]
    live = [0] * count
    level = [0] * count  # live blocks the slabs of each class were mapped for
    slabs = [0] * (count + 1)
    below = [0] * (count + 1)  # slabs of the smaller classes; below[count]: every slab
    owner = bytearray(trace.block_count)  # block -> class (count: larger than the largest)
    walked = 0
    peak = 0

    def place(cls: int) -> None:
        nonlocal peak
        if cls == count:
            return
        held = live[cls] = live[cls] + 1
        if held > level[cls]:
            level[cls] = held
            if -(-held // capacity[cls]) > slabs[cls]:
                slabs[cls] += 1
                for above in range(cls + 1, count + 1):
                    below[above] += 1
                peak = max(peak, below[count])

    def leave(cls: int) -> int:
        """The walk to the slab of a block of ``cls``, which then leaves it."""
        if cls == count:
            return below[count]
        walk = below[cls] + slabs[cls]
        held = live[cls] = live[cls] - 1
        if not keeps:
            level[cls] = held
            if -(-held // capacity[cls]) < slabs[cls]:
                slabs[cls] -= 1
                for above in range(cls + 1, count + 1):
                    below[above] -= 1
        return walk

    for op, block, size in zip(trace.ops, trace.blocks, trace.sizes, strict=True):
        if op == OP_ALLOC:
            cls = table[size] if size <= largest else count
            owner[block] = cls
            place(cls)
        elif op == OP_FREE:
            walked += leave(owner[block])
        else:
            old = owner[block]
            cls = table[size] if size <= largest else count
            walked += below[old] + slabs[old]  # finding the block (below[count]: every slab)
            if cls != old:  # moved: the new block, then a walk to free the old one
                owner[block] = cls
                place(cls)
                walked += leave(old)
    return walked, peak


Times: TypeAlias = "tuple[array[int], array[int], array[int]]"
"""The nanoseconds of every alloc, free and realloc call of a replay."""


def _drive(
    trace: CompactTrace, allocator: SlabAllocator, addresses: list[int], times: Times,
    arriving: Callable[[int], int], progress: Callable[[int], None] | None,
) -> None:
    """Replay the events of ``trace`` (no alignments) in stretches of :data:`PROGRESS_EVENTS`
    events, as ``arriving`` makes them available: the loop of :func:`replay_trace`."""
    alloc, free, realloc = allocator.alloc, allocator.free, allocator.realloc
    clock = time.perf_counter_ns
    alloc_time, free_time, realloc_time = (t.append for t in times)
    ops, blocks, sizes = trace.ops, trace.blocks, trace.sizes
    keep = addresses.append
    alloc_op, free_op = OP_ALLOC, OP_FREE
    low = 0
    while (high := min(arriving(low + PROGRESS_EVENTS), low + PROGRESS_EVENTS)) > low:
        for op, block, size in zip(
            ops[low:high], blocks[low:high], sizes[low:high], strict=True
        ):
            if op == alloc_op:  # block is len(addresses): the k-th allocation is block k
                start = clock()
                address = alloc(size)
                alloc_time(clock() - start)
                keep(address)
            elif op == free_op:
                address = addresses[block]
                start = clock()
                free(address)
                free_time(clock() - start)
            else:
                address = addresses[block]
                start = clock()
                address = realloc(address, size)
                realloc_time(clock() - start)
                addresses[block] = address
        low = high
        if progress is not None:
            progress(high)


def _drive_aligned(
    trace: CompactTrace, allocator: SlabAllocator, addresses: list[int], times: Times,
    arriving: Callable[[int], int], progress: Callable[[int], None] | None,
) -> None:
    """:func:`_drive` for a trace with alignments: an event that asks for one passes it on."""
    alloc, free, realloc = allocator.alloc, allocator.free, allocator.realloc
    clock = time.perf_counter_ns
    alloc_time, free_time, realloc_time = (t.append for t in times)
    ops, blocks, sizes = trace.ops, trace.blocks, trace.sizes
    aligns = trace.aligns if trace.aligns is not None else array("q", bytes(8 * len(ops)))
    keep = addresses.append
    alloc_op, free_op = OP_ALLOC, OP_FREE
    low = 0
    while (high := min(arriving(low + PROGRESS_EVENTS), low + PROGRESS_EVENTS)) > low:
        for op, block, size, align in zip(
            ops[low:high], blocks[low:high], sizes[low:high], aligns[low:high], strict=True
        ):
            if op == alloc_op:
                if align:
                    start = clock()
                    address = alloc(size, align)
                    alloc_time(clock() - start)
                else:
                    start = clock()
                    address = alloc(size)
                    alloc_time(clock() - start)
                keep(address)
            elif op == free_op:
                address = addresses[block]
                start = clock()
                free(address)
                free_time(clock() - start)
            else:
                address = addresses[block]
                if align:
                    start = clock()
                    address = realloc(address, size, align)
                    realloc_time(clock() - start)
                else:
                    start = clock()
                    address = realloc(address, size)
                    realloc_time(clock() - start)
                addresses[block] = address
        low = high
        if progress is not None:
            progress(high)


def _median(times: array[int]) -> float | None:
    """``statistics.median(times)`` (an int for an odd count, as it gives), from a count of
    each value instead of a sort: call times take a few thousand values, so this is
    several times faster on millions of calls."""
    if not times:
        return None
    counts = Counter(times)
    low_rank, high_rank = (len(times) - 1) // 2, len(times) // 2
    seen = 0
    low: int | None = None
    for value in sorted(counts):
        seen += counts[value]
        if low is None and seen > low_rank:
            low = value
        if seen > high_rank:
            assert low is not None  # low_rank <= high_rank
            return value if low_rank == high_rank else (low + value) / 2
    raise AssertionError("unreachable: the counts add up to len(times)")
