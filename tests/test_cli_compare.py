"""``pyslab compare``: the table, the files it writes, reproducibility, progress display."""

from __future__ import annotations

import csv
import json
import os
import platform
import pty
import select
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import pyslab
import pyslab.lab
from pyslab.cli import main
from pyslab.cli._common import DEFAULT_CONFIGURATIONS


def _compare(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["compare", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _runs(path: Path) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = json.loads(path.read_text())["runs"]
    return runs


def test_compare_prints_the_table_and_writes_json_csv_and_plot(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    files = {kind: tmp_path / f"out.{kind}" for kind in ("json", "csv", "png")}
    status, out, err = _compare(
        capsys, "--ops", "1600", "--seed", "3", "-w", "ramp", "-w", "uniform",
        "-p", "first-fit", "-p", "dict-lookup+reclaim", "--json", str(files["json"]),
        "--csv", str(files["csv"]), "--plot", str(files["png"]),
    )
    assert status == 0, err
    # The facts that make the run reproducible head the table.
    assert "seed 3" in out and "1,600 ops" in out
    assert platform.python_version() in out and platform.machine() in out
    for column in ("ns/alloc", "ns/free", "peak KiB", "final KiB", "internal", "external",
                   "utilised", "slabs +", "slabs -"):
        assert column in out
    assert out.count("dict-lookup+reclaim") == 2 and "ramp" in out and "uniform" in out
    # Off a terminal, progress is plain lines on stderr.
    assert "[1/4] ramp under first-fit" in err and "[4/4] uniform under dict-lookup+reclaim" in err

    data = json.loads(files["json"].read_text())
    assert data["meta"]["seed"] == 3 and data["meta"]["ops"] == 1600
    assert data["meta"]["configurations"] == ["first-fit", "dict-lookup+reclaim"]
    assert data["meta"]["python"].startswith(platform.python_version())
    runs = data["runs"]
    assert [(r["workload"], r["configuration"]) for r in runs] == [
        ("ramp", "first-fit"), ("ramp", "dict-lookup+reclaim"),
        ("uniform", "first-fit"), ("uniform", "dict-lookup+reclaim"),
    ]
    ramp_kept, ramp_reclaimed = runs[0], runs[1]
    assert ramp_kept["final_mapped_bytes"] == ramp_kept["peak_mapped_bytes"]
    assert ramp_reclaimed["final_mapped_bytes"] < ramp_reclaimed["peak_mapped_bytes"]
    assert ramp_reclaimed["slabs_reclaimed"] > 0 and ramp_kept["slabs_reclaimed"] == 0
    assert runs[2]["internal_fragmentation"] == 0.25  # 48-byte blocks in 64-byte slots

    with open(files["csv"], newline="") as file:
        rows = list(csv.DictReader(file))
    assert [(row["workload"], row["configuration"]) for row in rows] == [
        (r["workload"], r["configuration"]) for r in runs
    ]
    assert all(row["seed"] == "3" and row["machine"] == data["meta"]["machine"] for row in rows)
    assert float(rows[2]["internal_fragmentation"]) == 0.25

    png = files["png"].read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width > 1000 and height > 800
    assert f"wrote {files['png']}" in out


def test_the_same_seed_gives_the_same_operations_and_heap(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    def run(seed: str, name: str) -> list[dict[str, Any]]:
        path = tmp_path / name
        status, _, err = _compare(
            capsys, "--ops", "1500", "--seed", seed, "-w", "size-mix", "-w", "long-short",
            "-p", "dict-lookup", "--json", str(path),
        )
        assert status == 0, err
        return _runs(path)

    def sequence(runs: list[dict[str, Any]]) -> list[object]:
        # Everything but the timings: the counts, the heap, and the requested-bytes series.
        keys = ("allocs", "frees", "reallocs", "peak_mapped_bytes", "final", "slabs_created")
        return [[r[k] for k in keys] + [[s[2] for s in r["samples"]]] for r in runs]

    first, again, other = run("11", "a.json"), run("11", "b.json"), run("12", "c.json")
    assert sequence(first) == sequence(again)
    assert sequence(first) != sequence(other)


def test_the_default_run_covers_every_workload_under_the_default_configurations(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    path = tmp_path / "all.json"
    status, out, err = _compare(capsys, "--ops", "300", "--json", str(path))
    assert status == 0, err
    pairs = [(r["workload"], r["configuration"]) for r in _runs(path)]
    assert pairs == [(w, c) for w in pyslab.lab.workloads() for c in DEFAULT_CONFIGURATIONS]
    assert "seed 0" in out


def test_repeated_options_run_once(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    status, _, _ = _compare(
        capsys, "--ops", "200", "-w", "churn", "-w", "churn", "-p", "reclaim", "-p", "reclaim",
        "--json", str(path),
    )
    assert status == 0 and len(_runs(path)) == 1


def test_an_unwritable_output_is_a_failure(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    status, _, err = _compare(
        capsys, "--ops", "200", "-w", "churn", "-p", "dict-lookup",
        "--json", str(tmp_path / "missing-dir" / "x.json"),
    )
    assert status == 1
    assert "pyslab compare: error:" in err and "missing-dir" in err


def test_compare_runs_as_a_real_command() -> None:
    command = shutil.which("pyslab") or pytest.fail("the pyslab console script is not installed")
    run = subprocess.run(
        [command, "compare", "--ops", "2000", "-w", "producer-consumer", "-w", "adversary",
         "-p", "dict-lookup", "-p", "reclaim"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "producer-consumer" in run.stdout and "adversary" in run.stdout
    assert "[4/4] adversary under reclaim" in run.stderr


@pytest.mark.timeout(120)
def test_on_a_terminal_compare_draws_a_progress_bar() -> None:
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "pyslab.cli", "compare", "--ops", "500", "-w", "ramp",
         "-p", "dict-lookup", "-p", "reclaim"],
        stdin=follower, stdout=follower, stderr=follower, env={**os.environ, "COLUMNS": "150"},
    )
    os.close(follower)
    output = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process has exited
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert process.wait(timeout=60) == 0
    text = output.decode(errors="replace")
    assert "\u2501" in text  # the bar's heavy horizontal line
    assert "ramp under" in text and "/2" in text  # description and M/N count
    assert "[1/2]" not in text  # no plain progress lines on a terminal
    assert "reclaim" in text and "peak KiB" in text
