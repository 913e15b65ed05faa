"""The package's modules import each other without a cycle, counting imports inside functions too (an import
deferred into a function hides a cycle; it does not remove it). Read from the source (AST), nothing is imported."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "dvdq_compile"


def _modules() -> dict[str, Path]:
    mods = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def _targets(mod: str, path: Path, node, mods) -> list[str]:
    """The package modules an import statement in ``mod`` loads (``from .x import y``: ``x.y`` if a module)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        if node.level:
            base = base[: len(base) - (node.level - 1)]
            src = ".".join(base + ([node.module] if node.module else []))
        else:
            src = node.module or ""
        names = [f"{src}.{a.name}" if f"{src}.{a.name}" in mods else src for a in node.names]
    out = []
    for n in names:
        while n and n not in mods:
            n = n.rpartition(".")[0]
        if n and n != mod:
            out.append(n)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {m: set() for m in mods}
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[m].update(t for t in _targets(m, p, node, mods) if t.startswith("dvdq_compile"))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 50 and sum(map(len, graph.values())) > 150  # the walk sees the package
    assert cycles(graph) == []


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_leaves_import_nothing_above_them():
    """The numerics, the artifacts and the state are leaves: no pass, runtime, recipe, kernel or backend above."""
    graph = import_graph()
    leaves = ("dvdq_compile.quant", "dvdq_compile.artifacts", "dvdq_compile.state", "dvdq_compile.identity",
              "dvdq_compile.errors")
    allowed = leaves + ("dvdq_compile.metrics",)
    for m, deps in graph.items():
        if m.startswith(leaves):
            bad = sorted(d for d in deps if not d.startswith(allowed))
            assert not bad, (m, bad)
