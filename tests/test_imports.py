"""ladle's modules import one way: no circles, and soup/ (the core) never reaches up into evaluation/ or studies/.

Every import counts, at module level or inside a function (a lazy import still couples the two modules), relative
or absolute; `from ladle.x import y` is an edge to `ladle.x.y` when y is a module, else to `ladle.x`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ladle

ROOT = Path(ladle.__file__).parent

# None tolerated: a circle or an edge from soup/ up into evaluation/ or studies/ fails the test, naming it.
KNOWN_CIRCLES: list[set[str]] = []
KNOWN_SOUP_EDGES: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _absolute(node: ast.ImportFrom, name: str, is_package: bool) -> str:
    """The module a `from … import` names, relative levels resolved against the importing module."""
    if node.level == 0:
        return node.module or ""
    base = name.split(".") if is_package else name.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The ladle modules `name` imports anywhere in its file (ladle.* only; the package itself left out)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, name, path.name == "__init__.py")
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import ladle.a.b as c` of a name inside a module
                target = target.rpartition(".")[0]
            if target.startswith("ladle.") and target != name:
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module: every circle lies inside one."""
    reach = {m: _reachable(graph, m) for m in graph}
    found: list[set[str]] = []
    for m in sorted(graph):
        component = {n for n in reach[m] if m in reach[n]}
        if m in component and component not in found:
            found.append(component)
    return found


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph.get(start, ()))
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, ()))
    return seen


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first repeated at the end), or None; depth-first, iterative."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_the_graph_sees_function_level_relative_and_module_imports(tmp_path):
    pkg = tmp_path / "ladle"
    (pkg / "sub").mkdir(parents=True)
    for f in ("__init__.py", "a.py", "sub/__init__.py", "sub/b.py", "sub/c.py"):
        (pkg / f).write_text("")
    code = ("from . import c\nfrom ..a import thing\ndef f():\n    from ladle.sub import c\n"
            "    import ladle.a as x\n")
    known = {"ladle", "ladle.a", "ladle.sub", "ladle.sub.b", "ladle.sub.c"}
    assert imports_of("ladle.sub.b", _write(pkg / "sub" / "b.py", code), known) == {"ladle.sub.c", "ladle.a"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert circles({"a": {"b"}, "b": {"a", "c"}, "c": set()}) == [{"a", "b"}]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_no_import_circles():
    graph = import_graph()
    new = [c for c in circles(graph) if c not in KNOWN_CIRCLES]
    shown = [" -> ".join(find_cycle({m: graph[m] & c for m in c})) for c in new]
    assert not new, "import circle(s): " + "; ".join(shown)


def imports_between(graph: dict[str, set[str]], low: str, high: tuple[str, ...]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in graph.items() if a == low or a.startswith(low + ".")
                  for b in targets if b.startswith(high))


def test_soup_does_not_import_evaluation_or_studies():
    graph = import_graph()
    bad = [e for e in imports_between(graph, "ladle.soup", ("ladle.evaluation", "ladle.studies"))
           if tuple(e.split(" -> ")) not in KNOWN_SOUP_EDGES]
    assert not bad, "soup/ reaches up: " + "; ".join(bad)


def test_analysis_does_not_import_studies():
    """Studies build on analysis (the branch-point study reports a grid's statistics), never the reverse."""
    bad = imports_between(import_graph(), "ladle.analysis", ("ladle.studies",))
    assert not bad, "analysis/ reaches up: " + "; ".join(bad)
