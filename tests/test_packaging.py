"""The distribution as users get it: the sdist carries what the README runs, the wheel carries
every layer with its ``py.typed``, user code type-checks against the wheel, and the editable
install of a checkout is a plain path entry that type checkers follow."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("core", "policy", "interop", "objects", "observe", "lab", "cli")

USER_CODE = '''\
import ctypes

import pyslab
from pyslab.core import SizeClass
from pyslab.observe import heap_map

def first_class(heap: pyslab.SlabAllocator) -> SizeClass:
    return heap.size_classes[0]

with pyslab.SlabAllocator(policy="dict-lookup") as heap:
    buf: ctypes.Array[ctypes.c_char] = pyslab.buffers(heap).create_string_buffer(b"x", 8)
    print(first_class(heap).slot_size, heap_map(heap).used, buf.value)
'''


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The sdist and the wheel, built offline from a copy of the tracked files."""
    work = tmp_path_factory.mktemp("dist")
    tree = work / "tree"
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
        capture_output=True, text=True, check=True,
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tree / name)
    out = work / "out"
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(tree)],
        capture_output=True, text=True, check=True, timeout=240,
    )
    yield out


def _sdist_names(dist: Path) -> set[str]:
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        return {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}


def _wheel_names(dist: Path) -> set[str]:
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


@pytest.mark.timeout(300)
def test_the_sdist_carries_the_examples_the_readme_runs_and_the_license(dist: Path) -> None:
    names = _sdist_names(dist)
    examples = {f"examples/{p.name}" for p in (ROOT / "examples").glob("*.py")}
    assert examples and examples <= names
    assert {"LICENSE", "README.md", "pyproject.toml", "docs/layers.md"} <= names
    assert "tests/test_readme.py" in names


@pytest.mark.timeout(300)
def test_the_wheel_carries_every_layer_typed_and_the_license(dist: Path) -> None:
    names = _wheel_names(dist)
    assert {"pyslab/py.typed", "pyslab_plugins/py.typed", "pyslab/__main__.py"} <= names
    assert all(f"pyslab/{layer}/__init__.py" in names for layer in LAYERS)
    assert not any(name.startswith(("tests/", "examples/", "benchmarks/")) for name in names)
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(metadata).decode()
        assert "License-Expression: MIT" in text
        assert any(n.endswith("licenses/LICENSE") for n in names)


@pytest.mark.timeout(300)
def test_user_code_type_checks_against_the_wheel(dist: Path, tmp_path: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    program = tmp_path / "user" / "program.py"
    program.parent.mkdir()
    program.write_text(USER_CODE)
    # The extracted wheel stands first on the search path: mypy resolves pyslab there.
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--config-file", "",
         "--python-version", "3.10", str(program)],
        cwd=program.parent, capture_output=True, text=True, timeout=280,
        env={"MYPYPATH": str(site), "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    ran = subprocess.run(
        [sys.executable, str(program)], cwd=program.parent, capture_output=True, text=True,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
    )
    assert ran.returncode == 0, ran.stderr


def test_the_editable_install_is_a_plain_path_entry() -> None:
    site = Path(sysconfig.get_paths()["purelib"])
    pth = [p for p in site.glob("*pyslab_alloc*.pth")]
    if not pth:
        pytest.skip("pyslab is not installed editable in this environment")
    lines = [line for p in pth for line in p.read_text().splitlines() if line.strip()]
    assert lines == [str(ROOT)], "an editable install names the checkout, with no import hook"
    assert not list(site.glob("__editable__*finder*.py"))
