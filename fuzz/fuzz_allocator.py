"""Fuzz target: arbitrary operation sequences against pyslab, every invariant after every step.

The input bytes are read as a program: the first byte picks a policy configuration, then each
operation is one opcode byte and its operands (sizes, alignments, which live block, offsets,
raw addresses). Operations: ``alloc``, ``calloc``, ``realloc``, ``free``, double free, free of
an interior, misaligned or arbitrary address, ``usable_size``, ``owns``, ``shrink`` and
``set_policy``. A model (the live blocks, their sizes and fill patterns) says what each call
must do; misuse must raise its documented exception and change nothing.

After every step: ``validate()`` passes, every live block keeps its pattern, the allocator's
live count matches the model and ``owns`` agrees for every live block. At the end everything is
freed and ``shrink()`` must return every page. Any disagreement raises ``AssertionError``.

Building an allocator costs milliseconds (its size-class lookup tables), more than most inputs,
so each configuration's allocator is built once per process and handed back empty and shrunk
after every input: each input starts from an empty heap with no slab mapped.

Run long, coverage-guided, with atheris (``pip install -e ".[fuzz]"``), from the repository
root::

    python fuzz/fuzz_allocator.py -runs=500000 -max_len=2048 fuzz/corpus

or, without atheris, under hypothesis::

    python fuzz/fuzz_allocator.py --hypothesis 20000

The test suite runs both in a short bounded form (``tests/reliability/test_fuzz.py``).
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from typing import Any

if __name__ == "__main__" and "--hypothesis" not in sys.argv:
    try:  # instrument pyslab for coverage feedback before it is imported
        import atheris  # type: ignore[import-untyped]  # no stubs

        with atheris.instrument_imports(include=["pyslab", "pyslab_plugins"]):
            import pyslab
    except ImportError:
        import pyslab
else:
    import pyslab

__all__ = ["CONFIGURATIONS", "EXECUTIONS", "TestOneInput", "main"]

CONFIGURATIONS: tuple[str, ...] = (
    "first-fit", "dict-lookup", "reclaim", "dict-lookup+reclaim", "reclaim+dict-lookup",
)
"""Built-in compositions; every other registered policy alone is added at first use."""
_LIVE_LIMIT = 48
"""At most this many live blocks: each step checks them all."""
EXECUTIONS = [0]
"""Inputs run in this process (a list so that importers see the count grow)."""


def _configurations() -> tuple[str, ...]:
    extra = tuple(n for n in pyslab.policies() if n not in {"first-fit", "dict-lookup", "reclaim"})
    return CONFIGURATIONS + extra


class _Program:
    """Reads operands from the input bytes; past the end every read gives 0."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def byte(self) -> int:
        value = self.data[self.at] if self.at < len(self.data) else 0
        self.at += 1
        return value

    def integer(self, width: int) -> int:
        return int.from_bytes(bytes(self.byte() for _ in range(width)), "little")

    @property
    def done(self) -> bool:
        return self.at >= len(self.data)


class _Model:
    """The expected heap: live blocks with their size and fill byte; checks after each step."""

    def __init__(self, allocator: pyslab.SlabAllocator) -> None:
        self.allocator = allocator
        self.live: dict[int, tuple[int, int]] = {}
        self.freed: list[int] = []
        self.serial = 0

    def add(self, address: int, size: int) -> None:
        assert address not in self.live, f"{address:#x} handed out twice"
        self.serial += 1
        byte = self.serial % 251 + 1
        ctypes.memset(address, byte, size)
        self.live[address] = (size, byte)

    def remove(self, address: int) -> None:
        del self.live[address]
        self.freed.append(address)

    def pick(self, program: _Program) -> int | None:
        if not self.live:
            return None
        return list(self.live)[program.byte() % len(self.live)]

    def check(self) -> None:
        allocator = self.allocator
        allocator.validate()
        assert allocator.stats().live_blocks == len(self.live), "live count differs from model"
        for address, (size, byte) in self.live.items():
            assert allocator.owns(address), f"live block {address:#x} not owned"
            assert allocator.usable_size(address) >= size
            assert ctypes.string_at(address, size) == bytes([byte]) * size, (
                f"block {address:#x} of {size} bytes lost its pattern"
            )


def _size(program: _Program) -> int:
    raw = program.integer(2)
    return 70_000 + raw if raw >= 0xFF00 else raw % 3000 + 1


def _misuse(model: _Model, call: Callable[[], object], *errors: type[BaseException]) -> None:
    """``call`` must raise one of ``errors`` and change nothing."""
    before = model.allocator.stats()
    try:
        call()
    except errors:
        pass
    else:
        raise AssertionError(f"misuse {call} was accepted")
    assert model.allocator.stats() == before, "a refused call changed the allocator"


def _step(model: _Model, program: _Program, configurations: tuple[str, ...]) -> None:
    allocator = model.allocator
    op = program.byte() % 13
    if op in (0, 1, 2) and len(model.live) < _LIVE_LIMIT:  # alloc (weighted)
        size, align = _size(program), 1 << (program.byte() % 13)
        model.add(allocator.alloc(size, align), size)
        return
    if op == 3 and len(model.live) < _LIVE_LIMIT:  # calloc
        count, size = program.byte() % 16 + 1, program.byte() % 200 + 1
        address = allocator.calloc(count, size)
        assert ctypes.string_at(address, count * size) == bytes(count * size), "calloc not zero"
        model.add(address, count * size)
        return
    target = model.pick(program)
    if op in (4, 5) and target is not None:  # free
        model.remove(target)
        allocator.free(target)
    elif op == 6 and target is not None:  # realloc, contents kept up to the smaller size
        size, byte = model.live[target]
        new_size = _size(program)
        moved = allocator.realloc(target, new_size)
        kept = min(size, new_size)
        assert ctypes.string_at(moved, kept) == bytes([byte]) * kept, "realloc lost contents"
        del model.live[target]
        model.add(moved, new_size)
    elif op == 7 and model.freed:  # double free of something freed (unless handed out again)
        address = model.freed[program.byte() % len(model.freed)]
        if address not in model.live:
            _misuse(model, lambda: allocator.free(address), pyslab.InvalidFreeError)
    elif op == 8 and target is not None:  # interior or misaligned pointer
        offset = program.byte() % 64 + 1
        if target + offset not in model.live:
            _misuse(model, lambda: allocator.free(target + offset), pyslab.InvalidFreeError)
    elif op == 9:  # an arbitrary address
        address = program.integer(8)
        if address in model.live:
            model.remove(address)
            allocator.free(address)
        elif address:
            _misuse(model, lambda: allocator.free(address), pyslab.InvalidFreeError)
    elif op == 10 and target is not None:  # queries
        assert allocator.owns(target)
        assert allocator.usable_size(target) >= model.live[target][0]
    elif op == 11:
        allocator.shrink()
    elif op == 12:
        # The built-in compositions may replace a policy on a live heap, except a front end
        # whose blocks are live: no other layer knows them (documented for ``debug``).
        spec = CONFIGURATIONS[program.byte() % len(CONFIGURATIONS)]
        if not model.live or not getattr(allocator.policy, "frontends", ()):
            allocator.set_policy(spec)


_POOL: dict[str, pyslab.SlabAllocator] = {}
"""One allocator per configuration, empty and shrunk between inputs."""


def _allocator(spec: str) -> pyslab.SlabAllocator:
    allocator = _POOL.get(spec)
    if allocator is None or allocator.closed or allocator.policy.name != spec:
        if allocator is not None:
            allocator.close()  # an input replaced its policy: start from the one asked for
        allocator = _POOL[spec] = pyslab.SlabAllocator(policy=spec)
    assert allocator.stats().live_blocks == 0 and allocator.page_source.mapped_bytes == 0
    return allocator


def TestOneInput(data: bytes) -> None:
    """Run ``data`` as a program on an empty allocator; raise AssertionError on a disagreement.

    Complexity: O(len(data) * (live blocks + slabs)).
    """
    EXECUTIONS[0] += 1
    program = _Program(data)
    configurations = _configurations()
    spec = configurations[program.byte() % len(configurations)]
    allocator = _allocator(spec)
    model = _Model(allocator)
    try:
        while not program.done:
            _step(model, program, configurations)
            model.check()
        for address in list(model.live):
            model.remove(address)
            allocator.free(address)
        model.check()
        allocator.shrink()
        assert allocator.page_source.mapped_bytes == 0, "shrink() left pages mapped"
    except BaseException:
        _POOL.pop(spec, None)  # a failed input leaves no state for the next one
        allocator.close()
        raise


def _hypothesis(examples: int) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    @settings(
        max_examples=examples, deadline=None, database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.binary(max_size=1024))
    def run(data: bytes) -> None:
        TestOneInput(data)

    run()


def main(argv: list[str]) -> None:
    """Fuzz with atheris (its libFuzzer flags pass through), or ``--hypothesis N``."""
    if "--hypothesis" in argv:
        examples = int(argv[argv.index("--hypothesis") + 1])
        _hypothesis(examples)
        print(f"hypothesis: {EXECUTIONS[0]} executions, no failure")
        return
    fuzzer: Any = sys.modules.get("atheris")
    if fuzzer is None:
        sys.exit("atheris is not installed: pip install -e '.[fuzz]', or use --hypothesis N")
    fuzzer.Setup(argv, TestOneInput)
    fuzzer.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
