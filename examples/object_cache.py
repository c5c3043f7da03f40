"""An object cache in the manner of Bonwick's kmem_cache: construct once, reuse many times.

Each ``Session`` carries a lookup table that takes a while to fill. The cache fills it once per
object, when the object's slab is built; freed sessions keep their table, so eight thousand
allocations cost a few dozen constructions. ``reap()`` gives empty slabs back, running the
destructor on each of their objects.

Run: python examples/object_cache.py
"""

from __future__ import annotations

import ctypes

import pyslab


class Session(ctypes.Structure):
    _fields_ = [
        ("ready", ctypes.c_uint32),
        ("user", ctypes.c_uint32),
        ("table", ctypes.c_uint8 * 56),  # a 64-byte Session: 16 to a 1024-byte slab
    ]


def build_table(session: Session) -> None:
    """The constructor: the expensive part, done once per object."""
    for i in range(len(session.table)):
        session.table[i] = (i * 167 + 13) & 0xFF
    session.ready = 1


def tear_down(session: Session) -> None:
    """The destructor: runs when the object's slab is reclaimed."""
    session.ready = 0


def main() -> None:
    with pyslab.SlabAllocator() as allocator:
        sessions = pyslab.ObjectCache(
            allocator, Session, ctor=build_table, dtor=tear_down, name="session"
        )
        print(f"cache {sessions.name!r}: {sessions.objects_per_slab} sessions per "
              f"{sessions.slab_bytes}-byte slab")

        for user in range(1000):  # a thousand short-lived sessions, eight at a time
            batch = [sessions.alloc() for _ in range(8)]
            for session in batch:
                assert session.ready == 1 and session.table[1] == 180
                session.user = user
            for session in batch:
                session.user = 0  # back to the constructed state before freeing
                sessions.free(session)

        held = [sessions.alloc() for _ in range(40)]  # a burst: more slabs get built
        for session in held:
            sessions.free(session)
        stats = sessions.stats()
        print(f"{stats.allocations} allocations, {stats.constructed} constructions, "
              f"{stats.slabs} slabs ({stats.empty_slabs} empty), peak {stats.peak_live} live")

        print(f"reap(): {sessions.reap()} slabs reclaimed, "
              f"{sessions.stats().destroyed} sessions destroyed")
        for entry in allocator.stats().caches:
            print(f"allocator stats: cache {entry.name!r} of {entry.type_name}, "
                  f"{entry.live_objects} live, {entry.held_bytes} bytes held")

        stranger = Session()
        try:
            sessions.free(stranger)
        except pyslab.InvalidFreeError as error:
            print(f"caught: {error}")
        sessions.close()


if __name__ == "__main__":
    main()
