"""The package's shape: no import cycle, no import inside a function, every registry wired into the config
validation, and the tests mirroring the package."""

import ast
import importlib
import pkgutil
from pathlib import Path

import feclip
from feclip import config
from feclip.registry import Registry

PACKAGE = Path(feclip.__file__).parent
# registries whose key is not a plain config path: list elements and internal choices, validated where used
NOT_CONFIG_KEYS = {"bank metric", "eval.datasets.N.name", "model.taps", "precision policy"}


def _modules() -> dict[str, Path]:
    return {
        info.name: Path(importlib.util.find_spec(info.name).origin)
        for info in pkgutil.walk_packages([str(PACKAGE)], prefix="feclip.")
    }


def _imported(module: str, node: ast.AST, known: set[str]) -> set[str]:
    """feclip modules named by an import node (`from feclip.a import b` -> feclip.a.b if a module, else a)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in known}
    if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("feclip"):
        return set()
    return {
        f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names
    }


def _imports() -> tuple[dict[str, set[str]], list[str]]:
    """(module -> feclip modules it imports, 'module:line' of imports inside functions)."""
    modules = _modules()
    graph, nested = {}, []
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        graph[name] = set()
        for node in ast.walk(tree):
            graph[name] |= _imported(name, node, set(modules))
        for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            nested += [f"{name}:{n.lineno}" for n in ast.walk(function) if _imported(name, n, set(modules))]
    return graph, nested


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node: str) -> list[str] | None:
        state[node], _ = "open", stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*stack[stack.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        state[node], _ = "done", stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_and_no_import_inside_a_function():
    graph, nested = _imports()
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    assert nested == []


def test_config_choices_are_the_registries():
    registries = {}
    for name in _modules():
        for value in vars(importlib.import_module(name)).values():
            if isinstance(value, Registry):
                registries[id(value)] = value
    wired = {id(r) for r in config.CHOICES.values()}
    missing = [r.key for i, r in registries.items() if i not in wired and r.key not in NOT_CONFIG_KEYS]
    assert missing == [], f"registries not validated by feclip.config: {missing}"
    assert all(key == registry.key for key, registry in config.CHOICES.items())


def test_tests_mirror_the_packages():
    tests = Path(__file__).parent
    for package in ("condition", "data", "evaluation", "jobs", "methods", "model", "search", "tracking"):
        assert (tests / package).is_dir() and any((tests / package).glob("test_*.py")), package
