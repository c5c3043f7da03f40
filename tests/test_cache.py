"""Object caches (SlabAllocator.cache): construction per slab, constructed state, reclaim,
bad frees, statistics by name, threads, and the examples."""

from __future__ import annotations

import ctypes
import gc
import runpy
from collections.abc import Iterator
from pathlib import Path

import pytest

import pyslab
import pyslab.objects
from tests.support import run_threads

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


class Conn(ctypes.Structure):
    _fields_ = [
        ("magic", ctypes.c_uint32),
        ("state", ctypes.c_int32),
        ("owner", ctypes.c_int64),
        ("buffer", ctypes.c_char * 48),
    ]


MAGIC = 0xC0FFEE


class Counted:
    """A constructor and a destructor that count their calls and mark the objects."""

    def __init__(self) -> None:
        self.constructed: list[int] = []
        self.destroyed: list[int] = []

    def ctor(self, conn: Conn) -> None:
        conn.magic = MAGIC
        conn.state = 1
        self.constructed.append(ctypes.addressof(conn))

    def dtor(self, conn: Conn) -> None:
        assert conn.magic == MAGIC, "dtor sees the object in its constructed state"
        conn.magic = 0
        self.destroyed.append(ctypes.addressof(conn))


@pytest.fixture
def heap() -> Iterator[pyslab.SlabAllocator]:
    with pyslab.SlabAllocator() as allocator:
        yield allocator
        for cache in pyslab.objects.caches(allocator):
            cache.validate()
        allocator.validate()


@pytest.fixture
def counted() -> Counted:
    return Counted()


@pytest.fixture
def conns(heap: pyslab.SlabAllocator, counted: Counted) -> pyslab.ObjectCache[Conn]:
    return pyslab.ObjectCache(heap, Conn, ctor=counted.ctor, dtor=counted.dtor, name="conn")


# --- construction -------------------------------------------------------------------------------


def test_the_constructor_runs_once_per_object_when_its_slab_is_built(
    conns: pyslab.ObjectCache[Conn], counted: Counted
) -> None:
    assert counted.constructed == []  # nothing is set up before the first alloc
    per_slab = conns.objects_per_slab
    first = conns.alloc()
    assert len(counted.constructed) == per_slab  # the whole slab, at once
    assert first.magic == MAGIC
    objects = [first] + [conns.alloc() for _ in range(per_slab - 1)]
    assert len(counted.constructed) == per_slab  # no construction on alloc
    assert sorted(ctypes.addressof(o) for o in objects) == sorted(counted.constructed)
    extra = conns.alloc()  # the slab is full: a second one is built
    assert len(counted.constructed) == 2 * per_slab
    for obj in [*objects, extra]:
        conns.free(obj)
    assert counted.destroyed == []  # freeing destroys nothing


def test_a_freed_object_comes_back_as_its_last_user_left_it(
    conns: pyslab.ObjectCache[Conn], counted: Counted
) -> None:
    conn = conns.alloc()
    conn.owner = 42
    conn.buffer = b"kept between uses"
    address = ctypes.addressof(conn)
    conns.free(conn)
    again = conns.alloc()  # the last freed object is handed out first
    assert ctypes.addressof(again) == address
    assert (again.magic, again.owner, again.buffer) == (MAGIC, 42, b"kept between uses")
    assert len(counted.constructed) == conns.objects_per_slab
    conns.free(again)


def test_objects_live_in_blocks_of_the_allocator(
    heap: pyslab.SlabAllocator, conns: pyslab.ObjectCache[Conn]
) -> None:
    conn = conns.alloc()
    base = ctypes.addressof(conn) & -conns.slab_bytes
    assert heap.owns(base)
    assert heap.usable_size(base) >= conns.slab_bytes
    assert conns.slab_bytes >= conns.objects_per_slab * ctypes.sizeof(Conn)
    assert conns.owns(conn)
    conns.free(conn)
    assert not conns.owns(conn)


def test_a_failing_constructor_undoes_the_slab(heap: pyslab.SlabAllocator) -> None:
    built: list[int] = []
    destroyed: list[int] = []

    def ctor(value: ctypes.c_int) -> None:
        if len(built) == 5:
            raise RuntimeError("no more")
        built.append(ctypes.addressof(value))

    def dtor(value: ctypes.c_int) -> None:
        destroyed.append(ctypes.addressof(value))

    cache = pyslab.ObjectCache(heap, ctypes.c_int, ctor=ctor, dtor=dtor)
    with pytest.raises(RuntimeError, match="no more"):
        cache.alloc()
    assert destroyed == built  # the five constructed objects were destroyed
    gc.collect()
    assert heap.stats().live_blocks == 0  # and the block went back
    assert cache.stats().slabs == 0
    cache.close()


# --- reclaim ------------------------------------------------------------------------------------


def test_reap_destroys_every_object_of_each_empty_slab_and_only_those(
    heap: pyslab.SlabAllocator, conns: pyslab.ObjectCache[Conn], counted: Counted
) -> None:
    per_slab = conns.objects_per_slab
    objects = [conns.alloc() for _ in range(3 * per_slab)]
    kept = objects[-1]
    for obj in objects[:-1]:
        conns.free(obj)
    before = heap.stats().live_blocks
    assert conns.reap() == 2  # the slab holding `kept` is partial: it stays
    assert sorted(counted.destroyed) == sorted(
        a for a in counted.constructed
        if a & -conns.slab_bytes != ctypes.addressof(kept) & -conns.slab_bytes
    )
    assert len(set(counted.destroyed)) == 2 * per_slab
    del objects, obj
    gc.collect()
    assert heap.stats().live_blocks == before - 2
    assert conns.reap() == 0
    conns.free(kept)
    assert conns.reap() == 1
    assert len(counted.destroyed) == 3 * per_slab


def test_a_stale_reference_keeps_the_memory_of_a_reclaimed_slab(
    heap: pyslab.SlabAllocator, conns: pyslab.ObjectCache[Conn]
) -> None:
    conn = conns.alloc()
    base = ctypes.addressof(conn) & -conns.slab_bytes
    conns.free(conn)
    conns.reap()
    assert heap.owns(base)  # `conn` still refers to it: not freed under it
    assert conn.magic == 0  # the destructor ran
    del conn
    gc.collect()
    assert not heap.owns(base)


def test_close_refuses_while_objects_are_allocated_then_destroys_everything(
    heap: pyslab.SlabAllocator, counted: Counted
) -> None:
    cache = pyslab.ObjectCache(heap, Conn, ctor=counted.ctor, dtor=counted.dtor)
    conn = cache.alloc()
    with pytest.raises(pyslab.PyslabError, match="1 objects allocated"):
        cache.close()
    cache.free(conn)
    cache.close()
    cache.close()
    assert sorted(counted.destroyed) == sorted(counted.constructed)
    assert cache.closed and pyslab.objects.caches(heap) == ()
    with pytest.raises(pyslab.AllocatorClosedError):
        cache.alloc()


def test_the_allocator_closing_first_stops_the_cache_without_touching_its_memory() -> None:
    allocator = pyslab.SlabAllocator()
    counted = Counted()
    cache = pyslab.ObjectCache(allocator, Conn, ctor=counted.ctor, dtor=counted.dtor)
    conn = cache.alloc()
    allocator.close()
    with pytest.raises(pyslab.AllocatorClosedError):
        cache.alloc()
    with pytest.raises(pyslab.AllocatorClosedError):
        cache.free(conn)
    with pytest.raises(pyslab.AllocatorClosedError):
        pyslab.ObjectCache(allocator, Conn)
    assert counted.destroyed == []


# --- bad frees ----------------------------------------------------------------------------------


def test_a_foreign_object_is_refused_naming_its_address(
    conns: pyslab.ObjectCache[Conn],
) -> None:
    mine = conns.alloc()
    stranger = Conn()
    before = conns.stats()
    with pytest.raises(pyslab.InvalidFreeError) as caught:
        conns.free(stranger)
    address = ctypes.addressof(stranger)
    assert caught.value.address == address
    assert f"{address:#x}" in str(caught.value) and "'conn'" in str(caught.value)
    assert not isinstance(caught.value, pyslab.DoubleFreeError)
    assert conns.stats() == before
    conns.free(mine)


def test_a_double_free_is_refused_naming_the_address(conns: pyslab.ObjectCache[Conn]) -> None:
    conn = conns.alloc()
    conns.free(conn)
    before = conns.stats()
    with pytest.raises(pyslab.DoubleFreeError, match=f"{ctypes.addressof(conn):#x}") as caught:
        conns.free(conn)
    assert caught.value.address == ctypes.addressof(conn)
    assert conns.stats() == before


def test_an_address_inside_an_object_is_refused(conns: pyslab.ObjectCache[Conn]) -> None:
    conn = conns.alloc()
    inside = Conn.from_address(ctypes.addressof(conn) + 8)
    with pytest.raises(pyslab.InvalidFreeError, match="inside the object") as caught:
        conns.free(inside)
    assert not isinstance(caught.value, pyslab.DoubleFreeError)
    assert conns.owns(conn)
    conns.free(conn)


def test_an_object_of_another_cache_is_refused(
    heap: pyslab.SlabAllocator, conns: pyslab.ObjectCache[Conn]
) -> None:
    other = pyslab.ObjectCache(heap, Conn, name="other")
    theirs = other.alloc()
    with pytest.raises(pyslab.InvalidFreeError, match="not an object of cache 'conn'"):
        conns.free(theirs)
    other.free(theirs)
    other.close()


def test_an_object_of_the_wrong_type_is_a_type_error(conns: pyslab.ObjectCache[Conn]) -> None:
    with pytest.raises(TypeError, match="Conn"):
        conns.free(ctypes.c_int(3))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        conns.free(None)  # type: ignore[arg-type]


# --- names and statistics -----------------------------------------------------------------------


def test_caches_appear_by_name_in_the_allocator_stats(
    heap: pyslab.SlabAllocator, conns: pyslab.ObjectCache[Conn]
) -> None:
    ints = pyslab.ObjectCache(heap, ctypes.c_int)
    held = [conns.alloc() for _ in range(3)]
    conns.free(held.pop())
    ints.free(ints.alloc())
    by_name = {c.name: c for c in heap.stats().caches}
    assert list(by_name) == ["conn", "c_int"]
    conn_stats = by_name["conn"]
    assert (conn_stats.type_name, conn_stats.object_size) == ("Conn", ctypes.sizeof(Conn))
    assert (conn_stats.live_objects, conn_stats.peak_live, conn_stats.allocations) == (2, 3, 3)
    assert (conn_stats.slabs, conn_stats.empty_slabs) == (1, 0)
    assert conn_stats.constructed == conns.objects_per_slab == conn_stats.total_objects
    assert conn_stats.free_objects == conns.objects_per_slab - 2
    assert conn_stats.held_bytes == conns.slab_bytes
    assert by_name["c_int"].empty_slabs == 1
    assert heap.stats().to_dict()["caches"][0]["name"] == "conn"  # type: ignore[index]
    for conn in held:
        conns.free(conn)
    ints.close()
    assert [c.name for c in heap.stats().caches] == ["conn"]


def test_default_names_are_made_unique_and_explicit_ones_must_be(
    heap: pyslab.SlabAllocator,
) -> None:
    first, second = pyslab.ObjectCache(heap, Conn), pyslab.ObjectCache(heap, Conn)
    assert (first.name, second.name) == ("Conn", "Conn-2")
    with pytest.raises(ValueError, match="'Conn'"):
        pyslab.ObjectCache(heap, ctypes.c_int, name="Conn")
    with pytest.raises(ValueError):
        pyslab.ObjectCache(heap, ctypes.c_int, name="")
    with pytest.raises(TypeError):
        pyslab.ObjectCache(heap, ctypes.c_int, name=3)  # type: ignore[arg-type]
    first.close()
    # A closed cache's name is free again.
    assert pyslab.ObjectCache(heap, ctypes.c_int, name="Conn").name == "Conn"


def test_bad_cache_arguments_are_refused(heap: pyslab.SlabAllocator) -> None:
    with pytest.raises(TypeError):
        pyslab.ObjectCache(heap, int)  # type: ignore[type-var]
    with pytest.raises(TypeError, match="ctor"):
        pyslab.ObjectCache(heap, ctypes.c_int, ctor=3)  # type: ignore[arg-type]
    assert pyslab.objects.caches(heap) == ()


# --- sizes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("ctype", [ctypes.c_char, ctypes.c_double, ctypes.c_char * 200])
def test_objects_of_any_size_are_aligned_and_round_trip(
    heap: pyslab.SlabAllocator, ctype: type[ctypes.c_char]
) -> None:
    cache = pyslab.ObjectCache(heap, ctype)
    objects = [cache.alloc() for _ in range(2 * cache.objects_per_slab + 1)]
    addresses = {ctypes.addressof(o) for o in objects}
    assert len(addresses) == len(objects)
    assert all(a % ctypes.alignment(ctype) == 0 for a in addresses)
    for obj in objects:
        cache.free(obj)
    cache.validate()
    cache.close()


# --- threads and re-entrancy --------------------------------------------------------------------


def test_threads_never_hold_the_same_object(
    heap: pyslab.SlabAllocator, conns: pyslab.ObjectCache[Conn], fast_switching: None
) -> None:
    errors: list[str] = []

    def worker(tag: int) -> None:
        held: list[Conn] = []
        for step in range(5000):
            conn = conns.alloc()
            if conn.magic != MAGIC or conn.owner != 0:
                errors.append(f"thread {tag} got {conn.owner=} {conn.magic=:#x}")
            conn.owner = tag
            held.append(conn)
            if step % 2 or len(held) > 20:
                for _ in range(len(held) // 2 + 1):
                    victim = held.pop(0)
                    if victim.owner != tag:
                        errors.append(f"thread {tag}'s object was taken by {victim.owner}")
                    victim.owner = 0  # back to the constructed state
                    conns.free(victim)
        for conn in held:
            conn.owner = 0
            conns.free(conn)

    run_threads(lambda tag: worker(tag + 1), 4)  # owner 0 means "free"
    assert errors == []
    stats = conns.stats()
    assert stats.live_objects == 0 and stats.allocations == 4 * 5000
    conns.validate()


def test_a_free_that_interrupts_a_call_of_the_cache_is_deferred(
    heap: pyslab.SlabAllocator, conns: pyslab.ObjectCache[Conn]
) -> None:
    # What a signal handler sees: the cache mid-update on this thread (marked busy).
    first, second = conns.alloc(), conns.alloc()
    with heap._lock:
        conns._busy = True
        try:
            conns.free(first)  # deferred
            extra = conns.alloc()  # served from a slab of its own, linked later
        finally:
            conns._busy = False
    assert conns.owns(first)  # not yet settled
    conns.free(second)  # the next call settles the backlog
    assert not conns.owns(first) and conns.owns(extra)
    assert conns.stats().slabs == 2
    conns.validate()
    conns.free(extra)


def test_a_deferred_bad_free_is_warned_and_recorded(
    heap: pyslab.SlabAllocator, conns: pyslab.ObjectCache[Conn]
) -> None:
    conn, other = conns.alloc(), conns.alloc()
    conns.free(conn)
    with heap._lock:
        conns._busy = True
        try:
            conns.free(conn)  # a double free, found only when settled
        finally:
            conns._busy = False
    with pytest.warns(pyslab.PyslabWarning, match="double free"):
        conns.free(other)  # settles the backlog
    assert isinstance(conns.deferred_errors[0], pyslab.DoubleFreeError)


# --- examples -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["object_cache.py", "packet_pool.py"])
def test_the_examples_run(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    assert capsys.readouterr().out
