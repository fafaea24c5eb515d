"""The package's imports flow one way (cli -> sync, reconcile -> api, storage, ... -> settings): no import
cycle between modules or between packages, storage imports none of the layers above it, and only storage
queries the `integrations` table. Read from the source (every import, including those inside functions
and under TYPE_CHECKING), so a lazy import cannot hide a cycle."""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "worker"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(module: str) -> Iterator[tuple[str, list[str]]]:
    """(imported module, names imported from it) for every import statement of `module` in the package."""
    for target, names in _parsed_imports(module):
        yield target, list(names)


@functools.cache  # every test reads the same sources: parse each once per session
def _parsed_imports(module: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((target, tuple(names)) for target, names in _read_imports(module))


def _read_imports(module: str) -> Iterator[tuple[str, list[str]]]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            yield base, [alias.name for alias in node.names]


def module_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (`from pkg import sub` is an edge to the submodule)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for target, names in _imports(module):
            if names:
                for name in names:
                    sub = f"{target}.{name}"
                    graph[module].add(sub if sub in MODULES else target)
            else:
                graph[module].add(target)
        graph[module] = {t for t in graph[module] if t in MODULES and t != module}
    return graph


def unit(module: str) -> str:
    """The top-level unit a module belongs to: `worker.sync.engine` -> `worker.sync`."""
    return ".".join(module.split(".")[:2])


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {unit(m): set() for m in MODULES}
    for module, targets in module_graph().items():
        graph[unit(module)] |= {unit(t) for t in targets} - {unit(module)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


class TestImports:
    def test_no_cycle_between_modules(self) -> None:
        """No module imports one that (directly or not) imports it back."""
        assert cycles(module_graph()) == []

    def test_no_cycle_between_packages(self) -> None:
        """No package (sync, api, storage, reconcile, ...) or top-level module imports one that imports it back."""
        assert cycles(package_graph()) == []

    def test_the_cycle_finder_finds_cycles(self) -> None:
        """A cycle three deep and a self-contained pair are both reported."""
        assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d"}, "f": set()}) == [
            ["a", "b", "c"], ["d", "e"]]

    @pytest.mark.parametrize(("lower", "forbidden"), [
        ("worker.storage", {"worker.api", "worker.sync", "worker.integrations", "worker.http", "worker.cli",
                            "worker.metrics", "worker.reconcile", "worker.app", "worker.web"}),
        ("worker.sync", {"worker.http", "worker.integrations", "worker.cli", "worker.cli_support", "worker.metrics",
                         "worker.web"}),
        ("worker.reconcile", {"worker.cli", "worker.http", "worker.sync", "worker.web"}),
        ("worker.api", {"worker.storage", "worker.sync", "worker.app", "worker.cli", "worker.web"}),
        ("worker.metrics", {"worker.sync", "worker.http", "worker.cli", "worker.web"}),
        # The dashboard and API sit beside the health server, below the commands (which start them).
        ("worker.web", {"worker.cli", "worker.cli_support", "worker.http"}),
        ("worker.watch", {"worker.web", "worker.http", "worker.cli"}),
        ("worker.sources", {"worker.web", "worker.http", "worker.cli"}),
    ])
    def test_imports_flow_one_way(self, lower: str, forbidden: set[str]) -> None:
        """A lower layer never imports the layers above it."""
        assert package_graph()[lower] & forbidden == set()


def test_only_storage_queries_the_integrations_table() -> None:
    """Every query of `integrations` goes through worker/storage (repo): no other module imports the table."""
    importers = [module for module in MODULES if not module.startswith("worker.storage")
                 for target, names in _imports(module) if target == "worker.storage.tables" and "integrations" in names]
    assert importers == []
