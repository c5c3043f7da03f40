"""pyslab.Slab, the seed's Slab<T, N> on real memory: its semantics, views, memory and threads.

The model-based test drives a slab and the seed itself (a list of optional values and the
free_list stack initialised to (0..N).rev()) with the same random operations and compares every
answer.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Iterator

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from typing_extensions import assert_type

import pyslab
from tests.support import is_mapped, run_threads

C_INT_VALUES = st.integers(-(2**31), 2**31 - 1)


class Point(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int32), ("y", ctypes.c_int32)]


class Segment(ctypes.Structure):
    _fields_ = [("start", Point), ("end", Point), ("tag", ctypes.c_char * 6)]


class Empty(ctypes.Structure):
    _fields_ = []


@pytest.fixture
def heap() -> Iterator[pyslab.SlabAllocator]:
    with pyslab.SlabAllocator() as allocator:
        yield allocator
        allocator.validate()


@pytest.fixture
def no_installed_allocator() -> Iterator[None]:
    if pyslab.current() is not None:
        pytest.skip("an allocator is installed process-wide")
    yield


def values_of(slab: pyslab.Slab[ctypes.c_int]) -> dict[int, int]:
    return {index: value.value for index, value in slab}


# --- the seed's semantics ---------------------------------------------------------------------


def test_first_insert_gets_index_zero_and_indices_ascend(heap: pyslab.SlabAllocator) -> None:
    with pyslab.Slab(ctypes.c_int, 4, allocator=heap) as slab:
        assert [slab.insert(v) for v in (10, 11, 12, 13)] == [0, 1, 2, 3]


def test_insert_into_a_full_slab_returns_none_and_changes_nothing(
    heap: pyslab.SlabAllocator,
) -> None:
    with pyslab.Slab(ctypes.c_int, 2, allocator=heap) as slab:
        slab.insert(1)
        slab.insert(2)
        assert slab.is_full
        assert slab.insert(3) is None
        assert values_of(slab) == {0: 1, 1: 2}
        slab.validate()


def test_freed_indices_are_reused_last_in_first_out(heap: pyslab.SlabAllocator) -> None:
    with pyslab.Slab(ctypes.c_int, 8, allocator=heap) as slab:
        for v in range(5):
            slab.insert(v)
        for index in (1, 3, 2):
            slab.remove(index)
        assert [slab.insert(v) for v in (20, 30, 10, 50)] == [2, 3, 1, 5]


def test_remove_returns_the_value_once_then_none(heap: pyslab.SlabAllocator) -> None:
    with pyslab.Slab(ctypes.c_int, 3, allocator=heap) as slab:
        index = slab.insert(42)
        assert index is not None
        removed = slab.remove(index)
        assert removed is not None and removed.value == 42
        assert slab.remove(index) is None
        assert slab.get(index) is None
        assert len(slab) == 0


@pytest.mark.parametrize("index", [-1, -3, 3, 4, 2**70])
def test_indices_outside_the_slab_give_none(heap: pyslab.SlabAllocator, index: int) -> None:
    with pyslab.Slab(ctypes.c_int, 3, allocator=heap) as slab:
        for v in range(3):
            slab.insert(v)
        assert slab.get(index) is None
        assert slab.remove(index) is None
        assert slab.view(index) is None
        assert index not in slab
        assert len(slab) == 3


def test_get_returns_an_independent_copy(heap: pyslab.SlabAllocator) -> None:
    with pyslab.Slab(Point, 2, allocator=heap) as slab:
        index = slab.insert(Point(1, 2))
        assert index is not None
        copy = slab.get(index)
        assert copy is not None and (copy.x, copy.y) == (1, 2)
        copy.x = 99
        again = slab.get(index)
        assert again is not None and again.x == 1
        assert ctypes.addressof(copy) != slab.address + index * ctypes.sizeof(Point)


def test_a_value_is_copied_in_so_the_caller_keeps_its_own(heap: pyslab.SlabAllocator) -> None:
    with pyslab.Slab(Point, 2, allocator=heap) as slab:
        mine = Point(3, 4)
        index = slab.insert(mine)
        assert index is not None
        mine.x = -1
        stored = slab.get(index)
        assert stored is not None and stored.x == 3


# --- views --------------------------------------------------------------------------------------


def test_view_aliases_the_slot_memory(heap: pyslab.SlabAllocator) -> None:
    with pyslab.Slab(Point, 4, allocator=heap) as slab:
        for v in range(3):
            slab.insert((v, -v))
        view = slab.view(2)
        assert view is not None
        slot = slab.address + 2 * ctypes.sizeof(Point)
        assert ctypes.addressof(view) == slot
        view.x = 1234  # a write through the view is a write to the slot
        stored = slab.get(2)
        assert stored is not None and stored.x == 1234
        ctypes.memmove(slot, bytes(Point(7, 8)), ctypes.sizeof(Point))  # as C would write
        assert (view.x, view.y) == (7, 8)
        assert ctypes.cast(slot, ctypes.POINTER(Point)).contents.y == 8


def test_views_of_scalars_alias_too(heap: pyslab.SlabAllocator) -> None:
    with pyslab.Slab(ctypes.c_double, 3, allocator=heap) as slab:
        slab.insert(1.5)
        view = slab.view(0)
        assert view is not None
        view.value = 2.5
        stored = slab.get(0)
        assert stored is not None and stored.value == 2.5
        assert ctypes.c_double.from_address(slab.address).value == 2.5


def test_view_of_an_empty_slot_is_none(heap: pyslab.SlabAllocator) -> None:
    with pyslab.Slab(ctypes.c_int, 2, allocator=heap) as slab:
        assert slab.view(0) is None
        slab.insert(5)
        slab.remove(0)
        assert slab.view(0) is None


def test_a_view_keeps_the_memory_until_it_goes(heap: pyslab.SlabAllocator) -> None:
    slab = pyslab.Slab(ctypes.c_int, 4, allocator=heap)
    slab.insert(77)
    view = slab.view(0)
    address = slab.address
    slab.close()
    assert heap.owns(address)  # closed, but the view still reads real memory
    assert view is not None and view.value == 77
    del view
    gc.collect()
    assert not heap.owns(address)


# --- values -------------------------------------------------------------------------------------


def test_values_are_converted_as_ctypes_converts_them(heap: pyslab.SlabAllocator) -> None:
    with pyslab.Slab(Segment, 3, allocator=heap) as segments:
        assert segments.insert(((1, 2), (3, 4), b"north")) == 0
        assert segments.insert(Segment(Point(5, 6), Point(7, 8), b"south")) == 1
        first = segments.get(0)
        assert first is not None
        assert (first.start.x, first.end.y, first.tag) == (1, 4, b"north")
    with pyslab.Slab(ctypes.c_uint8, 2, allocator=heap) as octets:
        octets.insert(True)
        octets.insert(ctypes.c_uint8(7))
        assert [v.value for _, v in octets] == [1, 7]
    with pyslab.Slab(ctypes.c_int32, 1, allocator=heap) as wrapped:
        wrapped.insert(2**32 + 5)  # truncated, as c_int32(2**32 + 5) is
        stored = wrapped.get(0)
        assert stored is not None and stored.value == 5


@pytest.mark.parametrize(
    ("ctype", "value"),
    [
        (ctypes.c_int, 1.5),
        (ctypes.c_int, "7"),
        (ctypes.c_int, None),
        (ctypes.c_int, ctypes.c_long(3)),
        (ctypes.c_int, ctypes.c_double(3)),
        (Point, 5),
        (Point, (1, 2, 3)),
        (Point, (1, "y")),
        (Point, [1, 2]),
        (Segment, ((1, "a"), (3, 4), b"x")),
        (Segment, Point(1, 2)),
        (ctypes.c_char, b"ab"),
    ],
)
def test_a_value_of_the_wrong_type_raises_type_error_and_changes_nothing(
    heap: pyslab.SlabAllocator, ctype: type[ctypes.c_int], value: object
) -> None:
    with pyslab.Slab(ctype, 2, allocator=heap) as slab:
        with pytest.raises(TypeError, match=ctype.__name__):
            slab.insert(value)  # type: ignore[arg-type]
        assert len(slab) == 0
        assert slab.insert(ctype()) == 0  # index 0 was not consumed
        slab.validate()


def test_indices_must_be_ints(heap: pyslab.SlabAllocator) -> None:
    with pyslab.Slab(ctypes.c_int, 2, allocator=heap) as slab:
        slab.insert(1)
        for bad in ("0", 0.0, None, True):
            with pytest.raises(TypeError):
                slab.get(bad)  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                slab.remove(bad)  # type: ignore[arg-type]
            assert bad not in slab
        assert len(slab) == 1


# --- the rest of the interface ------------------------------------------------------------------


def test_len_contains_capacity_and_is_full(heap: pyslab.SlabAllocator) -> None:
    with pyslab.Slab(ctypes.c_int, 3, allocator=heap) as slab:
        assert (len(slab), slab.capacity, slab.is_full) == (0, 3, False)
        slab.insert(1)
        slab.insert(2)
        assert 0 in slab and 1 in slab and 2 not in slab
        slab.insert(3)
        assert (len(slab), slab.is_full) == (3, True)
        slab.remove(1)
        assert 1 not in slab and not slab.is_full


def test_iteration_yields_occupied_slots_in_index_order_as_copies(
    heap: pyslab.SlabAllocator,
) -> None:
    with pyslab.Slab(ctypes.c_int, 5, allocator=heap) as slab:
        for v in (10, 11, 12, 13):
            slab.insert(v)
        slab.remove(1)
        pairs = list(slab)
        assert [(i, v.value) for i, v in pairs] == [(0, 10), (2, 12), (3, 13)]
        pairs[0][1].value = -1
        assert values_of(slab)[0] == 10


def test_clear_empties_every_slot_and_restarts_at_index_zero(heap: pyslab.SlabAllocator) -> None:
    with pyslab.Slab(ctypes.c_int, 4, allocator=heap) as slab:
        for v in range(4):
            slab.insert(v)
        slab.remove(2)
        slab.clear()
        assert len(slab) == 0 and list(slab) == []
        assert [slab.insert(v) for v in range(4)] == [0, 1, 2, 3]
        slab.validate()


def test_a_closed_slab_refuses_every_operation(heap: pyslab.SlabAllocator) -> None:
    slab = pyslab.Slab(ctypes.c_int, 2, allocator=heap)
    slab.insert(1)
    slab.close()
    slab.close()
    assert slab.closed and len(slab) == 0 and 0 not in slab
    for operation in (lambda: slab.insert(2), lambda: slab.get(0), lambda: slab.remove(0),
                      lambda: slab.view(0), lambda: list(slab), slab.clear):
        with pytest.raises(pyslab.AllocatorClosedError):
            operation()


def test_a_slab_whose_allocator_closed_refuses_rather_than_touching_unmapped_memory() -> None:
    allocator = pyslab.SlabAllocator()
    slab = pyslab.Slab(ctypes.c_int, 2, allocator=allocator)
    slab.insert(1)
    allocator.close()
    with pytest.raises(pyslab.AllocatorClosedError, match="allocator was closed"):
        slab.get(0)
    slab.close()  # harmless: the allocator is closed, its memory goes once the slab does


@pytest.mark.parametrize(
    ("ctype", "capacity", "error"),
    [
        (int, 4, TypeError),
        (ctypes.c_int(3), 4, TypeError),
        (Empty, 4, ValueError),
        (ctypes.c_int, 0, ValueError),
        (ctypes.c_int, -1, ValueError),
        (ctypes.c_int, True, TypeError),
        (ctypes.c_int, 2.0, TypeError),
    ],
)
def test_bad_construction_arguments_are_refused(
    ctype: object, capacity: object, error: type[Exception]
) -> None:
    with pytest.raises(error):
        pyslab.Slab(ctype, capacity)  # type: ignore[arg-type]


def test_the_allocator_argument_must_be_an_allocator() -> None:
    with pytest.raises(TypeError, match="SlabAllocator"):
        pyslab.Slab(ctypes.c_int, 2, allocator="heap")  # type: ignore[arg-type]


def test_the_slot_type_is_checked_statically(heap: pyslab.SlabAllocator) -> None:
    # mypy --strict on the tests pins these: assert_type fails the check if a type drifts, and
    # an ignore that is no longer needed is itself an error (warn_unused_ignores).
    with pyslab.Slab(ctypes.c_int, 2, allocator=heap) as ints, pyslab.Slab(
        Point, 2, allocator=heap
    ) as points:
        assert_type(ints, pyslab.Slab[ctypes.c_int])
        assert_type(ints.get(0), ctypes.c_int | None)
        assert_type(points.view(0), Point | None)
        assert_type(points.remove(0), Point | None)
        assert_type(list(points), list[tuple[int, Point]])
        with pytest.raises(TypeError):
            ints.insert(ctypes.c_double(1.0))  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            points.insert(ctypes.c_int(1))  # type: ignore[arg-type]


# --- memory -------------------------------------------------------------------------------------


def test_slots_live_in_the_allocator_given(heap: pyslab.SlabAllocator) -> None:
    small = pyslab.Slab(Point, 8, allocator=heap)  # 64 bytes: one block of a size class
    large = pyslab.Slab(ctypes.c_double, 4096, allocator=heap)  # 32 KiB: a large block
    assert heap.owns(small.address) and heap.owns(large.address)
    assert heap.usable_size(small.address) >= 8 * ctypes.sizeof(Point)
    assert small.allocator is heap
    large.insert(3.25)
    large.view(0)  # dropped at once
    small.close()
    large.close()
    gc.collect()
    assert heap.stats().live_blocks == 0


def test_slots_are_aligned_for_their_type(heap: pyslab.SlabAllocator) -> None:
    with pyslab.Slab(ctypes.c_longdouble, 3, allocator=heap) as slab:
        assert slab.address % ctypes.alignment(ctypes.c_longdouble) == 0


def test_without_an_allocator_the_slab_maps_its_own_pages(no_installed_allocator: None) -> None:
    slab = pyslab.Slab(ctypes.c_int, 10)
    assert slab.allocator is None
    assert is_mapped(slab.address)
    slab.insert(5)
    address = slab.address
    slab.close()
    gc.collect()
    assert not is_mapped(address)


def test_the_installed_allocator_is_used_when_none_is_given() -> None:
    installed = pyslab.installed
    with (
        pyslab.SlabAllocator() as allocator,
        installed(allocator),
        pyslab.Slab(ctypes.c_int, 4) as slab,
    ):
        assert slab.allocator is allocator
        assert allocator.owns(slab.address)


# --- threads and re-entrancy --------------------------------------------------------------------


def test_threads_racing_for_the_same_slots_lose_and_duplicate_nothing(
    heap: pyslab.SlabAllocator, fast_switching: None
) -> None:
    # Every thread inserts its own values and removes whatever index it draws, its own or
    # another's: each value must come out exactly once, and never be handed out twice.
    slab = pyslab.Slab(ctypes.c_int64, 16, allocator=heap)
    inserted: list[list[int]] = [[] for _ in range(4)]
    removed: list[list[int]] = [[] for _ in range(4)]

    def worker(tag: int) -> None:
        for step in range(15000):
            value = tag * 1_000_000 + step
            if slab.insert(value) is not None:
                inserted[tag].append(value)
            got = slab.remove((step * 7 + tag) % 16)
            if got is not None:
                removed[tag].append(got.value)

    run_threads(worker, 4)
    slab.validate()
    left = [value.value for _, value in slab]
    everything_out = sorted([v for values in removed for v in values] + left)
    assert everything_out == sorted(v for values in inserted for v in values)
    assert len(slab) == len(left)
    slab.close()


class _Churner:
    """Garbage with a finalizer that uses the slab: collected in the middle of slab calls."""

    def __init__(self, slab: pyslab.Slab[ctypes.c_int]) -> None:
        self.slab = slab
        self.cycle = self

    def __del__(self) -> None:
        index = self.slab.insert(-1)
        if index is not None:
            self.slab.remove(index)


def test_finalizers_that_use_the_slab_mid_call_leave_it_consistent(
    heap: pyslab.SlabAllocator,
) -> None:
    slab = pyslab.Slab(ctypes.c_int, 16, allocator=heap)
    previous = gc.get_threshold()
    gc.set_threshold(1)  # a collection on nearly every allocation, views and copies included
    try:
        model: dict[int, int] = {}
        for step in range(400):
            _Churner(slab)
            index = slab.insert(step)
            if index is not None:
                model[index] = step
            victim = next(iter(model))
            removed = slab.remove(victim)
            assert removed is not None and removed.value == model.pop(victim)
            for index, value in slab:
                assert value.value == model[index]
    finally:
        gc.set_threshold(*previous)
    gc.collect()
    slab.validate()
    assert values_of(slab) == model
    slab.close()


# --- the seed as the model ----------------------------------------------------------------------


class SeedModel:
    """The seed's Slab<T, N>, transcribed: a list of optional values and a free-index stack."""

    def __init__(self, capacity: int) -> None:
        self.data: list[int | None] = [None] * capacity
        self.free_list = list(range(capacity - 1, -1, -1))

    def insert(self, value: int) -> int | None:
        if not self.free_list:
            return None
        index = self.free_list.pop()
        self.data[index] = value
        return index

    def remove(self, index: int) -> int | None:
        if not 0 <= index < len(self.data) or self.data[index] is None:
            return None
        value, self.data[index] = self.data[index], None
        self.free_list.append(index)
        return value

    def get(self, index: int) -> int | None:
        return self.data[index] if 0 <= index < len(self.data) else None


class SlabAgainstTheSeed(RuleBasedStateMachine):
    """Random insert/remove/get/view/clear on a Slab[c_int] and on the seed, answers compared."""

    def __init__(self) -> None:
        super().__init__()
        self.allocator = pyslab.SlabAllocator()
        self.slab: pyslab.Slab[ctypes.c_int] | None = None
        self.model = SeedModel(1)

    @initialize(capacity=st.integers(1, 9))
    def build(self, capacity: int) -> None:
        self.slab = pyslab.Slab(ctypes.c_int, capacity, allocator=self.allocator)
        self.model = SeedModel(capacity)

    @property
    def live(self) -> pyslab.Slab[ctypes.c_int]:
        assert self.slab is not None
        return self.slab

    def index(self, data: st.DataObject) -> int:
        capacity = self.live.capacity
        return data.draw(st.integers(-2, capacity + 1), label="index")

    @rule(value=C_INT_VALUES, as_instance=st.booleans())
    def insert(self, value: int, as_instance: bool) -> None:
        got = self.live.insert(ctypes.c_int(value) if as_instance else value)
        assert got == self.model.insert(value)

    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        index = self.index(data)
        got = self.live.remove(index)
        expected = self.model.remove(index)
        assert (None if got is None else got.value) == expected

    @rule(data=st.data())
    def get(self, data: st.DataObject) -> None:
        index = self.index(data)
        got = self.live.get(index)
        assert (None if got is None else got.value) == self.model.get(index)

    @precondition(lambda self: self.slab is not None and len(self.slab) > 0)
    @rule(data=st.data(), value=C_INT_VALUES)
    def write_through_a_view(self, data: st.DataObject, value: int) -> None:
        occupied = [i for i, v in enumerate(self.model.data) if v is not None]
        index = data.draw(st.sampled_from(occupied), label="occupied index")
        view = self.live.view(index)
        assert view is not None
        assert ctypes.addressof(view) == self.live.address + index * ctypes.sizeof(ctypes.c_int)
        view.value = value
        self.model.data[index] = value

    @rule()
    def clear(self) -> None:
        self.live.clear()
        self.model = SeedModel(self.live.capacity)

    @invariant()
    def agrees_with_the_seed(self) -> None:
        if self.slab is None:
            return
        slab, model = self.slab, self.model
        slab.validate()
        occupied = {i: v for i, v in enumerate(model.data) if v is not None}
        assert len(slab) == len(occupied)
        assert slab.is_full == (not model.free_list)
        assert {i: v.value for i, v in slab} == occupied
        assert all((i in slab) == (i in occupied) for i in range(-1, slab.capacity + 1))

    def teardown(self) -> None:
        if self.slab is not None:
            self.slab.close()
        self.allocator.close()


SlabAgainstTheSeed.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None
)
test_slab_agrees_with_the_seed = SlabAgainstTheSeed.TestCase


class PointSlabAgainstTheSeed(RuleBasedStateMachine):
    """The same for a structure, its values given as tuples: model values are (x, y) pairs."""

    def __init__(self) -> None:
        super().__init__()
        self.slab = pyslab.Slab(Point, 5)
        self.data: list[tuple[int, int] | None] = [None] * 5
        self.free_list = [4, 3, 2, 1, 0]

    @rule(x=C_INT_VALUES, y=C_INT_VALUES)
    def insert(self, x: int, y: int) -> None:
        expected = self.free_list.pop() if self.free_list else None
        if expected is not None:
            self.data[expected] = (x, y)
        assert self.slab.insert((x, y)) == expected

    @rule(index=st.integers(-1, 6))
    def remove(self, index: int) -> None:
        got = self.slab.remove(index)
        expected = self.data[index] if 0 <= index < 5 else None
        assert (None if got is None else (got.x, got.y)) == expected
        if expected is not None:
            self.data[index] = None
            self.free_list.append(index)

    @invariant()
    def agrees(self) -> None:
        self.slab.validate()
        assert {i: (p.x, p.y) for i, p in self.slab} == {
            i: v for i, v in enumerate(self.data) if v is not None
        }

    def teardown(self) -> None:
        self.slab.close()


PointSlabAgainstTheSeed.TestCase.settings = settings(
    max_examples=30, stateful_step_count=30, deadline=None
)
test_point_slab_agrees_with_the_seed = PointSlabAgainstTheSeed.TestCase
