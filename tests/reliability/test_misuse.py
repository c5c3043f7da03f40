"""Every bad input gets its documented exception and changes nothing (see ``misuse.py``).

And no false positives: a live block whose bytes look like allocator metadata (a free-list
pointer, the address of a free slot, a debug fill pattern) frees normally.
"""

from __future__ import annotations

import ctypes

import pytest

import pyslab
import pyslab.core
from tests.reliability.misuse import (
    CASES,
    FRONT_END_MISSES,
    detection_rate,
    has_front_end,
    known_miss,
    run_any,
    run_case,
)
from tests.support import CONFIGURATIONS, block_intact, fill_block

TABLE_CONFIGURATIONS = ("first-fit", "dict-lookup+reclaim")
FRONT_ENDS = tuple(
    spec for spec in ("thread-cache", "debug", "thread-cache+debug")
    if set(spec.split("+")) <= set(pyslab.policies())
)
"""The front ends, which word their own errors: their messages must name the value."""


def _table(spec: str) -> None:
    strict = not has_front_end(spec)
    outcomes = [
        run_any(i, spec) if c.isolate else run_case(c, spec, strict)
        for i, c in enumerate(CASES) if not known_miss(c, spec)
    ]
    detected, tried, rate = detection_rate(outcomes)
    groups = len({case.group for case in CASES})
    skipped = [o.case.id for o in outcomes if not o.applicable]
    known = sum(bool(known_miss(c, spec)) for c in CASES)  # run as strict xfail when any
    print(
        f"{spec}: {groups} groups, {len(CASES)} cases; documented and detected {rate}; "
        f"{known} known misses run as xfail; {len(skipped)} not applicable"
    )
    if strict:
        assert skipped == []
    missed = [
        f"{o.case.id}: {o.why} ({o.raised})" for o in outcomes if o.applicable and not o.detected
    ]
    assert missed == [], "\n".join(missed)
    assert detected == tried


@pytest.mark.timeout(120)
@pytest.mark.parametrize("spec", TABLE_CONFIGURATIONS)
def test_every_misuse_is_detected_and_changes_nothing(spec: str) -> None:
    _table(spec)


@pytest.mark.long
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("spec", CONFIGURATIONS)
def test_every_misuse_is_detected_and_changes_nothing_long(spec: str) -> None:
    _table(spec)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(spec, marks=[pytest.mark.long] if spec == "debug" else [])
        for spec in FRONT_ENDS
    ],
)
def test_every_misuse_is_detected_through_the_front_ends(spec: str) -> None:
    """Slot-position cases do not apply where the front end moves or caches blocks."""
    _table(spec)


KNOWN_MISSES = [
    *((i, "first-fit", CASES[i].known_bug) for i, c in enumerate(CASES) if c.known_bug),
    *(
        (next(i for i, c in enumerate(CASES) if c.id == case_id), spec, reason)
        for (case_id, spec), reason in FRONT_END_MISSES.items() if spec in FRONT_ENDS
    ),
]
"""Cases a layer is known to miss (none at the moment: the table's findings were fixed)."""


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("index", "spec"),
    [
        pytest.param(i, spec, id=f"{spec}: {CASES[i].id}",
                     marks=pytest.mark.xfail(strict=True, reason=reason))
        for i, spec, reason in KNOWN_MISSES
    ],
)
def test_misuse_known_to_be_missed(index: int, spec: str) -> None:
    """Strict: fixing a known miss fails this until its entry is removed from the table."""
    outcome = run_any(index, spec)
    assert outcome.detected, outcome.why


def test_the_table_covers_every_group_and_class() -> None:
    groups = {case.group for case in CASES}
    assert groups == {
        "double free", "foreign pointer", "interior or misaligned pointer", "never-allocated slot",
        "use of a freed block", "size", "alignment", "not an address", "one rule for arguments",
        "use after close()",
    }
    for slot in (8, 16, 32, 64, 128, 256, 512, 1024):
        for position in ("first", "middle", "last"):
            assert any(c.name == f"{slot}-byte class, {position} slot" for c in CASES)


# --- no false positives -----------------------------------------------------------------------


def _look_alikes(slab: pyslab.core.MemorySlab, block: int) -> dict[str, bytes]:
    """Contents a live block may hold that resemble what the allocator or a debugger writes."""
    word = ctypes.sizeof(ctypes.c_void_p)
    other_free = next((a for a in slab.free_list() if a != block), slab.bump)

    def pointer(value: int) -> bytes:
        return value.to_bytes(word, "little") * (slab.slot_size // word)

    return {
        "the address of another free slot": pointer(other_free),
        "the slab's free-list head": pointer(slab.free or slab.first),
        "its own address": pointer(block),
        "a null next pointer": bytes(slab.slot_size),
        "a misaligned pointer into the slab": pointer(slab.first + 3),
        "0xdeadbeef": bytes.fromhex("efbeadde") * (slab.slot_size // 4),
        "glibc/MSVC fill 0xab": b"\xab" * slab.slot_size,
        "freed-memory fill 0xdd": b"\xdd" * slab.slot_size,
        "guard fill 0xfd": b"\xfd" * slab.slot_size,
        "uninitialised fill 0xcd": b"\xcd" * slab.slot_size,
        "int3 fill 0xcc": b"\xcc" * slab.slot_size,
    }


@pytest.mark.parametrize("slot", [8, 16, 64, 1024])
def test_live_blocks_that_look_like_metadata_free_normally(
    allocator: pyslab.SlabAllocator, slot: int
) -> None:
    blocks = [allocator.alloc(slot) for _ in range(12)]
    for address in blocks[::3]:  # free slots in the slab, so its free list is not empty
        allocator.free(address)
    live = [a for i, a in enumerate(blocks) if i % 3]
    slab = next(s for s in allocator.slabs() if s.contains(live[0]))
    for name, contents in _look_alikes(slab, live[0]).items():
        victim = allocator.alloc(slot)
        ctypes.memmove(victim, contents, slot)
        neighbour = live[1]
        fill_block(neighbour, slot, 0x77)
        allocator.free(victim)  # must not raise: the contents are the caller's business
        allocator.validate()
        assert not allocator.owns(victim), name
        assert block_intact(neighbour, slot, 0x77), name
        again = allocator.alloc(slot)  # and the free list still hands out a good slot
        assert again == victim, name
        allocator.free(again)
    for address in live:
        allocator.free(address)
    assert allocator.stats().live_blocks == 0


def test_a_large_block_holding_a_slab_address_frees_normally(
    allocator: pyslab.SlabAllocator,
) -> None:
    small = allocator.alloc(64)
    large = allocator.alloc(5000)
    ctypes.memmove(large, small.to_bytes(8, "little") * 625, 5000)
    allocator.free(large)
    allocator.free(small)
    allocator.validate()
