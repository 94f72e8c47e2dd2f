"""The package's shape, checked statically: the layers its folders declare and imports that only
go down them, no import cycles (function-level imports included), modules small enough to
read, commands that only declare and delegate, and no environment reads or global hooks inside
the library.

These parse the source with :mod:`ast`; nothing is imported or run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "waveglow_cli"
ROOT = Path(__file__).resolve().parents[1] / "src" / PACKAGE
MAX_FILE_LINES = 700
MAX_FUNCTION_LINES = 90
MAX_SYNTH_COMMAND_LINES = 60
MAX_CLI_FUNCTION_LINES = 60

#: The layers, top to bottom: each top-level module or folder of the package, by role.  A
#: module may import from its own layer and the layers below it, never from one above (the
#: package's own ``__init__``, the public API's lazy door, stands outside the layers).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("front ends", ("cli", "serve", "training", "__main__")),
    ("jobs", ("jobs", "analysis")),
    ("the vocoder", ("vocoder",)),
    ("synthesis", ("synthesis",)),
    ("engines", ("engines",)),
    ("weights and features", ("checkpoints", "features")),
    ("model and audio", ("model", "audio")),
    ("shared", ("errors", "settings", "progress", "fileio", "_version")),
)


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module and package of the library."""
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def _imported_modules(name: str, tree: ast.Module) -> set[str]:
    """Library modules that ``name`` imports anywhere (top level, in functions, or under
    TYPE_CHECKING): ``from .x import y`` counts ``.x``, and ``.x.y`` when y is a module."""
    is_package = MODULES[name].name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {module for module in found if module in MODULES and module != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
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
                    components.append(sorted(component))
    return components


def _functions() -> list[tuple[str, str, int]]:
    """(module, qualified-ish name, lines) of every function and method."""
    found = []
    for name, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((name, node.name, node.end_lineno - node.lineno + 1))
    return found


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_library_modules() -> None:
    graph = {name: _imported_modules(name, tree) for name, tree in TREES.items()}
    assert sum(map(len, graph.values())) > 20  # the walk sees the imports at all
    assert _cycles(graph) == []


def _layer_of(module: str, layers: tuple[tuple[str, tuple[str, ...]], ...] = LAYERS
              ) -> int | None:
    """The rank of ``module``'s layer (0 at the top); None for the package itself."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    for rank, (_, members) in enumerate(layers):
        if parts[1] in members:
            return rank
    raise AssertionError(f"{module} is in no declared layer: add its folder to LAYERS")


def _upward_imports(graph: dict[str, set[str]],
                    layers: tuple[tuple[str, tuple[str, ...]], ...] = LAYERS
                    ) -> list[tuple[str, str]]:
    """(importer, imported) pairs where a module imports from a layer above its own."""
    found = []
    for name, imported in graph.items():
        rank = _layer_of(name, layers)
        for other in imported:
            other_rank = _layer_of(other, layers)
            if rank is not None and other_rank is not None and other_rank < rank:
                found.append((name, other))
    return sorted(found)


def test_the_layer_check_finds_an_upward_import() -> None:
    layers = (("top", ("a",)), ("bottom", ("b",)))
    assert _upward_imports({"p.a.x": {"p.b.y"}, "p.b.y": set()}, layers) == []
    assert _upward_imports({"p.a.x": set(), "p.b.y": {"p.a.x"}}, layers) == [("p.b.y", "p.a.x")]
    with pytest.raises(AssertionError, match="no declared layer"):
        _upward_imports({"p.c.z": set()}, layers)


def test_every_import_goes_down_the_layers() -> None:
    graph = {name: _imported_modules(name, tree) for name, tree in TREES.items()}
    assert any(_layer_of(name) == len(LAYERS) - 1 for name in graph)  # every layer is seen
    assert _upward_imports(graph) == []


def test_no_source_file_is_over_the_limit() -> None:
    long = {str(path.relative_to(ROOT)): n for path in MODULES.values()
            if (n := len(path.read_text().splitlines())) > MAX_FILE_LINES}
    assert long == {}


def test_no_function_is_over_the_limit() -> None:
    functions = _functions()
    assert len(functions) > 100
    assert [f for f in functions if f[2] > MAX_FUNCTION_LINES] == []


def test_the_synth_command_only_declares_and_delegates() -> None:
    commands = [f for f in _functions() if f[0].startswith(f"{PACKAGE}.cli") and f[1] == "synth"]
    assert commands, "no synth command found under waveglow_cli.cli"
    assert max(lines for _, _, lines in commands) <= MAX_SYNTH_COMMAND_LINES


def test_command_line_functions_are_short() -> None:
    """Every function of the command line (the commands, their helpers) fits on a screen: the
    work is in helpers and the library, the commands declare and delegate."""
    cli = [f for f in _functions()
           if f[0] == f"{PACKAGE}.cli" or f[0].startswith(f"{PACKAGE}.cli.")]
    assert len(cli) > 20, "no functions found under waveglow_cli.cli"
    assert [f for f in cli if f[2] > MAX_CLI_FUNCTION_LINES] == []


def _calls_named(tree: ast.Module, names: set[str]) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in names:
            lines.append(node.lineno)
        elif isinstance(node, ast.Name) and node.id in names:
            lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("name", sorted(MODULES))
def test_the_library_reads_no_environment_and_keeps_no_global_state(name: str) -> None:
    """The environment is read in settings.py, by the command line, and at the one public
    loading boundary (``load_vocoder`` without ``settings``); nothing declares ``global``."""
    tree = TREES[name]
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Global)]
    if name == f"{PACKAGE}.settings" or name.startswith(f"{PACKAGE}.cli"):
        return
    assert _calls_named(tree, {"environ", "getenv", "putenv"}) == []
    reads = _calls_named(tree, {"from_env"})
    if name == f"{PACKAGE}.vocoder":
        assert len(reads) <= 1
    else:
        assert reads == []
