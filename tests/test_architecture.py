"""The package's import graph, read from the source: no module imports itself round a circle,
not even through an import inside a function (that only hides the circle from Python, which
resolves it at call time), and every import goes down the layers ``fedconv/__init__.py`` lists."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fedconv"

# lowest first: a module may import its own layer and the ones before it (a subpackage, or
# top-level modules by name); every module of the package belongs to exactly one
LAYERS = (
    ("core", ("fedconv", "fedconv.config", "fedconv.checks", "fedconv.atomic", "fedconv.optional", "fedconv.records",
              "fedconv.sections")),
    ("data", ("fedconv.data",)),
    ("learning", ("fedconv.learning",)),
    ("algorithms", ("fedconv.algorithms",)),
    ("wire", ("fedconv.wire",)),
    ("insight", ("fedconv.insight",)),
    ("runs", ("fedconv.runs",)),
    ("federation", ("fedconv.federation",)),
    ("validation", ("fedconv.validation",)),
    ("simulation", ("fedconv.simulation",)),
    ("edge", ("fedconv.edge",)),
    ("commands", ("fedconv.simulate", "fedconv.cli", "fedconv.bench", "fedconv.partition_stats", "fedconv.api",
                  "fedconv.inspect_run", "fedconv.flwr_app")),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _skipped(node: ast.If) -> bool:
    """``if TYPE_CHECKING:`` (never runs) and ``if __name__ == "__main__":`` (runs only in the
    copy of the module Python executes as a script, not in the library module)."""
    test = node.test
    if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
        return True
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators))


def imported(tree: ast.AST, modules: set[str], here: str) -> set[str]:
    """The package's modules this tree imports, anywhere in it (functions included)."""
    found: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _skipped(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{here}: a relative import (the package imports absolutely)"
            base = node.module or ""
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in modules else base)
        stack.extend(ast.iter_child_nodes(node))
    return {m for m in found if m in modules and m != here}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {name: imported(ast.parse(path.read_text()), modules, name) for name, path in files.items()}


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of the layer holding ``module`` (a subpackage holds its
    modules; a top-level module is named)."""
    found = [i for i, (_, members) in enumerate(LAYERS) for m in members
             if module == m or (m != "fedconv" and module.startswith(m + "."))]
    assert len(found) == 1, f"{module}: in {len(found)} layers of tests/test_architecture.py::LAYERS; add it to one"
    return found[0]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
            for m in sorted(graph) for t in sorted(graph[m]) if layer_of(t) > layer_of(m)]


def a_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One circle of the graph (empty when it has none): depth-first, grey nodes on the path."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return []

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return []


def test_the_cycle_finder_finds_a_planted_circle_and_passes_a_tree() -> None:
    assert a_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) in (["a", "b", "c", "a"],)
    assert a_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
    source = ast.parse("import fedconv.b\ndef f():\n    from fedconv import c\nif TYPE_CHECKING:\n    import fedconv.d\n"
                       "if __name__ == '__main__':\n    from fedconv.e import main\n")
    assert imported(source, {"fedconv.b", "fedconv.c", "fedconv.d", "fedconv.e"}, "fedconv.a") == {"fedconv.b", "fedconv.c"}


def test_nothing_in_the_package_imports_in_a_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 40 and graph["fedconv.simulate"]  # the whole package was read
    cycle = a_cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_the_layer_check_sees_an_import_that_goes_up() -> None:
    graph = {"fedconv.data.datasets": {"fedconv.config"}, "fedconv.learning.models": {"fedconv.data.datasets"}}
    assert upward_imports(graph) == []
    graph["fedconv.data.datasets"].add("fedconv.federation.rounds")
    assert upward_imports(graph) == [
        "fedconv.data.datasets (data) imports fedconv.federation.rounds (federation)"]


def test_every_import_goes_down_the_layers() -> None:
    graph = import_graph()
    assert upward_imports(graph) == []
    top_level = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert {m.removeprefix("fedconv.") for _, ms in LAYERS for m in ms} - {"fedconv"} >= top_level
