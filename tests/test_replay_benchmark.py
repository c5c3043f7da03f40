"""The benchmark of ``pyslab replay`` against ``memray stats`` runs, on a tiny capture."""

from __future__ import annotations

import json

import pytest

from benchmarks import replay
from benchmarks.context import Context
from benchmarks.heaps import discover
from benchmarks.results import QUICK
from benchmarks.suite import MEASUREMENTS, resolve_names


def test_the_replay_measurement_is_registered_last() -> None:
    assert [m.key for m in resolve_names(["8"])] == ["replay"]
    assert MEASUREMENTS[-1].measure is replay.measure


def test_the_document_is_json_of_about_the_size_asked_for() -> None:
    text = replay.document(20_000, seed=3)
    assert 20_000 <= len(text) < 22_000 and isinstance(json.loads(text), list)
    assert replay.document(20_000, seed=3) == text


@pytest.mark.timeout(120)
def test_replay_is_timed_against_memray_stats_on_a_capture_made_on_the_fly() -> None:
    pytest.importorskip("memray")
    section = replay.measure(Context(QUICK, discover(1)), size=20_000, rounds=1)
    stats, pyslab_row = section.tables[0].rows
    assert stats["contender"] == "memray stats" and stats["wall_ratio"] == 1.0
    assert str(pyslab_row["contender"]).startswith("pyslab replay -p dict-lookup+reclaim")
    for key in ("wall_s", "cpu_s", "wall_ratio", "cpu_ratio", "loop_s"):
        assert float(str(pyslab_row[key])) > 0, key
    assert "events" in section.tables[0].title
    (target,) = section.targets
    assert "at most 5x memray stats" in target.text and target.met is not None
