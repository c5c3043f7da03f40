"""Every Python block of the README runs and type-checks under ``mypy --strict``, as a user's
program would: each block is a file of its own, run in its own process in an empty folder and
checked against pyslab as installed (so the check also proves that user code type-checks
against an editable install)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_BLOCK = re.compile(r"^( *)```python\n(.*?)^\1```", re.M | re.S)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, code)`` of every fenced ``python`` block, indented ones dedented."""
    return [
        (text.count("\n", 0, match.start()) + 1, textwrap.dedent(match.group(2)))
        for match in _BLOCK.finditer(text)
    ]


BLOCKS = python_blocks((ROOT / "README.md").read_text())


def test_the_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 14


def test_blocks_are_found_with_their_line_numbers() -> None:
    text = "intro\n```python\nx = 1\n```\n\n  ```python\n  y = 2\n  ```\n"
    assert python_blocks(text) == [(2, "x = 1\n"), (6, "y = 2\n")]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"line-{line}" for line, _ in BLOCKS])
def test_the_block_runs(line: int, code: str, tmp_path: Path) -> None:
    script = tmp_path / f"readme_line_{line}.py"
    script.write_text(code)
    run = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=110
    )
    assert run.returncode == 0, f"README.md line {line}:\n{run.stderr}"


@pytest.mark.timeout(300)
def test_every_block_type_checks_under_mypy_strict(tmp_path: Path) -> None:
    files = []
    for line, code in BLOCKS:
        # One package per block: blocks define the same names (alloc, heap) independently.
        folder = tmp_path / f"line_{line}"
        folder.mkdir()
        (folder / f"readme_line_{line}.py").write_text(code)
        files.append(str(folder / f"readme_line_{line}.py"))
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--config-file", "",
         "--python-version", "3.10", *files],
        cwd=tmp_path, capture_output=True, text=True, timeout=280,
    )
    assert run.returncode == 0, run.stdout + run.stderr
