"""The package's structure: no import cycles, no arrow back up the layering, long modules say why.

Layers, bottom to top: files -> engine -> data -> pipeline -> {evaluation, distributed} -> {cli, wbia_plugin};
a module may import its own layer and the layers below. ``core`` (the library's face) sits above evaluation; ``_plugin``
and ``serve`` are WBIA's entry points; the package ``__init__`` only installs the WBIA import hook (above them:
it imports nothing at import time, and the plugin once wbia is imported).
Pure logic over the source files (AST), so it runs everywhere.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "wbia_lightglue"
LAYERS = {"files": 0, "engine": 1, "data": 2, "pipeline": 3, "evaluation": 4, "distributed": 4, "core": 5, "cli": 6,
          "wbia_plugin": 6, "_plugin": 7, "serve": 7, "__main__": 7, "_version": 0}
ROOT_LAYER = 8
LONG_MODULE = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: Dict[str, Path] = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str) -> Set[str]:
    """Every wbia_lightglue module ``name`` imports (module level or inside functions)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("wbia_lightglue"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("wbia_lightglue"):
                continue
            for alias in node.names:  # "from . import hesaff" imports a module
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
    found.discard(name)
    return {m for m in found if m in MODULES}


GRAPH = {name: imports_of(name) for name in MODULES}


# the server's main (registers the plugin through the package, then runs wbia.dev): an entry point like serve
ENTRY_POINTS = {"wbia_lightglue.wbia_plugin.launcher": 7}


def layer(name: str) -> int:
    if name in ENTRY_POINTS:
        return ENTRY_POINTS[name]
    parts = name.split(".")
    # the package __init__ is the WBIA import hook: it reaches the plugin's entry points (lazily, when wbia loads)
    return ROOT_LAYER if len(parts) == 1 else LAYERS[parts[1]]


def test_every_module_has_a_layer():
    assert all(len(name.split(".")) == 1 or name.split(".")[1] in LAYERS for name in MODULES), sorted(MODULES)


def test_no_import_cycles():
    cycles: List[List[str]] = []
    state: Dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(node: str, stack: List[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            if nxt in stack and state.get(nxt) == 1 and not stack[0].startswith(nxt + ".") and \
                    not node.startswith(nxt + "."):  # a module importing its own package's __init__ is not a cycle
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif state.get(nxt) is None:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(GRAPH):
        if state.get(name) is None:
            visit(name, [name])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_no_arrow_back_up_the_layering():
    upward = [f"{a} ({layer(a)}) imports {b} ({layer(b)})" for a, targets in GRAPH.items() for b in targets
              if layer(b) > layer(a)]
    assert not upward, "\n".join(sorted(upward))


def test_the_two_front_ends_do_not_import_each_other():
    def part(name: str) -> str:
        return name.split(".")[1] if "." in name else ""

    crossing = [f"{a} imports {b}" for a, targets in GRAPH.items() for b in targets
                if {part(a), part(b)} == {"cli", "wbia_plugin"}]
    assert not crossing, crossing


def test_the_engine_never_imports_wbia():
    offenders = []
    for name, path in MODULES.items():
        if layer(name) in (0, 1, 2, 3, 4, 5) and name.split(".")[1:2] != ["wbia_plugin"]:
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
                offenders += [f"{name}: {m}" for m in modules if m.split(".")[0] in ("wbia", "utool")]
    assert not offenders, offenders


@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_long_module_says_why_at_its_top(name):
    text = MODULES[name].read_text()
    if len(text.splitlines()) <= LONG_MODULE:
        return
    doc = ast.get_docstring(ast.parse(text)) or ""
    assert "lines because" in doc, f"{name} has {len(text.splitlines())} lines and its docstring does not say why"
