"""Typed snapshots of an allocator's state, as returned by ``SlabAllocator.stats()``."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["AllocatorStats", "CacheStats", "ClassStats"]


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
    cached_slots: int = 0
    """Of the used slots, those a policy holds (per-thread caches) rather than a caller."""

    @property
    def free_slots(self) -> int:
        """Slots not in use."""
        return self.total_slots - self.used_slots


@dataclass(frozen=True)
class CacheStats:
    """One object cache (``pyslab.ObjectCache``) at the moment of the snapshot."""

    name: str
    """The cache's name, unique among its allocator's caches."""
    type_name: str
    """The ctypes type of its objects (``__name__``)."""
    object_size: int
    """Bytes per object (``sizeof``)."""
    objects_per_slab: int
    """Objects in each of its slabs."""
    slabs: int
    """Slabs the cache holds, empty ones included."""
    empty_slabs: int
    """Slabs with no object in use: constructed objects kept until ``reap()``."""
    live_objects: int
    """Objects allocated now."""
    peak_live: int
    """The most objects ever allocated at once."""
    allocations: int
    """Calls of ``alloc()`` served, since the cache was created."""
    constructed: int
    """Objects constructed (``ctor`` calls, when there is a ctor): ``objects_per_slab`` for
    each slab built. Set against ``allocations``: that many allocations cost this many
    constructions."""
    destroyed: int
    """Objects destroyed (``dtor`` calls, when there is a dtor) when their slab was reclaimed."""
    slab_bytes: int
    """Bytes per slab."""

    @property
    def total_objects(self) -> int:
        """Objects in all slabs, in use or not."""
        return self.slabs * self.objects_per_slab

    @property
    def free_objects(self) -> int:
        """Constructed objects ready to be handed out."""
        return self.total_objects - self.live_objects

    @property
    def held_bytes(self) -> int:
        """Bytes of the allocator's memory the cache holds."""
        return self.slabs * self.slab_bytes


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
    caches: tuple[CacheStats, ...] = ()
    """One entry per object cache (``pyslab.ObjectCache``), oldest first. Their slabs are
    blocks of this allocator, so their memory is also counted in ``classes`` or
    ``large_bytes``."""

    @property
    def live_blocks(self) -> int:
        """Blocks callers hold: used slots not held by a cache, plus large blocks."""
        return sum(c.used_slots - c.cached_slots for c in self.classes) + self.large_blocks

    @property
    def slabs(self) -> int:
        """Slabs in every class."""
        return sum(c.slabs for c in self.classes)

    def to_dict(self) -> dict[str, object]:
        """The snapshot as plain data, ready for ``json.dumps``."""
        return asdict(self)
