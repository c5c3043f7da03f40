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

import gc
import statistics
import threading
import time
from array import array
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Final

from pyslab.core.allocator import SlabAllocator
from pyslab.core.pages import MmapPageSource, PageSource
from pyslab.policy import PolicySpec

from .workload import Workload, WorkloadError, make_workload

__all__ = [
    "HeapMetrics",
    "MeasuringPageSource",
    "RunResult",
    "measure_heap",
    "run_workload",
]

DEFAULT_SAMPLES: Final = 200
"""Points of the mapped-bytes series taken during a run (plus the start and the end)."""


class MeasuringPageSource:
    """A :class:`~pyslab.core.PageSource` that passes every call on and counts what goes through.

    Args:
        inner: the source that really maps memory (default: a new :class:`MmapPageSource`).

    Counters: ``slabs_mapped``, ``slabs_released`` and ``peak_mapped_bytes`` (the most bytes
    held at once). Complexity: O(1) on top of ``inner`` per call.
    """

    def __init__(self, inner: PageSource | None = None) -> None:
        self.inner: Final = inner if inner is not None else MmapPageSource()
        self.slabs_mapped = 0
        self.slabs_released = 0
        self.peak_mapped_bytes = self.inner.mapped_bytes

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
        return address

    def release_slab(self, address: int, size: int) -> None:
        """Give a slab back to the inner source."""
        self.inner.release_slab(address, size)
        self.slabs_released += 1

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

    def __init__(self, allocator: SlabAllocator, source: PageSource, interval: int) -> None:
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
) -> RunResult:
    """Run ``workload`` on a fresh allocator under ``configuration`` and measure it.

    Args:
        workload: a :class:`~pyslab.lab.Workload` or the name of a registered one.
        configuration: what ``SlabAllocator(policy=...)`` takes (None: the allocator's
            default, ``dict-lookup+reclaim``): a composition such as ``"first-fit"`` or
            ``"fullest-first+reclaim"``; policy instances (``make_policy("reclaim", keep=4)``)
            are bound to this run's allocator and released when it closes.
        ops: the workload's operation budget; seed: its seed.
        samples: points of the mapped-bytes series.

    The allocator is validated when the workload returns, measured, then closed (which frees
    whatever the workload left live).

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
    if isinstance(workload, str):
        workload = make_workload(workload)
    source = MeasuringPageSource()
    with SlabAllocator(policy=configuration, page_source=source) as allocator:
        heap = _MeasuredHeap(allocator, source, max(1, ops // samples))
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


def _median(times: array[int]) -> float | None:
    return statistics.median(times) if times else None
