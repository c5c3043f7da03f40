"""Bounded runs of the fuzz target ``fuzz/fuzz_allocator.py`` (long runs: see its docstring).

Hypothesis drives the target with arbitrary byte strings here (always available); atheris,
coverage-guided, runs it for a fixed number of executions in a subprocess when installed
(``pip install -e ".[fuzz]"``).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "fuzz" / "fuzz_allocator.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_allocator", TARGET)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fuzz = _load()


@settings(
    max_examples=300, deadline=None, database=None, derandomize=True,
    suppress_health_check=list(HealthCheck),
)
@given(st.binary(max_size=512))
def _run_short(data: bytes) -> None:
    fuzz.TestOneInput(data)


@pytest.mark.timeout(120)
def test_the_fuzz_target_holds_under_hypothesis() -> None:
    before = fuzz.EXECUTIONS[0]
    _run_short()
    print(f"hypothesis: {fuzz.EXECUTIONS[0] - before} executions of the fuzz target")
    assert fuzz.EXECUTIONS[0] - before >= 300


def test_the_fuzz_target_reports_a_broken_invariant() -> None:
    """The target is only useful if it can fail: a block overwritten behind the allocator's
    back (the program: alloc, then the model's check) must raise AssertionError."""
    allocator = fuzz.pyslab.SlabAllocator()
    model = fuzz._Model(allocator)
    try:
        address = allocator.alloc(32)
        model.add(address, 32)
        model.check()
        fuzz.ctypes.memset(address, 0, 1)
        with pytest.raises(AssertionError, match="lost its pattern"):
            model.check()
    finally:
        allocator.close()


@pytest.mark.long
@pytest.mark.timeout(3600)
def test_the_fuzz_target_holds_under_hypothesis_long() -> None:
    fuzz._hypothesis(20_000)


def _atheris() -> bool:
    return importlib.util.find_spec("atheris") is not None


@pytest.mark.timeout(300)
@pytest.mark.skipif(not _atheris(), reason="atheris is not installed (pip install -e '.[fuzz]')")
@pytest.mark.parametrize("runs", [pytest.param(600, id="short"),
                                  pytest.param(300_000, id="long", marks=pytest.mark.long)])
def test_the_fuzz_target_holds_under_atheris(runs: int, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(TARGET), f"-runs={runs}", "-max_len=1024", "-seed=1",
         f"-artifact_prefix={tmp_path}/"],
        cwd=ROOT, capture_output=True, text=True, timeout=280 if runs < 10_000 else 3500,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    executed = re.search(r"Done (\d+) runs", output)
    assert executed is not None, output[-2000:]
    print(f"atheris: {executed.group(1)} executions")
    assert int(executed.group(1)) == runs
