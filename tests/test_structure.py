"""Imports go one way (DESIGN.md): cli -> commands -> plan/sweep -> train/evaluate/restore ->
build -> tasks -> models/data/callbacks -> layers. Read from the source with `ast`, so a
function-level import (which runs only when called) counts as much as a module-level one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "nnlab"

# Top to bottom; a module may import its own layer and those below, never one above. Prefixes
# match whole module names, the longest first; modules not listed (errors, config, runs, ...)
# are helpers any layer may use.
LAYERS = (
    ("nnlab.cli",),
    ("nnlab.commands",),
    ("nnlab.plan", "nnlab.sweep", "nnlab.study"),
    (
        "nnlab.train",
        "nnlab.evaluate",
        "nnlab.restore",
        "nnlab.predict",
        "nnlab.predictions",
        "nnlab.export",
        "nnlab.compare",
    ),
    # reference: the GAN's judge, which build asks for and which trains a classifier of its own
    # plots: the figures a run draws as it ends, from its task and callbacks (torch-free itself)
    # hparams: TensorBoard's HParams experiment for a whole output directory (logger.py's)
    ("nnlab.build", "nnlab.trainer", "nnlab.reference", "nnlab.plots", "nnlab.hparams"),
    ("nnlab.tasks",),
    ("nnlab.models", "nnlab.data", "nnlab.callbacks"),
    ("nnlab.models.layers", "nnlab.scratch"),
)
# What models/ and scratch/ stay free of: plain nn.Modules and math, no Lightning, no configs.
NOT_IN_MODELS = ("pytorch_lightning", "lightning", "omegaconf", "hydra")
TORCH_FREE = ("nnlab.choices", "nnlab.schemas")  # read by every command before torch loads


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _imported_names(module: str) -> list[str]:
    """Every dotted name `module` imports, wherever the import statement sits."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # `from pkg import name` imports the submodule pkg.name when there is one, and
            # otherwise takes `name` from pkg: _owner tells the two apart
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def _owner(name: str) -> str | None:
    """The nnlab module that `name` (a module, or a name inside one) lives in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """nnlab module -> the nnlab modules it imports (itself left out)."""
    graph: dict[str, set[str]] = {}
    for module in MODULES:
        targets = {_owner(n) for n in _imported_names(module) if n.split(".")[0] == "nnlab"}
        graph[module] = {t for t in targets if t and t != module}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a list of modules, first repeated last) per strongly connected component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(graph, component) for component in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A path from the component's first module back to itself, inside the component."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        node = frontier.pop(0)
        for succ in sorted(graph[node] & component):
            if succ == start:
                return [*paths[node], start]
            if succ not in paths:
                paths[succ] = [*paths[node], succ]
                frontier.append(succ)
    raise AssertionError(f"no cycle through {start}")  # a component always has one


def _layer(module: str) -> int | None:
    best = None
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), rank)
    return None if best is None else best[1]


def test_the_import_graph_has_no_cycle():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_module_imports_a_layer_above_its_own():
    backward = []
    for module, targets in import_graph().items():
        rank = _layer(module)
        for target in sorted(targets):
            above = _layer(target)
            if rank is not None and above is not None and above < rank:
                backward.append(f"{module} -> {target}")
    assert not backward, "imports against the layers of DESIGN.md: " + ", ".join(backward)


@pytest.mark.parametrize(
    "module", [m for m in MODULES if m.startswith(("nnlab.models", "nnlab.scratch"))]
)
def test_models_and_scratch_know_no_lightning_and_no_config(module):
    roots = {name.split(".")[0] for name in _imported_names(module)}
    assert not roots & set(NOT_IN_MODELS), f"{module} imports {sorted(roots & set(NOT_IN_MODELS))}"


@pytest.mark.parametrize("module", TORCH_FREE)
def test_the_config_facts_import_no_torch(module):
    roots = {name.split(".")[0] for name in _imported_names(module)}
    heavy = roots & {"torch", "torchvision", "pytorch_lightning", "lightning"}
    assert not heavy, f"{module} imports {sorted(heavy)}"
    nnlab_imports = {_owner(n) for n in _imported_names(module) if n.split(".")[0] == "nnlab"}
    assert nnlab_imports <= {*TORCH_FREE, "nnlab"}, f"{module} imports {nnlab_imports}"


def test_the_cycle_finder_names_a_cycle():
    # the check itself, on the cycle this test was written to catch (models <-> scratch)
    graph = {
        "nnlab.models.mlp": {"nnlab.scratch.engine", "nnlab.models.layers"},
        "nnlab.scratch.engine": {"nnlab.models.mlp"},
        "nnlab.models.layers": set(),
    }
    assert find_cycles(graph) == [["nnlab.models.mlp", "nnlab.scratch.engine", "nnlab.models.mlp"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
