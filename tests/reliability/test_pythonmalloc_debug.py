"""The suite passes under ``PYTHONMALLOC=debug``: CPython's own allocator checks every block.

With the debug hooks, CPython pads each of its blocks with guard bytes and checks them on free,
fills new memory with 0xCD and freed memory with 0xDD, and checks that the GIL is held on every
call of the object allocator. pyslab writes through ``ctypes`` at raw addresses: a stray write
into one of CPython's blocks, or into one from libc, shows up there as a fatal error. The
subset below runs in a subprocess (the hooks must be installed at start-up).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SUBSET = [
    # the core's conformance tests under representative configurations (re-entrant mode too)
    "tests/reliability/test_reentrant_mode.py",
    "tests/reliability/test_misuse.py::test_every_misuse_is_detected_and_changes_nothing[first-fit]",
    "tests/reliability/test_misuse.py::test_a_large_block_holding_a_slab_address_frees_normally",
    "tests/reliability/test_reentrant_calls.py::test_finalizers_on_many_threads_at_once",
]
"""Core conformance, every misuse of the table, re-entrant finalizers on threads."""


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONMALLOC": "debug", "PYTHONFAULTHANDLER": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )


@pytest.mark.timeout(300)
def test_the_core_suite_passes_under_pythonmalloc_debug() -> None:
    # the first-fit configuration of each (the seed's design), to stay within CI's budget
    done = _run(["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "first or many",
                 *SUBSET])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout


@pytest.mark.timeout(300)
def test_the_stress_test_passes_under_pythonmalloc_debug() -> None:
    done = _run([
        "-m", "tests.reliability.stress", "--rounds", "2", "--scale", "1", "--finalizers",
        "--policy", "dict-lookup+reclaim", "--policy", "first-fit",
    ])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count(": ok") == 2
