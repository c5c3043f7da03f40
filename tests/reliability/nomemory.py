"""Python out-of-memory sweeps: every Python allocation a call makes fails in turn.

The manner of SQLite's malloc tests (``test_malloc.c``, a fault injector behind
``SQLITE_CONFIG_MALLOC``): for a call on a heap in a known state, fail the Python allocation
number k (CPython's ``_testcapi.set_nomemory``, which hooks every Python allocator domain), for
k = 0, 1, 2, ... until the call completes with the failure still armed. Each point runs twice:
*transient* (only allocation k fails) and *persistent* (k and every one after it fail).

After every injected call, with memory back:

- the call succeeded, or raised ``MemoryError`` (a scenario may also allow the error it raises
  without any injection, e.g. ``InvalidFreeError`` for a bad free), nothing else;
- ``validate()`` passes (every invariant of the core and every policy's own ``check``);
- every block the test holds is still owned, with its bytes intact, and the live count is what
  the outcome implies: unchanged after an error, changed by exactly the call after a success;
- the allocator still works: an allocation and a free succeed and validate.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyslab

_testcapi: Any
try:
    _testcapi = importlib.import_module("_testcapi")
except ImportError:  # a CPython built without its test modules
    _testcapi = None

AVAILABLE = _testcapi is not None and hasattr(_testcapi, "set_nomemory")
"""Whether this interpreter can inject Python allocation failures."""


@dataclass
class Blocks:
    """The blocks a scenario holds: address -> (size, fill byte)."""

    heap: pyslab.SlabAllocator
    held: dict[int, tuple[int, int]] = field(default_factory=dict)

    def alloc(self, size: int, align: int = 8) -> int:
        address = self.heap.alloc(size, align)
        self.keep(address, size)
        return address

    def keep(self, address: int, size: int) -> None:
        byte = len(self.held) % 251 + 1
        ctypes.memset(address, byte, size)
        self.held[address] = (size, byte)

    def intact(self) -> list[str]:
        problems = []
        for address, (size, byte) in self.held.items():
            if not self.heap.owns(address):
                problems.append(f"{address:#x} ({size} bytes) is no longer owned")
            elif ctypes.string_at(address, size) != bytes([byte]) * size:
                problems.append(f"{address:#x} ({size} bytes) changed")
        return problems


@dataclass(frozen=True)
class Outcome:
    """What a call did: its result or error, and the blocks it created or ended."""

    error: BaseException | None
    created: tuple[tuple[int, int], ...] = ()  # (address, size) now live, to hold
    ended: tuple[int, ...] = ()  # addresses no longer live


@dataclass(frozen=True)
class Scenario:
    """A call on a prepared heap. ``call`` returns what a success changed."""

    name: str
    prepare: Callable[[Blocks], object]
    act: Act
    after: After
    allowed: tuple[type[BaseException], ...] = ()
    """Errors the call may raise without any injection (beside MemoryError)."""


Changed = tuple[tuple[tuple[int, int], ...], tuple[int, ...]]
"""What a successful call changed: (blocks now live as (address, size), addresses freed)."""

Act = Callable[[pyslab.SlabAllocator, object, list[object]], None]
"""The call itself, run with the failure armed: it stores its result in the list given (a
store into an existing list slot allocates nothing) and does nothing else, so that every
allocation the sweep counts is the allocator's."""

After = Callable[[Blocks, object, object], Changed]
"""What a success changed, worked out once memory is back: (blocks, prepared state, result)."""


def _alloc(size: int, align: int = 8) -> tuple[Act, After]:
    def act(heap: pyslab.SlabAllocator, _: object, out: list[object]) -> None:
        out[0] = heap.alloc(size, align)

    def after(blocks: Blocks, _: object, address: object) -> Changed:
        assert isinstance(address, int)
        return ((address, size),), ()
    return act, after


def _act_calloc(heap: pyslab.SlabAllocator, _: object, out: list[object]) -> None:
    out[0] = heap.calloc(5, 8)


def _after_calloc(blocks: Blocks, _: object, address: object) -> Changed:
    assert isinstance(address, int)
    assert ctypes.string_at(address, 40) == bytes(40), "calloc returned a block not zeroed"
    return ((address, 40),), ()


def _act_free(heap: pyslab.SlabAllocator, ptr: object, out: list[object]) -> None:
    heap.free(ptr)  # type: ignore[arg-type]


def _after_free(blocks: Blocks, ptr: object, _: object) -> Changed:
    assert isinstance(ptr, int)
    return (), (ptr,)


def _act_free_foreign(heap: pyslab.SlabAllocator, _: object, out: list[object]) -> None:
    heap.free(0x10000)


def _nothing(blocks: Blocks, _: object, __: object) -> Changed:
    return (), ()


def _realloc(size: int) -> tuple[Act, After]:
    def act(heap: pyslab.SlabAllocator, ptr: object, out: list[object]) -> None:
        out[0] = heap.realloc(ptr, size)  # type: ignore[arg-type]

    def after(blocks: Blocks, ptr: object, new: object) -> Changed:
        assert isinstance(ptr, int) and isinstance(new, int)
        old_size, byte = blocks.held[ptr]
        kept = min(size, old_size)
        assert ctypes.string_at(new, kept) == bytes([byte]) * kept, "realloc lost the contents"
        return ((new, size),), (ptr,)
    return act, after


def _act_queries(heap: pyslab.SlabAllocator, ptr: object, out: list[object]) -> None:
    out[0] = heap.usable_size(ptr)  # type: ignore[arg-type]
    out[0] = heap.owns(ptr)  # type: ignore[arg-type]


def _act_stats(heap: pyslab.SlabAllocator, _: object, out: list[object]) -> None:
    out[0] = heap.stats()


def _act_validate(heap: pyslab.SlabAllocator, _: object, out: list[object]) -> None:
    heap.validate()


def _act_shrink(heap: pyslab.SlabAllocator, _: object, out: list[object]) -> None:
    out[0] = heap.shrink()


def _filled(size: int, count: int | None = None) -> Callable[[Blocks], object]:
    """Prepare ``count`` blocks of ``size`` (default: one slab's worth); return their list."""
    def prepare(blocks: Blocks) -> object:
        size_class = blocks.heap.class_for(size)
        assert size_class is not None
        n = size_class.slots_per_slab if count is None else count
        return [blocks.alloc(size) for _ in range(n)]
    return prepare


def _pick(prepare: Callable[[Blocks], object], index: int) -> Callable[[Blocks], object]:
    def pick(blocks: Blocks) -> object:
        made = prepare(blocks)
        assert isinstance(made, list)
        return made[index]
    return pick


def _one_slab_plus_one(size: int) -> Callable[[Blocks], object]:
    def prepare(blocks: Blocks) -> object:
        made = _filled(size)(blocks)
        assert isinstance(made, list)
        return [*made, blocks.alloc(size)]
    return prepare


def _double_freed(blocks: Blocks) -> object:
    address = blocks.heap.alloc(24)
    blocks.heap.free(address)
    _filled(48, 2)(blocks)
    return address


def _emptied_slab(blocks: Blocks) -> object:
    made = _one_slab_plus_one(256)(blocks)
    assert isinstance(made, list)
    blocks.heap.free(made[-1])
    del blocks.held[made[-1]]
    return None


def _prepare_other_policy(blocks: Blocks) -> object:
    _filled(24, 3)(blocks)
    name = blocks.heap.policy.name
    other = f"{name}+stats" if "stats" not in name else name.replace("+stats", "")
    # Load and check the plugin classes first: the sweep is of building and binding them. The
    # first import of a plugin's module (CPython's import system) and the first check of its
    # class (``inspect.signature``) do not return under persistent exhaustion: both retry a
    # ``try``/``except`` forever. Both run once per class and process.
    pyslab.policy.resolve(pyslab.policy.parse_policies(other or "first-fit"))
    return other or "first-fit"


def _act_set_policy(heap: pyslab.SlabAllocator, spec: object, out: list[object]) -> None:
    heap.set_policy(spec)  # type: ignore[arg-type]


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("alloc from a partial slab", _filled(24, 3), *_alloc(24)),
    Scenario("alloc that maps a new slab", _filled(24), *_alloc(24)),
    Scenario("alloc of a large block", _filled(24, 2), *_alloc(5000)),
    Scenario("alloc aligned beyond every class", _filled(24, 2), *_alloc(64, 8192)),
    Scenario("calloc", _filled(24, 2), _act_calloc, _after_calloc),
    Scenario("free from a partial slab", _pick(_filled(24, 3), 1), _act_free, _after_free),
    Scenario("free from a full slab", _pick(_one_slab_plus_one(64), 0), _act_free, _after_free),
    Scenario("free that empties a slab", _pick(_one_slab_plus_one(128), -1), _act_free,
             _after_free),
    Scenario("free of a large block", lambda b: b.alloc(5000), _act_free, _after_free),
    Scenario("realloc within its class", lambda b: b.alloc(20), *_realloc(24)),
    Scenario("realloc to another class", lambda b: b.alloc(20), *_realloc(200)),
    Scenario("realloc to a large block", lambda b: b.alloc(20), *_realloc(3000)),
    Scenario("free of a foreign address", _filled(24, 2), _act_free_foreign, _nothing,
             allowed=(pyslab.InvalidFreeError,)),
    Scenario("double free", _double_freed, _act_free, _nothing,
             allowed=(pyslab.InvalidFreeError,)),
    Scenario("usable_size and owns", lambda b: b.alloc(24), _act_queries, _nothing),
    Scenario("stats", _filled(24, 3), _act_stats, _nothing),
    Scenario("validate", _filled(24, 3), _act_validate, _nothing),
    Scenario("shrink", _emptied_slab, _act_shrink, _nothing),
    Scenario("set_policy", _prepare_other_policy, _act_set_policy, _nothing),
)


def _before_the_call(error: BaseException | None) -> bool:
    """True when CPython failed to make the call into pyslab at all: it could not get a frame
    for it and raised ``SystemError("error return without exception set")`` from the
    caller's own line (this file), before any pyslab code ran."""
    if type(error) is not SystemError or "without exception set" not in str(error):
        return False
    trace = error.__traceback__
    while trace is not None and trace.tb_next is not None:
        trace = trace.tb_next
    return trace is not None and trace.tb_frame.f_code.co_filename == __file__


@dataclass
class SweepReport:
    """What a sweep covered and what it found."""

    points: int = 0
    failures: int = 0  # points at which a MemoryError was raised and checked
    problems: list[str] = field(default_factory=list)


def _mapped_and_listed(heap: pyslab.SlabAllocator) -> tuple[int, int]:
    """The bytes an mmap page source has mapped, and the bytes of the slabs the heap lists or
    has yet to give back: equal, or a slab's pages were lost (an arena reserves its region:
    not compared)."""
    slabs = sum(len(c.slabs) for c in heap.size_classes) + heap._unreleased_count
    listed = slabs * heap.slab_size
    source = heap.page_source
    return (source.mapped_bytes if type(source) is pyslab.core.MmapPageSource else listed), listed


def _run_point(spec: str, scenario: Scenario, start: int, persistent: bool) -> tuple[bool, str]:
    """One injected call. Returns (the failure was reached, a problem or "")."""
    assert _testcapi is not None
    with pyslab.SlabAllocator(policy=spec) as heap:
        blocks = Blocks(heap)
        state = scenario.prepare(blocks)
        before = heap.stats().live_blocks
        gc.collect()
        error: BaseException | None = None
        out: list[object] = [None]
        gc.disable()  # a collection inside the call would count its own allocations
        try:
            _testcapi.set_nomemory(start, 0 if persistent else start + 1)
            try:
                scenario.act(heap, state, out)
            except BaseException as caught:
                error = caught
            finally:
                _testcapi.remove_mem_hooks()
        finally:
            gc.enable()
        where = f"{spec}: {scenario.name}, allocation {start} failing" + (
            " and every later one" if persistent else " once")
        if _before_the_call(error):
            error = MemoryError("the interpreter could not make the call")
        if error is not None and not isinstance(error, (MemoryError, *scenario.allowed)):
            return True, f"{where}: raised {type(error).__name__}: {error}"
        try:
            heap.validate()
        except Exception as broken:
            return True, f"{where}: validate() failed: {type(broken).__name__}: {broken}"
        created, ended = scenario.after(blocks, state, out[0]) if error is None else ((), ())
        problems = []
        for address in ended:
            if heap.owns(address) and all(address != new for new, _ in created):
                problems.append(f"{address:#x} was freed yet is still live")
            blocks.held.pop(address, None)
        for address, _ in created:
            if not heap.owns(address):
                problems.append(f"the new block {address:#x} is not owned")
        problems += blocks.intact()
        for address, size in created:
            blocks.keep(address, size)
        expected = before + len(created) - len(ended) if error is None else before
        live = heap.stats().live_blocks
        if live != expected:
            problems.append(f"{live} blocks live where {expected} should be")
        mapped, listed = _mapped_and_listed(heap)
        if mapped != listed:
            problems.append(f"{mapped} bytes mapped for {listed} bytes of listed slabs")
        if problems:
            return True, f"{where}: " + "; ".join(problems)
        try:
            heap.free(heap.alloc(24))
            heap.validate()
        except Exception as broken:
            return True, f"{where}: the allocator no longer works: {broken!r}"
        return isinstance(error, MemoryError), ""


def sweep(
    spec: str,
    scenarios: tuple[Scenario, ...] = SCENARIOS,
    limit: int = 400,
    check_persistent: bool = True,
) -> SweepReport:
    """Sweep every scenario under ``spec``: k = 0, 1, ... until the call completes with every
    allocation from k on failing (at most ``limit`` points per scenario). With
    ``check_persistent`` False the persistent runs still tell where the sweep ends, but only
    the transient ones are checked."""
    report = SweepReport()
    for scenario in scenarios:
        for start in range(limit):
            done = False
            for persistent in (False, True):
                failed, problem = _run_point(spec, scenario, start, persistent)
                report.points += 1
                report.failures += failed
                if problem and (check_persistent or not persistent):
                    report.problems.append(problem)
                if persistent and not failed:
                    done = True  # the call completed with every allocation from k failing
            if done:
                break
        else:
            report.problems.append(f"{spec}: {scenario.name}: still allocating after {limit}")
    return report
