"""The benchmark suite keeps working: its timing core, each measurement at tiny sizes, the CLI.

Timings are never asserted (CI machines are noisy); what is asserted is the method (rotation,
collector off during a batch, budgets) and that every measurement produces its figures.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest

import pyslab
import pyslab.core
from benchmarks import batch, bookkeeping, hardening, pairs, reclamation, scaling
from benchmarks.context import Context
from benchmarks.heaps import Heap, build_full_heap, discover, libc_heap, rss_bytes
from benchmarks.results import QUICK, Section
from benchmarks.suite import MEASUREMENTS, resolve_names
from benchmarks.timing import Contender, Settings, compare, timed_batch

ROOT = Path(__file__).resolve().parent.parent

TINY = dataclasses.replace(
    QUICK,
    rounds=3,
    batch_ns=200_000,
    budget_ns=50_000_000,
    pair_sizes=(16, 512),
    batch_blocks=300,
    batch_rounds=2,
    slab_levels=(1, 20),
    bookkeeping_slabs=40,
    reclaim_bytes=64 * 4096,
)


@pytest.fixture(scope="module")
def context() -> Context:
    return Context(TINY, discover(TINY.config_limit))


def _recorder(name: str, log: list[tuple[str, bool]]) -> Contender:
    def run(n: int) -> None:
        log.append((name, gc.isenabled()))

    return Contender(name, run, ops=1)


def test_rounds_rotate_the_order_of_the_contenders() -> None:
    log: list[tuple[str, bool]] = []
    compare([_recorder(x, log) for x in "ABC"], Settings(rounds=4, min_rounds=1))
    timed = [name for name, _ in log[3:]]  # after one warm-up batch each
    assert timed == list("ABCBCACABABC")


def test_the_collector_is_off_during_a_batch_and_restored_after() -> None:
    log: list[tuple[str, bool]] = []
    assert gc.isenabled()
    timed_batch(_recorder("A", log), 1)
    assert log == [("A", False)]
    assert gc.isenabled()


def test_a_batch_that_raises_still_restores_the_collector() -> None:
    def run(n: int) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        timed_batch(Contender("A", run), 1)
    assert gc.isenabled()


def test_a_contender_over_its_budget_stops_after_min_rounds() -> None:
    def slow(n: int) -> None:
        sum(range(400_000 * n))  # tens of milliseconds a batch

    timings = compare(
        [Contender("slow", slow, ops=5), Contender("fast", lambda n: None, ops=5)],
        Settings(rounds=6, min_rounds=2, budget_ns=5_000_000),
    )
    assert len(timings["slow"].samples_ns) == 2
    assert len(timings["fast"].samples_ns) == 6
    assert len(timings["fast"].cpu_ns) == 6
    assert timings["slow"].ratio_to(timings["slow"]) == 1.0


def test_calibration_grows_the_batch_to_the_target_duration() -> None:
    timings = compare([Contender("sum", lambda n: sum(range(n)))],
                      Settings(rounds=1, batch_ns=2_000_000))
    assert timings["sum"].ops > 16


def test_the_cpu_clock_reports_cpu_time_and_the_share_is_a_fraction() -> None:
    timings = compare([Contender("sum", lambda n: sum(range(n)))],
                      Settings(rounds=3, batch_ns=1_000_000, clock="cpu"))
    timing = timings["sum"]
    assert timing.samples_ns == timing.cpu_ns
    assert 0 < timing.cpu_share <= 1.05  # CPU clocks tick in coarser steps than perf_counter
    with pytest.raises(ValueError, match="'sundial'"):
        Settings(clock="sundial")  # type: ignore[arg-type]


def test_contenders_need_distinct_names() -> None:
    with pytest.raises(ValueError, match="distinct names"):
        compare([Contender("A", print), Contender("A", print)], Settings())


def test_unknown_measurement_names_are_refused_by_name() -> None:
    assert [m.number for m in resolve_names(["7", "pairs"])] == [1, 7]
    with pytest.raises(ValueError, match="'nonsense'"):
        resolve_names(["nonsense"])
    assert [m.number for m in MEASUREMENTS] == list(range(1, 9))


def test_discovery_finds_the_default_and_every_registered_policy(context: Context) -> None:
    discovery = context.discovery
    assert discovery.default().is_default
    singles = {c.names[-1] for c in discovery.singles()[1:]}
    assert singles == set(discovery.policies)  # the base alone too: it is not the default
    assert any(c.o1_free for c in discovery.configurations)  # dict-lookup at least


def test_a_full_heap_has_the_slabs_asked_for(context: Context) -> None:
    heap, blocks = build_full_heap(context.discovery.default(), 5, 512)
    try:
        assert heap.allocator is not None
        assert len(heap.allocator.slabs()) == 5
        assert len(blocks) == heap.allocator.stats().live_blocks == 5 * 8
        heap.allocator.validate()
    finally:
        heap.close()


def _figures(section: Section, key: str) -> list[float]:
    return [float(str(row[key])) for table in section.tables for row in table.rows if key in row]


def test_pairs_time_every_configuration_and_both_baselines(context: Context) -> None:
    section = pairs.measure(context)
    names = {row["contender"] for row in section.tables[0].rows}
    labels = {c.label for c in context.discovery.configurations}
    assert names == labels | {pairs.LIBC, pairs.PYMEM}
    assert len(section.tables[0].rows) == len(names) * len(TINY.pair_sizes)
    assert all(t > 0 for t in _figures(section, "median_ns"))
    assert len(section.targets) == 3 * len(TINY.pair_sizes)  # fastest, default, dict-lookup


def test_batch_and_scaling_report_each_contender(context: Context) -> None:
    section = batch.measure(context)
    assert len(section.tables[0].rows) == len(batch.batch_configs(context)) + 2
    section = scaling.measure(context)
    per_level, growth = section.tables
    assert {row["slabs"] for row in per_level.rows} == set(TINY.slab_levels)
    assert any(row["contender"] == scaling.LIBC for row in growth.rows)
    assert all(g > 0 for g in _figures(section, "growth"))


def test_bookkeeping_is_found_in_pyslab_code(context: Context) -> None:
    section = bookkeeping.measure(context)
    rows = section.tables[0].rows
    assert rows and all(row["slabs"] == TINY.bookkeeping_slabs for row in rows)
    # A table sized for a whole region (address-mask) can outweigh 40 slabs: only > 0 holds.
    assert all(f > 0 for f in _figures(section, "fraction"))
    assert section.tables[1].rows  # the heaviest allocating lines are named


def test_reclaim_releases_what_the_same_configuration_without_it_keeps(
    context: Context,
) -> None:
    section = reclamation.measure(context)
    rows = {str(row["contender"]): row for row in section.tables[0].rows}
    for plain, with_reclaim in reclamation.reclaim_pairs(context):
        kept, released = rows[plain.label], rows[with_reclaim.label]
        assert kept["left_mapped"] == kept["peak_mapped"]
        assert int(str(released["left_mapped"])) < int(str(released["peak_mapped"]))


class _Poison(pyslab.Policy):
    """A stand-in hardening policy: fills freed blocks when ``poison`` is set."""

    name = "test-poison"
    description = "test-only hardening: poison freed blocks"

    def __init__(self, poison: bool = False, checks: int = 0) -> None:
        self.poison = poison

    def block_freed(self, slab: pyslab.core.MemorySlab, address: int) -> None:
        if self.poison:
            ctypes.memset(address + 8, 0xDD, slab.slot_size - 8)


def test_hardening_measures_each_boolean_option_against_its_base(context: Context) -> None:
    section = hardening.measure_policies(context, [_Poison])
    rows = section.tables[0].rows
    labels = [row["contender"] for row in rows if row["base"] == rows[0]["base"]]
    assert labels == [
        "(none)", "test-poison(every option off)", "test-poison(only poison)",
        "test-poison(defaults: none)",
    ]
    assert all(row["pair_ratio"] == 1.0 for row in rows if row["contender"] == "(none)")
    assert hardening.measure_policies(context, []).notes[0].startswith("skipped")


def test_the_libc_contender_and_rss_reader_work() -> None:
    heap: Heap = libc_heap()
    address = heap.alloc(64)
    assert address
    heap.free(address)
    assert rss_bytes() > 0


def test_the_command_runs_quick_and_writes_json_markdown_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    markdown = tmp_path / "run.md"
    plot = tmp_path / "run.png"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "buffer",
         "--json", str(out), "--markdown", str(markdown), "--plot", str(plot)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "command: python -m benchmarks --quick --only buffer" in done.stdout
    data = json.loads(out.read_text())
    assert [s["number"] for s in data["sections"]] == [3]
    assert data["meta"]["cpu"] and data["meta"]["python"]
    assert markdown.read_text().startswith("## Results")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_command_refuses_an_unknown_measurement() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--only", "nonsense"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 2
    assert "'nonsense'" in done.stderr
