"""The import graph of src/progeo: no cycle, and no module importing another module's private names.

Every ``import`` counts, at module level or inside a function (a lazy import that closes a
cycle is a misplaced helper all the same). Read with ``ast``, nothing is imported.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    where: str  # file:line


def _modules(src: Path, package: str) -> dict[str, Path]:
    mods = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def import_graph(src: Path, package: str) -> tuple[list[Edge], list[str]]:
    """Edges between the modules of ``package`` under ``src``, and the private-name imports found."""
    mods = _modules(src, package)
    edges, private = [], []
    for module, path in mods.items():
        is_package = path.name == "__init__.py"
        where = lambda node: f"{path.relative_to(src)}:{node.lineno}"  # noqa: E731
        aliases: dict[str, str] = {}  # local name -> progeo module it is bound to
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in mods:
                        edges.append(Edge(module, a.name, where(node)))
                        if a.asname:
                            aliases[a.asname] = a.name
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(node, module, is_package)
                if target not in mods:
                    continue
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    if sub in mods:  # `from pkg import submodule`
                        edges.append(Edge(module, sub, where(node)))
                        aliases[a.asname or a.name] = sub
                    else:
                        edges.append(Edge(module, target, where(node)))
                        if _private(a.name):
                            private.append(f"{where(node)}: imports {a.name} from {target}")
        for node in ast.walk(tree):  # `module._private` through a bound module name
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                    and _private(node.attr) and aliases[node.value.id] != module:
                private.append(f"{where(node)}: uses {aliases[node.value.id]}.{node.attr}")
    return [e for e in edges if e.source != e.target], private


def find_cycles(edges: list[Edge]) -> list[list[Edge]]:
    """One cycle (as its edges) through each strongly connected group of modules."""
    graph: dict[str, list[Edge]] = {}
    for e in edges:
        graph.setdefault(e.source, []).append(e)
        graph.setdefault(e.target, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for e in graph[v]:
            if e.target not in index:
                visit(e.target)
                low[v] = min(low[v], low[e.target])
            elif e.target in stack:
                low[v] = min(low[v], index[e.target])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_shortest_cycle(graph, group) for group in groups]


def _shortest_cycle(graph: dict[str, list[Edge]], group: set[str]) -> list[Edge]:
    """A shortest cycle from the group's first module back to it (breadth first, inside the group)."""
    start = min(group)
    way: dict[str, list[Edge]] = {start: []}
    frontier = [start]
    while True:
        nxt = []
        for v in frontier:
            for e in sorted(graph[v], key=lambda e: e.target):
                if e.target == start:
                    return way[v] + [e]
                if e.target in group and e.target not in way:
                    way[e.target] = way[v] + [e]
                    nxt.append(e.target)
        frontier = nxt


def describe(cycle: list[Edge]) -> str:
    return " -> ".join([cycle[0].source] + [f"{e.target} ({e.where})" for e in cycle])


def test_progeo_has_no_import_cycle():
    edges, _ = import_graph(SRC, "progeo")
    assert len(edges) > 100  # the graph was read
    cycles = find_cycles(edges)
    assert not cycles, "import cycles in src/progeo (move the helper that closes each one):\n" + "\n".join(
        describe(c) for c in cycles)


def test_no_module_imports_private_names_of_another():
    _, private = import_graph(SRC, "progeo")
    assert not private, "private names used across modules (make them public or move them):\n" + "\n".join(private)


def test_checker_names_a_lazy_cycle_and_private_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import _helper\n    return _helper\n")
    (pkg / "c.py").write_text("import pkg.a as a\n_helper = 1\nx = a._y\n")
    (pkg / "d.py").write_text("from pkg import c\n")  # into the cycle, not on it
    edges, private = import_graph(tmp_path, "pkg")
    cycles = find_cycles(edges)
    assert [describe(c) for c in cycles] == [
        "pkg.a -> pkg.sub.b (pkg/a.py:1) -> pkg.c (pkg/sub/b.py:2) -> pkg.a (pkg/c.py:1)"]
    assert sorted(private) == ["pkg/c.py:3: uses pkg.a._y", "pkg/sub/b.py:2: imports _helper from pkg.c"]
