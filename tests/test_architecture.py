"""The layout of docs/architecture.md, checked by walking every import of every module of pygml (``ast``,
imports inside functions included): no cycle, and no library module importing the application."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pygml"

#: what each library package may import inside pygml (docs/architecture.md); the application may import anything
ALLOWED = {
    "pygml": {"pygml"},
    "pygml.checks": set(),
    "pygml.atomic": set(),
    "pygml.neighbors": {"pygml.checks"},
    "pygml.graph": {"pygml.checks", "pygml.neighbors"},
    "pygml.nn": {"pygml.nn", "pygml.checks", "pygml.graph", "pygml.neighbors"},
    "pygml.losses": {"pygml.losses", "pygml.checks", "pygml.graph", "pygml.neighbors"},
    "pygml.models": {"pygml.models", "pygml.checks", "pygml.atomic"},
    "pygml.methods": {"pygml.methods", "pygml.nn", "pygml.graph", "pygml.losses", "pygml.models", "pygml.neighbors",
                      "pygml.checks"},
    "pygml.data": {"pygml.data", "pygml.checks", "pygml.atomic"},
    "pygml.evaluation": {"pygml.evaluation", "pygml.checks"},
    "pygml.inference": {"pygml.checks"},
    "pygml.search": {"pygml.evaluation", "pygml.atomic", "pygml.checks"},
    "pygml.export": {"pygml.atomic", "pygml.checks"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The pygml modules ``path`` imports, anywhere in the file (functions included), resolved to modules."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import submodule`
    return {m for m in found if m == "pygml" or m.startswith("pygml.")}


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        # an import of pkg.attr that is not a module stands for the module pkg
        edges[name] = {m if m in modules else m.rpartition(".")[0] for m in imports_of(path)} - {name}
        edges[name] = {m for m in edges[name] if m in modules}
    return edges


def test_the_walk_sees_imports_inside_functions():
    edges = graph()
    assert "pygml.app.config" in edges["pygml.app.builders"]
    assert "pygml.models.vit" in edges["pygml.app.builtins"]  # imported inside a function there


def test_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def _package(module: str) -> str:
    """The library package a module belongs to (the key of ALLOWED), or ``pygml.app``."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


@pytest.mark.parametrize("module", sorted(m for m in graph() if not m.startswith("pygml.app")))
def test_library_modules_import_only_what_the_layout_allows(module):
    allowed = ALLOWED[_package(module)]
    for target in graph()[module]:
        assert not target.startswith("pygml.app"), f"library module {module} imports the application ({target})"
        assert _package(target) in allowed or target == "pygml", \
            f"{module} imports {target}; {_package(module)} may import only {sorted(allowed)}"


def test_library_imports_without_the_application_and_without_repository_scripts(tmp_path):
    """A fresh interpreter importing every library package never loads pygml.app, and the package holds no
    repository scripts (results, manifest maker)."""
    code = ("import sys, pygml, pygml.graph, pygml.nn, pygml.losses, pygml.models, pygml.methods, pygml.data, "
            "pygml.evaluation, pygml.inference\n"
            "print(sorted(m for m in sys.modules if m.startswith('pygml.app')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(ROOT), "PATH": ""}, check=True).stdout.strip()
    assert out == "[]"
    assert not (PACKAGE / "results.py").exists() and not (PACKAGE / "data" / "make_glyph_manifest.py").exists()
