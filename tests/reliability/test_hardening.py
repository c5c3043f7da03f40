"""The hardening plugin (``debug``) as a table: every corruption in every size class, detected.

Writes after free, overflows and underflows by one byte, and free-list pointers corrupted three
ways (a changed low byte, an arbitrary value, a misaligned value), each in every class of the
default layout (and the large fallback where the corruption applies). Each must raise
``CorruptionError`` naming the block's address and the offset of the damage, leave the
allocator valid and every other live block intact. The test prints the detection rate over the
table; ``tests/test_plugin_debug.py`` pins the plugin's behaviour case by case.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest

import pyslab
from tests.support import block_intact, fill_block

if "debug" not in pyslab.policies():
    pytest.skip("the debug plugin is not registered", allow_module_level=True)

REDZONE = 16
WORD = ctypes.sizeof(ctypes.c_void_p)
SLOTS = (8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass(frozen=True)
class Corruption:
    kind: str
    slot: int
    """The class the damaged block lives in (0: the large fallback)."""
    run: Callable[[], tuple[bool, str]]
    """Corrupts, triggers the check; returns (detected with address and offset, message)."""

    @property
    def id(self) -> str:
        where = f"{self.slot}-byte class" if self.slot else "large block"
        return f"{self.kind}, {where}"


def _heap(**options: bool) -> pyslab.SlabAllocator:
    return pyslab.SlabAllocator(policy=["dict-lookup", pyslab.make_policy("debug", **options)])


def _after(alloc: pyslab.SlabAllocator, keep: int, size: int) -> bool:
    """After a detection: valid, the neighbour intact, the class still serving."""
    alloc.validate()
    intact = block_intact(keep, size, 0x77)
    alloc.free(alloc.alloc(size))
    alloc.free(keep)
    alloc.validate()
    return intact


def _write_after_free(slot: int, offset: int) -> Callable[[], tuple[bool, str]]:
    def run() -> tuple[bool, str]:
        with _heap(redzones=False) as alloc:
            keep = alloc.alloc(slot)
            fill_block(keep, slot, 0x77)
            freed = alloc.alloc(slot)
            alloc.free(freed)
            ctypes.memset(freed + offset, 0x41, 1)
            try:
                alloc.alloc(slot)
            except pyslab.CorruptionError as error:
                message = str(error)
                named = f"{freed:#x}" in message and f"offset {offset}" in message
                return named and _after(alloc, keep, slot), message
            return False, "not detected"

    return run


def _red_zone(size: int, side: str) -> Callable[[], tuple[bool, str]]:
    def run() -> tuple[bool, str]:
        with _heap() as alloc:
            keep = alloc.alloc(size)
            fill_block(keep, size, 0x77)
            address = alloc.alloc(size)
            fill_block(address, size, 0x55)
            damaged, offset = (address + size, size) if side == "overflow" else (address - 1, -1)
            ctypes.memset(damaged, 0x00, 1)
            try:
                alloc.free(address)
            except pyslab.CorruptionError as error:
                message = str(error)
                named = f"{address:#x}" in message and f"offset {offset} ({damaged:#x})" in message
                return named and _after(alloc, keep, size), message
            return False, "not detected"

    return run


_POINTERS: dict[str, Callable[[int], int]] = {
    "free-list pointer with a changed low byte": lambda pointer: pointer ^ 0x48,
    "free-list pointer set to an arbitrary value": lambda pointer: 0x10,
    "misaligned free-list pointer": lambda pointer: pointer + 3,
}


def _free_list(slot: int, corrupt: Callable[[int], int]) -> Callable[[], tuple[bool, str]]:
    def run() -> tuple[bool, str]:
        with _heap(redzones=False) as alloc:
            # all in one slab, which stays the current one: the next allocation reads its head
            count = min(6, alloc.slab_size // slot - 1)
            blocks = [alloc.alloc(slot) for _ in range(count)]
            for address in blocks:
                fill_block(address, slot, 0x77)
            for address in blocks[: count - 2]:
                alloc.free(address)
            head = blocks[count - 3]
            word = ctypes.c_size_t.from_address(head)
            bad = corrupt(word.value)
            word.value = bad
            try:
                alloc.alloc(slot)
            except pyslab.CorruptionError as error:
                message = str(error)
                named = f"slot at {head:#x} (offset 0)" in message and f"{bad:#x}" in message
                alloc.validate()
                intact = all(block_intact(a, slot, 0x77) for a in blocks[count - 2 :])
                for address in blocks[count - 2 :]:
                    alloc.free(address)
                alloc.validate()
                return named and intact, message
            return False, "not detected"

    return run


def _table() -> list[Corruption]:
    cases: list[Corruption] = []
    for slot in SLOTS:
        if slot > WORD:  # an 8-byte free slot is all free-list pointer: see below
            for offset in sorted({WORD, slot - 1}):
                cases.append(
                    Corruption(f"write after free at offset {offset}", slot,
                               _write_after_free(slot, offset))
                )
        size = slot - 2 * REDZONE if slot > 2 * REDZONE else 0
        for side in ("overflow", "underflow"):
            if size:
                cases.append(Corruption(f"{side} by one byte", slot, _red_zone(size, side)))
        for kind, corrupt in _POINTERS.items():
            cases.append(Corruption(kind, slot, _free_list(slot, corrupt)))
    for side in ("overflow", "underflow"):
        cases.append(Corruption(f"{side} by one byte", 0, _red_zone(5000, side)))
    # blocks too small for two red zones and a byte still get them: they go to a larger class
    for side in ("overflow", "underflow"):
        cases.append(Corruption(f"{side} by one byte of a 1-byte block", 64, _red_zone(1, side)))
    return cases


CASES = _table()


@pytest.mark.timeout(120)
def test_every_corruption_of_every_class_is_detected_with_address_and_offset() -> None:
    results = {case.id: case.run() for case in CASES}
    detected = sum(ok for ok, _ in results.values())
    print(f"debug plugin: {detected}/{len(CASES)} corruptions detected with address and offset")
    missed = {name: message for name, (ok, message) in results.items() if not ok}
    assert missed == {}
    kinds = {re.sub(r" at offset \d+", "", case.kind) for case in CASES}
    assert {"write after free", "overflow by one byte", "underflow by one byte"} <= kinds
