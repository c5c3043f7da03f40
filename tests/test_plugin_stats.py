"""``stats`` and the report: counters per class, fragmentation ratios, text and JSON forms."""

from __future__ import annotations

import ctypes
import gc
import json
import tracemalloc

import pytest

import pyslab
import pyslab.observe
from tests.support import CONFIGURATIONS


def _class_line(text: str, slot: int) -> list[str]:
    for line in text.splitlines():
        cells = line.split()
        if cells and cells[0] == str(slot):
            return cells
    raise AssertionError(f"no line for the {slot}-byte class in\n{text}")


def _populate(alloc: pyslab.SlabAllocator) -> list[int]:
    """10 x 5 bytes (4 freed), 3 x 64, 1 x 100 and a large block of 5000."""
    fives = [alloc.alloc(5) for _ in range(10)]
    for address in fives[:4]:
        alloc.free(address)
    return fives[4:] + [alloc.alloc(64) for _ in range(3)] + [alloc.alloc(100), alloc.alloc(5000)]


def test_counters_and_ratios_follow_their_definitions() -> None:
    with pyslab.SlabAllocator(policy="dict-lookup+stats") as alloc:
        blocks = _populate(alloc)
        data = pyslab.observe.report_dict(alloc)
        classes = {c["slot_size"]: c for c in data["classes"]}  # type: ignore[attr-defined]
        assert {k: classes[8][k] for k in ("allocations", "frees", "live", "requested_bytes")} == {
            "allocations": 10, "frees": 4, "live": 6, "requested_bytes": 30,
        }
        assert classes[8]["slot_bytes"] == 48
        assert classes[8]["internal_fragmentation"] == pytest.approx(18 / 48)
        assert (classes[64]["requested_bytes"], classes[64]["internal_fragmentation"]) == (192, 0)
        assert classes[128]["requested_bytes"] == 100
        assert classes[16]["internal_fragmentation"] is None  # no live block
        slot_bytes, requested, mapped = 48 + 192 + 128, 30 + 192 + 100, 3 * alloc.slab_size
        partial_free = (512 - 6) * 8 + (64 - 3) * 64 + (32 - 1) * 128
        assert data["mapped_bytes"] == data["mapped_peak"] == mapped
        assert data["requested_bytes"] == requested
        internal = (slot_bytes - requested) / slot_bytes
        assert data["internal_fragmentation"] == pytest.approx(internal)
        assert data["external_fragmentation"] == pytest.approx(partial_free / mapped)
        assert data["utilisation"] == pytest.approx(requested / mapped)
        assert (data["large_blocks"], data["large_bytes"]) == (1, 5000)
        assert data["counted"] is True
        for address in blocks:
            alloc.free(address)
        alloc.validate()


def test_the_text_report_has_a_line_per_used_class_and_the_totals() -> None:
    with pyslab.SlabAllocator(policy="stats") as alloc:
        blocks = _populate(alloc)
        text = pyslab.observe.report(alloc)
        assert text.startswith("pyslab heap report: policy stats, page source MmapPageSource")
        header = text.splitlines()[1].split()
        line = dict(zip(header, _class_line(text, 8), strict=True))
        assert (line["live"], line["allocs"], line["frees"], line["requested"]) == (
            "6", "10", "4", "30",
        )
        assert line["int-frag"] == "37.5%"
        assert "large blocks 1 (5000 bytes)" in text
        assert f"mapped {3 * alloc.slab_size} bytes in slabs (peak {3 * alloc.slab_size})" in text
        assert "internal 12.5%" in text  # (368 - 322) / 368
        assert " 16 " not in text.splitlines()[2]  # unused classes are left out
        for address in blocks:
            alloc.free(address)


def test_slabs_created_reclaimed_and_peaks_are_counted() -> None:
    policies = [pyslab.make_policy("stats"), pyslab.make_policy("reclaim", keep=0)]
    with pyslab.SlabAllocator(policy=policies) as alloc:
        blocks = [alloc.alloc(512) for _ in range(24)]  # 3 slabs of 8
        for address in blocks:
            alloc.free(address)
        blocks = [alloc.alloc(512) for _ in range(8)]  # one slab again
        data = pyslab.observe.report_dict(alloc)
        c512 = next(c for c in data["classes"] if c["slot_size"] == 512)  # type: ignore[attr-defined]
        assert (c512["slabs"], c512["slabs_peak"], c512["slabs_created"], c512["slabs_reclaimed"]) \
            == (1, 3, 4, 3)
        assert (data["mapped_bytes"], data["mapped_peak"]) == (alloc.slab_size, 3 * alloc.slab_size)
        assert data["external_fragmentation"] == 0.0  # the one slab is full
        for address in blocks:
            alloc.free(address)
        alloc.validate()


def test_attached_to_a_live_allocator_it_counts_old_blocks_as_full_slots() -> None:
    with pyslab.SlabAllocator() as alloc:
        old = [alloc.alloc(5) for _ in range(5)]
        alloc.set_policy("stats")
        new = alloc.alloc(5)
        c8 = pyslab.observe.report_dict(alloc)["classes"][0]  # type: ignore[index]
        assert (c8["requested_bytes"], c8["allocations"], c8["slabs_created"], c8["slabs_peak"]) \
            == (5 * 8 + 5, 1, 0, 1)
        for address in [*old, new]:
            alloc.free(address)
        c8 = pyslab.observe.report_dict(alloc)["classes"][0]  # type: ignore[index]
        assert (c8["requested_bytes"], c8["frees"]) == (0, 6)
        alloc.validate()


def test_only_requests_smaller_than_their_slot_are_remembered() -> None:
    with pyslab.SlabAllocator(policy="stats") as alloc:
        stats = next(p for p in alloc.policy.policies if p.name == "stats")
        exact = [alloc.alloc(64) for _ in range(100)]
        assert stats.tracked_sizes == 0  # type: ignore[attr-defined]
        short = [alloc.alloc(60) for _ in range(100)]
        assert stats.tracked_sizes == 100  # type: ignore[attr-defined]
        for address in exact + short:
            alloc.free(address)
        assert stats.tracked_sizes == 0  # type: ignore[attr-defined]


def test_the_size_table_costs_tens_of_bytes_per_block() -> None:
    def traced_per_block(spec: str, count: int = 5000) -> float:
        with pyslab.SlabAllocator(policy=spec) as alloc:
            gc.collect()
            tracemalloc.start()
            try:
                start = tracemalloc.get_traced_memory()[0]
                blocks = [alloc.alloc(5) for _ in range(count)]
                used = tracemalloc.get_traced_memory()[0] - start
            finally:
                tracemalloc.stop()
            for address in blocks:
                alloc.free(address)
            return used / count

    extra = traced_per_block("dict-lookup+stats") - traced_per_block("dict-lookup")
    assert 8 < extra < 100  # a dict entry per block (the address int is the caller's)


@pytest.mark.parametrize("spec", CONFIGURATIONS)
def test_every_configuration_reports(spec: str) -> None:
    with pyslab.SlabAllocator(policy=spec) as alloc:
        blocks = _populate(alloc)
        text = pyslab.observe.report(alloc)
        data = pyslab.observe.report_dict(alloc)
        assert f"policy {alloc.policy.name}," in text and "fragmentation" in text
        assert json.loads(json.dumps(data)) == data
        assert data["counted"] is ("stats" in spec)
        assert _class_line(text, 8)[4] == "6"  # live, a core figure, with any policy
        assert data["external_fragmentation"] is not None
        if "stats" not in spec:
            assert data["internal_fragmentation"] is None and "add the `stats` policy" in text
        for address in blocks:
            alloc.free(address)


def test_the_report_of_an_empty_allocator_has_no_ratio() -> None:
    with pyslab.SlabAllocator(policy="stats") as alloc:
        data = pyslab.observe.report_dict(alloc)
        assert data["mapped_bytes"] == 0
        assert (data["internal_fragmentation"], data["external_fragmentation"],
                data["utilisation"]) == (None, None, None)
        assert "internal -, external -, utilisation -" in pyslab.observe.report(alloc)


def test_a_closed_allocator_has_no_report() -> None:
    alloc = pyslab.SlabAllocator(policy="stats")
    alloc.close()
    with pytest.raises(pyslab.AllocatorClosedError, match="report"):
        pyslab.observe.report(alloc)
    with pytest.raises(pyslab.AllocatorClosedError, match="report_dict"):
        pyslab.observe.report_dict(alloc)


def test_any_policy_can_supply_counters_through_the_protocol() -> None:
    class Fixed(pyslab.Policy):
        name = "fixed"

        def counters(self) -> pyslab.observe.PolicyCounters:
            return pyslab.observe.PolicyCounters(
                classes=tuple(pyslab.observe.ClassCounters(7, 0, 1, 1, 0, 7 * 3)
                              for _ in self.heap.size_classes),
                mapped_peak=123,
            )

    with pyslab.SlabAllocator(size_classes=(8,), policy=[Fixed()]) as alloc:
        assert isinstance(alloc.policy.policies[1], pyslab.observe.CountsAllocations)
        addresses = [alloc.alloc(3) for _ in range(7)]
        data = pyslab.observe.report_dict(alloc)
        assert (data["mapped_peak"], data["requested_bytes"]) == (123, 21)
        assert data["internal_fragmentation"] == pytest.approx((56 - 21) / 56)
        for address in addresses:
            alloc.free(address)


def test_object_caches_appear_by_name() -> None:
    with pyslab.SlabAllocator(policy="stats") as alloc:
        cache = pyslab.ObjectCache(alloc, ctypes.c_double * 3, name="vec3")
        objects = [cache.alloc() for _ in range(10)]
        data = pyslab.observe.report_dict(alloc)
        caches = data["caches"]
        assert isinstance(caches, list) and [c["name"] for c in caches] == ["vec3"]
        assert caches[0]["live_objects"] == 10
        text = pyslab.observe.report(alloc)
        assert "object caches:" in text
        assert text.splitlines()[-1].split()[:2] == ["vec3", "c_double_Array_3"]
        for obj in objects:
            cache.free(obj)
