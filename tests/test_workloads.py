"""Workloads: registered by entry point, deterministic by seed, doing what they say; the
harness's measurements against hand-computed ones."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import pyslab
import pyslab.lab
from pyslab.lab.harness import _MeasuredHeap
from pyslab.lab.trace import TraceRecorder

BUILT_IN = (
    "adversary", "churn", "long-short", "producer-consumer", "ramp", "size-mix", "uniform",
)
CONFIGURATIONS = ("first-fit", "dict-lookup", "reclaim", "dict-lookup+reclaim")


def test_every_built_in_workload_is_registered_with_a_one_line_description() -> None:
    listed = pyslab.lab.workloads()
    assert set(BUILT_IN) <= set(listed)
    for name in BUILT_IN:
        description = listed[name]
        assert description and "\n" not in description and len(description) <= 90
        workload = pyslab.lab.make_workload(name)
        assert isinstance(workload, pyslab.lab.Workload)
        assert workload.name == name == workload.label


def test_an_unknown_workload_name_lists_the_known_ones() -> None:
    with pytest.raises(pyslab.lab.UnknownWorkloadError, match=r"'nope'.*adversary.*uniform"):
        pyslab.lab.make_workload("nope")


def test_bad_parameters_name_the_workload() -> None:
    with pytest.raises(pyslab.lab.WorkloadError, match="'uniform' does not take"):
        pyslab.lab.make_workload("uniform", colour="red")
    with pytest.raises(ValueError, match="size must be a positive int, not 0"):
        pyslab.lab.make_workload("uniform", size=0)


@pytest.mark.parametrize("name", sorted(set(BUILT_IN) - {"producer-consumer"}))
def test_the_same_seed_gives_the_same_operation_sequence(name: str) -> None:
    first = pyslab.lab.record_workload(pyslab.lab.make_workload(name), 3000, seed=7)
    again = pyslab.lab.record_workload(pyslab.lab.make_workload(name), 3000, seed=7)
    other = pyslab.lab.record_workload(pyslab.lab.make_workload(name), 3000, seed=8)
    assert first == again
    assert len(first) == pytest.approx(3000, rel=0.1)
    if name != "uniform":  # every uniform block has the same size: only the order can differ
        assert first != other
    else:
        assert [e.op for e in first] != [e.op for e in other]


def test_the_threaded_workload_makes_the_same_calls_for_a_seed() -> None:
    # Each producer's sizes are fixed by the seed; the interleaving is the scheduler's.
    def calls(seed: int) -> collections.Counter[tuple[str, int]]:
        workload = pyslab.lab.make_workload("producer-consumer")
        events = pyslab.lab.record_workload(workload, 4000, seed)
        return collections.Counter((e.op, e.size) for e in events)

    assert calls(3) == calls(3)
    assert calls(3) != calls(4)
    assert sum(calls(3).values()) == 4000


class _ThreadNoting(TraceRecorder):
    """A trace recorder that also notes which thread allocated and freed each block."""

    def __init__(self) -> None:
        super().__init__()
        # Thread objects, not idents: an ident may be reused once its thread has ended.
        self.allocated_on: dict[int, threading.Thread] = {}
        self.freed_on: dict[int, threading.Thread] = {}

    def alloc(self, size: int, align: int | None = None) -> int:
        block = super().alloc(size, align)
        self.allocated_on[block] = threading.current_thread()
        return block

    def free(self, block: int) -> None:
        self.freed_on[block] = threading.current_thread()
        super().free(block)


def test_producer_consumer_frees_every_block_on_another_thread() -> None:
    heap = _ThreadNoting()
    pyslab.lab.make_workload("producer-consumer").run(heap, 2000, seed=1)
    assert heap.allocated_on.keys() == heap.freed_on.keys()
    assert len(heap.allocated_on) == 1000
    assert all(heap.freed_on[b] is not heap.allocated_on[b] for b in heap.allocated_on)
    producers, consumers = set(heap.allocated_on.values()), set(heap.freed_on.values())
    assert len(producers) == 2 and not producers & consumers
    assert threading.current_thread() not in producers | consumers
    assert all(t.name.endswith("produce") for t in producers)
    assert all(t.name.endswith("consume") for t in consumers)


def test_a_failing_thread_fails_the_threaded_workload_without_hanging() -> None:
    class FailingFrees(TraceRecorder):
        def free(self, block: int) -> None:
            raise pyslab.lab.WorkloadError(f"refused to free {block}")

    with pytest.raises(pyslab.lab.WorkloadError, match="refused to free"):
        pyslab.lab.make_workload("producer-consumer", depth=4).run(FailingFrees(), 2000, seed=1)


@pytest.mark.parametrize("configuration", CONFIGURATIONS)
@pytest.mark.parametrize("name", BUILT_IN)
def test_every_workload_runs_under_every_configuration(name: str, configuration: str) -> None:
    result = pyslab.lab.run_workload(name, configuration, ops=1500, seed=2)  # validates the heap
    assert (result.workload, result.configuration, result.ops, result.seed) == (
        name, configuration, 1500, 2,
    )
    assert result.allocs + result.frees + result.reallocs == pytest.approx(1500, rel=0.1)
    live = result.final.live_blocks + result.final.large_blocks
    assert result.allocs - result.frees == live
    assert result.median_alloc_ns is not None and result.median_alloc_ns > 0
    assert result.peak_mapped_bytes >= result.final_mapped_bytes == result.final.mapped_bytes
    assert result.slabs_created * 4096 >= result.peak_mapped_bytes
    assert result.final_mapped_bytes == (result.slabs_created - result.slabs_reclaimed) * 4096
    assert result.samples[0][0] == 0 and result.samples[-1][0] == (
        result.allocs + result.frees + result.reallocs
    )
    assert max(s[1] for s in result.samples) <= result.peak_mapped_bytes


def test_ramp_shows_what_reclamation_returns() -> None:
    kept = pyslab.lab.run_workload("ramp", "dict-lookup", ops=4000)
    reclaimed = pyslab.lab.run_workload("ramp", "dict-lookup+reclaim", ops=4000)
    assert kept.peak_mapped_bytes == reclaimed.peak_mapped_bytes
    assert kept.final_mapped_bytes == kept.peak_mapped_bytes and kept.slabs_reclaimed == 0
    # reclaim keeps at most four empty slabs per class (8 classes).
    assert reclaimed.final_mapped_bytes <= 8 * 4 * 4096 < kept.final_mapped_bytes
    assert reclaimed.final.live_blocks == 0 and reclaimed.final.utilisation == 0.0
    assert reclaimed.final.internal_fragmentation is None


def test_the_adversary_leaves_half_of_every_slab_free_and_nothing_reclaimable() -> None:
    result = pyslab.lab.run_workload("adversary", "dict-lookup+reclaim", ops=6000)
    assert result.slabs_reclaimed == 0
    assert result.final.internal_fragmentation == 0.0  # every size is exactly a slot size
    assert result.final.external_fragmentation == pytest.approx(0.5, abs=0.05)


def test_uniform_blocks_of_48_bytes_waste_a_quarter_of_their_64_byte_slots() -> None:
    result = pyslab.lab.run_workload("uniform", "first-fit", ops=2000)
    assert result.final.internal_fragmentation == 0.25


def test_measure_heap_follows_the_definitions() -> None:
    with pyslab.SlabAllocator(policy="dict-lookup") as allocator:
        blocks = [(allocator.alloc(24), 24) for _ in range(3)] + [(allocator.alloc(5000), 5000)]
        blocks += [(allocator.alloc(100), 100)]
        metrics = pyslab.lab.measure_heap(allocator, blocks)
        allocator.validate()
        assert (metrics.live_blocks, metrics.large_blocks) == (4, 1)
        assert metrics.requested_bytes == 3 * 24 + 100
        assert metrics.slot_bytes == 3 * 32 + 128
        assert metrics.mapped_bytes == 2 * 4096
        assert metrics.free_slot_bytes == (128 - 3) * 32 + (32 - 1) * 128
        assert metrics.internal_fragmentation == (224 - 172) / 224
        assert metrics.external_fragmentation == metrics.free_slot_bytes / 8192
        assert metrics.utilisation == 172 / 8192
        allocator.free(blocks[-1][0])  # its slab is now empty: its free slots do not count
        metrics = pyslab.lab.measure_heap(allocator, blocks[:-1])
        assert metrics.free_slot_bytes == (128 - 3) * 32
        allocator.validate()


def test_the_measured_heap_rejects_blocks_that_are_not_live() -> None:
    with pyslab.SlabAllocator() as allocator:
        heap = _MeasuredHeap(allocator, allocator.page_source, 10)
        block = heap.alloc(10)
        heap.realloc(block, 2000)
        assert allocator.usable_size(heap.blocks[block][0]) == 2000
        heap.free(block)
        with pytest.raises(pyslab.lab.WorkloadError, match="free of block 0"):
            heap.free(block)
        with pytest.raises(pyslab.lab.WorkloadError, match="realloc of block 7"):
            heap.realloc(7, 10)
        assert (heap.allocs, heap.frees, heap.reallocs) == (1, 1, 1)
        allocator.validate()


def test_a_run_takes_policy_instances_and_names_their_composition() -> None:
    reclaim = pyslab.make_policy("reclaim", keep=0)
    first = pyslab.lab.run_workload("ramp", [pyslab.make_policy("dict-lookup"), reclaim], ops=2000)
    assert first.configuration == "dict-lookup+reclaim(keep=0)"
    assert first.final_mapped_bytes == 0  # keep=0: every empty slab goes back
    # Released by the first run's close.
    again = pyslab.lab.run_workload("ramp", [reclaim], ops=2000)
    assert again.final_mapped_bytes == 0 and again.configuration == "reclaim(keep=0)"


@pytest.mark.parametrize(("ops", "samples"), [(0, 10), (-1, 10), (10, 0), (2.5, 10)])
def test_run_workload_rejects_bad_budgets(ops: object, samples: object) -> None:
    with pytest.raises(ValueError, match="must be a positive int"):
        pyslab.lab.run_workload("uniform", ops=ops, samples=samples)  # type: ignore[arg-type]


THIRD_PARTY = """\
import pyslab


class Stairs(pyslab.lab.Workload):
    name = "stairs"
    description = "a third-party workload: blocks of 8, 16, 24... bytes"

    def run(self, heap, ops, seed):
        blocks = [heap.alloc(8 * (i % 100 + 1)) for i in range(ops // 2)]
        for block in blocks:
            heap.free(block)


class NotAWorkload:
    pass
"""


def _install_third_party(root: Path, entry_points: str) -> dict[str, str]:
    """A real distribution (dist-info on PYTHONPATH) registering ``entry_points``."""
    (root / "stairs_workload.py").write_text(THIRD_PARTY)
    info = root / "stairs_workload-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: stairs-workload\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    path = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def test_a_third_party_workload_registered_by_entry_point_runs_by_name(tmp_path: Path) -> None:
    env = _install_third_party(
        tmp_path, "[pyslab.workloads]\nstairs = stairs_workload:Stairs\n"
    )
    listed = subprocess.run(
        [sys.executable, "-m", "pyslab.cli", "workloads"], env=env, capture_output=True,
        text=True, timeout=60, check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert "stairs" in listed.stdout and "a third-party workload" in listed.stdout
    compared = subprocess.run(
        [sys.executable, "-m", "pyslab.cli", "compare", "--workload", "stairs", "--ops", "400",
         "--policy", "dict-lookup+reclaim"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert compared.returncode == 0, compared.stderr
    assert "stairs" in compared.stdout and "dict-lookup+reclaim" in compared.stdout


def test_an_entry_point_that_is_not_a_workload_is_named(tmp_path: Path) -> None:
    env = _install_third_party(
        tmp_path, "[pyslab.workloads]\nbroken = stairs_workload:NotAWorkload\n"
    )
    code = (
        "import pyslab.lab\n"
        "try:\n    pyslab.lab.make_workload('broken')\n"
        "except pyslab.lab.WorkloadError as e:\n    print(e)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
        check=False,
    )
    assert "'broken' (stairs_workload:NotAWorkload) is not a pyslab.lab.Workload" in run.stdout
