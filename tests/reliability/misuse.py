"""Every bad input, as a table: what is tried, which documented exception it must give.

Each :class:`Case` prepares a misuse on a populated allocator (live blocks of every class and
of the large fallback, each filled with its own pattern) and names the exception
``pyslab/errors.py`` documents for it, with a pattern its message must contain (the offending
value or address). A case is *detected* when exactly that exception is raised, its message
names the value, and the allocator is unchanged: every slab field, the statistics and the bytes
of every live block are as before (``tests.support.snapshot``), and ``validate()`` passes.

The table covers: double free in every size class at the first, a middle and the last slot of a
slab, and of a block whose slab then emptied; double free of large blocks, also after the
fallback forgot them; foreign pointers (libc blocks, Python buffers, another allocator's blocks,
addresses outside the address space); interior and misaligned pointers in every class and in
large blocks; never-allocated slots; ``realloc`` and ``usable_size`` of freed and foreign blocks;
sizes, counts and alignments of every wrong type and value; and every call after ``close()``.

``python -m tests.reliability.misuse`` prints the table's detection rate per configuration.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pyslab
import pyslab.core
from tests.support import CONFIGURATIONS, block_intact, fill_block, pattern_byte, snapshot

__all__ = [
    "CASES",
    "Case",
    "Outcome",
    "Populated",
    "detection_rate",
    "has_front_end",
    "known_miss",
    "main",
    "run_any",
    "run_case",
    "run_case_isolated",
]

_ROOT = Path(__file__).resolve().parents[2]
CLASSES = (8, 16, 32, 64, 128, 256, 512, 1024)
LARGE_SIZES = (1025, 5000, 70_000, 300_000)
_libc = ctypes.CDLL(None)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_libc.free.argtypes = [ctypes.c_void_p]


@dataclass
class Populated:
    """An allocator holding live blocks of every class and large blocks, and their patterns."""

    allocator: pyslab.SlabAllocator
    blocks: dict[int, tuple[int, int]]
    """address -> (requested size, pattern byte) of every live block the case must not touch."""
    cleanup: list[Callable[[], None]]
    """Run after the case (free a libc block, close another allocator)."""
    keep_alive: list[object] = field(default_factory=list)
    """Objects whose memory the case points into (a ctypes buffer), kept until it ends."""

    @classmethod
    def make(cls, spec: str) -> Populated:
        allocator = pyslab.SlabAllocator(policy=spec)
        blocks: dict[int, tuple[int, int]] = {}
        for i, size in enumerate([*CLASSES, 12, 100, 700, *LARGE_SIZES] * 3):
            cls._keep(allocator, blocks, size, pattern_byte(i))
        return cls(allocator, blocks, [])

    @staticmethod
    def _keep(
        allocator: pyslab.SlabAllocator, blocks: dict[int, tuple[int, int]], size: int, byte: int
    ) -> int:
        address = allocator.alloc(size)
        fill_block(address, size, byte)
        blocks[address] = (size, byte)
        return address

    def keep(self, size: int) -> int:
        """Allocate a block that stays live through the case."""
        return self._keep(self.allocator, self.blocks, size, pattern_byte(len(self.blocks)))

    def block_of(self, size: int) -> int:
        """A live block whose usable size is ``size`` (a class) or is larger than every class."""
        for address, (requested, _) in self.blocks.items():
            usable = self.allocator.usable_size(address)
            if usable == size or (size > CLASSES[-1] and requested == size):
                return address
        return self.keep(size)

    def full_slab(self, slot: int) -> pyslab.core.MemorySlab:
        """A slab of the ``slot``-byte class all of whose slots are live blocks of this case."""
        mine: set[int] = set()
        for _ in range(3 * self.allocator.slab_size // slot + 2):
            mine.add(self.keep(slot))
        for slab in self.allocator.slabs():
            if slab.slot_size == slot and all(a in mine for a in slab.slot_addresses()):
                return slab
        raise AssertionError(f"no full {slot}-byte slab of fresh blocks")

    def forget(self, address: int) -> None:
        """Free a live block, as the case's misuse needs it freed."""
        del self.blocks[address]
        self.allocator.free(address)

    def close(self) -> None:
        """Free everything the case left, run its cleanups, close."""
        allocator = self.allocator
        if not allocator.closed:
            for address in self.blocks:
                if allocator.owns(address):  # a misuse the core missed may have freed it
                    allocator.free(address)
        for step in self.cleanup:
            step()
        allocator.close()


Action = Callable[[], object]


@dataclass(frozen=True)
class Case:
    """One misuse: how to prepare it, and the documented exception it must give."""

    group: str
    name: str
    prepare: Callable[[Populated], Action]
    expected: type[BaseException]
    match: Callable[[Populated], str] | str
    """A regular expression the core's message must contain (its wording and the value)."""
    known_bug: str = ""
    """Non-empty while the core is known to miss this case (the reason); tests then xfail."""
    isolate: bool = False
    """Run in a subprocess: missing this case would corrupt libc's heap and end the process."""
    names: Callable[[Populated], str] | str | None = None
    """A regular expression for the offending value alone, which every layer's message must
    contain (a front end words its errors its own way); None: ``match``."""

    @property
    def id(self) -> str:
        return f"{self.group}: {self.name}"


@dataclass(frozen=True)
class Outcome:
    """What one case did: the verdict and what was seen."""

    case: Case
    spec: str
    detected: bool
    raised: str
    unchanged: bool
    why: str = ""
    applicable: bool = True
    """False when the case cannot be set up under this configuration (a front end that holds
    blocks in caches, say, leaves no slab whose every slot the case allocated)."""


def _hex(address: int) -> str:
    return re.escape(f"{address:#x}")


def run_case(case: Case, spec: str, strict: bool = True) -> Outcome:
    """Run one case on a fresh populated allocator under ``spec``.

    ``strict``: the message must have the core's wording (``match``); otherwise it need only
    name the offending value (``names``), as with a front end that words its own errors.
    """
    heap = Populated.make(spec)
    try:
        try:
            action = case.prepare(heap)
        except (StopIteration, AssertionError) as error:
            return Outcome(case, spec, False, "-", True, f"not applicable: {error!r}", False)
        closed = heap.allocator.closed
        watched = {} if closed else {a: n for a, (n, _) in heap.blocks.items()}
        before = snapshot(heap.allocator, watched)
        raised: BaseException | None = None
        try:
            action()
        except Exception as error:
            raised = error
        unchanged = snapshot(heap.allocator, watched) == before
        invalid = ""
        if not closed:
            try:
                heap.allocator.validate()
            except Exception as error:  # reported as the case's failure, not the harness's
                invalid = f"validate() failed afterwards: {error!r}"
            unchanged = unchanged and all(
                block_intact(a, n, b) for a, (n, b) in heap.blocks.items()
            )
        wanted = case.match if strict or case.names is None else case.names
        pattern = wanted(heap) if callable(wanted) else wanted
        why = ""
        if invalid:
            why = invalid
        elif raised is None:
            why = "nothing raised"
        elif type(raised) is not case.expected and not (
            isinstance(raised, case.expected) and case.expected is pyslab.InvalidFreeError
        ):
            why = f"raised {type(raised).__name__}, expected {case.expected.__name__}"
        elif not re.search(pattern, str(raised)):
            why = f"message {str(raised)!r} does not name {pattern!r}"
        elif not unchanged:
            why = "the allocator changed"
        shown = f"{type(raised).__name__}: {raised}" if raised is not None else "-"
        return Outcome(case, spec, not why, shown, unchanged, why)
    finally:
        heap.close()


def run_case_isolated(index: int, spec: str) -> Outcome:
    """Run ``CASES[index]`` in a subprocess: a case the core misses may corrupt libc's heap.

    A crash of the subprocess is an undetected case, reported with its signal.
    """
    import subprocess

    code = (
        "import sys\n"
        "from tests.reliability.misuse import CASES, has_front_end, run_case\n"
        f"outcome = run_case(CASES[{index}], {spec!r}, strict=not has_front_end({spec!r}))\n"
        "print(outcome.why or 'detected', '|', outcome.raised)\n"
        "sys.exit(0 if outcome.detected else 1)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        cwd=str(_ROOT),
    )
    case = CASES[index]
    if done.returncode == 0:
        return Outcome(case, spec, True, done.stdout.split("|", 1)[-1].strip(), True)
    if done.returncode < 0:
        why = f"the process died of signal {-done.returncode}: {done.stderr.strip()[-200:]}"
        return Outcome(case, spec, False, "-", False, why)
    why, _, raised = done.stdout.partition("|")
    return Outcome(case, spec, False, raised.strip(), False, why.strip() or done.stderr[-300:])


@functools.cache
def has_front_end(spec: str) -> bool:
    """True when ``spec`` composes a front end (``thread-cache``, ``debug``), which words its
    own errors: the table then checks that messages name the value, not their wording."""
    with pyslab.SlabAllocator(policy=spec) as allocator:
        return bool(getattr(allocator.policy, "frontends", ()))


def run_any(index: int, spec: str) -> Outcome:
    """Run ``CASES[index]``: in this process, or in a subprocess when missing it is unsafe."""
    case = CASES[index]
    if case.isolate:
        return run_case_isolated(index, spec)
    return run_case(case, spec, strict=not has_front_end(spec))


# --- the table ------------------------------------------------------------------------------


def _slot(position: str, slab: pyslab.core.MemorySlab) -> int:
    index = {"first": 0, "middle": slab.capacity // 2, "last": slab.capacity - 1}[position]
    return slab.first + index * slab.slot_size


def _double_free(slot: int, position: str) -> Case:
    victim: list[int] = []

    def prepare(heap: Populated) -> Action:
        address = _slot(position, heap.full_slab(slot))
        heap.forget(address)
        victim.append(address)
        return lambda: heap.allocator.free(address)

    return Case(
        "double free", f"{slot}-byte class, {position} slot", prepare, pyslab.DoubleFreeError,
        lambda heap: "double free of " + _hex(victim[-1]), names=lambda heap: _hex(victim[-1]),
    )


def _double_free_after_the_slab_emptied(slot: int) -> Case:
    """The slab may be cached (a double free) or released (then foreign): InvalidFreeError."""
    victim: list[int] = []

    def prepare(heap: Populated) -> Action:
        slab = heap.full_slab(slot)
        for address in slab.slot_addresses():
            heap.forget(address)
        victim.append(slab.first)
        return lambda: heap.allocator.free(slab.first)

    return Case(
        "double free", f"{slot}-byte class, every slot of the slab freed", prepare,
        pyslab.InvalidFreeError, lambda heap: _hex(victim[-1]),
    )


def _double_free_large(size: int, align: int = 8) -> Case:
    victim: list[int] = []

    def prepare(heap: Populated) -> Action:
        address = heap.allocator.alloc(size, align)
        heap.allocator.free(address)
        victim.append(address)
        return lambda: heap.allocator.free(address)

    return Case(
        "double free", f"large block of {size} bytes aligned to {align}", prepare,
        pyslab.DoubleFreeError,
        lambda heap: "double free of the large block at " + _hex(victim[-1]),
        names=lambda heap: _hex(victim[-1]),
    )


def _double_free_forgotten_large() -> Case:
    victim: list[int] = []

    def prepare(heap: Populated) -> Action:
        address = heap.allocator.alloc(5000)
        heap.allocator.free(address)
        for _ in range(4200):  # more than the fallback remembers
            heap.allocator.free(heap.allocator.alloc(6000))
        victim.append(address)
        return lambda: heap.allocator.free(address)

    return Case(
        "double free", "large block, 4200 large frees later (glibc would crash)", prepare,
        pyslab.InvalidFreeError, lambda heap: _hex(victim[-1]),
    )


def _foreign(name: str, make: Callable[[Populated], int]) -> Case:
    address: list[int] = []

    def prepare(heap: Populated) -> Action:
        address.append(make(heap))
        return lambda: heap.allocator.free(address[-1])

    return Case(
        "foreign pointer", name, prepare, pyslab.InvalidFreeError,
        lambda heap: _hex(address[-1]) + " was not allocated by this allocator",
        names=lambda heap: _hex(address[-1]),
    )


def _libc_block(heap: Populated) -> int:
    address = int(_libc.malloc(64) or 0)
    heap.cleanup.append(lambda: _libc.free(address))
    return address


def _python_buffer(heap: Populated) -> int:
    buffer = ctypes.create_string_buffer(64)
    heap.keep_alive.append(buffer)
    return ctypes.addressof(buffer)


def _other_allocator(size: int) -> Callable[[Populated], int]:
    def make(heap: Populated) -> int:
        other = pyslab.SlabAllocator()
        heap.cleanup.append(other.close)
        return other.alloc(size)

    return make


def _inside(name: str, where: Callable[[Populated], int], match: str) -> Case:
    address: list[int] = []

    def prepare(heap: Populated) -> Action:
        address.append(where(heap))
        return lambda: heap.allocator.free(address[-1])

    return Case(
        "interior or misaligned pointer", name, prepare, pyslab.InvalidFreeError,
        lambda heap: _hex(address[-1]) + match, names=lambda heap: _hex(address[-1]),
    )


def _never_allocated(slot: int) -> Case:
    address: list[int] = []

    def prepare(heap: Populated) -> Action:
        heap.keep(slot)
        slab = next(
            s for s in reversed(heap.allocator.slabs()) if s.slot_size == slot and s.bump < s.end
        )
        address.append(slab.bump)
        return lambda: heap.allocator.free(slab.bump)

    return Case(
        "never-allocated slot", f"{slot}-byte class, first uncarved slot", prepare,
        pyslab.InvalidFreeError, lambda heap: _hex(address[-1]) + " is a slot .* never handed out",
        names=lambda heap: _hex(address[-1]),
    )


def _freed_then(what: str, size: int, call: Callable[[Populated, int], object]) -> Case:
    victim: list[int] = []

    def prepare(heap: Populated) -> Action:
        address = heap.allocator.alloc(size)
        heap.allocator.free(address)
        victim.append(address)
        return lambda: call(heap, address)

    return Case(
        "use of a freed block", f"{what} of a freed {size}-byte block", prepare,
        pyslab.DoubleFreeError, lambda heap: _hex(victim[-1]),
    )


Call = Callable[["Populated"], object]
_BLOCK = object()
"""Stands, in :func:`_call`'s arguments, for a live 64-byte block of the heap."""


def _call(method: str, *args: object) -> Call:
    """``heap.allocator.<method>(*args)``, with :data:`_BLOCK` replaced by a live block."""

    def call(heap: Populated) -> object:
        real = [heap.block_of(64) if arg is _BLOCK else arg for arg in args]
        return getattr(heap.allocator, method)(*real)

    return call


def _at(size: int, offset: int) -> Callable[[Populated], int]:
    """The address ``offset`` bytes into a live block of ``size`` bytes."""
    return lambda heap: heap.block_of(size) + offset


def _bad_argument(
    group: str, name: str, call: Callable[[Populated], object], expected: type[BaseException],
    match: str, known_bug: str = "", isolate: bool = False,
) -> Case:
    return Case(group, name, lambda heap: lambda: call(heap), expected, match, known_bug, isolate)


class _NegativeIndex:
    def __index__(self) -> int:
        return -8

    def __repr__(self) -> str:
        return "<index -8>"




class _BrokenIndex:
    """An ``__index__`` that raises, as a buggy integer-like type's might."""

    def __index__(self) -> int:
        raise RuntimeError("broken __index__")

    def __repr__(self) -> str:
        return "<broken index>"


def _one_rule() -> Iterator[Case]:
    """Every address and size argument takes an int or an ``__index__`` object, never a bool
    or a float; a policy argument is a policy or a spec string."""
    for value, match in [(False, "False"), (True, "True"), (0.0, "0.0"), (8.0, "8.0")]:
        yield _bad_argument(
            "one rule for arguments", f"realloc({value!r}, 8)", _call("realloc", value, 8),
            TypeError, f"not {match}",
        )
    for method, args in [("alloc", ()), ("free", ()), ("owns", ()), ("usable_size", ()),
                         ("realloc", (8,))]:
        yield _bad_argument(
            "one rule for arguments", f"{method}(<broken index>)",
            _call(method, _BrokenIndex(), *args), TypeError, r"__index__\(\) failed",
        )
    policies: list[tuple[object, str]] = [
        (5, "not 5"), (b"dict-lookup", "not b'dict-lookup'"), (3.0, "not 3.0"),
    ]
    for spec, match in policies:
        yield _bad_argument(
            "one rule for arguments", f"set_policy({spec!r})", _call("set_policy", spec),
            TypeError, match,
        )


def _sizes() -> Iterator[Case]:
    wrong_types: list[tuple[object, str]] = [
        (8.0, "8.0"), ("8", "'8'"), (None, "None"), (True, "True"), (False, "False"),
        ([8], r"\[8\]"), (b"8", "b'8'"), (1j, "1j"), (Decimal(8), "Decimal"),
        (Fraction(8, 1), "Fraction"), (object(), "object"),
    ]
    wrong_values: list[tuple[object, str]] = [
        (0, "not 0"), (-1, "not -1"), (-(2**70), str(-(2**70))), (_NegativeIndex(), "-8"),
    ]
    for value, match in wrong_types:
        for call, name in (
            (_call("alloc", value), "alloc"),
            (_call("calloc", value, 8), "calloc count"),
            (_call("calloc", 2, value), "calloc size"),
            (_call("realloc", _BLOCK, value), "realloc"),
        ):
            yield _bad_argument("size", f"{name}({value!r})", call, TypeError, match)
    for value, match in wrong_values:
        for call, name in (
            (_call("alloc", value), "alloc"),
            (_call("calloc", value, 8), "calloc count"),
            (_call("realloc", _BLOCK, value), "realloc"),
        ):
            yield _bad_argument("size", f"{name}({value!r})", call, ValueError, match)
    for number in (2**63, 2**64, 2**64 + 8, 2**70):
        yield _bad_argument(
            "size", f"alloc(2**{number.bit_length() - 1}{'+8' if number % 64 else ''})",
            _call("alloc", number), MemoryError, str(number),
        )
        # Isolated: if a size of 2**64 or more reached libc again, ctypes' c_size_t would keep
        # its low 64 bits and realloc would copy 64 bytes into a tiny block, corrupting libc's
        # heap (as it did before the core refused such sizes).
        yield _bad_argument(
            "size", f"realloc to {number}", _call("realloc", _BLOCK, number),
            MemoryError, str(number), isolate=number >= 2**64,
        )
    yield _bad_argument(
        "size", "calloc(2**32, 2**32) overflows", _call("calloc", 2**32, 2**32),
        MemoryError, "calloc",
    )


def _alignments() -> Iterator[Case]:
    for value, error, match, bug in [
        (3, ValueError, "power of two, not 3", ""),
        (6, ValueError, "not 6", ""),
        (0, ValueError, "not 0", ""),
        (-8, ValueError, "not -8", ""),
        (2**70 + 1, ValueError, str(2**70 + 1), ""),
        (8.0, TypeError, "8.0", ""),
        ("8", TypeError, "'8'", ""),
        (None, TypeError, "None", ""),
        (True, TypeError, "True", ""),
        (2**63, MemoryError, str(2**63), ""),
        (2**64, MemoryError, str(2**64), ""),
        (2**70, MemoryError, str(2**70), ""),
    ]:
        yield _bad_argument(
            "alignment", f"alloc(16, align={value!r})", _call("alloc", 16, value), error, match,
            bug,
        )
    yield _bad_argument(
        "alignment", "realloc(p, 16, align=3)", _call("realloc", _BLOCK, 16, 3), ValueError,
        "not 3",
    )


def _non_addresses() -> Iterator[Case]:
    for value, match in [
        ("0x10", "'0x10'"), (1.5, "1.5"), ([], r"\[\]"), (b"", "b''"), (0.0, "0.0"),
        (True, "True"), (False, "False"), (ctypes.c_void_p(16), "c_void_p"), (object(), "object"),
    ]:
        yield _bad_argument(
            "not an address", f"free({value!r})", _call("free", value), TypeError, match,
        )
    yield _bad_argument(
        "not an address", "usable_size(None)", _call("usable_size", None), TypeError, "None",
    )


def _after_close() -> Iterator[Case]:
    calls: list[tuple[str, Callable[[pyslab.SlabAllocator, int], object]]] = [
        ("alloc(64)", lambda a, p: a.alloc(64)),
        ("alloc(5000)", lambda a, p: a.alloc(5000)),
        ("calloc(2, 8)", lambda a, p: a.calloc(2, 8)),
        ("realloc(p, 100)", lambda a, p: a.realloc(p, 100)),
        ("realloc(None, 8)", lambda a, p: a.realloc(None, 8)),
        ("free(p)", lambda a, p: a.free(p)),
        ("usable_size(p)", lambda a, p: a.usable_size(p)),
        ("shrink()", lambda a, p: a.shrink()),
        ("set_policy('dict-lookup')", lambda a, p: a.set_policy("dict-lookup")),
        ("inspect('a look', ...)", lambda a, p: a.inspect("a look", lambda: None)),
        ("take_blocks(class 0, 2)", lambda a, p: a.take_blocks(a.size_classes[0], 2)),
    ]
    for name, call in calls:
        yield Case(
            "use after close()", name, _closed_then(call), pyslab.AllocatorClosedError, "closed"
        )


def _closed_then(
    call: Callable[[pyslab.SlabAllocator, int], object],
) -> Callable[[Populated], Action]:
    def prepare(heap: Populated) -> Action:
        address = heap.block_of(64)
        heap.allocator.close()
        return lambda: call(heap.allocator, address)

    return prepare


def _table() -> list[Case]:
    cases: list[Case] = []
    for slot in CLASSES:
        cases.extend(_double_free(slot, position) for position in ("first", "middle", "last"))
        cases.append(_double_free_after_the_slab_emptied(slot))
    cases.extend(_double_free_large(size) for size in LARGE_SIZES)
    cases.append(_double_free_large(8, align=2048))
    cases.append(_double_free_forgotten_large())
    cases.extend([
        _foreign("null page 0x8", lambda heap: 8),
        _foreign("0x1000", lambda heap: 0x1000),
        _foreign("negative -16", lambda heap: -16),
        _foreign("top of user space 2**47 - 8", lambda heap: 2**47 - 8),
        _foreign("beyond the address space 2**64", lambda heap: 2**64),
        _foreign("far beyond 2**70", lambda heap: 2**70),
        _foreign("a libc malloc block", _libc_block),
        _foreign("a ctypes buffer", _python_buffer),
        _foreign("a small block of another allocator", _other_allocator(64)),
        _foreign("a large block of another allocator", _other_allocator(5000)),
    ])
    for slot in CLASSES:
        for offset in sorted({8, slot // 2, slot - 8} - {0, slot}):
            cases.append(_inside(
                f"{slot}-byte class, offset {offset}", _at(slot, offset), " is inside the slot",
            ))
        for offset in (1, 3, 7):
            name = f"{slot}-byte class, misaligned by {offset}"
            cases.append(_inside(name, _at(slot, offset), ""))
    for size in (5000, 70_000):
        for offset in (1, 8, 16, 4096):
            cases.append(_inside(f"large block of {size}, offset {offset}", _at(size, offset), ""))
    cases.extend(_never_allocated(slot) for slot in CLASSES)
    for size in (64, 1024, 5000):
        cases.append(_freed_then("realloc", size, lambda heap, p: heap.allocator.realloc(p, 300)))
        cases.append(
            _freed_then("usable_size", size, lambda heap, p: heap.allocator.usable_size(p))
        )
    cases.append(_bad_argument(
        "use of a freed block", "realloc of a foreign block", _call("realloc", 0x1000, 8),
        pyslab.InvalidFreeError, "0x1000",
    ))
    cases.extend(_sizes())
    cases.extend(_alignments())
    cases.extend(_non_addresses())
    cases.extend(_one_rule())
    cases.extend(_after_close())
    return cases


CASES: tuple[Case, ...] = tuple(_table())
"""Every misuse tried."""

FRONT_END_MISSES: dict[tuple[str, str], str] = {}
"""(case id, configuration) -> why a front end misses the case (none at the moment: the one
this table found, ``thread-cache`` serving ``alloc(16, align=8.0)``, is fixed)."""


def known_miss(case: Case, spec: str) -> str:
    """Why ``case`` is known to be missed under ``spec`` (empty: it must be detected)."""
    return case.known_bug or FRONT_END_MISSES.get((case.id, spec), "")


def detection_rate(outcomes: Sequence[Outcome]) -> tuple[int, int, str]:
    """(detected, tried, ``"x/y (z %)"``) over the applicable ``outcomes``."""
    outcomes = [o for o in outcomes if o.applicable]
    detected = sum(o.detected for o in outcomes)
    share = 100.0 * detected / len(outcomes) if outcomes else 0.0
    return detected, len(outcomes), f"{detected}/{len(outcomes)} ({share:.1f} %)"


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: run the table under each configuration; print the rates and misses."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.reliability.misuse", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--policy", action="append", help="a configuration (default: all)")
    args = parser.parse_args(argv)
    missed_total = 0
    front_ends = [
        spec for spec in ("thread-cache", "debug", "thread-cache+debug")
        if set(spec.split("+")) <= set(pyslab.policies())
    ]
    for spec in args.policy or [*CONFIGURATIONS, *front_ends]:
        outcomes = [run_any(index, spec) for index in range(len(CASES))]
        _, _, rate = detection_rate(outcomes)
        groups = sorted({o.case.group for o in outcomes})
        skipped = sum(not o.applicable for o in outcomes)
        print(f"{spec:<40} {len(groups)} groups, detected {rate}, {skipped} not applicable")
        for outcome in outcomes:
            if not outcome.detected and outcome.applicable:
                missed_total += 1
                bug = " [known]" if known_miss(outcome.case, spec) else ""
                print(f"  missed{bug}: {outcome.case.id}: {outcome.why} ({outcome.raised})")
    return 1 if missed_total else 0


if __name__ == "__main__":
    sys.exit(main())
