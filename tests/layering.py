"""The module graph of pyslab, read from the imports of its source (never by importing it).

``python -m tests.layering`` prints ``docs/layers.md``: the layers, the imports between them and
every module with what it imports. ``tests/test_layers.py`` checks the rules on the same graph
and that the document is up to date.

An import inside ``if TYPE_CHECKING:`` is a *typing* edge: it names a type for the checker and
runs nothing. Every other import, at module level or inside a function, is a *run-time* edge;
importing ``pyslab.core.slab`` also runs ``pyslab/core/__init__.py``, so a run-time edge to a
module implies one to each package above it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
PACKAGES: Final = ("pyslab", "pyslab_plugins")

LAYERS: Final = ("errors", "policy", "core", "interop", "objects", "lab", "observe", "cli")
"""pyslab's layers, lowest first. ``policy`` sits below ``core`` at run time (the allocator
binds policies) and names the core's types for the checker only."""

ALLOWED: Final[dict[str, frozenset[str]]] = {
    "errors": frozenset(),
    "policy": frozenset({"errors"}),
    "core": frozenset({"errors", "policy"}),
    "interop": frozenset({"errors", "policy", "core"}),
    "objects": frozenset({"errors", "policy", "core", "interop"}),
    "lab": frozenset({"errors", "policy", "core"}),
    "observe": frozenset({"errors", "policy", "core", "lab"}),
    "cli": frozenset({"errors", "policy", "core", "interop", "objects", "lab", "observe"}),
}
"""The layers each layer may import at run time (the package root ``pyslab`` re-exports and
is imported by none of them)."""

TYPING_ONLY: Final[dict[str, frozenset[str]]] = {"policy": frozenset({"core"})}
"""Imports allowed for the type checker only, beyond :data:`ALLOWED`."""


@dataclass
class Module:
    """One module of the source tree and its imports of pyslab modules."""

    name: str
    path: Path
    runtime: set[str] = field(default_factory=set)
    typing: set[str] = field(default_factory=set)


def layer_of(module: str) -> str | None:
    """The layer of a ``pyslab`` module (``pyslab.core.slab`` -> ``core``), or None for the
    package root and for modules outside ``pyslab``."""
    parts = module.split(".")
    if parts[0] != "pyslab" or len(parts) < 2 or parts[1] in ("__init__", "__main__"):
        return None
    return parts[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(module: Module, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = module.name.split(".")
    if module.path.name != "__init__.py":
        package.pop()
    package = package[: len(package) - (node.level - 1)]
    return ".".join([*package, node.module] if node.module else package)


def _imports(module: Module, known: set[str]) -> None:
    tree = ast.parse(module.path.read_text(), str(module.path))
    typing_nodes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            typing_nodes.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            # ``from pyslab.core import slab`` imports a module; ``import X`` a name.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        edges = module.typing if id(node) in typing_nodes else module.runtime
        for target in targets:
            if target.split(".")[0] in PACKAGES and target != module.name:
                edges.add(target)


def graph() -> dict[str, Module]:
    """Every module of ``pyslab`` and ``pyslab_plugins`` with its imports, by name."""
    paths = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))
    modules = {_module_name(p): Module(_module_name(p), p) for p in paths}
    known = set(modules)
    for module in modules.values():
        _imports(module, known)
        # A run-time import of a.b.c runs a/__init__ and a/b/__init__ as well.
        for target in list(module.runtime):
            parts = target.split(".")
            module.runtime.update(".".join(parts[:i]) for i in range(1, len(parts)))
        module.runtime.discard(module.name)
    return modules


def cycle(modules: dict[str, Module]) -> list[str] | None:
    """A run-time import cycle, as the modules along it, or None when the graph has none.

    A package's ``__init__`` importing its own submodules is not a cycle (Python runs the
    ``__init__`` first, then the submodule sees the partly built package by design); every
    other edge counts.
    """
    def edges(name: str) -> list[str]:
        return sorted(t for t in modules[name].runtime
                      if t in modules and not name.startswith(t + "."))

    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for target in edges(name):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[name] = 2
        return None

    for name in sorted(modules):
        if name not in state:
            found = visit(name)
            if found:
                return found
    return None


def layer_edges(modules: dict[str, Module]) -> dict[tuple[str, str], str]:
    """``(from layer, to layer) -> "run time" or "typing"`` over every import between layers."""
    found: dict[tuple[str, str], str] = {}
    for module in modules.values():
        source = layer_of(module.name) or (
            "plugins" if module.name.startswith("pyslab_plugins") else None
        )
        if source is None:
            continue
        for kind, targets in (("typing", module.typing), ("run time", module.runtime)):
            for target in targets:
                target_layer = layer_of(target)
                if target_layer not in (None, source) and (
                    found.get((source, target_layer)) != "run time"
                ):
                    found[(source, target_layer)] = kind
    return found


def document() -> str:
    """The text of ``docs/layers.md``."""
    modules = graph()
    lines = [
        "# pyslab's layers and module graph",
        "",
        "Read from the imports of the source by `tests/layering.py` (regenerate with",
        "`python -m tests.layering > docs/layers.md`); `tests/test_layers.py` fails when a",
        "module imports above its layer, when the run-time graph has a cycle, or when this file",
        "is out of date.",
        "",
        "## Layers, lowest first, and what each imports",
        "",
        "| layer | imports at run time | names for the type checker only |",
        "|---|---|---|",
    ]
    edges = layer_edges(modules)
    for layer in (*LAYERS, "plugins"):
        runtime = sorted(t for (s, t), k in edges.items() if s == layer and k == "run time")
        typing = sorted(t for (s, t), k in edges.items() if s == layer and k == "typing")
        lines.append(f"| {layer} | {', '.join(runtime) or '-'} | {', '.join(typing) or '-'} |")
    lines += [
        "",
        "`plugins` is `pyslab_plugins`, the built-in policies and workloads, a client of the",
        "layers' public interfaces like any third-party plugin package.",
        "",
        "## Modules and their run-time imports (typing-only imports in brackets)",
        "",
        "```",
    ]
    for name in sorted(modules):
        module = modules[name]
        inside = [t for t in sorted(module.runtime) if t in modules]
        shown = [t for t in inside if not any(o.startswith(t + ".") for o in inside)]
        typing = sorted(module.typing - module.runtime)
        tail = f" [{', '.join(typing)}]" if typing else ""
        lines.append(f"{name} -> {', '.join(shown) or '-'}{tail}")
    lines += ["```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(document(), end="")
