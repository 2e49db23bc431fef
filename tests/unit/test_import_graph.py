"""The package's import graph: no cycles, and arrows that point one way (DESIGN's parts).

Every import counts, at module level or inside a function (an import inside a
function that breaks a cycle still is one); only ``if TYPE_CHECKING:`` blocks
do not, as they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import dask_kotta

ROOT = Path(dask_kotta.__file__).parent
PACKAGE = "dask_kotta"


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path) -> set[str]:
    """The package's modules ``name`` imports (a package's own ``__init__`` only when named)."""
    is_pkg = path.name == "__init__.py"
    here = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str) -> None:
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target.startswith(PACKAGE + ".") and target != name:
            found.add(target)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_the_package_has_no_import_cycle():
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _reaches(src_prefix: str, dst_prefix: str) -> list[tuple[str, str]]:
    return sorted(
        (a, b)
        for a, targets in GRAPH.items()
        if a.startswith(src_prefix)
        for b in targets
        if b.startswith(dst_prefix)
    )


def test_the_client_and_the_dask_scheduler_never_import_the_server_or_the_runner():
    for src in ("dask_kotta.client", "dask_kotta.dask"):
        for dst in ("dask_kotta.server", "dask_kotta.runner"):
            assert _reaches(src, dst) == []


def test_the_runner_never_imports_the_client_or_the_server():
    assert _reaches("dask_kotta.runner", "dask_kotta.client") == []
    assert _reaches("dask_kotta.runner", "dask_kotta.server") == []


def test_the_store_never_imports_the_server_the_client_or_the_runner():
    for dst in ("dask_kotta.server", "dask_kotta.client", "dask_kotta.runner"):
        assert _reaches("dask_kotta.store", dst) == []


def test_the_graph_sees_imports_inside_functions():
    # runner/isolation.py imports .envs inside a function (a lazy, heavier import).
    assert "dask_kotta.runner.envs" in GRAPH["dask_kotta.runner.isolation"]
