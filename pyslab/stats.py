"""Typed snapshots of an allocator's state, as returned by ``SlabAllocator.stats()``."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["AllocatorStats", "ClassStats"]


@dataclass(frozen=True)
class ClassStats:
    """One size class at the moment of the snapshot."""

    slot_size: int
    """Bytes per slot."""
    slabs: int
    """Slabs the class holds, empty ones included."""
    empty_slabs: int
    """Slabs with no live block (kept as a cache by the policy)."""
    total_slots: int
    """Slots in all those slabs."""
    used_slots: int
    """Live blocks."""
    peak_used: int
    """The most live blocks the class ever held at once."""

    @property
    def free_slots(self) -> int:
        """Slots not in use."""
        return self.total_slots - self.used_slots


@dataclass(frozen=True)
class AllocatorStats:
    """The whole allocator at the moment of the snapshot."""

    policy: str
    """The policy composition, as ``a+b``."""
    slab_size: int
    classes: tuple[ClassStats, ...]
    """One entry per size class, smallest first."""
    mapped_bytes: int
    """Bytes of slab memory held from the page source."""
    large_blocks: int
    """Blocks served by the system allocator (too large, or an alignment no class gives)."""
    large_bytes: int
    """Bytes requested by those blocks."""
    reentrant_allocs: int = 0
    """Allocations made re-entrantly (from a finalizer or signal handler inside a call) and
    served by the system fallback, since the allocator was built."""
    deferred_frees: int = 0
    """Frees made re-entrantly and completed when the interrupted call ended."""

    @property
    def live_blocks(self) -> int:
        """Live slab blocks plus live large blocks."""
        return sum(c.used_slots for c in self.classes) + self.large_blocks

    @property
    def slabs(self) -> int:
        """Slabs in every class."""
        return sum(c.slabs for c in self.classes)

    def to_dict(self) -> dict[str, object]:
        """The snapshot as plain data, ready for ``json.dumps``."""
        return asdict(self)
