"""The import graph of `coalm` and `engine`, read from the source (every import statement, inside functions too):
no cycle through `coalm` at any depth."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _modules(pkg: str) -> dict[str, Path]:
    out = {}
    for path in (REPO / pkg).rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = {**_modules("coalm"), **_modules("engine")}


def _resolve(name: str) -> str | None:
    """The longest known module that `name` is or lies in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _edges(mod: str, path: Path) -> set[str]:
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = mod.split(".") if is_pkg else mod.split(".")[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names]  # a submodule, or a name inside `base`
        else:
            continue
        for t in targets:
            r = _resolve(t)
            if r and r != mod:
                out.add(r)
    return out


GRAPH = {m: _edges(m, p) for m, p in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each a cycle or a knot of cycles."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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


def test_the_checker_sees_cycles_and_function_level_imports():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert "coalm.eval.bfcl.multi_turn" in GRAPH["coalm.eval.bfcl.task"]  # module level
    assert "engine.tool_formats" in GRAPH["coalm.data.formats"]


def test_no_import_cycle_in_coalm_or_engine():
    coalm = {m: {t for t in e if t.startswith("coalm")} for m, e in GRAPH.items() if m.startswith("coalm")}
    assert _cycles(coalm) == []
    assert [c for c in _cycles(GRAPH) if any(m.startswith("coalm") for m in c)] == []
