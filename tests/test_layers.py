"""Layer checks on the source tree: no import circle at module level, no production import of a test helper, and the
reference format and the student do not import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Installed package name -> its folder in the tree (pyproject's package-dir).
PACKAGES = {"encoder_shrink": "encoder_shrink", "encoder_shrink.exporters": "exporters",
            "encoder_shrink.recipes": "recipes", "encoder_shrink.benchmarks": "benchmarks"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def _imports(path: Path, module_level: bool) -> set[str]:
    """Dotted names `path` imports: at module level only (not under `if TYPE_CHECKING:`), or anywhere."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return names


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph`, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_module_level_imports_have_no_circle():
    modules = _modules()
    graph = {name: {t for t in _imports(path, module_level=True) if t in modules and t != name}
             for name, path in modules.items()}
    assert _cycle(graph) is None, f"import circle at module level: {' -> '.join(_cycle(graph))}"


def test_the_cycle_finder_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("name", sorted(_modules()))
def test_production_code_imports_no_test_helper(name):
    imported = _imports(_modules()[name], module_level=False)
    helpers = sorted(i for i in imported if i.split(".")[0] == "tests" or "testing" in i.split(".")[1:2]
                     or i.endswith(".testing") or i == "encoder_shrink.testing")
    assert not helpers, f"{name} imports the test helper(s) {helpers}"


def test_reference_format_and_student_do_not_import_each_other():
    modules = _modules()
    reference = _imports(modules["encoder_shrink.reference"], module_level=False)
    assert not any(i.startswith("encoder_shrink.student") for i in reference)
    assert not any(i.startswith("encoder_shrink.convert") for i in _imports(modules["encoder_shrink.student"], False))
