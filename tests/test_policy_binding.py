"""Policies are checked when they are bound, and the allocator checks what they answer.

Every refusal leaves the allocator as it was: ``validate()`` passes, every live block is still
owned with its bytes intact, and the old policy is still bound.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

import pyslab
import pyslab.core
import pyslab.policy
from pyslab.core import MemorySlab, SizeClass
from pyslab.policy import compose
from pyslab.policy.validation import check_composition
from tests.support import (
    CONFIGURATIONS,
    FRONT_END_CONFIGURATIONS,
    block_intact,
    fill_block,
    pattern_byte,
    snapshot,
)

# --- helpers -------------------------------------------------------------------------------------


class LiveHeap:
    """A live allocator with blocks whose bytes are known, to check that a refusal changed
    nothing."""

    def __init__(
        self,
        policy: pyslab.PolicySpec = "dict-lookup",
        count: int = 40,
        page_source: pyslab.core.PageSource | None = None,
    ) -> None:
        self.allocator = pyslab.SlabAllocator(policy=policy, page_source=page_source)
        self.blocks: dict[int, int] = {}
        for _ in range(count):
            self.add(8 + 24 * (len(self.blocks) % 5))
        self.rebase()

    def add(self, size: int) -> int:
        address = self.allocator.alloc(size)
        fill_block(address, size, pattern_byte(len(self.blocks)))
        self.blocks[address] = size
        return address

    def rebase(self) -> None:
        """Take the allocator as it is now as the state a refusal must leave."""
        self.policy = self.allocator.policy
        self.before = snapshot(self.allocator, self.blocks)

    def assert_unchanged(self) -> None:
        alloc = self.allocator
        alloc.validate()
        assert alloc.policy is self.policy, "the old policy is no longer bound"
        for policy in self.policy.policies:
            assert getattr(policy, "_pyslab_bound_to", None) is alloc
        assert snapshot(alloc, self.blocks) == self.before
        for i, (address, size) in enumerate(self.blocks.items()):
            assert alloc.owns(address)
            assert block_intact(address, size, pattern_byte(i))

    def free_all(self) -> None:
        for address in self.blocks:
            self.allocator.free(address)
        self.blocks.clear()
        self.allocator.validate()


@pytest.fixture
def heap() -> Iterator[LiveHeap]:
    live = LiveHeap()
    yield live
    live.free_all()
    live.allocator.close()


# --- every built-in policy binds -----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(pyslab.policies()))
def test_every_registered_policy_binds_alone(name: str) -> None:
    with pyslab.SlabAllocator(policy=name) as alloc:
        alloc.free(alloc.alloc(24))
        alloc.validate()
    with pyslab.SlabAllocator(policy="dict-lookup") as alloc:
        alloc.set_policy(name)
        alloc.validate()


@pytest.mark.parametrize("spec", CONFIGURATIONS + FRONT_END_CONFIGURATIONS)
def test_every_tested_composition_binds(spec: str) -> None:
    with pyslab.SlabAllocator(policy=spec) as alloc:
        alloc.free(alloc.alloc(24))
        alloc.set_policy(spec)
        alloc.validate()


def test_helpers_private_names_and_properties_are_not_taken_for_hooks() -> None:
    class Helpers(pyslab.Policy):
        def live_blocks(self) -> int:
            return 0

        def held_blocks(self) -> int:
            return 0

        def check_all(self) -> None:
            pass

        def _keep_emtpy(self) -> None:  # private: a helper may be named anything
            pass

        @property
        def select_slabs(self) -> int:  # not a function: not a would-be hook
            return 0

        slab_add = 3

    with pyslab.SlabAllocator(policy=[Helpers()]) as alloc:
        alloc.free(alloc.alloc(8))


# --- misspelt hooks ------------------------------------------------------------------------------


class MisspeltKeepEmpty(pyslab.Policy):
    name = "misspelt"

    def keep_emtpy(self, size_class: SizeClass, slab: MemorySlab) -> bool:
        return False


class MisspeltSelectSlab(pyslab.Policy):
    name = "misspelt"

    def select_slabs(self, size_class: SizeClass) -> MemorySlab | None:
        return None


class MisspeltSlabAdded(pyslab.Policy):
    name = "misspelt"

    def slab_add(self, size_class: SizeClass, slab: MemorySlab) -> None:
        pass


class CamelCaseHook(pyslab.Policy):
    name = "misspelt"

    def findOwner(self, address: int) -> MemorySlab | None:  # camel case: the test's point
        return None


class InheritedMisspelling(MisspeltSlabAdded):
    name = "inherited"


@pytest.mark.parametrize(
    ("cls", "method", "hook"),
    [
        (MisspeltKeepEmpty, "keep_emtpy", "keep_empty"),
        (MisspeltSelectSlab, "select_slabs", "select_slab"),
        (MisspeltSlabAdded, "slab_add", "slab_added"),
        (CamelCaseHook, "findOwner", "find_owner"),
        (InheritedMisspelling, "slab_add", "slab_added"),
    ],
)
def test_a_method_named_like_a_hook_is_refused_naming_the_hooks(
    heap: LiveHeap, cls: type[pyslab.Policy], method: str, hook: str
) -> None:
    expected = rf"<policy {cls.name}>.*{method}\(\).*{hook}\(\).*hooks are: bind, unbind"
    with pytest.raises(pyslab.PolicyError, match=expected):
        pyslab.SlabAllocator(policy=["dict-lookup", cls()])
    with pytest.raises(pyslab.PolicyError, match=expected):
        heap.allocator.set_policy(["dict-lookup", cls()])
    heap.assert_unchanged()


# --- hook signatures -----------------------------------------------------------------------------


class MissingParameter(pyslab.Policy):
    name = "short"

    def keep_empty(self) -> bool:  # type: ignore[override]
        return True


class ExtraRequiredParameter(pyslab.Policy):
    name = "long"

    def slab_added(  # type: ignore[override]
        self, size_class: SizeClass, slab: MemorySlab, extra: int
    ) -> None:
        pass


class RequiredKeywordOnly(pyslab.Policy):
    name = "keyword"

    def block_freed(  # type: ignore[override]
        self, slab: MemorySlab, address: int, *, why: str
    ) -> None:
        pass


@pytest.mark.parametrize(
    ("cls", "expected", "found"),
    [
        (MissingParameter, "keep_empty(size_class, slab)", "keep_empty()"),
        (
            ExtraRequiredParameter,
            "slab_added(size_class, slab)",
            "slab_added(size_class, slab, extra)",
        ),
        (RequiredKeywordOnly, "block_freed(slab, address)", "block_freed(slab, address, *, why)"),
    ],
)
def test_a_hook_with_the_wrong_parameters_is_refused_naming_both_signatures(
    heap: LiveHeap, cls: type[pyslab.Policy], expected: str, found: str
) -> None:
    pattern = rf"<policy {cls.name}>.*expected {_escaped(expected)}.*found {_escaped(found)}"
    with pytest.raises(pyslab.PolicyError, match=pattern):
        pyslab.SlabAllocator(policy=[cls()])
    with pytest.raises(pyslab.PolicyError, match=pattern):
        heap.allocator.set_policy(["dict-lookup", cls()])
    heap.assert_unchanged()


def _escaped(text: str) -> str:
    return text.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")


def test_a_hook_replaced_by_an_instance_attribute_is_checked_too(heap: LiveHeap) -> None:
    policy = pyslab.make_policy("reclaim")
    policy.keep_empty = "yes"  # type: ignore[assignment,method-assign]
    with pytest.raises(pyslab.PolicyError, match=r"keep_empty.*not callable"):
        heap.allocator.set_policy(["dict-lookup", policy])
    heap.assert_unchanged()


def test_extra_parameters_with_defaults_and_star_args_are_accepted() -> None:
    class Lenient(pyslab.Policy):
        def __init__(self) -> None:
            self.seen = 0

        def slab_added(
            self, size_class: SizeClass, slab: MemorySlab, note: str = "", *more: object
        ) -> None:
            self.seen += 1

        def block_freed(self, *args: object) -> None:
            self.seen += 1

        @staticmethod
        def keep_empty(size_class: SizeClass, slab: MemorySlab) -> bool:
            return True

    lenient = Lenient()
    with pyslab.SlabAllocator(policy=["dict-lookup", lenient]) as alloc:
        alloc.free(alloc.alloc(8))
        assert lenient.seen == 2


def test_the_checks_run_when_bound_not_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    def counting(policies: Any, default: str) -> None:
        calls.append(len(policies))
        check_composition(policies, default)

    monkeypatch.setattr(compose, "check_composition", counting)
    with pyslab.SlabAllocator(policy="dict-lookup+stats") as alloc:
        assert calls == [3]
        blocks = [alloc.alloc(64) for _ in range(500)]  # fills slabs: select_slab is asked
        for address in blocks:
            alloc.free(address)
        alloc.set_policy("dict-lookup")
        assert calls == [3, 2]


# --- select_slab answers -------------------------------------------------------------------------


class Answering(pyslab.Policy):
    """``select_slab`` answers ``answer`` (None: a new slab) when it is not None."""

    name = "answering"

    def __init__(self) -> None:
        self.answer: object = None

    def select_slab(self, size_class: SizeClass) -> MemorySlab | None:
        return self.answer  # type: ignore[return-value]


@pytest.fixture
def answering() -> Iterator[tuple[LiveHeap, Answering, SizeClass]]:
    policy = Answering()
    live = LiveHeap(["dict-lookup", policy], count=0)
    alloc = live.allocator
    size_class = alloc.class_for(64)
    assert size_class is not None
    for _ in range(2 * alloc.slab_size // 64):  # two full slabs of the 64-byte class
        live.add(64)
    assert size_class.current is None and size_class.full == 2
    live.rebase()
    yield live, policy, size_class
    policy.answer = None
    live.free_all()
    alloc.close()


def test_select_slab_answering_a_full_slab_is_refused(
    answering: tuple[LiveHeap, Answering, SizeClass],
) -> None:
    live, policy, size_class = answering
    policy.answer = next(iter(size_class.slabs))
    with pytest.raises(pyslab.PolicyError, match=r"select_slab answered <slab #\d+ 64B.*full"):
        live.allocator.alloc(64)
    live.assert_unchanged()


def test_select_slab_answering_a_slab_of_another_class_is_refused(
    answering: tuple[LiveHeap, Answering, SizeClass],
) -> None:
    live, policy, _ = answering
    live.add(8)
    live.rebase()
    policy.answer = live.allocator.slabs()[0]
    assert live.allocator.slabs()[0].slot_size == 8
    with pytest.raises(pyslab.PolicyError, match=r"64-byte class.*a slab of the 8-byte class"):
        live.allocator.alloc(64)
    live.assert_unchanged()


def test_select_slab_answering_a_released_slab_is_refused(
    answering: tuple[LiveHeap, Answering, SizeClass],
) -> None:
    live, policy, size_class = answering
    alloc = live.allocator
    address = alloc.alloc(64)  # a third slab, made for this block
    released = next(reversed(size_class.slabs))
    alloc.free(address)
    assert alloc.shrink() == alloc.slab_size and released not in size_class.slabs
    live.rebase()
    policy.answer = released
    with pytest.raises(pyslab.PolicyError, match="not one of the class's slabs"):
        alloc.alloc(64)
    live.assert_unchanged()


def test_select_slab_answering_something_else_than_a_slab_is_refused(
    answering: tuple[LiveHeap, Answering, SizeClass],
) -> None:
    live, policy, _ = answering
    policy.answer = 0x1000
    with pytest.raises(pyslab.PolicyError, match=r"answered 4096 .*not a MemorySlab"):
        live.allocator.alloc(64)
    live.assert_unchanged()


def test_a_refused_answer_in_a_batch_gives_back_the_blocks_taken(
    answering: tuple[LiveHeap, Answering, SizeClass],
) -> None:
    live, policy, size_class = answering
    alloc = live.allocator
    live.add(64)  # a third slab, with free slots: a batch larger than them needs a refill
    live.rebase()
    free_slots = size_class.current.free_count  # type: ignore[union-attr]
    policy.answer = next(iter(size_class.slabs))
    with pytest.raises(pyslab.PolicyError, match="full"):
        alloc.take_blocks(size_class, free_slots + 5)
    # The blocks taken went back (their slots are now linked free rather than uncarved).
    alloc.validate()
    assert alloc.policy is live.policy
    assert size_class.live == len(live.blocks) and len(size_class.slabs) == 3
    assert size_class.current is not None and size_class.current.free_count == free_slots
    for i, (address, size) in enumerate(live.blocks.items()):
        assert alloc.owns(address) and block_intact(address, size, pattern_byte(i))


def test_the_allocator_serves_again_after_a_refused_answer(
    answering: tuple[LiveHeap, Answering, SizeClass],
) -> None:
    live, policy, size_class = answering
    policy.answer = next(iter(size_class.slabs))
    with pytest.raises(pyslab.PolicyError):
        live.allocator.alloc(64)
    policy.answer = None
    live.add(64)  # a new slab
    assert len(size_class.slabs) == 3
    live.allocator.validate()


# --- one policy twice ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        "debug+debug",
        "first-fit+first-fit",
        "dict-lookup+first-fit",
        "dict-lookup+reclaim+dict-lookup",
        "thread-cache+thread-cache",
    ],
)
def test_a_composition_naming_a_policy_twice_is_refused(heap: LiveHeap, spec: str) -> None:
    with pytest.raises(pyslab.PolicyError, match="appears twice"):
        pyslab.SlabAllocator(policy=spec)
    with pytest.raises(pyslab.PolicyError, match="appears twice"):
        heap.allocator.set_policy(spec)
    heap.assert_unchanged()


def test_two_instances_of_one_policy_class_are_refused(heap: LiveHeap) -> None:
    twice = [pyslab.make_policy("reclaim", keep=1), pyslab.make_policy("reclaim", keep=2)]
    with pytest.raises(pyslab.PolicyError, match=r"<policy reclaim> \(Reclaim\).*two instances"):
        heap.allocator.set_policy(["dict-lookup", *twice])
    heap.assert_unchanged()


def test_one_instance_twice_is_refused(heap: LiveHeap) -> None:
    once = pyslab.make_policy("stats")
    with pytest.raises(pyslab.PolicyError, match="the same instance"):
        heap.allocator.set_policy([once, "dict-lookup", once])
    heap.assert_unchanged()


def test_first_fit_named_first_is_the_base_not_a_second_one() -> None:
    with pyslab.SlabAllocator(policy="first-fit+dict-lookup") as alloc:
        assert [p.name for p in alloc.policy.policies] == ["first-fit", "dict-lookup"]
        alloc.free(alloc.alloc(8))


# --- policies that alone can free their blocks -----------------------------------------------


def _debug_heap() -> tuple[LiveHeap, pyslab.Policy]:
    debug = pyslab.make_policy("debug")
    live = LiveHeap(["dict-lookup", debug], count=20)
    assert debug.exclusive_blocks() == 20
    return live, debug


@pytest.mark.parametrize("spec", ["dict-lookup", "dict-lookup+stats", "dict-lookup+debug"])
def test_replacing_debug_while_its_blocks_are_live_is_refused(spec: str) -> None:
    live, _ = _debug_heap()
    with live.allocator:
        with pytest.raises(pyslab.PolicyError, match=r"strand 20 live blocks.*<policy debug>"):
            live.allocator.set_policy(spec)
        live.assert_unchanged()
        live.free_all()


def test_rebinding_the_bound_debug_instance_while_its_blocks_are_live_is_refused() -> None:
    live, debug = _debug_heap()
    with live.allocator:
        with pytest.raises(pyslab.PolicyError, match="strand 20 live blocks"):
            live.allocator.set_policy(list(live.policy.policies))
        live.assert_unchanged()
        assert debug.exclusive_blocks() == 20
        live.free_all()


def test_debug_can_be_replaced_once_its_blocks_are_freed() -> None:
    live, debug = _debug_heap()
    with live.allocator as alloc:
        live.free_all()
        assert debug.exclusive_blocks() == 0
        alloc.set_policy("dict-lookup")
        alloc.free(alloc.alloc(24))
        alloc.validate()


def test_any_policy_reporting_exclusive_blocks_stays_bound(heap: LiveHeap) -> None:
    class Holding(pyslab.Policy):
        name = "holding"

        def exclusive_blocks(self) -> int:
            return 3

    holding = Holding()
    heap.allocator.set_policy(["dict-lookup", holding])
    heap.rebase()
    with pytest.raises(pyslab.PolicyError, match=r"strand 3 live blocks of <policy holding>"):
        heap.allocator.set_policy("dict-lookup")
    heap.assert_unchanged()


def test_the_default_reports_no_exclusive_block() -> None:
    for name in pyslab.policies():
        if name != "debug":
            assert pyslab.make_policy(name).exclusive_blocks() == 0


def test_set_policy_with_the_bound_instance_keeps_it_working(heap: LiveHeap) -> None:
    kept = heap.policy.policies[1]
    heap.allocator.set_policy([kept])
    assert heap.allocator.policy.policies[1] is kept
    heap.policy = heap.allocator.policy
    heap.assert_unchanged()  # every block still found by the same dict-lookup instance


# --- page sources ----------------------------------------------------------------------------


def test_an_arena_serving_an_open_allocator_is_refused_to_a_second() -> None:
    arena = pyslab.core.ArenaPageSource(1 << 20)
    live = LiveHeap(page_source=arena)
    with pytest.raises(ValueError, match=r"<ArenaPageSource .* already serves <SlabAllocator"):
        pyslab.SlabAllocator(page_source=arena)
    live.assert_unchanged()
    live.free_all()
    live.allocator.close()
    assert arena.closed
    with pytest.raises(ValueError, match=r"<ArenaPageSource .*closed> is closed"):
        pyslab.SlabAllocator(page_source=arena)


def test_a_policy_supplied_source_is_refused_to_a_second_allocator() -> None:
    with pyslab.SlabAllocator(policy="address-mask") as first:
        address = first.alloc(100)
        fill_block(address, 100, 0x5A)
        with pytest.raises(ValueError, match="already serves"):
            pyslab.SlabAllocator(page_source=first.page_source)
        assert block_intact(address, 100, 0x5A) and first.owns(address)
        first.validate()


def test_an_mmap_source_serves_a_new_allocator_once_the_first_is_closed() -> None:
    source = pyslab.core.MmapPageSource()
    live = LiveHeap(page_source=source)
    with pytest.raises(ValueError, match=r"<pyslab\.core\.pages\.MmapPageSource .* already serves"):
        pyslab.SlabAllocator(page_source=source)
    live.assert_unchanged()
    live.free_all()
    live.allocator.close()
    with pyslab.SlabAllocator(page_source=source) as second:
        second.free(second.alloc(8))


def test_a_constructor_that_fails_to_bind_leaves_the_source_free() -> None:
    source = pyslab.core.MmapPageSource()
    taken = pyslab.make_policy("dict-lookup")
    with pyslab.SlabAllocator(policy=taken):
        with pytest.raises(pyslab.PolicyError, match="bound to another allocator"):
            pyslab.SlabAllocator(policy=taken, page_source=source)
        with pyslab.SlabAllocator(page_source=source) as alloc:
            alloc.free(alloc.alloc(8))


def test_an_allocator_dropped_without_close_does_not_hold_its_source() -> None:
    source = pyslab.core.MmapPageSource()
    pyslab.SlabAllocator(page_source=source)  # dropped at once, no slab mapped
    gc.collect()
    with pyslab.SlabAllocator(page_source=source) as alloc:
        alloc.free(alloc.alloc(8))


class _RefusesToBind(pyslab.Policy):
    """A policy whose bind fails, as one running out of memory there would."""

    name = "refuses-to-bind"

    def bind(self, heap: pyslab.policy.Heap) -> None:
        super().bind(heap)
        raise MemoryError("no memory to bind")


def test_a_failed_bind_leaves_the_policies_bound_before_it_free_to_bind_again() -> None:
    first = pyslab.make_policy("dict-lookup")
    with pytest.raises(MemoryError, match="no memory to bind"):
        pyslab.SlabAllocator(policy=[first, _RefusesToBind()])
    with pyslab.SlabAllocator(policy=first) as heap:  # not "bound to another allocator"
        heap.free(heap.alloc(24))
        heap.validate()


def test_a_failed_set_policy_leaves_the_old_policy_bound_and_the_new_ones_free(
    heap: LiveHeap,
) -> None:
    kept = heap.allocator.policy.policies[0]
    fresh = pyslab.make_policy("reclaim")
    with pytest.raises(MemoryError, match="no memory to bind"):
        heap.allocator.set_policy([kept, fresh, _RefusesToBind()])
    heap.assert_unchanged()
    heap.allocator.free(heap.allocator.alloc(24))  # the old policy serves on
    with pyslab.SlabAllocator(policy=fresh) as other:
        other.free(other.alloc(24))
