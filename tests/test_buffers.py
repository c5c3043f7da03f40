"""Slab-backed ctypes buffers and ``new``: they behave as ctypes' own, and live exactly as long."""

from __future__ import annotations

import ctypes
import gc
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import pyslab
import pyslab.core
import pyslab.interop
from pyslab.interop.slab_buffers import live_objects
from tests.support import CONFIGURATIONS

_libc = ctypes.CDLL(None)
_libc.strlen.argtypes = [ctypes.c_char_p]
_libc.strlen.restype = ctypes.c_size_t
_libc.wcslen.argtypes = [ctypes.c_wchar_p]
_libc.wcslen.restype = ctypes.c_size_t
_libc.snprintf.restype = ctypes.c_int


@pytest.fixture
def alloc() -> Iterator[pyslab.SlabAllocator]:
    """A dict-lookup allocator (O(1) owner lookups), validated and closed afterwards."""
    with pyslab.SlabAllocator(policy="dict-lookup") as allocator:
        yield allocator
        gc.collect()
        allocator.validate()


@pytest.fixture
def gc_off() -> Iterator[None]:
    """Collections happen only where the test asks for them."""
    was_enabled = gc.isenabled()
    gc.disable()
    yield
    if was_enabled:
        gc.enable()


def _in_slab(allocator: pyslab.SlabAllocator, obj: Any) -> bool:
    return allocator.owns(ctypes.addressof(obj))


def _outcome(make: Callable[[], Any]) -> tuple[str, str] | tuple[type, int, bytes | str]:
    """What a buffer constructor gives: the error, or the type, size and contents."""
    try:
        buf = make()
    except Exception as error:  # the exact error is the point of the comparison
        return type(error).__name__, str(error)
    contents = buf.raw if isinstance(buf[:0], bytes) else buf[:]
    return type(buf), ctypes.sizeof(buf), contents


# --- the same as ctypes' own -----------------------------------------------------------------

STRING_ARGUMENTS: list[tuple[object, ...]] = [
    (b"hello",), (b"hello", 10), (b"hello", 5), (b"",), (b"", 0), (16,), (0,), (1,), (True,),
    (64, 3), (b"x" * 1500,), (b"y" * 5000, 6000), (7000,),
    # bad arguments: the same exception, with the same message
    ("text",), (bytearray(b"x"),), (None,), (2.5,), (b"abc", 2), (b"abc", 3.0), (b"abc", "9"),
    (-1,), (b"abc", -1), (2**70,), (b"abc", 2**70),
]


@pytest.mark.parametrize("args", STRING_ARGUMENTS, ids=repr)
def test_string_buffers_match_ctypes_for_every_argument_form(
    alloc: pyslab.SlabAllocator, args: tuple[Any, ...]
) -> None:
    ours = _outcome(lambda: pyslab.buffers(alloc).create_string_buffer(*args))
    assert ours == _outcome(lambda: ctypes.create_string_buffer(*args))
    if isinstance(ours[0], type):
        assert _in_slab(alloc, pyslab.buffers(alloc).create_string_buffer(*args))


UNICODE_ARGUMENTS: list[tuple[object, ...]] = [
    ("héllo, wörld",), ("a\U0001d11eb",), ("abc", 10), ("abc", 3), ("",), (12,), (0,),
    ("z" * 400,), (b"bytes",), (None,), ("abc", 2), ("abc", -4), (-2,), ("abc", 1.5),
]


@pytest.mark.parametrize("args", UNICODE_ARGUMENTS, ids=repr)
def test_unicode_buffers_match_ctypes_for_every_argument_form(
    alloc: pyslab.SlabAllocator, args: tuple[Any, ...]
) -> None:
    ours = _outcome(lambda: pyslab.buffers(alloc).create_unicode_buffer(*args))
    assert ours == _outcome(lambda: ctypes.create_unicode_buffer(*args))
    if isinstance(ours[0], type):
        assert _in_slab(alloc, pyslab.buffers(alloc).create_unicode_buffer(*args))


def test_recycled_slots_are_zeroed_as_ctypes_buffers_are(alloc: pyslab.SlabAllocator) -> None:
    for _ in range(3):
        dirty = pyslab.buffers(alloc).create_string_buffer(b"\xff" * 63)
        del dirty
        buf = pyslab.buffers(alloc).create_string_buffer(b"ab", 64)
        assert buf.raw == b"ab" + bytes(62)
        wide = pyslab.buffers(alloc).create_unicode_buffer(16)
        assert ctypes.string_at(ctypes.addressof(wide), ctypes.sizeof(wide)) == bytes(64)
        wide.value = "x" * 16


def _exercise(buf: Any) -> list[object]:
    """Everything a program does with a string buffer; returns what it observed."""
    seen: list[object] = [buf.value, buf[0], buf[1:4], buf[-1], len(buf), type(buf)]
    buf[0] = b"J"
    buf[5:8] = b"!!!"
    seen += [buf.value, buf.raw]
    buf.value = b"abc"
    seen += [buf.raw, bytes(buf), bytes(memoryview(buf)), memoryview(buf).format]
    seen += [ctypes.sizeof(buf), ctypes.string_at(ctypes.addressof(buf))]
    seen += [ctypes.cast(buf, ctypes.c_char_p).value, ctypes.pointer(buf).contents.value]
    seen.append(ctypes.cast(ctypes.byref(buf, 1), ctypes.c_char_p).value)
    # Passed to foreign functions, with and without argtypes.
    seen.append(_libc.strlen(buf))
    seen.append(_libc.snprintf(buf, ctypes.c_size_t(32), b"%d-%s", ctypes.c_int(42), b"xy"))
    ctypes.memmove(buf, b"0123456789", 10)
    seen += [buf.value, buf.raw, list(buf)[:12]]
    return seen


def test_a_string_buffer_does_everything_a_ctypes_one_does(alloc: pyslab.SlabAllocator) -> None:
    ours = _exercise(pyslab.buffers(alloc).create_string_buffer(b"hello", 32))
    assert ours == _exercise(ctypes.create_string_buffer(b"hello", 32))
    assert ours[6:8] == [b"Jello!!!", b"Jello!!!" + bytes(24)]


def test_a_unicode_buffer_does_everything_a_ctypes_one_does(alloc: pyslab.SlabAllocator) -> None:
    buf = pyslab.buffers(alloc).create_unicode_buffer("grüße \U0001f600", 20)
    assert buf.value == "grüße \U0001f600" and buf[2] == "ü" and "".join(buf[:5]) == "grüße"
    assert _libc.wcslen(buf) == 7
    buf[0] = "G"
    assert ctypes.wstring_at(ctypes.addressof(buf)) == "Grüße \U0001f600"
    view = memoryview(buf)
    assert (view.itemsize, view.nbytes) == (ctypes.sizeof(ctypes.c_wchar), ctypes.sizeof(buf))


# --- new() -----------------------------------------------------------------------------------


class Point(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_double), ("name", ctypes.c_char_p)]


class Number(ctypes.Union):
    _fields_ = [("i", ctypes.c_uint32), ("f", ctypes.c_float)]


class Labelled(ctypes.Structure):
    _fields_ = [("value", ctypes.c_int)]

    def __init__(self, value: int) -> None:
        super().__init__(value * 10)


def test_new_places_every_kind_of_ctypes_type_and_initialises_it(
    alloc: pyslab.SlabAllocator,
) -> None:
    point = pyslab.buffers(alloc).new(Point, 3, name=b"origin")
    assert (point.x, point.y, point.name) == (3, 0.0, b"origin")
    number = pyslab.buffers(alloc).new(Number, f=1.0)
    assert number.i == 0x3F800000
    array = pyslab.buffers(alloc).new(ctypes.c_int16 * 5, 1, 2, 3)
    assert list(array) == [1, 2, 3, 0, 0]
    target = ctypes.c_long(77)
    pointer = pyslab.buffers(alloc).new(ctypes.POINTER(ctypes.c_long), target)
    assert pointer.contents.value == 77
    simple = pyslab.buffers(alloc).new(ctypes.c_double, 2.5)
    assert simple.value == 2.5
    # A custom __init__ runs, as ctype(...) runs it.
    assert pyslab.buffers(alloc).new(Labelled, 4).value == 40
    wide = pyslab.buffers(alloc).new(ctypes.c_longdouble, 1.5)
    assert ctypes.addressof(wide) % ctypes.alignment(ctypes.c_longdouble) == 0
    for obj in (point, number, array, pointer, simple, wide):
        assert _in_slab(alloc, obj)
        assert type(obj).__name__ and ctypes.sizeof(obj) == ctypes.sizeof(type(obj))


def test_new_keeps_what_its_fields_point_to(alloc: pyslab.SlabAllocator, gc_off: None) -> None:
    point = pyslab.buffers(alloc).new(Point, name=b"kept " * 3)
    target = ctypes.c_long(5)
    pointer = pyslab.buffers(alloc).new(ctypes.POINTER(ctypes.c_long), target)
    del target
    gc.collect()
    assert point.name == b"kept " * 3 and pointer.contents.value == 5
    obj = pyslab.buffers(alloc).new(ctypes.py_object, ["a python list"])
    assert obj.value == ["a python list"]


def test_new_zeroes_recycled_memory(alloc: pyslab.SlabAllocator) -> None:
    for _ in range(3):
        pyslab.buffers(alloc).new(ctypes.c_uint8 * 40, *([0xEE] * 40))
        assert list(pyslab.buffers(alloc).new(ctypes.c_uint8 * 40)) == [0] * 40
    big = pyslab.buffers(alloc).new(ctypes.c_char * 3000)
    assert big.raw == bytes(3000)


@pytest.mark.parametrize(
    ("ctype", "match"),
    [
        (int, "not <class 'int'>"),
        ("c_int", "not 'c_int'"),
        (ctypes.c_int(3), r"not c_int\(3\)"),
        (None, "not None"),
        (ctypes.Structure, "<class '_ctypes.Structure'>: the type has no size"),
        (ctypes.CFUNCTYPE(None), "CFunctionType"),
    ],
)
def test_new_rejects_what_is_not_a_ctypes_data_type(
    alloc: pyslab.SlabAllocator, ctype: Any, match: str
) -> None:
    before = alloc.stats()
    with pytest.raises(TypeError, match=match):
        pyslab.buffers(alloc).new(ctype)
    assert alloc.stats() == before


def test_new_with_bad_initialisers_raises_as_the_type_does_and_frees(
    alloc: pyslab.SlabAllocator,
) -> None:
    cases: list[tuple[Any, tuple[object, ...]]] = [
        (Point, (1, 2.0, b"n", 4)),
        (ctypes.c_int * 2, (1, 2, 3)),
        (ctypes.c_int, ("x",)),
    ]
    for ctype, args in cases:
        with pytest.raises((TypeError, IndexError)) as expected:
            ctype(*args)
        with pytest.raises(type(expected.value), match=re.escape(str(expected.value))):
            pyslab.buffers(alloc).new(ctype, *args)
    gc.collect()
    assert alloc.stats().live_blocks == 0


# --- lifetime --------------------------------------------------------------------------------

DERIVATIONS: dict[str, Callable[[Any], object]] = {
    "memoryview": memoryview,
    "memoryview slice": lambda buf: memoryview(buf)[4:8],
    "pointer": ctypes.pointer,
    "cast": lambda buf: ctypes.cast(buf, ctypes.POINTER(ctypes.c_char)),
    "cast to c_void_p": lambda buf: ctypes.cast(buf, ctypes.c_void_p),
    "byref": ctypes.byref,
    "byref with offset": lambda buf: ctypes.byref(buf, 8),
    "from_buffer": lambda buf: (ctypes.c_uint8 * 8).from_buffer(buf),
    "pointer to pointer": lambda buf: ctypes.pointer(ctypes.pointer(buf)),
    "structure field": lambda buf: Point(name=ctypes.cast(buf, ctypes.c_char_p)),
}


@pytest.mark.parametrize("derive", DERIVATIONS.values(), ids=list(DERIVATIONS))
def test_a_buffer_lives_while_anything_derived_from_it_does(
    alloc: pyslab.SlabAllocator, derive: Callable[[Any], object], gc_off: None
) -> None:
    buf = pyslab.buffers(alloc).create_string_buffer(b"pattern-" * 6)
    address = ctypes.addressof(buf)
    derived = derive(buf)
    del buf
    gc.collect()
    assert alloc.owns(address)
    # Were the slot free, these would take it (last in, first out) and overwrite it.
    others = [pyslab.buffers(alloc).create_string_buffer(b"\xee" * 40, 49) for _ in range(4)]
    assert ctypes.string_at(address, 48) == b"pattern-" * 6
    del derived
    gc.collect()
    assert not alloc.owns(address)
    del others


def test_buffers_are_freed_by_reference_counting(alloc: pyslab.SlabAllocator, gc_off: None) -> None:
    buf = pyslab.buffers(alloc).create_string_buffer(100)
    wide = pyslab.buffers(alloc).create_unicode_buffer("x")
    obj = pyslab.buffers(alloc).new(Point)
    addresses = [ctypes.addressof(o) for o in (buf, wide, obj)]
    assert alloc.stats().live_blocks == 3
    del buf, wide, obj
    assert alloc.stats().live_blocks == 0
    assert not any(alloc.owns(a) for a in addresses)


def test_buffers_in_reference_cycles_are_freed_by_the_collector(
    alloc: pyslab.SlabAllocator, gc_off: None
) -> None:
    for _ in range(50):
        Node(pyslab.buffers(alloc).create_string_buffer(64))
    assert alloc.stats().live_blocks == 50
    gc.collect()
    assert alloc.stats().live_blocks == 0


class Node:
    """An object in a reference cycle (it refers to itself), holding a buffer."""

    def __init__(self, buffer: object) -> None:
        self.buffer = buffer
        self.itself = self


class CollectInsideAllocations(pyslab.Policy):
    """Runs the cycle collector from inside the allocator's locked region, when armed: the
    finalizers of collected buffers then free while an allocation is half done."""

    name = "collect-inside"
    armed = False

    def block_allocated(self, slab: pyslab.core.MemorySlab, address: int, size: int) -> None:
        if self.armed:
            self.armed = False
            gc.collect()


def test_frees_from_a_collection_inside_an_allocation_are_deferred(gc_off: None) -> None:
    policy = CollectInsideAllocations()
    with pyslab.SlabAllocator(policy=["dict-lookup", policy]) as alloc:
        keep = [pyslab.buffers(alloc).create_string_buffer(b"keep", 64) for _ in range(10)]
        for _ in range(30):
            Node(pyslab.buffers(alloc).create_string_buffer(64))
        assert alloc.stats().live_blocks == 40
        policy.armed = True
        # The collection runs inside this call.
        last = pyslab.buffers(alloc).create_string_buffer(b"last", 64)
        stats = alloc.stats()
        assert stats.deferred_frees == 30
        assert stats.live_blocks == 11 and not alloc.deferred_errors
        alloc.validate()
        assert all(b.value == b"keep" for b in keep) and last.value == b"last"
        del keep, last
        assert alloc.stats().live_blocks == 0


def test_creating_and_dropping_many_buffers_leaks_nothing(alloc: pyslab.SlabAllocator) -> None:
    """200,000 buffers (PYSLAB_LONG=1: the million of the issue), some of them in cycles."""
    rounds = 1_000_000 if os.environ.get("PYSLAB_LONG") == "1" else 200_000
    gc.collect()
    live, objects = alloc.stats().live_blocks, live_objects()
    create = pyslab.buffers(alloc).create_string_buffer
    cyclic: list[object] = []
    for i in range(rounds):
        buf = create(64)
        if i % 1000 == 0:
            cyclic = [buf, cyclic]
            cyclic.append(cyclic)
    del buf, cyclic
    gc.collect()
    assert (alloc.stats().live_blocks, live_objects()) == (live, objects)


def test_buffers_from_many_threads_all_come_back(alloc: pyslab.SlabAllocator) -> None:
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            kept = []
            for i in range(2000):
                buf = pyslab.buffers(alloc).create_string_buffer(bytes([seed]) * (i % 90 + 1))
                if i % 7 == 0:
                    kept.append((buf, bytes(buf)))
            assert all(bytes(b) == contents for b, contents in kept)
        except BaseException as error:  # reported to the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    gc.collect()
    assert alloc.stats().live_blocks == 0


@pytest.mark.parametrize("policy", CONFIGURATIONS)
def test_buffers_work_under_every_policy(policy: str) -> None:
    with pyslab.SlabAllocator(policy=policy) as alloc:
        buffers = [pyslab.buffers(alloc).create_string_buffer(b"p" * n) for n in range(0, 1200, 37)]
        assert all(_in_slab(alloc, b) or ctypes.sizeof(b) > 1024 for b in buffers)
        assert all(b.value == b"p" * (ctypes.sizeof(b) - 1) for b in buffers)
        del buffers
        assert alloc.stats().live_blocks == 0
        alloc.validate()


def test_a_buffer_outliving_its_closed_allocator_is_dropped_quietly() -> None:
    alloc = pyslab.SlabAllocator()
    buf = pyslab.buffers(alloc).create_string_buffer(8)
    alloc.close()
    del buf  # close() kept its block mapped for it; the finalizer gives it back now
    assert not alloc.deferred_errors


def test_buffers_raise_the_same_audit_events_as_ctypes() -> None:
    script = """
import ctypes, sys, pyslab
events = []
sys.addaudithook(lambda e, a: events.append((e, a)) if e.startswith("ctypes.create_") else None)
for make in (ctypes.create_string_buffer, pyslab.interop.create_string_buffer):
    make(b"ab"); make(5)
for make in (ctypes.create_unicode_buffer, pyslab.interop.create_unicode_buffer):
    make("ab"); make(5)
assert events[:2] == events[2:4] and events[4:6] == events[6:8], events
print(events)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "('ctypes.create_string_buffer', (b'ab', 3))" in done.stdout
