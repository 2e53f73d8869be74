"""Imports point one way (service → search → training), and the API's side stays light: the
engine pulls in no service code, and what the API needs to validate a spec (``search.spec`` and
the parts of ``training`` it uses) pulls in no torch, timm or torchvision (``test_light_api``
checks the whole API process)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

FORBIDDEN = ("optuna", "sqlalchemy", "fastapi", "service", "search")
HEAVY = ("torch", "timm", "torchvision")
# the spec's vocabulary: what the API imports from training (and search) to validate a spec
LIGHT = (
    "training.specs",
    "training.errors",
    "training.head_families",
    "training.recipe",
    "training.results",
    "training.sources",
    "training.timm_names",
)


def absent_after_import(modules: tuple[str, ...], forbidden: tuple[str, ...]) -> None:
    """Import ``modules`` in a fresh interpreter; fail naming any ``forbidden`` one loaded."""
    code = (
        f"import sys, {', '.join(modules)};"
        f"bad = [m for m in {forbidden!r} if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_training_imports_no_search_or_service_modules():
    absent_after_import(
        ("training.loop.train", "training.runtime.export", "training.model.heads", "training.data"),
        FORBIDDEN,
    )


def test_the_spec_vocabulary_of_training_imports_no_engine_and_no_upper_layer():
    absent_after_import(LIGHT, HEAVY + FORBIDDEN)


def test_search_spec_imports_no_torch_timm_or_torchvision():
    absent_after_import(("search.spec",), (*HEAVY, "optuna", "sqlalchemy", "fastapi", "service"))


# ---- the import graph, read from the source (every import, lazy ones inside functions too) ----
ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("training", "search", "service")
# each package's wings, and the wings of the same package each may import (besides the shared
# leaves: a package's top-level modules that hold its vocabulary and import no wing)
SHARED = (
    "service",
    "service.statuses",
    "service.errors",
    "training",
    "training.specs",
    "training.errors",
    "training.fields",
    "training.head_families",
    "training.metrics",
    "training.recipe",
    "training.results",
    "training.sources",
    "training.timm_names",
)
WINGS = {
    "service.persistence": (),
    "service.jobs": ("service.persistence",),
    "service.http": ("service.persistence", "service.jobs"),
    "service.cli": ("service.persistence", "service.jobs", "service.http"),
    # the engine: the network, what it learns, how it is judged, what runs it, the two loops
    "training.data": (),
    "training.model": (),
    "training.objective": ("training.model",),
    "training.runtime": ("training.model",),
    "training.evaluation": (
        "training.model",
        "training.objective",
        "training.data",
        "training.runtime",
    ),
    "training.finetune": ("training.model", "training.data", "training.runtime"),
    "training.loop": (
        "training.model",
        "training.objective",
        "training.evaluation",
        "training.data",
        "training.runtime",
        "training.finetune",
    ),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Our module → our modules it imports (``from a import b`` counts ``a.b`` when that is a
    module of ours, else ``a``)."""
    paths = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    ours = {module_name(p) for p in paths}
    graph: dict[str, set[str]] = {}
    for path in paths:
        name, found = module_name(path), set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = {f"{node.module}.{alias.name}" for alias in node.names}
                found |= (subs & ours) or {node.module}
        graph[name] = {m for m in found if m in ours and m != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (as a path that ends where it starts), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def wing_of(module: str) -> str | None:
    return next((w for w in WINGS if module == w or module.startswith(w + ".")), None)


def test_there_is_no_import_circle_anywhere():
    graph = import_graph()
    assert len(graph) > 100  # the graph really was read
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def why_wrong(module: str, imported: str) -> str | None:
    """Why ``module`` may not import ``imported``, or None if it may."""
    if module.startswith(("training", "search")) and imported.startswith("service"):
        return "the engine imports no service code"
    if module.startswith("training") and imported.startswith("search"):
        return "training imports no search code"
    source, target = wing_of(module), wing_of(imported)
    same_package = source and target and source.split(".")[0] == target.split(".")[0]
    if same_package and source != target and target not in WINGS[source]:
        return f"{source} may not use {target}"
    if module in SHARED and target:
        return "a shared leaf imports no wing"
    return None


def test_layers_and_wings_point_one_way():
    wrong = [
        f"{module} -> {imported} ({why})"
        for module, imports in import_graph().items()
        for imported in imports
        if (why := why_wrong(module, imported))
    ]
    assert not wrong, "\n".join(sorted(wrong))
    assert why_wrong("service.persistence.store", "service.jobs.execute")  # the rule can fail
    assert why_wrong("service.http.app", "service.cli.main")
    assert why_wrong("training.model.network", "training.loop.session")
    assert why_wrong("training.recipe", "training.model.base")  # a leaf imports no wing


@pytest.mark.parametrize("package", ["service", "training"])
def test_every_module_is_in_a_wing_or_shared(package):
    loose = [
        m
        for m in import_graph()
        if m.startswith(package) and not wing_of(m) and m not in (*SHARED, "service.api")
    ]
    assert not loose, loose
