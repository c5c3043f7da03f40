"""Every example runs, as a user runs it: its own process, in an empty folder, exit status 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 8


@pytest.mark.timeout(120)
@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_the_example_runs(example: Path, tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(example)], cwd=tmp_path, capture_output=True, text=True, timeout=110
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip(), "an example says what it did"
    assert "Traceback" not in run.stderr
