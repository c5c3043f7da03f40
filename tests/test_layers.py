"""The layers: each imports only those below it, the run-time graph has no cycle, upper layers
use only the public interface of the core and the policy layer, ``import pyslab`` stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.layering import (
    ALLOWED,
    ROOT,
    TYPING_ONLY,
    Module,
    cycle,
    document,
    graph,
    layer_of,
)

MODULES = graph()


def _violations(module: Module) -> list[str]:
    layer = layer_of(module.name)
    if layer is None:
        return []
    allowed = ALLOWED[layer] | {layer}
    found = [
        f"{module.name} imports {target}" for target in sorted(module.runtime)
        if (layer_of(target) or layer) not in allowed
    ]
    found += [
        f"{module.name} names {target} for the type checker" for target in sorted(module.typing)
        if (layer_of(target) or layer) not in allowed | TYPING_ONLY.get(layer, frozenset())
    ]
    return found


@pytest.mark.parametrize("layer", ["core", "policy"])
def test_core_and_policy_import_nothing_above_them(layer: str) -> None:
    modules = [m for m in MODULES.values() if layer_of(m.name) == layer]
    assert modules, f"no module in pyslab.{layer}"
    assert [v for m in modules for v in _violations(m)] == []


def test_every_layer_imports_only_the_layers_below_it() -> None:
    assert [v for m in MODULES.values() for v in _violations(m)] == []


def test_the_run_time_import_graph_has_no_cycle() -> None:
    assert cycle(MODULES) is None


def test_the_checker_finds_a_cycle_and_an_import_above_the_layer() -> None:
    # The checks above can fail: a made-up core module importing observe breaks both rules.
    fake = dict(MODULES)
    fake["pyslab.core.fake"] = Module(
        "pyslab.core.fake", ROOT / "pyslab/core/fake.py", runtime={"pyslab.observe"}
    )
    fake["pyslab.observe"] = Module(
        "pyslab.observe", MODULES["pyslab.observe"].path,
        runtime=MODULES["pyslab.observe"].runtime | {"pyslab.core.fake"},
    )
    assert _violations(fake["pyslab.core.fake"]) == [
        "pyslab.core.fake imports pyslab.observe"
    ]
    assert cycle(fake) is not None


def _private_module(target: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__")
               for part in target.split(".")[1:])


def test_other_layers_import_no_private_module_of_core_or_policy() -> None:
    found = []
    for module in MODULES.values():
        own = layer_of(module.name)
        for target in module.runtime | module.typing:
            if layer_of(target) in ("core", "policy") and layer_of(target) != own and (
                _private_module(target)
            ):
                found.append(f"{module.name} imports {target}")
    assert found == []


_ALLOCATOR_NAMES = frozenset({"heap", "allocator", "alloc", "owner", "inner", "source"})
"""What upper layers and plugins call the allocator, its block operations and its page source."""


def _private_attributes(module: Module) -> list[str]:
    """``x._name`` where ``x`` is an allocator (or its operations, or its page source) by name:
    a private attribute of the core read from another layer. A module's own objects keep
    theirs: privacy is per module."""
    found = []
    for node in ast.walk(ast.parse(module.path.read_text())):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            continue
        holder = ast.unparse(node.value).rsplit(".", 1)[-1].lstrip("_")
        if holder in _ALLOCATOR_NAMES:
            found.append(f"{module.name}:{node.lineno} .{node.attr} of {ast.unparse(node.value)}")
    return found


def test_layers_above_the_core_touch_no_private_attribute_of_another_object() -> None:
    upper = [m for m in MODULES.values()
             if layer_of(m.name) in ("interop", "objects", "observe", "lab")
             or m.name.startswith("pyslab_plugins")]
    found = [f for m in upper for f in _private_attributes(m)]
    assert found == []


def test_the_checker_finds_a_private_attribute_of_the_allocator(tmp_path: Path) -> None:
    source = tmp_path / "client.py"
    source.write_text("def f(heap, cache):\n    with heap._lock:\n        return cache._live\n")
    assert _private_attributes(Module("client", source)) == ["client:2 ._lock of heap"]


def test_docs_layers_is_up_to_date() -> None:
    written = (ROOT / "docs" / "layers.md").read_text()
    assert written == document(), "regenerate: python -m tests.layering > docs/layers.md"


def test_import_pyslab_loads_only_what_its_names_need() -> None:
    code = (
        "import sys, pyslab\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pyslab', 'pyslab_plugins', 'matplotlib', 'rich', 'memray', 'PIL'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    layers = {layer_of(name) for name in loaded} - {None}
    assert layers == {"errors", "policy", "core", "interop", "objects"}, loaded
    assert not [m for m in loaded if not m.startswith("pyslab.") and m != "pyslab"], loaded


def test_the_package_exports_what_most_programs_need_and_no_more() -> None:
    import pyslab

    assert 20 <= len(pyslab.__all__) <= 26
    assert all(hasattr(pyslab, name) for name in pyslab.__all__)


def test_python_m_pyslab_runs_the_command_line() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "pyslab", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: pyslab")
