"""The revert hooks of the block observers (``stats``, ``fullest-first``), without fault injection.

A test policy that observes blocks without the revert hooks raises ``MemoryError`` on demand:
it is told after the policies that can revert (whatever its place in the composition), so
each of its failures makes the composed hook revert those, and the core undo its own writes.
After every failure, the observers' books must be what they were before the call (but for the
stale entries ``fullest-first`` and ``stats`` keep aside, which no reader sees) and
``validate()`` must pass.
"""

from __future__ import annotations

import ctypes
import random
from typing import Any

import pytest

import pyslab
from pyslab import Policy
from pyslab.core import MemorySlab
from pyslab.policy import parse_policies, resolve
from pyslab.policy.validation import HOOKS
from pyslab_plugins.fullest_first import FullestFirst
from pyslab_plugins.stats import Stats


class Failing(Policy):
    """Observes every block, without reverts; raises MemoryError when armed."""

    name = "failing-observer"
    armed = False

    def block_allocated(self, slab: MemorySlab, address: int, size: int) -> None:
        if self.armed:
            raise MemoryError("armed")

    def block_freed(self, slab: MemorySlab, address: int) -> None:
        if self.armed:
            raise MemoryError("armed")


class FailingFrees(Policy):
    """Observes frees only, without a revert; raises MemoryError when armed."""

    name = "failing-frees"
    armed = False

    def block_freed(self, slab: MemorySlab, address: int) -> None:
        if self.armed:
            raise MemoryError("armed")


def _books(heap: pyslab.SlabAllocator) -> object:
    """What the observers know, as readers see it (``fullest-first``'s stale entry aside)."""
    state: list[object] = []
    for policy in heap.policy.policies:
        if isinstance(policy, FullestFirst):
            p: Any = policy
            for index, buckets in enumerate(p._buckets):
                stale = p._stale[index]
                state.append(sorted(
                    (s.serial, free) for free, bucket in enumerate(buckets) for s in bucket
                    if s is not stale.slab or free != stale.free
                ))
            state.append(list(p._masks))
        elif isinstance(policy, Stats):
            s: Any = policy
            state.append([(c.allocations, c.frees, c.requested) for c in s._classes])
            state.append({a: n for a, n in s._requested.items() if a != s._forgotten})
    return state


def _currents(heap: pyslab.SlabAllocator) -> list[int | None]:
    return [c.current.serial if c.current else None for c in heap.size_classes]


def _same_currents(before: list[int | None], after: list[int | None]) -> bool:
    """A failed take may leave a class that had no ``current`` with one (the slab its refill
    selected or mapped, which stays: a valid state); one that had a ``current`` keeps it."""
    return all(b is None or b == a for b, a in zip(before, after, strict=True))


@pytest.mark.parametrize("spec", ["fullest-first+reclaim+stats", "stats+fullest-first",
                                  "fullest-first", "stats"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_later_observer_failing_leaves_every_observer_as_it_was(spec: str, seed: int) -> None:
    rng = random.Random(seed)
    failing = Failing()
    with pyslab.SlabAllocator(policy=[*parse_policies(spec), failing]) as heap:
        live: list[int] = []
        failures = 0
        for _ in range(3000):
            allocating = not live or rng.random() < 0.55
            before, count = _books(heap), heap.stats().live_blocks
            currents = _currents(heap)
            failing.armed = rng.random() < 0.3
            try:
                if allocating:
                    live.append(heap.alloc(rng.choice((5, 24, 64, 64, 200))))
                else:
                    heap.free(live.pop(rng.randrange(len(live))) if not failing.armed
                              else live[rng.randrange(len(live))])
            except MemoryError:
                failures += 1
                assert _books(heap) == before
                assert _same_currents(currents, _currents(heap))
                assert heap.stats().live_blocks == count
            finally:
                failing.armed = False
            if rng.random() < 0.05:
                heap.validate()
        heap.validate()
        assert failures > 500
        for address in live:
            heap.free(address)
        heap.validate()


@pytest.mark.parametrize("spec", ["stats", "fullest-first+reclaim", "fullest-first+stats"])
def test_a_move_whose_old_block_cannot_be_freed_is_undone_without_the_public_free(
    spec: str,
) -> None:
    failing = FailingFrees()
    with pyslab.SlabAllocator(policy=[*parse_policies(spec), failing]) as heap:
        assert heap.policy.revert_block_allocated is not None
        blocks = [heap.alloc(24) for _ in range(70)]  # a full slab, then a partial one
        old = blocks[-1]
        ctypes.memset(old, 0x5A, 24)
        before, count = _books(heap), heap.stats().live_blocks
        currents = _currents(heap)
        failing.armed = True
        with pytest.raises(MemoryError):
            heap.realloc(old, 200)
        failing.armed = False
        assert _books(heap) == before
        assert _same_currents(currents, _currents(heap))
        assert heap.stats().live_blocks == count
        assert ctypes.string_at(old, 24) == b"\x5a" * 24
        heap.validate()
        new = heap.realloc(old, 200)
        assert ctypes.string_at(new, 24) == b"\x5a" * 24
        heap.validate()


def test_observers_that_can_revert_are_told_first_and_reverted_last_first() -> None:
    log: list[str] = []

    class Plain(Policy):
        name = "plain"

        def block_allocated(self, slab: MemorySlab, address: int, size: int) -> None:
            log.append("plain")
            raise MemoryError

    class Undoable(Policy):
        name = "undoable"

        def block_allocated(self, slab: MemorySlab, address: int, size: int) -> None:
            log.append(self.name)

        def revert_block_allocated(self, slab: MemorySlab, address: int, size: int) -> None:
            log.append(f"revert {self.name}")

    class Other(Undoable):
        name = "other"

    resolved = resolve([*parse_policies("first-fit"), Plain(), Undoable(), Other()])
    assert resolved.block_allocated is not None
    with pytest.raises(MemoryError):
        resolved.block_allocated(None, 0, 0)  # type: ignore[arg-type]
    assert log == ["undoable", "other", "plain", "revert other", "revert undoable"]
    assert resolved.revert_block_allocated is None  # plain cannot be reverted


def test_the_core_gets_a_revert_only_when_every_block_observer_has_one() -> None:
    assert resolve(parse_policies("dict-lookup+reclaim")).revert_block_allocated is None
    assert resolve(parse_policies("stats+fullest-first")).revert_block_allocated is not None
    assert resolve([*parse_policies("stats"), Failing()]).revert_block_allocated is None


def test_the_revert_hooks_are_hooks_and_their_misspellings_are_refused() -> None:
    assert {"revert_block_allocated", "revert_block_freed"} <= set(HOOKS)

    class Misspelt(Policy):
        name = "misspelt"

        def revert_block_free(self, slab: MemorySlab, address: int) -> None:
            pass

    with pytest.raises(pyslab.PolicyError, match="revert_block_freed"):
        resolve([*parse_policies("first-fit"), Misspelt()])
