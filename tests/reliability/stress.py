"""A port of mimalloc's ``test/test-stress.c`` to pyslab: threads, cross-thread frees, cookies.

What the port keeps from mimalloc's test (``stress()`` and ``test_stress()``):

- ``T`` threads (8 by default, ``PYSLAB_STRESS_THREADS`` or ``--threads`` for more) run for
  ``rounds`` rounds (mimalloc's ``ITER``); in each round every thread is created, runs, and is
  joined (destroyed), and the next round starts new threads.
- Thread ``tid`` makes ``100 * scale * (tid % 8 + 1)`` allocations (some threads do more) and
  retains half as many blocks to the end of its run. Each step allocates (about half of the
  time into its ``data`` array, otherwise into ``retained``), frees a random ``data`` entry
  (66 %), and swaps a random ``data`` entry with a slot of the shared ``transfer`` array of
  1000 entries (25 %), so that blocks are freed by other threads than the one that allocated
  them, and survive into later rounds.
- Sizes are a power of two of 8-byte words (``data``: 1 to 16 words, ``retained``: up to 128);
  1 % of blocks are 100 times larger, a tenth of those 1000 times, a hundredth 10000 times:
  the large-object fallback. Unlike mimalloc, up to a quarter is taken off each size so that
  every class also sees requests smaller than its slot.
- Every block comes from ``calloc``, is checked to be zero, then filled with the cookie
  pattern ``word[i] = (items - i) ^ 0xbf58476d1ce4e5b9``; the pattern is checked before every
  free. A mismatch is counted in bytes (mimalloc aborts; here the run reports).
- ``data`` and ``retained`` are themselves blocks of the allocator, grown with ``realloc``
  (mimalloc grows ``data`` by 100000 entries; here by 16, so the array walks through the
  classes and into the large fallback, its contents copied by every move).
- Between rounds half of the transfer slots are freed (all of them after the last round).

What the port adds: :meth:`SlabAllocator.validate` after every round, an optional finalizer mode
(``finalizers=True``: the threads also make cyclic garbage whose ``__del__`` checks and frees
blocks and allocates again, with a low collector threshold, so re-entrant calls happen on every
thread under contention), and a short thread switch interval so that threads interleave inside
allocator calls. Pass: zero mismatched bytes, no error, every live count back to zero, and
every page returned to the page source by ``close()``.

Run long from the repository root::

    python -m tests.reliability.stress --threads 16 --rounds 20 --scale 10 --finalizers
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import random
import sys
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pyslab
from tests.reliability.hooks import HOOKS_NAME, ReentrantHooks, with_hooks
from tests.support import CONFIGURATIONS

__all__ = [
    "COOKIE",
    "StressConfig",
    "StressReport",
    "main",
    "make_allocator",
    "run_stress",
    "stress_configurations",
]

COOKIE = 0xBF58476D1CE4E5B9
"""mimalloc's cookie, xor-ed into every word of every block."""
TRANSFERS = 1000
"""Slots of the shared transfer array (mimalloc's ``TRANSFERS``)."""
_WORD = 8
_GROWTH = 16
"""Entries added to a thread's ``data`` array by each ``realloc``."""


@dataclass(frozen=True)
class StressConfig:
    """The knobs of one stress run (mimalloc's ``THREADS``, ``ITER`` and ``SCALE``)."""

    threads: int = 8
    rounds: int = 4
    scale: float = 1
    """Thread ``tid`` makes ``100 * scale * (tid % 8 + 1)`` allocations per round."""
    large: bool = True
    """Let 1 % of the blocks go to the large-object fallback (mimalloc's
    ``allow_large_objects``)."""
    finalizers: bool = False
    """Also free and allocate from ``__del__`` of cyclic garbage, the collector set to start
    at every tracked allocation (``gc.set_threshold(1, 10, 10)``), so that collections start
    inside allocator calls."""
    seed: int = 0
    switch_interval: float = 1e-5
    """``sys.setswitchinterval`` during the run: threads interleave inside allocator calls."""

    @property
    def max_items(self) -> int:
        """The largest block, in words: 128 words times 10000 when large blocks are on."""
        return 128 * (10000 if self.large else 1)


@dataclass
class StressReport:
    """What one run did and found. ``ok`` is the verdict."""

    policy: str
    config: StressConfig
    allocations: int = 0
    frees: int = 0
    reallocs: int = 0
    transfers: int = 0
    cross_thread_frees: int = 0
    large_blocks: int = 0
    finalizer_frees: int = 0
    mismatched_bytes: int = 0
    reentrant_allocs: int = 0
    deferred_frees: int = 0
    peak_live: int = 0
    live_after: int = -1
    mapped_after_close: int = -1
    hook_pairs: int = 0
    hook_normal_path: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def operations(self) -> int:
        """Allocator calls that moved memory: allocations, frees and reallocs."""
        return self.allocations + self.frees + self.reallocs

    @property
    def ok(self) -> bool:
        """No error, no mismatched byte, nothing left live, every page given back."""
        return (
            not self.errors
            and self.mismatched_bytes == 0
            and self.live_after == 0
            and self.mapped_after_close == 0
            and self.hook_normal_path == 0
        )

    def summary(self) -> str:
        """One line for a terminal or a log."""
        c = self.config
        verdict = "ok" if self.ok else "FAILED"
        line = (
            f"{self.policy:<32} {c.threads} threads x {c.rounds} rounds: "
            f"{self.operations} ops ({self.allocations} alloc, {self.frees} free, "
            f"{self.reallocs} realloc), {self.cross_thread_frees} cross-thread frees, "
            f"{self.large_blocks} large, {self.finalizer_frees} finalizer frees, "
            f"{self.reentrant_allocs} reentrant allocs, {self.deferred_frees} deferred frees, "
            f"{self.mismatched_bytes} bad bytes, {self.seconds:.2f}s: {verdict}"
        )
        if self.errors:
            line += "\n  " + "\n  ".join(self.errors[:10])
        return line


class _Patterns:
    """The cookie pattern of every block size, as slices of one precomputed array.

    Word ``i`` of a block of ``n`` words is ``(n - i) ^ COOKIE``: the last ``n`` words of the
    array ``[(m - j) ^ COOKIE for j in range(m)]``, so no pattern is ever built per block.
    """

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self.words = array("Q", [(max_items - j) ^ COOKIE for j in range(max_items)])
        self.address = self.words.buffer_info()[0]

    def write(self, address: int, items: int) -> None:
        ctypes.memmove(address, self.address + (self.max_items - items) * _WORD, items * _WORD)

    def mismatches(self, address: int, items: int) -> int:
        """Bytes of the block at ``address`` that differ from its pattern (0 when intact)."""
        size = items * _WORD
        found = ctypes.string_at(address, size)
        expected = ctypes.string_at(self.address + (self.max_items - items) * _WORD, size)
        if found == expected:
            return 0
        return sum(a != b for a, b in zip(found, expected, strict=True))


class _Run:
    """State shared by the threads of one run."""

    def __init__(self, allocator: pyslab.SlabAllocator, config: StressConfig, policy: str):
        self.allocator = allocator
        self.config = config
        self.patterns = _Patterns(config.max_items)
        self.report = StressReport(policy, config)
        self.transfer = [0] * TRANSFERS
        self.transfer_lock = threading.Lock()
        # block address -> allocating thread: dict item assignment and pop are atomic under
        # the GIL, and tell a cross-thread free from a local one.
        self.owner: dict[int, int] = {}
        self.lock = threading.RLock()  # guards the report's counters and errors

    def fail(self, message: str) -> None:
        with self.lock:
            self.report.errors.append(message)

    # --- blocks (mimalloc's alloc_items / free_items) ---------------------------------------

    def alloc_items(self, items: int, rng: random.Random, tid: int) -> int:
        large = False
        if self.config.large and rng.randrange(100) <= 1:
            large = True
            if rng.randrange(100) <= 1:
                items *= 10000
            elif rng.randrange(100) <= 10:
                items *= 1000
            else:
                items *= 100
        items = max(1, min(items, self.config.max_items))
        address = self.allocator.calloc(items, _WORD)
        size = items * _WORD
        if ctypes.string_at(address, size) != bytes(size):
            self.fail(f"calloc({items}, 8) at {address:#x} is not zeroed")
        self.patterns.write(address, items)
        self.owner[address] = tid
        with self.lock:
            self.report.allocations += 1
            self.report.large_blocks += large
        return address

    def free_items(self, address: int, tid: int) -> None:
        if not address:
            return
        items = ctypes.c_uint64.from_address(address).value ^ COOKIE
        usable = self.allocator.usable_size(address)
        if not 0 < items * _WORD <= usable:
            self.fail(f"block {address:#x}: header word says {items} items, usable {usable}")
            with self.lock:
                self.report.mismatched_bytes += _WORD
            return  # its size is unknown: left live, so the run reports live blocks too
        bad = self.patterns.mismatches(address, items)
        owner = self.owner.pop(address, tid)
        self.allocator.free(address)
        with self.lock:
            self.report.frees += 1
            self.report.cross_thread_frees += owner != tid
            if bad:
                self.report.mismatched_bytes += bad
                self.report.errors.append(f"block {address:#x} of {items} words: {bad} bytes bad")


class _PointerArray:
    """A growable array of block addresses that lives in allocator memory (mimalloc's ``data``).

    Grown by ``realloc``, so that its contents (the addresses) are copied by every move and
    checked by every later free.
    """

    def __init__(self, run: _Run, capacity: int = 0) -> None:
        self.run = run
        self.top = 0
        self.capacity = 0
        self.address = 0
        self.view: ctypes.Array[ctypes.c_uint64] | None = None
        if capacity:
            self.address = run.allocator.calloc(capacity, _WORD)
            self._viewed(capacity)

    def _viewed(self, capacity: int) -> ctypes.Array[ctypes.c_uint64]:
        self.capacity = capacity
        view = (ctypes.c_uint64 * capacity).from_address(self.address)
        self.view = view
        return view

    def append(self, block: int) -> None:
        view = self.view
        if self.top >= self.capacity or view is None:
            capacity = self.capacity + _GROWTH
            self.address = self.run.allocator.realloc(self.address, capacity * _WORD)
            with self.run.lock:
                self.run.report.reallocs += 1
            view = self._viewed(capacity)
        view[self.top] = block
        self.top += 1

    def release(self) -> None:
        if self.address:
            self.run.allocator.free(self.address)
            with self.run.lock:
                self.run.report.frees += 1
        self.address, self.view, self.capacity, self.top = 0, None, 0, 0


class _Doomed:
    """Cyclic garbage holding a block: its finalizer checks and frees it, then allocates again.

    Only the cycle collector can free it, so ``__del__`` runs whenever a collection starts, on
    whatever thread allocated the object that triggered it: often inside an allocator call.
    """

    def __init__(self, run: _Run, address: int) -> None:
        self.run = run
        self.address = address
        # the block's first word holds its size, as in free_items
        self.items = ctypes.c_uint64.from_address(address).value ^ COOKIE
        self.cycle = self

    def __del__(self) -> None:
        run = self.run
        try:
            bad = run.patterns.mismatches(self.address, self.items)
            run.owner.pop(self.address, None)
            run.allocator.free(self.address)
            extra = run.allocator.alloc(self.items * _WORD)
            run.patterns.write(extra, self.items)
            run.allocator.free(extra)
            with run.lock:
                run.report.finalizer_frees += 1
                run.report.frees += 2
                run.report.allocations += 1
                run.report.mismatched_bytes += bad
            if bad:
                run.fail(f"finalizer: block {self.address:#x} of {self.items} words: {bad} bad")
        except BaseException as error:  # a finalizer cannot raise: the run records it
            run.fail(f"finalizer of {self.address:#x}: {error!r}")


def _stress_thread(run: _Run, tid: int, seed: int) -> None:
    """mimalloc's ``stress(tid)``."""
    rng = random.Random(seed)
    randrange = rng.randrange
    config = run.config
    allocs = round(100 * config.scale * (tid % 8 + 1))
    retain = allocs // 2
    data = _PointerArray(run)
    retained = _PointerArray(run, max(retain, 1))
    max_item_shift, max_retained_shift = 5, 8
    try:
        while allocs > 0 or retain > 0:
            if retain == 0 or (randrange(100) <= 50 and allocs > 0):
                allocs -= 1
                items = 1 << randrange(max_item_shift)
                data.append(run.alloc_items(items - randrange(items // 4 + 1), rng, tid))
            else:
                items = 1 << randrange(max_retained_shift)
                retained.append(run.alloc_items(items - randrange(items // 4 + 1), rng, tid))
                retain -= 1
            view = data.view
            if view is not None and data.top and randrange(100) <= 66:
                index = randrange(data.top)
                run.free_items(view[index], tid)
                view[index] = 0
            if view is not None and data.top and randrange(100) <= 25:
                index = randrange(data.top)
                slot = randrange(TRANSFERS)
                with run.transfer_lock:  # mimalloc's atomic exchange
                    view[index], run.transfer[slot] = run.transfer[slot], view[index]
                with run.lock:
                    run.report.transfers += 1
            if config.finalizers and randrange(100) < 5:
                address = run.alloc_items(1 << randrange(max_item_shift), rng, tid)
                run.owner.pop(address, None)
                _Doomed(run, address)
        for array_ in (retained, data):
            view = array_.view
            for index in range(array_.top):
                run.free_items(view[index] if view is not None else 0, tid)
            array_.release()
    except BaseException as error:
        run.fail(f"thread {tid}: {error!r}")


def run_stress(
    make: Callable[[], pyslab.SlabAllocator],
    config: StressConfig = StressConfig(),
    policy: str = "",
) -> StressReport:
    """Run the stress test on a fresh allocator from ``make``; close it and report.

    The allocator is validated after every round; a :class:`~pyslab.CorruptionError` there is
    recorded and ends the run. Complexity: about ``threads * rounds * 450 * scale`` blocks.
    """
    allocator = make()
    run = _Run(allocator, config, policy or allocator.policy.name)
    report = run.report
    rng = random.Random(config.seed)
    old_interval = sys.getswitchinterval()
    old_threshold = gc.get_threshold()
    started = time.perf_counter()
    sys.setswitchinterval(config.switch_interval)
    if config.finalizers:
        gc.set_threshold(1, 10, 10)
    try:
        for round_ in range(config.rounds):
            threads = [
                threading.Thread(
                    target=_stress_thread, args=(run, tid, rng.getrandbits(64)),
                    name=f"stress-{round_}-{tid}",
                )
                for tid in range(config.threads)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            gc.collect()
            last = round_ + 1 == config.rounds
            for slot in range(TRANSFERS):
                if last or rng.randrange(100) <= 50:
                    address, run.transfer[slot] = run.transfer[slot], 0
                    run.free_items(address, -1)
            stats = allocator.stats()
            report.peak_live = max(report.peak_live, sum(c.peak_used for c in stats.classes))
            try:
                allocator.validate()
            except pyslab.CorruptionError as error:
                run.fail(f"round {round_}: {error}")
            if report.errors:
                break
    finally:
        sys.setswitchinterval(old_interval)
        gc.set_threshold(*old_threshold)
        gc.collect()
        stats = allocator.stats()
        report.live_after = stats.live_blocks
        report.reentrant_allocs = stats.reentrant_allocs
        report.deferred_frees = stats.deferred_frees
        if allocator.deferred_errors:
            report.errors.extend(f"deferred: {e}" for e in allocator.deferred_errors)
        for hooks in allocator.policy.policies:
            if isinstance(hooks, ReentrantHooks):
                report.hook_pairs = hooks.pairs
                report.hook_normal_path = sum(hooks.normal.values())
                report.errors.extend(repr(e) for e in hooks.errors)
        allocator.close()
        report.mapped_after_close = allocator.page_source.mapped_bytes
        report.seconds = time.perf_counter() - started
    return report


def make_allocator(spec: str) -> Callable[[], pyslab.SlabAllocator]:
    """A factory of fresh allocators for ``spec``, which may name ``reentrant-hooks``."""

    def make() -> pyslab.SlabAllocator:
        parts, _ = with_hooks(spec)
        return pyslab.SlabAllocator(policy=parts)

    return make


def stress_configurations() -> list[str]:
    """Every configuration of ``tests/support.py``, then every other registered policy alone.

    The core's lock makes every composition thread-safe, so every one is stressed: a policy a
    later issue registers is picked up without editing this suite. A policy that cannot be
    built without parameters is left out.
    """
    specs = list(CONFIGURATIONS)
    mentioned = {name for spec in specs for name in spec.split("+")}
    for name in pyslab.policies():
        if name in mentioned:
            continue
        try:
            pyslab.make_policy(name)
        except pyslab.PolicyError:
            continue
        specs.append(name)
    return specs


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: run the stress test under each configuration, print one line each."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.reliability.stress", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--threads", type=int, default=int(os.environ.get("PYSLAB_STRESS_THREADS", "8"))
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--scale", type=float, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-large", action="store_true", help="no large-fallback blocks")
    parser.add_argument("--finalizers", action="store_true", help="re-entrant finalizers too")
    parser.add_argument(
        "--policy", action="append",
        help=f"a configuration (repeatable; may include {HOOKS_NAME}); default: all",
    )
    args = parser.parse_args(argv)
    config = StressConfig(
        threads=args.threads, rounds=args.rounds, scale=args.scale, seed=args.seed,
        large=not args.no_large, finalizers=args.finalizers,
    )
    specs = args.policy or [*stress_configurations(), f"dict-lookup+{HOOKS_NAME}"]
    failed = 0
    for spec in specs:
        report = run_stress(make_allocator(spec), config, spec)
        print(report.summary(), flush=True)
        failed += not report.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
