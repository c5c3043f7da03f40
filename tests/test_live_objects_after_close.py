"""Python objects over slab memory outlive their allocator's close() safely.

A ctypes object built over a block (a buffer, a ``new()`` object, a typed slab's view, an
object cache's object) keeps the block mapped after ``close()``: reading it returns its bytes,
never a crash. The slab (or large block) holding it is unmapped when its last owner dies, and
no other allocator is ever handed its addresses meanwhile.

Every scenario that would read unmapped memory if the allocator got this wrong runs in a child
interpreter: a crash there fails the test (its return code) instead of killing pytest.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pyslab

ROOT = Path(__file__).resolve().parent.parent
PAGE = pyslab.core.PAGE_SIZE

PRELUDE = """\
import ctypes, gc, itertools, sys
import pyslab
import pyslab.core
from pyslab.objects import ObjectCache
from tests.support import is_mapped

class Point(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int32), ("y", ctypes.c_int32)]

class Conn(ctypes.Structure):
    _fields_ = [("state", ctypes.c_int64), ("tag", ctypes.c_char * 8)]

def base_of(obj, slab_size=4096):
    return ctypes.addressof(obj) & -slab_size
"""


def run(scenario: str) -> str:
    """Run ``scenario`` in a child interpreter; return its output, failing on any crash."""
    code = PRELUDE + textwrap.dedent(scenario)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, (
        f"the child exited with {done.returncode} (a negative code is a signal: -11 is "
        f"SIGSEGV)\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    )
    return done.stdout


# --- each kind of object reads its bytes after close() --------------------------------------------


@pytest.mark.parametrize("policy", ["first-fit", "dict-lookup+reclaim", "thread-cache", "debug"])
def test_a_buffer_reads_its_bytes_after_close(policy: str) -> None:
    out = run(f"""
        heap = pyslab.SlabAllocator(policy={policy!r})
        made = pyslab.buffers(heap)
        small = made.create_string_buffer(b"hello")
        wide = made.create_unicode_buffer("w\\u00e9rld")
        large = made.create_string_buffer(b"L" * 5000)  # a large block, not a slab's
        heap.close()
        gc.collect()
        print(small.value, wide.value, large.value[:3], len(large.raw))
    """)
    assert out.split() == ["b'hello'", "wérld", "b'LLL'", "5001"]


def test_a_new_object_reads_its_fields_after_close() -> None:
    out = run("""
        heap = pyslab.SlabAllocator()
        point = pyslab.buffers(heap).new(Point, 3, y=4)
        number = pyslab.buffers(heap).new(ctypes.c_double, 2.5)
        heap.close()
        point.x += 10  # writable too: the memory is still the object's
        print(point.x, point.y, number.value)
    """)
    assert out.split() == ["13", "4", "2.5"]


@pytest.mark.parametrize("close_slab_first", [False, True])
def test_a_typed_slab_view_reads_its_slot_after_close(close_slab_first: bool) -> None:
    out = run(f"""
        heap = pyslab.SlabAllocator()
        slab = pyslab.Slab(Point, 4, allocator=heap)
        slab.insert((7, 8))
        view = slab.view(0)
        if {close_slab_first}:
            slab.close()
        heap.close()
        try:
            slab.get(0)
        except pyslab.AllocatorClosedError:
            print("refused")
        print(view.x, view.y)
    """)
    assert out.split() == ["refused", "7", "8"]


def test_an_object_cache_object_reads_its_state_after_close() -> None:
    out = run("""
        heap = pyslab.SlabAllocator()
        def ctor(conn):
            conn.state, conn.tag = 42, b"ready"
        cache = ObjectCache(heap, Conn, ctor)
        conn = cache.alloc()
        other = cache.alloc()
        cache.free(other)  # a free object: the cache held it, close() forgets it
        del other
        heap.close()
        print(conn.state, conn.tag)
        try:
            cache.alloc()
        except pyslab.AllocatorClosedError:
            print("refused")
    """)
    assert out.split() == ["42", "b'ready'", "refused"]


def test_an_object_of_a_reaped_cache_slab_reads_after_close() -> None:
    out = run("""
        heap = pyslab.SlabAllocator()
        cache = ObjectCache(heap, Conn, lambda c: setattr(c, "state", 9))
        conn = cache.alloc()
        cache.free(conn)
        assert cache.reap() == 1  # the slab left the cache; conn still holds its block
        heap.close()
        print(conn.state)
    """)
    assert out.split() == ["9"]


def test_a_buffer_made_while_installed_reads_after_uninstall_and_close() -> None:
    out = run("""
        heap = pyslab.install(policy="dict-lookup")
        buf = ctypes.create_string_buffer(b"installed")
        assert heap.owns(ctypes.addressof(buf))
        assert pyslab.uninstall() is heap
        heap.close()
        gc.collect()
        print(buf.value)
        del buf
        print(heap.stats().mapped_bytes)
    """)
    assert out.split() == ["b'installed'", "0"]


def test_a_buffer_in_a_reference_cycle_reads_after_close_and_is_collected() -> None:
    out = run("""
        heap = pyslab.SlabAllocator()
        buf = pyslab.buffers(heap).create_string_buffer(b"cycle")
        holder = [buf]
        holder.append(holder)
        base = base_of(buf)
        del buf
        heap.close()
        print(holder[0].value, is_mapped(base))
        del holder
        gc.collect()  # the cycle collector runs the buffer's callback
        print(is_mapped(base), heap.stats().mapped_bytes)
    """)
    assert out.split() == ["b'cycle'", "True", "False", "0"]


# --- memory goes when the last owner does ---------------------------------------------------------


def test_the_memory_is_unmapped_when_the_last_owner_dies() -> None:
    out = run("""
        heap = pyslab.SlabAllocator()
        made = pyslab.buffers(heap)
        buf = made.create_string_buffer(b"a")
        point = made.new(Point)
        slab = pyslab.Slab(ctypes.c_int, 2, allocator=heap)
        slab.insert(1)
        view = slab.view(0)
        cache = ObjectCache(heap, Conn)
        conn = cache.alloc()
        large = made.create_string_buffer(1 << 20)  # a block libc maps on its own
        bases = {base_of(o) for o in (buf, point, view, conn)}
        bases.add(ctypes.addressof(large))
        heap.close()
        print(all(map(is_mapped, bases)), heap.stats().mapped_bytes > 0)
        del buf, point, view, slab, conn, large
        print(any(map(is_mapped, bases)), heap.stats().mapped_bytes, heap.stats().large_blocks)
        heap.validate()
        print(pyslab.interop.live_objects())
    """)
    assert out.split() == ["True", "True", "False", "0", "0", "0"]


def test_a_slab_stays_mapped_until_its_last_retained_block_goes() -> None:
    out = run("""
        heap = pyslab.SlabAllocator()
        made = pyslab.buffers(heap)
        first, second = made.create_string_buffer(8), made.create_string_buffer(8)
        base = base_of(first)
        assert base_of(second) == base  # one slab holds both
        heap.close()
        print(heap.stats().mapped_bytes)
        del first
        second.value = b"still"
        print(is_mapped(base), second.value)
        del second
        print(is_mapped(base), heap.stats().mapped_bytes)
    """)
    assert out.split() == ["4096", "True", "b'still'", "False", "0"]


@pytest.mark.parametrize("order", ["forward", "backward", "interleaved"])
def test_objects_may_die_in_any_order(order: str) -> None:
    out = run(f"""
        heap = pyslab.SlabAllocator(policy="dict-lookup")
        made = pyslab.buffers(heap)
        cache = ObjectCache(heap, Conn, lambda c: setattr(c, "state", 5))
        slab = pyslab.Slab(Point, 3, allocator=heap)
        for i in range(3):
            slab.insert((i, -i))
        sizes = (3, 40, 2000)
        owners = [made.create_string_buffer(bytes([65 + i]) * n) for i, n in enumerate(sizes)]
        owners += [made.new(Point, 1, 2), cache.alloc(), cache.alloc()]
        owners += [slab.view(i) for i in range(3)]
        del slab
        bases = {{base_of(o) for o in owners if ctypes.sizeof(o) <= 1024}}  # slab blocks
        expected = [bytes(o) for o in owners]
        heap.close()
        order = {order!r}
        indices = list(range(len(owners)))
        if order == "backward":
            indices.reverse()
        elif order == "interleaved":
            indices = indices[::2] + indices[1::2]
        survivors = dict(enumerate(owners))
        del owners
        for index in indices:
            # every survivor still reads its bytes (a generator: it keeps no survivor bound)
            assert all(bytes(o) == expected[k] for k, o in survivors.items()), index
            del survivors[index]
            gc.collect()
        print(any(map(is_mapped, bases)), heap.stats().mapped_bytes)
    """)
    assert out.split() == ["False", "0"]


# --- addresses of retained blocks go to nobody else -----------------------------------------------


def test_a_new_allocator_never_overlaps_a_retained_block() -> None:
    out = run("""
        heap = pyslab.SlabAllocator()
        keep = [pyslab.buffers(heap).create_string_buffer(b"mine") for _ in range(50)]
        keep.append(pyslab.buffers(heap).create_string_buffer(200_000))
        spans = {(base_of(b), base_of(b) + 4096) for b in keep[:-1]}
        spans.add((ctypes.addressof(keep[-1]), ctypes.addressof(keep[-1]) + 200_000))
        heap.close()
        fresh = pyslab.SlabAllocator()
        blocks = [fresh.alloc(size) for size in (8, 64, 1024) for _ in range(300)]
        blocks += [fresh.alloc(300_000) for _ in range(3)]
        ranges = [(s.base, s.base + 4096) for s in fresh.slabs()]
        ranges += [(a, a + 300_000) for a in blocks[-3:]]
        print(any(a < e and s < b for s, e in spans for a, b in ranges))
        print(all(b.raw.startswith(b"mine") for b in keep[:-1]))
    """)
    assert out.split() == ["False", "True"]


def test_an_arena_keeps_its_retained_blocks_until_their_owners_die() -> None:
    out = run("""
        source = pyslab.core.ArenaPageSource(1 << 20)
        heap = pyslab.SlabAllocator(page_source=source)
        buf = pyslab.buffers(heap).create_string_buffer(b"arena")
        large = pyslab.buffers(heap).create_string_buffer(50_000)
        start, end = source.region
        heap.close()
        print(is_mapped(start), source.closed, buf.value, len(large.raw))
        try:
            pyslab.SlabAllocator(page_source=source)
        except ValueError as error:
            print("refused" if "retained" in str(error) else error)
        other = pyslab.core.ArenaPageSource(1 << 20)
        print(other.region[0] >= end or other.region[1] <= start)
        del buf
        print(source.closed, is_mapped(start))
        del large
        print(source.closed, is_mapped(start))
    """)
    assert out.split() == [
        "True", "False", "b'arena'", "50000", "refused", "True", "False", "True", "True", "False"
    ]


# --- close() itself -------------------------------------------------------------------------------


def test_close_with_no_live_objects_unmaps_everything_at_once() -> None:
    # In a child: a fresh process, so that libc maps the large block on its own (its mmap
    # threshold grows as a long-running process frees large blocks).
    out = run("""
        heap = pyslab.SlabAllocator()
        made = pyslab.buffers(heap)
        buffers = [made.create_string_buffer(64) for _ in range(200)]
        large = made.create_string_buffer(1 << 20)
        slab = pyslab.Slab(ctypes.c_int, 8, allocator=heap)
        slab.close()
        cache = ObjectCache(heap, ctypes.c_int64)
        cache.free(cache.alloc())
        raw = heap.alloc(64)  # bare addresses: the caller's business, as in C
        large_address = heap.alloc(1 << 20)  # a block libc maps on its own
        del buffers, large, slab
        gc.collect()
        bases = {s.base for s in heap.slabs()}
        print(is_mapped(large_address), len(bases) > 1 and all(map(is_mapped, bases)))
        heap.close()
        print(any(map(is_mapped, bases)), is_mapped(large_address))
        stats = heap.stats()
        print(stats.mapped_bytes, stats.large_blocks, heap.page_source.mapped_bytes)
        heap.validate()
        try:
            heap.free(raw)  # not owned by a Python object: it went with everything else
        except pyslab.AllocatorClosedError:
            print("refused")
    """)
    assert out.split() == ["True", "True", "False", "False", "0", "0", "0", "refused"]


def test_a_double_close_is_harmless_while_objects_are_retained() -> None:
    out = run("""
        heap = pyslab.SlabAllocator()
        buf = pyslab.buffers(heap).create_string_buffer(b"twice")
        base = base_of(buf)
        heap.close()
        heap.close()
        with heap:
            pass
        print(buf.value, is_mapped(base))
        del buf
        heap.close()
        print(is_mapped(base), heap.stats().mapped_bytes, heap.deferred_errors)
    """)
    assert out.split() == ["b'twice'", "True", "False", "0", "[]"]


def test_a_closed_allocator_refuses_new_work_while_it_retains_blocks() -> None:
    out = run("""
        heap = pyslab.SlabAllocator()
        buf = pyslab.buffers(heap).create_string_buffer(b"x")
        address = ctypes.addressof(buf)
        heap.close()
        for attempt in (lambda: heap.alloc(8), lambda: heap.usable_size(address),
                        lambda: heap.free(address + 8), lambda: heap.shrink(),
                        lambda: pyslab.buffers(heap).create_string_buffer(1)):
            try:
                attempt()
                print("served")
            except pyslab.AllocatorClosedError:
                print("refused")
        print(heap.owns(address), heap.slabs(), "retain" in repr(heap))
        heap.validate()
    """)
    assert out.split() == ["refused"] * 5 + ["False", "[]", "True"]


def test_blocks_freed_while_close_is_running_are_settled() -> None:
    # A buffer whose finalizer runs inside close() (a ctor dropping the last reference to it
    # is the simplest way to get there): its free is deferred, then carried out.
    out = run("""
        heap = pyslab.SlabAllocator()
        made = pyslab.buffers(heap)
        doomed = [made.create_string_buffer(b"doomed")]
        base = base_of(doomed[0])

        class Dropper(pyslab.core.HeapClient):
            def pinned_blocks(self):
                doomed.clear()  # the buffer dies now: its free is deferred, close is busy
                return ()

        heap.client(Dropper)
        heap.close()
        print(is_mapped(base), heap.stats().mapped_bytes, heap.deferred_errors)
    """)
    assert out.split() == ["False", "0", "[]"]


def test_a_client_pins_blocks_through_the_public_hook_and_frees_each_once() -> None:
    out = run("""
        heap = pyslab.SlabAllocator()
        small, large = heap.alloc(32), heap.alloc(1 << 20)
        ctypes.memmove(small, b"pinned", 6)

        class Holder(pyslab.core.HeapClient):
            def pinned_blocks(self):
                return [small, large, 12345]  # an address of nobody's is left out

        heap.client(Holder)
        heap.close()
        print(ctypes.string_at(small, 6), heap.stats().large_blocks, "retain" in repr(heap))
        heap.validate()
        heap.free(small)
        try:
            heap.free(small)  # once only: a second free must not unmap anything again
        except pyslab.AllocatorClosedError:
            print("refused")
        heap.free(large)
        print(is_mapped(small), heap.stats().mapped_bytes, heap.stats().large_blocks)
    """)
    assert out.split() == ["b'pinned'", "1", "True", "refused", "False", "0", "0"]


def test_a_page_source_serves_no_new_allocator_while_blocks_are_retained() -> None:
    out = run("""
        source = pyslab.core.MmapPageSource()
        heap = pyslab.SlabAllocator(page_source=source)
        buf = pyslab.buffers(heap).create_string_buffer(b"kept")
        heap.close()
        try:
            pyslab.SlabAllocator(page_source=source)
        except ValueError as error:
            print("refused" if "retaining" in str(error) else error)
        del buf
        again = pyslab.SlabAllocator(page_source=source)  # nothing retained: free to serve
        again.free(again.alloc(8))
        again.close()
        print(source.mapped_bytes)
    """)
    assert out.split() == ["refused", "0"]


def test_objects_dying_on_other_threads_while_close_runs() -> None:
    out = run("""
        import threading
        sys.setswitchinterval(1e-6)
        heap = pyslab.SlabAllocator(policy="dict-lookup")
        made = pyslab.buffers(heap)
        batches = [[made.create_string_buffer(bytes([65 + t]) * 20) for _ in range(2000)]
                   for t in range(4)]
        bases = {base_of(b) for batch in batches for b in batch}
        start = threading.Barrier(5)
        failures = []

        def drop(batch, byte):
            start.wait()
            try:
                while batch:
                    assert batch[-1].value == bytes([byte]) * 20  # alive: readable, closed or not
                    batch.pop()
            except BaseException as error:
                failures.append(error)

        threads = [threading.Thread(target=drop, args=(batch, 65 + t))
                   for t, batch in enumerate(batches)]
        for thread in threads:
            thread.start()
        start.wait()
        heap.close()
        for thread in threads:
            thread.join()
        gc.collect()
        print(any(map(is_mapped, bases)), heap.stats().mapped_bytes, heap.deferred_errors)
        print(failures)
        heap.validate()
    """)
    assert out.split() == ["False", "0", "[]", "[]"]
