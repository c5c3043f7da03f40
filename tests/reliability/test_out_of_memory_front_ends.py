"""Out of memory inside the front ends ``thread-cache`` and ``debug``.

- The SQLite-style sweeps of ``nomemory.py`` (every Python allocation point of every public
  call, failing once and failing from there on) under the usual compositions of each front
  end. Its checks read what the front ends change: a block in a magazine or parked by
  ``debug`` is free for the caller (``owns`` is False, ``stats()`` counts it in
  ``cached_slots``, so not in ``live_blocks``), and each policy's ``check`` runs in
  ``validate()``.
- The calls with a second step (``calloc``, ``realloc``: under a front end the core takes the
  new block through the front end's ``alloc`` and gives it back through its ``free``, which
  needs memory) are swept with transient failures; the persistent ones are marked as the
  limit they are. ``debug``'s large blocks are swept in full: one it can neither hand out nor
  give back through the core goes back through the large-block books, which need no memory.
- A real ``RLIMIT_AS`` in a child process: frees near the limit either free the block or raise
  ``MemoryError`` leaving it live, bytes intact and freeable once memory is back.
- ``debug`` names the size the caller asked for in its ``MemoryError``.
- The code shape that keeps CPython from retrying forever (see "Out of memory" in
  ``pyslab.core.guard``): no instruction that can raise lies past the 256th of its function
  inside a handler region that pushes the instruction's offset.

Bounded in CI (four compositions, ``set_policy`` left out); ``PYSLAB_LONG=1`` sweeps eight,
``set_policy`` included where no ``debug`` block is live.
"""

from __future__ import annotations

import dis
import gc
import importlib
import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

import pyslab
from pyslab.policy import parse_policies
from pyslab_plugins import debug as debug_module
from pyslab_plugins import thread_cache as thread_cache_module
from tests.reliability.nomemory import (
    AVAILABLE,
    SCENARIOS,
    Blocks,
    Changed,
    Scenario,
    SweepReport,
    sweep,
)

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("frozen_collector")

needs_testcapi = pytest.mark.skipif(
    not AVAILABLE, reason="this CPython has no _testcapi.set_nomemory to inject failures"
)

SWEPT_IN_CI = ("thread-cache", "dict-lookup+reclaim+thread-cache", "dict-lookup+debug",
               "thread-cache+debug")
"""The bounded run: thread-cache alone and in the README's composition, debug over the usual
index and over thread-cache (debug last among the front ends, as its documentation asks)."""

SWEPT_LONG = (
    *SWEPT_IN_CI,
    "thread-cache+dict-lookup+reclaim",
    "dict-lookup+reclaim+thread-cache+debug",
    "thread-cache(magazine=4)+debug",
    "address-mask+thread-cache",
)
"""Every composition of the bounded run (and ``set_policy`` in those without debug); the cache
before the index (its ``slab_added`` first in the composed notification), debug over small
magazines (a spill every few frees), and the region index."""

TWO_STEP = ("calloc", "realloc within its class", "realloc to another class",
            "realloc to a large block")
"""Under a front end, every realloc moves (the front end lays blocks out its own way)."""

LARGE = ("alloc of a large block", "alloc aligned beyond every class")
"""Served by libc: under ``debug``, a block it can neither hand out nor give back is parked,
counted by the heap as a live large block until the next flush."""

SLOW = ("set_policy",)
"""``nomemory``'s ``set_policy`` builds the new policy from its name inside the call, which is
the registry's work, not a front end's. Here the new policies are built before the call, so
that the sweep spends its points on the front ends' flush, retirement and binding:
:data:`SET_POLICY`, in the long run."""


def _prepare_other_policies(blocks: Blocks) -> object:
    """Three blocks held; the composition with ``stats`` added (or taken away), built now."""
    for _ in range(3):
        blocks.alloc(24)
    name = blocks.heap.policy.name
    other = f"{name}+stats" if "stats" not in name else name.replace("+stats", "")
    return parse_policies(other)


def _act_set_policy(heap: pyslab.SlabAllocator, policies: object, out: list[object]) -> None:
    heap.set_policy(policies)  # type: ignore[arg-type]


def _nothing(blocks: Blocks, state: object, result: object) -> Changed:
    return (), ()


SET_POLICY = Scenario(
    "set_policy to policies built beforehand", _prepare_other_policies, _act_set_policy,
    _nothing, allowed=(pyslab.PolicyError,),  # debug refuses while its blocks are live
)

LIMIT = 1500
"""Allocation points per scenario: ``validate`` under thread-cache has some 700."""


def _check(report: SweepReport) -> None:
    print(f"{report.points} points swept, {report.failures} MemoryErrors checked")
    assert report.problems == []
    assert report.failures > 0


def _fully(spec: str) -> tuple[Scenario, ...]:
    skip = TWO_STEP + SLOW
    return tuple(s for s in SCENARIOS if s.name not in skip)


def _two_step(spec: str) -> tuple[Scenario, ...]:
    return tuple(s for s in SCENARIOS if s.name in TWO_STEP)


@needs_testcapi
@pytest.mark.timeout(300)
@pytest.mark.parametrize("spec", SWEPT_IN_CI)
def test_every_python_allocation_point_of_every_call_is_survived(spec: str) -> None:
    _check(sweep(spec, _fully(spec), limit=LIMIT))


@needs_testcapi
@pytest.mark.timeout(300)
@pytest.mark.parametrize("spec", SWEPT_IN_CI)
def test_two_step_calls_survive_every_transient_failure(spec: str) -> None:
    _check(sweep(spec, _two_step(spec), limit=LIMIT, check_persistent=False))


@needs_testcapi
@pytest.mark.long
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("spec", SWEPT_LONG)
def test_every_python_allocation_point_of_every_call_is_survived_long(spec: str) -> None:
    # Under debug, set_policy with debug's blocks live is refused after the new composition
    # is validated, and that validation runs outside the core's guard (its failures for want
    # of a frame surface as SystemError): not a front end's call, so not swept here.
    extra = () if "debug" in spec else (SET_POLICY,)
    _check(sweep(spec, (*_fully(spec), *extra), limit=4000))
    _check(sweep(spec, _two_step(spec), limit=4000, check_persistent=False))


@needs_testcapi
@pytest.mark.timeout(300)
@pytest.mark.xfail(strict=True, reason="under a front end the core gives the new block of a "
                   "two-step call back through the front end's free, which needs memory (the "
                   "int of an address's slab base): under persistent exhaustion it stays taken")
def test_two_step_calls_under_persistent_exhaustion() -> None:
    scenarios = tuple(s for s in SCENARIOS if s.name == "realloc to a large block")
    _check(sweep("dict-lookup+reclaim+thread-cache", scenarios, limit=LIMIT))


@needs_testcapi
@pytest.mark.timeout(300)
def test_large_debug_blocks_under_persistent_exhaustion() -> None:
    # A large block debug cannot finish, and cannot give back through the core's free (which
    # needs memory to look for a slab), is released in the core's large-block books, whose
    # release needs none once begun: nothing is parked, the heap is as it was.
    _check(sweep("dict-lookup+debug", tuple(s for s in SCENARIOS if s.name in LARGE),
                 limit=LIMIT))


# --- what debug says ------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["debug", "dict-lookup+debug", "thread-cache+debug"])
def test_debug_names_the_size_asked_when_memory_runs_out(spec: str) -> None:
    size = 1 << 62  # beyond the address space: the layer below refuses it
    with pyslab.SlabAllocator(policy=spec) as heap:
        with pytest.raises(MemoryError) as caught:
            heap.alloc(size)
        message = str(caught.value)
        assert f"alloc({size}" in message
        padded = [str(size + extra) for extra in range(1, 4097)]
        assert not [number for number in padded if number in message], message
        heap.validate()
        assert heap.stats().live_blocks == 0


@needs_testcapi
@pytest.mark.timeout(120)
def test_a_block_debug_can_neither_hand_out_nor_give_back_is_parked_then_flushed() -> None:
    """Failing every allocation from some point on, an alloc through debug takes a slot from
    the layer below and then can neither finish nor give it back: the slot is parked, held
    (counted in ``cached_slots``, so not live), and the next flush (``shrink``) gives it back."""
    testcapi = importlib.import_module("_testcapi")
    for start in range(400):
        with pyslab.SlabAllocator(policy="dict-lookup+debug") as heap:
            held = [heap.alloc(24) for _ in range(3)]
            policy = next(p for p in heap.policy.policies if isinstance(p, debug_module.Debug))
            before = heap.stats().live_blocks
            outcome: list[BaseException | None] = [None]
            gc.collect()
            gc.disable()
            testcapi.set_nomemory(start, 0)
            try:
                heap.alloc(24)
            except BaseException as error:
                outcome[0] = error
            testcapi.remove_mem_hooks()
            gc.enable()
            if not any(policy._parked):
                continue
            assert isinstance(outcome[0], MemoryError), outcome[0]
            assert heap.stats().live_blocks == before
            heap.validate()
            heap.shrink()
            assert not any(policy._parked)
            heap.validate()
            assert heap.stats().live_blocks == before
            for block in held:
                heap.free(block)
            return
    pytest.fail("no allocation point left a block to park")


# --- a real limit on the address space ------------------------------------------------------

RLIMIT_SPECS = (
    "dict-lookup+reclaim+thread-cache",
    "dict-lookup+reclaim+thread-cache(magazine=4)",
    "dict-lookup+debug",
    "thread-cache+debug",
)
"""The README's thread-cache composition (and with small magazines: a spill every few
frees), debug alone over the index, and debug over the cache."""

CHILD = textwrap.dedent('''
    """Free every block with the address space exhausted; print one JSON line."""
    import ctypes, gc, json, resource, sys
    import pyslab

    SPEC = sys.argv[1]
    BLOCKS = 600
    SIZES = (24, 64, 200, 5000)
    STEPS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


    def vm_size():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmSize in /proc/self/status")


    def exhaust(hog, fill):
        # Ever smaller objects, until not even a small int can be made.
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1 << 6, 0):
            try:
                for slot in fill:
                    hog[slot] = bytearray(chunk) if chunk else slot * 1000003 + 7
            except MemoryError:
                pass


    def frees(heap, blocks, codes, order, hog, backwards, top, topping):
        # codes[i]: 1 freed, 2 MemoryError, 3 anything else. Nothing here allocates (every
        # int it uses exists already) but the allocator's free, and the small ints taken
        # back on purpose after a free that succeeded.
        free = heap.free
        level = 0
        release = -1
        for release in backwards:
            if hog[release] is not None:
                break
        for index in order:
            try:
                free(blocks[index][0])
            except MemoryError:
                codes[index] = 2
            except BaseException:
                codes[index] = 3
            else:
                codes[index] = 1
            if codes[index] != 1:  # give some memory back, more after each failure in a row
                count = STEPS[level]
                while count and release >= 0:
                    hog[release] = None
                    release = next(backwards, -1)
                    count -= 1
                if level < 8:
                    level += 1
                continue
            level = 0
            try:  # small ints until none can be made: the next free starts out of memory
                while True:
                    slot = next(topping)
                    top[slot] = slot * 7 + 3
            except MemoryError:
                pass
            except StopIteration:
                pass


    def main():
        heap = pyslab.SlabAllocator(policy=SPEC)
        blocks = []
        for i in range(BLOCKS):
            size = SIZES[i % len(SIZES)]
            address = heap.alloc(size)
            ctypes.memset(address, i % 251 + 1, size)
            blocks.append((address, size, i % 251 + 1))
        codes = [0] * BLOCKS
        order = iter(list(range(BLOCKS)))
        hog = [None] * 1_000_000
        slots = list(range(len(hog)))
        backwards, fill = reversed(slots), iter(slots)
        top = [None] * 200_000
        topping = iter(list(range(len(top))))
        gc.collect()
        gc.disable()
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (vm_size() + (4 << 20), hard))
        crash = None
        try:
            exhaust(hog, fill)
            frees(heap, blocks, codes, order, hog, backwards, top, topping)
        except BaseException as error:
            crash = error
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        del hog[:], top[:]
        gc.enable()
        if crash is not None:
            raise crash
        problems = []
        for index, (address, size, byte) in enumerate(blocks):
            code = codes[index]
            if code == 1 and heap.owns(address):
                problems.append(f"{address:#x} was freed, yet it is still live")
            elif code == 2 and not heap.owns(address):
                problems.append(f"{address:#x}: free raised MemoryError, yet it is not live")
            elif code == 2 and ctypes.string_at(address, size) != bytes([byte]) * size:
                problems.append(f"{address:#x}: free raised MemoryError, and its bytes changed")
            elif code == 2:
                heap.free(address)  # live and usable: it frees now
            elif code != 1:
                problems.append(f"{address:#x}: free raised another error than MemoryError")
        heap.validate()
        live = heap.stats().live_blocks
        if live:
            problems.append(f"{live} blocks live at the end")
        heap.close()
        print(json.dumps({"freed": codes.count(1), "raised": codes.count(2),
                          "problems": problems}))


    main()
''')


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.timeout(120)
@pytest.mark.parametrize("spec", RLIMIT_SPECS)
def test_frees_under_a_real_address_space_limit_free_or_raise_leaving_the_block(
    spec: str,
) -> None:
    pytest.importorskip("resource")
    done = subprocess.run(
        [sys.executable, "-c", CHILD, spec], cwd=ROOT, capture_output=True, text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    print(spec, outcome)
    assert outcome["problems"] == []
    assert outcome["freed"] > 0 and outcome["raised"] > 0, "the limit was not near enough"


# --- the code shape ---------------------------------------------------------------------------

_CANNOT_RAISE = frozenset({
    "LOAD_FAST", "STORE_FAST", "DELETE_FAST", "LOAD_CONST", "LOAD_GLOBAL", "POP_TOP", "NOP",
    "COPY", "SWAP", "PUSH_NULL", "RETURN_VALUE", "CACHE", "POP_EXCEPT", "PUSH_EXC_INFO",
    "CHECK_EXC_MATCH", "JUMP_FORWARD", "POP_JUMP_FORWARD_IF_NONE",
    "POP_JUMP_FORWARD_IF_NOT_NONE", "POP_JUMP_FORWARD_IF_FALSE", "POP_JUMP_FORWARD_IF_TRUE",
})
"""CPython 3.11 instructions that raise nothing (the conditional jumps test a bool here: the
result of a comparison or of ``CHECK_EXC_MATCH``)."""


def _codes(code: types.CodeType) -> list[types.CodeType]:
    found = [code]
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            found += _codes(constant)
    return found


def _late_raisers(path: Path) -> list[str]:
    """Every instruction of ``path`` that can raise, past the 256th of its function (in code
    units, as CPython counts them), inside a handler region that pushes the instruction's
    offset: with memory exhausted, that offset (an int beyond CPython's small ones) cannot
    be made, and CPython 3.11 to 3.13 retry forever."""
    found = []
    for code in _codes(compile(path.read_text(), str(path), "exec")):
        listing = dis.Bytecode(code)
        instructions = list(listing)
        never_run = {  # the re-raise after a failed match of ``except BaseException``
            third.argval
            for first, second, third in zip(
                instructions, instructions[1:], instructions[2:], strict=False
            )
            if first.argval == "BaseException" and second.opname == "CHECK_EXC_MATCH"
        }
        for entry in getattr(listing, "exception_entries", ()):  # 3.11 on
            if not entry.lasti:
                continue
            for instruction in instructions:
                if (
                    entry.start <= instruction.offset < entry.end
                    and instruction.offset // 2 > 256
                    and instruction.opname not in _CANNOT_RAISE
                    and not (instruction.opname == "RERAISE" and instruction.arg)
                    and instruction.offset not in never_run
                ):
                    positions = getattr(instruction, "positions", None)  # 3.11 on
                    line = positions.lineno if positions is not None else None
                    name = getattr(code, "co_qualname", code.co_name)
                    found.append(f"{path.name}:{line} {name}: {instruction.opname}")
    return sorted(set(found))


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="reads CPython 3.11 bytecode")
@pytest.mark.parametrize("module", [thread_cache_module, debug_module])
def test_no_late_cleanup_can_raise_in_the_front_ends(module: types.ModuleType) -> None:
    assert module.__file__ is not None
    assert _late_raisers(Path(module.__file__)) == []
