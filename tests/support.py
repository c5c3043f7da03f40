"""Helpers shared by the tests: configurations, block patterns, and heap snapshots."""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine

import pyslab
import pyslab.core

CONFIGURATIONS: tuple[str, ...] = (
    "first-fit",
    "dict-lookup",
    "reclaim",
    "dict-lookup+reclaim",
    "reclaim+dict-lookup",
    "stats",
    "dict-lookup+stats",
    "fullest-first",
    "fullest-first+reclaim",
    "address-mask+reclaim",
    "address-mask+fullest-first+reclaim+stats",
)
"""Every built-in policy alone and in every composition that makes sense.

``coloring`` is not listed: the default classes (powers of two) leave no slack in a 4 KiB slab,
so it would change nothing here; tests/test_plugin_coloring.py runs it on classes that leave
slack."""


FRONT_END_CONFIGURATIONS: tuple[str, ...] = (
    "thread-cache",
    "dict-lookup+reclaim+thread-cache",
)
"""Configurations with a front end: blocks may sit in a cache (``ClassStats.cached_slots``)
and ``realloc`` always moves, so the tests of the core's own bookkeeping do not apply as such;
the state machine, the thread tests and the front end's own tests run them."""


def pattern_byte(block_id: int) -> int:
    """A distinct, never-zero fill byte per block."""
    return block_id % 251 + 1


def fill_block(address: int, size: int, byte: int) -> None:
    ctypes.memset(address, byte, size)


def block_intact(address: int, size: int, byte: int) -> bool:
    return ctypes.string_at(address, size) == bytes([byte]) * size


@dataclass(frozen=True)
class HeapSnapshot:
    """Everything observable about an allocator: stats, every slab's fields, live bytes."""

    stats: pyslab.core.AllocatorStats
    slabs: tuple[tuple[int, int, int, int, int, int], ...]
    contents: tuple[bytes, ...]


def snapshot(allocator: pyslab.SlabAllocator, blocks: dict[int, int]) -> HeapSnapshot:
    """Capture the allocator and the bytes of ``blocks`` (address -> size)."""
    slabs = tuple(
        (s.base, s.free, s.bump, s.used, s.live, s.size_class.slot_size)
        for s in allocator.slabs()
    )
    contents = tuple(ctypes.string_at(a, n) for a, n in sorted(blocks.items()))
    return HeapSnapshot(allocator.stats(), slabs, contents)


def mapped_ranges() -> list[tuple[int, int]]:
    """The address ranges this process has mapped, read from /proc/self/maps."""
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            start, end = line.split()[0].split("-")
            ranges.append((int(start, 16), int(end, 16)))
    return ranges


def is_mapped(address: int) -> bool:
    return any(start <= address < end for start, end in mapped_ranges())


def run_threads(worker: Callable[[int], None], count: int) -> None:
    """Run ``worker(0..count-1)`` on threads started together; re-raise what one raised."""
    failures: list[BaseException] = []
    start = threading.Barrier(count)

    def body(tag: int) -> None:
        start.wait()
        try:
            worker(tag)
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=body, args=(tag,)) for tag in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


def state_machine_case(
    machine: type[RuleBasedStateMachine], configuration: str, *, examples: int, steps: int = 40
) -> Any:
    """A unittest case running ``machine`` with its ``configuration`` class attribute set.

    Named after the machine and the configuration, so each configuration is its own test.
    """
    name = configuration.replace("+", "_").replace("-", "_")
    configured = type(f"{machine.__name__}_{name}", (machine,), {"configuration": configuration})
    case = configured.TestCase  # type: ignore[attr-defined]
    case.settings = settings(
        max_examples=examples, stateful_step_count=steps, deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    return case
