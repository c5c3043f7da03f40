"""debug: writes after free, red-zone overwrites, corrupted free-list pointers, sites, quarantine.

Every corruption here is real: bytes are written with ``ctypes.memset`` into freed slots, past
the ends of blocks and over free-list pointers, as a buggy C caller would. After each detection
the allocator must stay consistent (``validate()`` passes) and every other live block intact.
"""

from __future__ import annotations

import ctypes
import gc
import itertools
import os
import re
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import hypothesis.strategies as st
import pytest
from hypothesis.stateful import consumes, invariant, rule

import pyslab
from tests.support import block_intact, fill_block, pattern_byte, snapshot, state_machine_case
from tests.test_state_machine import AllocatorMachine, expected_slot

REDZONE = 16
WORD = ctypes.sizeof(ctypes.c_void_p)
POISON_BYTE = 0xDD
"""What free slots hold (CPython's dead byte), as the plugin documents."""
REDZONE_BYTE = 0xFD
"""What red zones hold (CPython's forbidden byte)."""
SLOTS = (8, 16, 32, 64, 128, 256, 512, 1024)
FITTING = tuple(slot for slot in SLOTS if slot > 2 * REDZONE)
"""The classes a block fits in with both 16-byte red zones around at least one byte."""


class Quarantined(Protocol):
    address: int
    span: int
    user: int | None
    in_slab: bool


class Debug(Protocol):
    """What the tests use of the ``debug`` policy (its plugin module is not imported: the core's
    tests reach plugins through the registry, as callers do)."""

    poison: bool
    redzones: bool
    check_free_list: bool
    record_sites: bool

    def check(self) -> None: ...
    def quarantined(self) -> tuple[Quarantined, ...]: ...
    def sites(self) -> dict[int, traceback.StackSummary]: ...
    def live_blocks(self) -> dict[int, int]: ...
    def report_section(self) -> str: ...


def _debug(**options: Any) -> Any:
    policy = pyslab.make_policy("debug", **options)
    assert policy.name == "debug"
    return policy


@pytest.fixture
def debug() -> Debug:
    policy: Debug = _debug()
    return policy


@pytest.fixture
def heap(debug: Any) -> Iterator[pyslab.SlabAllocator]:
    with pyslab.SlabAllocator(policy=["dict-lookup", debug]) as alloc:
        yield alloc
        alloc.validate()


def _word(address: int) -> ctypes.c_size_t:
    return ctypes.c_size_t.from_address(address)


def _in_class(slot: int, redzones: bool = True) -> int:
    """A request size whose debug block fills a slot of ``slot`` bytes exactly."""
    return slot - 2 * REDZONE if redzones else slot


# --- options -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"poison": 1}, TypeError),
        ({"redzones": "yes"}, TypeError),
        ({"redzone_size": 0}, ValueError),
        ({"redzone_size": 4.0}, TypeError),
        ({"record_sites": None}, TypeError),
        ({"site_depth": -1}, ValueError),
        ({"check_free_list": 0}, TypeError),
    ],
)
def test_bad_options_are_refused_naming_the_value(
    options: dict[str, object], error: type[Exception]
) -> None:
    (value,) = options.values()
    with pytest.raises(error, match=re.escape(repr(value))):
        pyslab.make_policy("debug", **options)


def test_every_option_is_a_switch_the_benchmark_can_flip() -> None:
    # benchmarks/hardening.py flips each boolean keyword of the constructor
    policy = _debug(poison=False, redzones=False, check_free_list=False, record_sites=True)
    assert (policy.poison, policy.redzones, policy.check_free_list, policy.record_sites) == (
        False, False, False, True,
    )


# --- the block operations ------------------------------------------------------------------------


def test_blocks_sit_between_red_zones_and_report_their_requested_size(
    heap: pyslab.SlabAllocator,
) -> None:
    address = heap.alloc(24)
    assert heap.usable_size(address) == 24 and heap.owns(address)
    assert not heap.owns(address - REDZONE) and not heap.owns(address + 8)
    fill_block(address, 24, 0x11)
    lead = ctypes.string_at(address - REDZONE, REDZONE)
    trail = ctypes.string_at(address + 24, 64 - REDZONE - 24)  # to the end of the 64-byte slot
    assert lead == trail[:REDZONE] == bytes([REDZONE_BYTE]) * REDZONE
    assert set(trail) == {REDZONE_BYTE}
    heap.free(address)
    assert not heap.owns(address)


@pytest.mark.parametrize("align", [1, 8, 16, 32, 64, 128, 256, 512, 1024, 4096])
def test_every_alignment_is_honoured(heap: pyslab.SlabAllocator, align: int) -> None:
    blocks = [heap.alloc(size, align) for size in (1, 24, 200, 3000)]
    for address, size in zip(blocks, (1, 24, 200, 3000), strict=True):
        assert address % align == 0 and heap.usable_size(address) == size
        fill_block(address, size, 0x5A)
    for address in blocks:
        heap.free(address)


def test_calloc_and_realloc_go_through_the_red_zones(heap: pyslab.SlabAllocator) -> None:
    zeroed = heap.calloc(5, 8)
    assert ctypes.string_at(zeroed, 40) == bytes(40) and heap.usable_size(zeroed) == 40
    fill_block(zeroed, 40, 0x42)
    grown = heap.realloc(zeroed, 300)
    assert heap.usable_size(grown) == 300 and block_intact(grown, 40, 0x42)
    fill_block(grown, 300, 0x43)
    shrunk = heap.realloc(grown, 10)
    assert heap.usable_size(shrunk) == 10 and block_intact(shrunk, 10, 0x43)
    heap.free(shrunk)


def test_a_live_block_that_looks_like_poison_or_a_free_list_frees_fine(
    heap: pyslab.SlabAllocator,
) -> None:
    """No false positives: the checks read free slots and red zones, never a live block."""
    spare = [heap.alloc(32) for _ in range(4)]
    for address in spare[:2]:
        heap.free(address)  # free slots whose addresses a block will now hold
    poison = heap.alloc(32)
    forbidden = heap.alloc(32)
    pointers = heap.alloc(32)
    fill_block(poison, 32, POISON_BYTE)
    fill_block(forbidden, 32, REDZONE_BYTE)
    for i, address in enumerate(spare[:2]):
        _word(pointers + i * WORD).value = address - REDZONE  # a free slot's start
    _word(pointers + 2 * WORD).value = 0
    heap.validate()
    for address in (poison, forbidden, pointers, *spare[2:]):
        heap.free(address)
    again = [heap.alloc(32) for _ in range(8)]  # the same slots, handed out again
    for address in again:
        heap.free(address)


def test_a_fresh_heap_poisons_whole_slabs(heap: pyslab.SlabAllocator) -> None:
    address = heap.alloc(80)  # a 128-byte slot of a new slab
    slab = next(s for s in heap.slabs() if s.slot_size == 128)
    rest = ctypes.string_at(slab.bump, slab.end - slab.bump)
    assert rest == bytes([POISON_BYTE]) * len(rest)
    heap.free(address)
    freed = ctypes.string_at(address - REDZONE + WORD, 128 - WORD)
    assert freed == bytes([POISON_BYTE]) * (128 - WORD)


# --- writes after free ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slot", "redzones"),
    [(slot, True) for slot in FITTING] + [(slot, False) for slot in SLOTS if slot > WORD],
)
def test_a_write_after_free_is_reported_with_address_and_offset(
    slot: int, redzones: bool
) -> None:
    debug = _debug(redzones=redzones)
    with pyslab.SlabAllocator(policy=["dict-lookup", debug]) as alloc:
        size = _in_class(slot, redzones)
        keep = alloc.alloc(size)
        fill_block(keep, size, 0x77)
        freed = alloc.alloc(size)
        alloc.free(freed)
        offset = size - 1 if redzones else WORD  # past the free-list word of the slot
        ctypes.memset(freed + offset, 0x41, 1)
        with pytest.raises(pyslab.CorruptionError, match="write after free") as caught:
            alloc.alloc(size)
        message = str(caught.value)
        assert f"{freed:#x}" in message and f"offset {offset} of it" in message
        assert f"byte {freed + offset:#x}" in message
        (held,) = debug.quarantined()
        start = freed - (REDZONE if redzones else 0)
        assert (held.address, held.span, held.in_slab) == (start, slot, True)
        alloc.validate()
        assert block_intact(keep, size, 0x77)
        assert alloc.stats().classes[SLOTS.index(slot)].cached_slots == 1
        fresh = alloc.alloc(size)  # never the quarantined slot
        assert fresh != freed
        for address in (keep, fresh):
            alloc.free(address)
        alloc.validate()


def test_a_write_after_free_in_a_slot_never_reused_is_found_by_validate(
    heap: pyslab.SlabAllocator, debug: Debug
) -> None:
    blocks = [heap.alloc(40) for _ in range(3)]
    heap.free(blocks[0])
    heap.free(blocks[1])  # the head; blocks[0] is the second node
    ctypes.memset(blocks[0] + 5, 0x00, 2)
    before = snapshot(heap, {blocks[2]: 40})
    with pytest.raises(pyslab.CorruptionError, match=f"offset {REDZONE + 5} of the slot") as e:
        heap.validate()
    assert f"{blocks[0]:#x}" in str(e.value) and "found by validate()" in str(e.value)
    assert snapshot(heap, {blocks[2]: 40}) == before  # validate changes nothing
    ctypes.memset(blocks[0] + 5, POISON_BYTE, 2)  # undo, so that the fixture's validate passes
    heap.free(blocks[2])


def test_a_write_to_a_slot_never_handed_out_is_found_by_validate(
    heap: pyslab.SlabAllocator,
) -> None:
    address = heap.alloc(40)
    stray = address - REDZONE + 128 + 50  # inside the next, uncarved slot
    ctypes.memset(stray, 0x00, 1)
    with pytest.raises(pyslab.CorruptionError, match=f"{stray:#x}"):
        heap.validate()
    ctypes.memset(stray, POISON_BYTE, 1)
    heap.free(address)


def test_poison_off_lets_a_write_after_free_through() -> None:
    with pyslab.SlabAllocator(policy=["dict-lookup", _debug(poison=False)]) as alloc:
        freed = alloc.alloc(24)
        alloc.free(freed)
        ctypes.memset(freed, 0x41, 24)
        assert alloc.alloc(24) == freed  # not checked: the option is off
        alloc.free(freed)
        alloc.validate()


# --- red zones -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [_in_class(slot) for slot in FITTING] + [1, 5, 2000])
def test_an_overflow_is_reported_with_its_side_and_offset(size: int) -> None:
    debug = _debug()
    with pyslab.SlabAllocator(policy=debug) as alloc:
        neighbour = alloc.alloc(size)
        fill_block(neighbour, size, 0x66)
        address = alloc.alloc(size)
        fill_block(address, size + 1, 0x55)  # one byte too many
        with pytest.raises(pyslab.CorruptionError, match="overflow past the end") as caught:
            alloc.free(address)
        assert f"block at {address:#x} ({size} bytes)" in str(caught.value)
        assert f"offset {size} ({address + size:#x})" in str(caught.value)
        assert "underflow" not in str(caught.value)
        (held,) = debug.quarantined()
        assert held.user == address
        alloc.validate()
        assert block_intact(neighbour, size, 0x66)
        with pytest.raises(pyslab.DoubleFreeError, match=f"{address:#x}") as again:
            alloc.free(address)
        assert again.value.address == address
        assert not alloc.owns(address)
        alloc.free(neighbour)
        alloc.validate()


@pytest.mark.parametrize("slot", FITTING)
def test_an_overflow_into_the_slack_of_the_slot_is_reported(slot: int) -> None:
    with pyslab.SlabAllocator(policy="debug") as alloc:
        size = slot // 2 - REDZONE + 1  # leaves slack after the trailing red zone
        address = alloc.alloc(size)
        last = slot - REDZONE - 1  # the last byte of the slot, from the block's start
        ctypes.memset(address + last, 0x00, 1)
        with pytest.raises(pyslab.CorruptionError, match=f"offset {last} "):
            alloc.free(address)
        alloc.validate()


@pytest.mark.parametrize("size", [_in_class(slot) for slot in FITTING] + [1, 2000])
def test_an_underflow_is_reported_with_its_side_and_offset(size: int) -> None:
    with pyslab.SlabAllocator(policy="dict-lookup+reclaim+debug") as alloc:
        neighbour = alloc.alloc(size)
        fill_block(neighbour, size, 0x66)
        address = alloc.alloc(size)
        ctypes.memset(address - 3, 0x00, 3)  # offsets -3, -2, -1
        with pytest.raises(pyslab.CorruptionError, match="underflow before the start") as caught:
            alloc.free(address)
        assert f"offset -1 ({address - 1:#x})" in str(caught.value)
        assert "3 bytes of the leading red zone damaged, down to offset -3" in str(caught.value)
        alloc.validate()
        assert block_intact(neighbour, size, 0x66)
        alloc.free(neighbour)


def test_damaged_red_zones_of_a_live_block_are_found_by_validate(
    heap: pyslab.SlabAllocator,
) -> None:
    address = heap.alloc(50)
    ctypes.memset(address + 50, 0x00, 1)
    with pytest.raises(pyslab.CorruptionError, match=f"{address:#x}.*offset 50"):
        heap.validate()
    assert heap.owns(address)  # validate quarantines nothing
    ctypes.memset(address + 50, REDZONE_BYTE, 1)
    heap.free(address)


def test_red_zones_off_let_an_overflow_through() -> None:
    with pyslab.SlabAllocator(policy=_debug(redzones=False)) as alloc:
        address = alloc.alloc(40)  # a 64-byte slot: 24 bytes of slack
        fill_block(address, 48, 0x55)
        alloc.free(address)
        alloc.validate()


# --- free-list pointers --------------------------------------------------------------------------


CORRUPTIONS: dict[str, Callable[[int, int], int]] = {
    "low byte changed": lambda pointer, slot_start: pointer ^ 0x48,
    "arbitrary value": lambda pointer, slot_start: 0x10,  # unmapped: following it would crash
    "misaligned": lambda pointer, slot_start: pointer + 3,
    "the slot itself": lambda pointer, slot_start: slot_start,
    "zero": lambda pointer, slot_start: 0,
}


def _freed_in_one_slab(slot: int) -> int:
    """Blocks freed by the test below: all in one slab, with two live ones after them."""
    return min(6, 4096 // slot - 1) - 2


@pytest.mark.parametrize(
    ("slot", "corruption"),
    [
        (slot, corruption)
        for slot in SLOTS
        for corruption in sorted(CORRUPTIONS)
        if corruption != "zero" or _freed_in_one_slab(slot) > 1  # 0 ends a one-node list
    ],
)
def test_a_corrupted_free_list_pointer_is_caught_before_it_is_followed(
    slot: int, corruption: str
) -> None:
    debug = _debug(redzones=False)  # the block's first word is the free-list word
    with pyslab.SlabAllocator(policy=["dict-lookup", debug]) as alloc:
        freed = _freed_in_one_slab(slot)
        blocks = [alloc.alloc(slot) for _ in range(freed + 2)]  # one slab, still current
        for address in blocks:
            fill_block(address, slot, 0x30)
        for address in blocks[:freed]:
            alloc.free(address)
        head = blocks[freed - 1]
        pointer = _word(head).value
        bad = CORRUPTIONS[corruption](pointer, head)
        _word(head).value = bad  # a write after free over the free-list pointer
        with pytest.raises(pyslab.CorruptionError, match="corrupted free-list pointer") as caught:
            alloc.alloc(slot)
        message = str(caught.value)
        assert f"slot at {head:#x} (offset 0)" in message and f"holds {bad:#x}" in message
        assert [q.address for q in debug.quarantined()] == [head]
        alloc.validate()  # the slab's free list was relinked: consistent again
        for address in blocks[freed:]:
            assert block_intact(address, slot, 0x30)
        again = [alloc.alloc(slot) for _ in range(freed + 1)]
        assert head not in again and set(blocks[: freed - 1]) <= set(again)
        for address in again + blocks[freed:]:
            alloc.free(address)
        alloc.validate()


def test_a_corrupted_pointer_deeper_in_a_list_is_reported_by_check(
    heap: pyslab.SlabAllocator, debug: Debug
) -> None:
    blocks = [heap.alloc(100) for _ in range(5)]
    for address in blocks[:4]:
        heap.free(address)
    node = blocks[1] - REDZONE  # its next pointer leads to blocks[0]'s slot
    pointer = _word(node).value
    _word(node).value = pointer + 1
    with pytest.raises(pyslab.CorruptionError):
        heap.validate()  # the core's own walk sees it first
    with pytest.raises(pyslab.CorruptionError, match="corrupted free-list pointer") as caught:
        debug.check()
    assert f"slot at {node:#x} (offset 0)" in str(caught.value)
    assert f"holds {pointer + 1:#x}, not at a slot start" in str(caught.value)
    _word(node).value = pointer
    heap.free(blocks[4])


def test_without_a_current_slab_the_head_of_every_slab_of_the_class_is_checked() -> None:
    debug = _debug(redzones=False)
    with pyslab.SlabAllocator(policy=["dict-lookup", debug]) as alloc:
        older, newer = ([alloc.alloc(1024) for _ in range(4)] for _ in range(2))  # full slabs
        alloc.free(newer[0])  # the newer slab becomes current (first-fit: newest with room)
        alloc.free(older[0])
        alloc.free(older[1])  # the older one is partial too, its head older[1]
        _word(older[1]).value = 0x10
        assert alloc.alloc(1024) == newer[0]  # fills the current slab: no current slab left
        with pytest.raises(pyslab.CorruptionError, match=f"slot at {older[1]:#x} .offset 0."):
            alloc.alloc(1024)  # select_slab may pick any partial slab: every head is checked
        alloc.validate()
        for address in [*newer, *older[2:]]:
            alloc.free(address)
        alloc.validate()


def test_free_list_checks_can_be_switched_off() -> None:
    # check_free_list=False: allocation follows the list without looking (as the core alone)
    with pyslab.SlabAllocator(policy=_debug(check_free_list=False)) as alloc:
        blocks = [alloc.alloc(24) for _ in range(10)]
        for address in blocks:
            alloc.free(address)
        assert sorted(alloc.alloc(24) for _ in range(10)) == sorted(blocks)
        alloc.validate()


# --- bad frees -----------------------------------------------------------------------------------


def test_double_and_interior_frees_name_the_address(heap: pyslab.SlabAllocator) -> None:
    keep = heap.alloc(40)
    fill_block(keep, 40, 0x21)
    freed = heap.alloc(40)
    heap.free(freed)
    before = snapshot(heap, {keep: 40})
    cases: list[tuple[int, type[pyslab.InvalidFreeError], str]] = [
        (freed, pyslab.DoubleFreeError, "already freed"),
        (freed + 8, pyslab.InvalidFreeError, f"offset 8 of the debug block freed at {freed:#x}"),
        (keep + 8, pyslab.InvalidFreeError, f"offset 8 of the debug block at {keep:#x}"),
        (keep - REDZONE, pyslab.InvalidFreeError, f"offset -{REDZONE} of the debug block"),
        (8, pyslab.InvalidFreeError, "not allocated by this allocator"),
    ]
    for address, error, words in cases:
        with pytest.raises(error, match=words) as caught:
            heap.free(address)
        assert type(caught.value) is error and caught.value.address == address
        with pytest.raises(error):
            heap.usable_size(address)
        assert not heap.owns(address)
    assert snapshot(heap, {keep: 40}) == before
    with pytest.raises(TypeError, match="'nope'"):
        heap.free("nope")  # type: ignore[arg-type]
    heap.free(None)
    heap.free(0)
    heap.free(keep)


def test_a_large_block_has_red_zones_and_its_double_free_is_named() -> None:
    with pyslab.SlabAllocator(policy="debug") as alloc:
        address = alloc.alloc(5000)
        assert alloc.usable_size(address) == 5000
        fill_block(address, 5000, 0x12)
        alloc.free(address)
        with pytest.raises(pyslab.DoubleFreeError, match=f"{address:#x}"):
            alloc.free(address)
        other = alloc.alloc(5000)
        ctypes.memset(other + 5000 + REDZONE - 1, 0, 1)  # the last byte of its red zone
        with pytest.raises(pyslab.CorruptionError, match=f"offset {5000 + REDZONE - 1} "):
            alloc.free(other)
        assert alloc.stats().large_blocks == 1  # quarantined: held, never reused
        alloc.validate()


# --- sites ---------------------------------------------------------------------------------------


def _allocate_here(alloc: pyslab.SlabAllocator, size: int) -> int:
    return alloc.alloc(size)


def _free_here(alloc: pyslab.SlabAllocator, address: int) -> None:
    alloc.free(address)


def test_sites_are_recorded_and_shown_in_errors_and_the_report() -> None:
    debug = _debug(record_sites=True, site_depth=4)
    with pyslab.SlabAllocator(policy=debug) as alloc:
        address = _allocate_here(alloc, 30)
        (site,) = debug.sites()[address][-1:]
        assert site.name == "_allocate_here" and site.filename == __file__
        assert len(debug.sites()[address]) == 4
        assert "_allocate_here" in debug.report_section()
        fill_block(address, 31, 0x01)
        with pytest.raises(pyslab.CorruptionError, match="allocated at") as caught:
            _free_here(alloc, address)
        assert "in _allocate_here" in str(caught.value)
        assert address not in debug.sites()
        freed = _allocate_here(alloc, 30)
        _free_here(alloc, freed)
        with pytest.raises(pyslab.DoubleFreeError) as double:
            alloc.free(freed)
        assert "in _allocate_here" in str(double.value) and "in _free_here" in str(double.value)
        ctypes.memset(freed, 0x00, 1)
        with pytest.raises(pyslab.CorruptionError, match="write after free") as later:
            alloc.alloc(30)
        assert "freed at" in str(later.value) and "in _free_here" in str(later.value)
        assert "quarantined" in debug.report_section()
        alloc.validate()


def test_without_sites_nothing_is_recorded(heap: pyslab.SlabAllocator, debug: Debug) -> None:
    address = heap.alloc(30)
    assert debug.sites() == {} and debug.live_blocks() == {address: 30}
    assert "sites off" in debug.report_section()
    heap.free(address)


# --- compositions and live allocators ------------------------------------------------------------


def test_debug_added_to_a_live_allocator_passes_earlier_blocks_through() -> None:
    with pyslab.SlabAllocator(policy="dict-lookup") as alloc:
        earlier = [alloc.alloc(48) for _ in range(20)]
        for address in earlier[:5]:
            fill_block(address, 48, 0x99)
            alloc.free(address)  # free slots holding stale bytes
        for i, address in enumerate(earlier[5:]):
            fill_block(address, 48, pattern_byte(i))
        alloc.set_policy("dict-lookup+debug")
        alloc.validate()
        for i, address in enumerate(earlier[5:]):
            assert alloc.usable_size(address) == 64 and block_intact(address, 48, pattern_byte(i))
            alloc.free(address)
        with pytest.raises(pyslab.DoubleFreeError):
            alloc.free(earlier[5])
        fresh = [alloc.alloc(24) for _ in range(40)]  # the slots freed before and after binding
        alloc.validate()
        for address in fresh:
            alloc.free(address)
        alloc.validate()


@pytest.mark.parametrize(
    "spec", ["thread-cache+debug", "dict-lookup+reclaim+debug", "fullest-first+reclaim+debug"]
)
def test_debug_composes_with_placement_reclaim_and_caches(spec: str) -> None:
    with pyslab.SlabAllocator(policy=spec) as alloc:
        blocks = {alloc.alloc(size): size for size in range(1, 600, 7)}
        for i, (address, size) in enumerate(blocks.items()):
            fill_block(address, size, pattern_byte(i))
        for address in list(blocks)[::2]:
            alloc.free(address)
            del blocks[address]
        freed = next(iter(list(blocks)))
        alloc.free(freed)
        size = blocks.pop(freed)
        ctypes.memset(freed, 0x00, 1)
        with pytest.raises(pyslab.CorruptionError, match="write after free"):
            alloc.alloc(size)
        alloc.validate()
        for address in blocks:
            alloc.free(address)
        alloc.shrink()
        alloc.validate()


def test_debug_under_another_front_end_warns_and_stops_poisoning() -> None:
    with pytest.warns(pyslab.PyslabWarning, match="thread-cache\\+debug"):
        alloc = pyslab.SlabAllocator(policy="debug+thread-cache")
    with alloc:
        blocks = [alloc.alloc(24) for _ in range(200)]  # served by the cache, around debug
        for address in blocks:
            fill_block(address, 24, 0x13)
            alloc.free(address)
        alloc.shrink()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            blocks = [alloc.alloc(24, 16) for _ in range(200)]  # through debug: no false alarm
        for address in blocks:
            alloc.free(address)
        alloc.validate()


@pytest.mark.parametrize("spec", ["dict-lookup+reclaim+debug", "thread-cache+debug"])
def test_threads_allocate_and_free_through_debug(spec: str) -> None:
    with pyslab.SlabAllocator(policy=spec) as alloc:
        errors: list[BaseException] = []

        def work(seed: int) -> None:
            try:
                held: list[tuple[int, int]] = []
                for i in range(400):
                    size = (seed * 31 + i * 17) % 700 + 1
                    address = alloc.alloc(size)
                    fill_block(address, size, seed)
                    held.append((address, size))
                    if i % 3 == 0:
                        old, old_size = held.pop(0)
                        assert block_intact(old, old_size, seed)
                        alloc.free(old)
                for address, _ in held:
                    alloc.free(address)
            except BaseException as error:  # reported in the main thread
                errors.append(error)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(1, 5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        alloc.validate()
        assert alloc.stats().live_blocks == 0


class _Reentrant:
    """Cyclic garbage whose finalizer frees one block and allocates another, noting whether it
    ran inside a call of the allocator (the collector started there, on its lock)."""

    def __init__(self, alloc: pyslab.SlabAllocator, sink: list[int], inside: list[bool]) -> None:
        self.alloc, self.sink, self.inside = alloc, sink, inside
        self.victim = alloc.alloc(40)
        fill_block(self.victim, 40, 0x7E)
        self.cycle = self

    def __del__(self) -> None:
        # RLock._is_owned: the collector interrupted a call that holds the allocator's lock
        self.inside.append(self.alloc.lock._is_owned())  # type: ignore[attr-defined]
        self.alloc.free(self.victim)
        address = self.alloc.alloc(40)
        fill_block(address, 40, 0x7E)
        self.sink.append(address)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("spec", ["dict-lookup+debug", "thread-cache+debug"])
def test_finalizers_that_call_the_allocator_inside_a_debug_call(spec: str) -> None:
    """The collector runs finalizers wherever the front end creates a tracked object (a tuple,
    say), inside its locked region: their frees and allocations must go through intact."""
    old = gc.get_threshold()
    sink: list[int] = []
    inside: list[bool] = []
    try:
        with pyslab.SlabAllocator(policy=spec) as alloc:
            for threshold in range(1, 6):
                gc.set_threshold(threshold, 1, 1)
                for _ in range(60):
                    _Reentrant(alloc, sink, inside)
                    alloc.free(alloc.alloc(1024))
            gc.set_threshold(*old)
            gc.collect()
            assert any(inside), "no finalizer ran inside an allocator call: nothing was tested"
            assert len(sink) == len(inside) == 5 * 60
            assert all(block_intact(address, 40, 0x7E) for address in sink)
            for address in sink:
                alloc.free(address)
            alloc.validate()
            assert alloc.stats().live_blocks == 0 and alloc.deferred_errors == []
    finally:
        gc.set_threshold(*old)


# --- the state machine under debug ---------------------------------------------------------------


def _debug_slot(allocator: pyslab.SlabAllocator, size: int, align: int) -> int | None:
    """The slot a debug block of ``size`` occupies (None: a large block)."""
    below = max(align, WORD)
    lead = -(-REDZONE // below) * below
    return expected_slot(allocator, lead + size + REDZONE, below)


class DebugMachine(AllocatorMachine):
    """The conformance state machine, with what a debug front end changes: ``usable_size`` is
    the requested size, a block occupies a larger slot, and the policy is never swapped (a
    debug block's address is not a slot start)."""

    def _record(self, address: int, size: int, align: int) -> int:
        address = super()._record(address, size, align)
        slot = _debug_slot(self.allocator, size, align)
        self.model[address] = (*self.model[address][:3], slot)
        return address

    def swap_policy(self, configuration: str) -> None:  # no longer a rule (see the docstring)
        raise NotImplementedError

    @rule(address=consumes(AllocatorMachine.blocks), offset=st.sampled_from([-1, 0]))
    def overflow_is_caught_and_quarantined(self, address: int, offset: int) -> None:
        size, _, _, _ = self.model.pop(address)
        ctypes.memset(address + (size if offset == 0 else -1), REDZONE_BYTE ^ 0xFF, 1)
        self.freed.append(address)  # freeing it again is a double free
        try:
            self.allocator.free(address)
        except pyslab.CorruptionError:
            pass
        else:
            raise AssertionError(f"a damaged red zone of {address:#x} went unnoticed")

    @invariant()
    def blocks_are_intact_aligned_and_disjoint(self) -> None:
        spans = []
        for address, (size, align, byte, _) in self.model.items():
            assert address % align == 0 and block_intact(address, size, byte)
            assert self.allocator.usable_size(address) == size and self.allocator.owns(address)
            spans.append((address - REDZONE, address + size + REDZONE))
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start, "two debug blocks (with their red zones) overlap"

    @invariant()
    def stats_agree_with_the_model(self) -> None:
        stats = self.allocator.stats()
        live = sum(1 for *_, slot in self.model.values() if slot is not None)
        assert sum(c.used_slots - c.cached_slots for c in stats.classes) == live
        large = [size for size, _, _, slot in self.model.values() if slot is None]
        assert stats.large_blocks - self._quarantined_large() == len(large)

    def _quarantined_large(self) -> int:
        debug: Any = next(p for p in self.allocator.policy.policies if p.name == "debug")
        return sum(1 for q in debug.quarantined() if not q.in_slab)

    def teardown(self) -> None:
        for address in list(self.model):
            self.allocator.free(address)
        self.allocator.validate()
        assert self.allocator.stats().live_blocks == self._quarantined_large()
        self.allocator.close()


DEBUG_CONFIGURATIONS: tuple[str, ...] = (
    "debug",
    "dict-lookup+debug",
    "debug+reclaim",
    "address-mask+fullest-first+reclaim+stats+debug",
    "thread-cache+debug",
)
"""Compositions the conformance machine runs under debug (it is not in tests.support's
CONFIGURATIONS: those tests check usable_size against slot sizes and swap policies)."""


for _configuration in DEBUG_CONFIGURATIONS:
    _case = state_machine_case(
        DebugMachine, _configuration, examples=200 if os.environ.get("PYSLAB_LONG") == "1" else 25
    )
    globals()[f"TestDebug_{_case.__qualname__.split('.')[0]}"] = _case
del _case, _configuration  # not collected a second time under these names
