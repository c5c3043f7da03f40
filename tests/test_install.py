"""install()/uninstall()/installed()/current(): ctypes' buffers move to slab memory and back."""

from __future__ import annotations

import ctypes
import gc
import struct
from collections.abc import Iterator
from typing import Any

import pytest

import pyslab
import pyslab.interop

CTYPES_OWN = (ctypes.create_string_buffer, ctypes.create_unicode_buffer)
_libc = ctypes.CDLL(None)
_libc.strcat.restype = ctypes.c_void_p
_libc.wcslen.restype = ctypes.c_size_t


@pytest.fixture(autouse=True)
def nothing_installed() -> Iterator[None]:
    """Every test starts and ends with ctypes' own functions in place."""
    pyslab.uninstall()
    yield
    pyslab.uninstall()
    assert (ctypes.create_string_buffer, ctypes.create_unicode_buffer) == CTYPES_OWN


def _owned_by(allocator: pyslab.SlabAllocator, buf: Any) -> bool:
    return allocator.owns(ctypes.addressof(buf))


def program() -> list[object]:
    """A program written against ctypes alone: the same output installed or not."""
    out: list[object] = []
    name = ctypes.create_string_buffer(b"pyslab", 32)
    _libc.strcat(name, b" on ctypes")
    out.append(name.value)
    packed = ctypes.create_string_buffer(12)
    struct.pack_into("<ii", packed, 4, 7, -1)
    out += [packed.raw, struct.unpack_from("<ii", packed, 4)]
    text = ctypes.create_unicode_buffer("wide ✓", 16)
    out += [text.value, _libc.wcslen(text), ctypes.sizeof(text)]
    words = (ctypes.c_char_p * 2)(ctypes.cast(name, ctypes.c_char_p), None)
    out.append(words[0])
    out.append(bytes(memoryview(ctypes.create_string_buffer(b"view"))))
    return out


def test_install_moves_ctypes_buffers_into_slabs_and_uninstall_moves_them_back() -> None:
    expected = program()
    assert pyslab.current() is None
    alloc = pyslab.install(policy="dict-lookup")
    assert pyslab.current() is alloc and alloc.policy.name == "dict-lookup"
    assert ctypes.create_string_buffer not in CTYPES_OWN
    buf = ctypes.create_string_buffer(b"slab", 16)
    wide = ctypes.create_unicode_buffer("slab")
    assert _owned_by(alloc, buf) and _owned_by(alloc, wide)
    assert program() == expected
    assert pyslab.uninstall() is alloc
    assert pyslab.current() is None
    assert (ctypes.create_string_buffer, ctypes.create_unicode_buffer) == CTYPES_OWN
    assert not _owned_by(alloc, ctypes.create_string_buffer(16))
    assert program() == expected
    assert pyslab.uninstall() is None  # a second uninstall does nothing


def test_buffers_outlive_the_installation_and_go_back_to_their_allocator() -> None:
    first = pyslab.install()
    old = [ctypes.create_string_buffer(b"first %d" % i) for i in range(20)]
    second = pyslab.install(pyslab.SlabAllocator(policy="reclaim"))  # replaces, cleanly
    assert pyslab.current() is second
    new = [ctypes.create_string_buffer(b"second %d" % i) for i in range(5)]
    assert all(_owned_by(second, b) for b in new) and all(_owned_by(first, b) for b in old)
    pyslab.uninstall()
    assert [b.value for b in old] == [b"first %d" % i for i in range(20)]
    assert (first.stats().live_blocks, second.stats().live_blocks) == (20, 5)
    del old
    assert (first.stats().live_blocks, second.stats().live_blocks) == (0, 5)
    del new
    assert second.stats().live_blocks == 0
    first.validate()
    second.validate()


def test_installed_restores_what_was_there_before_and_nests() -> None:
    outer = pyslab.SlabAllocator()
    with pyslab.installed(outer) as got:
        assert got is outer and pyslab.current() is outer
        with pyslab.installed(policy="reclaim") as inner:
            assert pyslab.current() is inner
            assert _owned_by(inner, ctypes.create_string_buffer(8))
        assert pyslab.current() is outer
        assert _owned_by(outer, ctypes.create_string_buffer(8))
    assert pyslab.current() is None
    assert ctypes.create_string_buffer is CTYPES_OWN[0]


def test_installed_restores_even_when_the_block_raises() -> None:
    with pytest.raises(KeyError), pyslab.installed():
        raise KeyError("inside")
    assert pyslab.current() is None and ctypes.create_string_buffer is CTYPES_OWN[0]


def test_module_functions_use_the_installed_allocator_or_the_default() -> None:
    default = pyslab.interop.default_allocator()
    assert pyslab.interop.default_allocator() is default
    assert _owned_by(default, pyslab.interop.create_string_buffer(b"default"))
    assert _owned_by(default, pyslab.interop.create_unicode_buffer("default"))
    assert _owned_by(default, pyslab.new(ctypes.c_int, 5))
    with pyslab.installed() as alloc:
        assert _owned_by(alloc, pyslab.interop.create_string_buffer(8))
        assert _owned_by(alloc, pyslab.new(ctypes.c_double * 3))
        assert pyslab.new(ctypes.c_int, 9).value == 9


def test_uninstall_leaves_a_replacement_made_by_someone_else() -> None:
    pyslab.install()

    def theirs(init: bytes | int, size: int | None = None) -> ctypes.Array[ctypes.c_char]:
        return CTYPES_OWN[0](init, size)

    ctypes.create_string_buffer = theirs
    try:
        pyslab.uninstall()
        assert ctypes.create_string_buffer is theirs
        assert ctypes.create_unicode_buffer is CTYPES_OWN[1]
    finally:
        ctypes.create_string_buffer = CTYPES_OWN[0]


@pytest.mark.parametrize(
    ("args", "config", "error", "match"),
    [
        (("an allocator",), {}, TypeError, "takes a SlabAllocator, not 'an allocator'"),
        ((42,), {}, TypeError, "not 42"),
        ((pyslab.SlabAllocator(),), {"policy": "reclaim"}, TypeError, r"not both.*\['policy'\]"),
        ((), {"polcy": "reclaim"}, TypeError, "polcy"),
        ((), {"policy": "no-such-policy"}, pyslab.UnknownPolicyError, "no-such-policy"),
        ((), {"slab_size": 1000}, ValueError, "1000"),
    ],
)
def test_bad_arguments_name_the_value_and_install_nothing(
    args: tuple[Any, ...], config: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        pyslab.install(*args, **config)
    assert pyslab.current() is None and ctypes.create_string_buffer is CTYPES_OWN[0]


def test_a_closed_allocator_cannot_be_installed() -> None:
    alloc = pyslab.SlabAllocator()
    alloc.close()
    with pytest.raises(pyslab.AllocatorClosedError, match="closed"):
        pyslab.install(alloc)
    assert pyslab.current() is None


def test_installed_buffers_are_freed_when_collected() -> None:
    with pyslab.installed() as alloc:
        for _ in range(1000):
            ctypes.create_string_buffer(b"dropped at once")
        kept = ctypes.create_unicode_buffer(100)
        gc.collect()
        assert alloc.stats().live_blocks == 1
        del kept
        assert alloc.stats().live_blocks == 0
