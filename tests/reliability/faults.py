"""Out-of-memory sweeps in the manner of SQLite's malloc tests.

SQLite's ``malloc*.test`` run a workload over and over, making the N-th memory request fail,
for N = 1, 2, ... until the workload runs through without reaching the failure; once with the
failure transient (only request N fails) and once persistent (every request from N on fails).
Here the requests are the page source's ``map_slab`` (a :class:`FailingPageSource` wraps the
real :class:`~pyslab.core.MmapPageSource`) and the large-object service's ``allocate`` (a
:class:`FailingLargeObjects` wraps the real libc-backed service, offered through the page
source's ``large_objects()``). Nothing is mocked: every block is real memory, every failure is
a real ``MemoryError`` raised where the real source would raise it.

After each failure the sweep checks that the failed call changed nothing (``snapshot``), that
``validate()`` passes, and that every block live before keeps its pattern; when failures stop
(at once for a transient failure, at the end of the workload for a persistent one) every class
and the large fallback must allocate again; at the end everything is freed, live counts are
zero and ``close()`` returns every page.

Run long from the repository root::

    python -m tests.reliability.faults --steps 2000 --all-configurations
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyslab
import pyslab.core
from pyslab.core import MmapPageSource, PageSource
from tests.support import CONFIGURATIONS, block_intact, fill_block, pattern_byte, snapshot

if TYPE_CHECKING:
    from pyslab.core.pages import LargeObjects

__all__ = [
    "FailingLargeObjects",
    "FailingPageSource",
    "Injection",
    "SweepReport",
    "main",
    "run_workload",
    "sweep",
]

SIZES = (8, 12, 16, 24, 32, 48, 64, 100, 128, 200, 256, 400, 512, 700, 1024, 1500, 5000, 70_000)
"""Every class of the default layout, sizes inside classes, and the large fallback."""


@dataclass
class Injection:
    """When to fail: request number ``at`` (1-based) only, or every one from it on."""

    at: int = 0
    """0: never fail."""
    persistent: bool = False
    requests: int = 0
    """Requests seen so far."""
    failures: int = 0
    """Requests failed so far."""

    def should_fail(self) -> bool:
        """Count one request and say whether it must fail."""
        self.requests += 1
        if self.at and (self.requests == self.at or (self.persistent and self.requests > self.at)):
            self.failures += 1
            return True
        return False


class FailingLargeObjects:
    """The real large-object service, failing the requests its :class:`Injection` picks.

    A failed ``allocate`` raises ``MemoryError`` before the real service is asked, as libc's
    ``malloc`` returning NULL makes the real service raise: nothing is recorded.
    """

    def __init__(self, inner: LargeObjects, injection: Injection) -> None:
        self.inner = inner
        self.injection = injection

    @property
    def sizes(self) -> dict[int, int]:
        """Live block address -> requested size (the real service's)."""
        return self.inner.sizes

    @property
    def total(self) -> int:
        """Bytes requested by the live blocks."""
        return self.inner.total

    def allocate(self, size: int, alignment: int) -> int:
        """Serve a block, or fail as an exhausted libc would.

        Raises:
            MemoryError: this request was picked to fail; nothing is recorded.
        """
        if self.injection.should_fail():
            raise MemoryError(f"injected: large request {self.injection.requests} ({size} bytes)")
        return self.inner.allocate(size, alignment)

    def record(self, address: int, size: int) -> None:
        """Track a block libc served to a re-entrant call."""
        self.inner.record(address, size)

    def release(self, address: int) -> None:
        """Give a live block back."""
        self.inner.release(address)

    def holds(self, address: int) -> bool:
        """True for a live block."""
        return self.inner.holds(address)

    def was_freed(self, address: int) -> bool:
        """True for a block freed recently."""
        return self.inner.was_freed(address)

    def close(self) -> None:
        """Free every live block."""
        self.inner.close()


class FailingPageSource:
    """A :class:`~pyslab.core.PageSource` around :class:`~pyslab.core.MmapPageSource` that fails
    on demand.

    ``slabs`` picks the ``map_slab`` requests that fail; ``large``, when given, the large-object
    requests (the source then offers ``large_objects()``, which the allocator uses for every
    block too large for a class).
    """

    def __init__(
        self, slabs: Injection | None = None, large: Injection | None = None,
        inner: PageSource | None = None,
    ) -> None:
        self.inner = inner if inner is not None else MmapPageSource()
        self.slabs = slabs if slabs is not None else Injection()
        self.large = large

    @property
    def page_size(self) -> int:
        """The OS page size."""
        return self.inner.page_size

    @property
    def mapped_bytes(self) -> int:
        """Bytes handed out and not yet released."""
        return self.inner.mapped_bytes

    def map_slab(self, size: int) -> int:
        """Map a slab, or fail as an exhausted kernel would.

        Raises:
            MemoryError: this request was picked to fail; nothing was mapped.
        """
        if self.slabs.should_fail():
            raise MemoryError(f"injected: map_slab request {self.slabs.requests} ({size} bytes)")
        return self.inner.map_slab(size)

    def release_slab(self, address: int, size: int) -> None:
        """Unmap a slab."""
        self.inner.release_slab(address, size)

    def close(self) -> None:
        """Close the real source."""
        self.inner.close()

    def large_objects(self) -> FailingLargeObjects | None:
        """The failing large-object service, when large requests are to fail."""
        if self.large is None:
            return None
        from pyslab.core._large import SystemFallback  # the default service, which this wraps

        return FailingLargeObjects(SystemFallback(), self.large)


@dataclass
class SweepReport:
    """What a sweep did: points swept, failures met, checks made, problems found."""

    points: int = 0
    """Workload runs, one per (N, transient or persistent)."""
    requests: int = 0
    """Requests of the kind swept that one clean run of the workload makes."""
    failures: int = 0
    """MemoryErrors raised to the workload."""
    checks: int = 0
    """Failed calls after which state, validity and every live block were checked."""
    problems: list[str] = field(default_factory=list)


def _workload_steps(steps: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    ops: list[tuple[str, int]] = []
    for _ in range(steps):
        roll = rng.random()
        op = (
            "alloc" if roll < 0.55 else "free" if roll < 0.85
            else "realloc" if roll < 0.95 else "calloc"
        )
        ops.append((op, rng.randrange(1 << 30)))
    return ops


def run_workload(
    allocator: pyslab.SlabAllocator, steps: int, seed: int, report: SweepReport,
    injection: Injection,
) -> int:
    """Run the workload; after each MemoryError check that nothing changed or was lost.

    Then switch ``injection`` off (failures stop) and check that every class and the large
    fallback allocate again; free everything. Returns the requests the workload made before
    failures stopped (the points a sweep can pick).
    """
    live: dict[int, tuple[int, int]] = {}  # address -> (size, pattern byte)
    serial = 0

    def check_after_failure(what: str, before: object) -> None:
        report.failures += 1
        report.checks += 1
        # the slab fields and stats; the blocks' bytes are checked by their patterns below
        if snapshot(allocator, {}) != before:
            report.problems.append(f"{what}: the failed call changed the allocator")
        try:
            allocator.validate()
        except pyslab.CorruptionError as error:
            report.problems.append(f"{what}: {error}")
        lost = [a for a, (n, b) in live.items() if not block_intact(a, n, b)]
        if lost:
            report.problems.append(f"{what}: {len(lost)} live blocks lost their pattern")

    for op, pick in _workload_steps(steps, seed):
        if op == "free" or (op == "realloc" and not live):
            if live:
                address = list(live)[pick % len(live)]
                size, byte = live.pop(address)
                if not block_intact(address, size, byte):
                    report.problems.append(f"block {address:#x} lost its pattern")
                allocator.free(address)
            continue
        size = SIZES[pick % len(SIZES)]
        before = snapshot(allocator, {})
        try:
            if op == "realloc":
                old = list(live)[pick % len(live)]
                old_size, byte = live[old]
                address = allocator.realloc(old, size)
                del live[old]
                if not block_intact(address, min(size, old_size), byte):
                    report.problems.append(f"realloc of {old:#x} lost its contents")
            elif op == "calloc":
                address = allocator.calloc(1, size)
                if not block_intact(address, size, 0):
                    report.problems.append(f"calloc at {address:#x} is not zeroed")
            else:
                address = allocator.alloc(size)
        except MemoryError:
            check_after_failure(f"{op}({size})", before)
            continue
        serial += 1
        byte = pattern_byte(serial)
        fill_block(address, size, byte)
        live[address] = (size, byte)

    requests = injection.requests
    injection.at = 0  # failures stop: every kind of block must be served again
    for size in SIZES:
        try:
            address = allocator.alloc(size)
        except MemoryError as error:
            report.problems.append(f"alloc({size}) still fails after failures stopped: {error}")
            continue
        fill_block(address, size, 0x3C)
        allocator.free(address)
    for address, (size, byte) in live.items():
        if not block_intact(address, size, byte):
            report.problems.append(f"block {address:#x} lost its pattern")
        allocator.free(address)
    allocator.validate()
    if allocator.stats().live_blocks:
        report.problems.append(f"{allocator.stats().live_blocks} blocks still live at the end")
    return requests


def sweep(policy: str, kind: str, steps: int = 200, seed: int = 1) -> SweepReport:
    """Sweep every failure point of ``kind`` (``"slab"`` or ``"large"``) over the workload.

    Raises:
        ValueError: ``kind`` is neither.
    """
    if kind not in ("slab", "large"):
        raise ValueError(f"kind must be 'slab' or 'large', not {kind!r}")
    report = SweepReport()
    # A clean run counts the requests N can pick from.
    counting = Injection()
    source = _source(kind, counting)
    with pyslab.SlabAllocator(policy=policy, page_source=source) as allocator:
        report.requests = run_workload(allocator, steps, seed, SweepReport(), counting)
    for at in range(1, report.requests + 1):
        for persistent in (False, True):
            injection = Injection(at=at, persistent=persistent)
            source = _source(kind, injection)
            allocator = pyslab.SlabAllocator(policy=policy, page_source=source)
            where = f"{policy} {kind} request {at} {'persistent' if persistent else 'once'}"
            try:
                point = SweepReport()
                run_workload(allocator, steps, seed, point, injection)
                report.failures += point.failures
                report.checks += point.checks
                report.problems.extend(f"{where}: {p}" for p in point.problems)
                if injection.failures == 0:
                    report.problems.append(f"{where}: the failure was never reached")
            except Exception as error:  # anything but the documented MemoryError is a finding
                report.problems.append(f"{where}: {error!r}")
            finally:
                allocator.close()
            if source.mapped_bytes:
                report.problems.append(f"{where}: close() left {source.mapped_bytes} bytes")
            report.points += 1
    return report


def _source(kind: str, injection: Injection) -> FailingPageSource:
    if kind == "slab":
        return FailingPageSource(slabs=injection)
    return FailingPageSource(large=injection)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: sweep both kinds under the chosen configurations; print the figures."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.reliability.faults", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--all-configurations", action="store_true")
    args = parser.parse_args(argv)
    specs = CONFIGURATIONS if args.all_configurations else ("first-fit", "dict-lookup+reclaim")
    failed = 0
    for spec in specs:
        for kind in ("slab", "large"):
            report = sweep(spec, kind, args.steps, args.seed)
            print(
                f"{spec:<32} {kind:<5}: {report.requests} requests, {report.points} points swept, "
                f"{report.failures} MemoryErrors checked, {len(report.problems)} problems",
                flush=True,
            )
            for problem in report.problems[:10]:
                print(f"  {problem}")
            failed += bool(report.problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
