"""The modules use each other one way (docs/architecture.md): entry -> recipe -> stages -> shared core.

A lower layer never imports a higher one, and a stage never imports another stage: stages are
peers that exchange datasets and files, and what two stages share lives in the core.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "lorafit"

# top to bottom; a module may import its own layer or a layer below, except stage -> other stage
LAYERS = {
    "entry": {"lorafit", "cli", "api"},
    "recipe": {"pipeline", "selftrain", "search", "search_space", "search_results"},
    "stage": {"augment", "train", "predict", "report"},
    "core": {"data", "model", "budget", "inference", "metrics", "prior", "text", "precision", "io_utils", "views",
             "errors", "config", "runs", "logs"},
}
ORDER = list(LAYERS)
# modules that belong to another unit: report_page is the report stage's page template
UNIT_OF = {"report_page": "report", "report_generator": "report", "export": "report", "train_consistency": "train"}


def unit(module: str) -> str | None:
    """lorafit.augment.select -> augment; lorafit.report_page -> report; lorafit -> lorafit."""
    parts = module.split(".")
    if parts[0] != "lorafit":
        return None
    if len(parts) < 2:
        return "lorafit"
    return UNIT_OF.get(parts[1], parts[1])


def layer(module: str) -> str | None:
    u = unit(module)
    return next((name for name, units in LAYERS.items() if u in units), None)


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


def imports(path: Path) -> set[str]:
    """Every lorafit module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "lorafit" and {a.name for a in node.names} == {"__version__"}:
                continue  # the version is package metadata, not the API
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m == "lorafit" or m.startswith("lorafit.")}


def violations(graph: dict[str, set[str]]) -> list[str]:
    """The imports of ``graph`` (module -> modules it imports) that break the layering rule."""
    wrong = []
    for here, targets in sorted(graph.items()):
        for there in sorted(targets):
            a, b = layer(here), layer(there)
            if unit(here) == unit(there) or a is None or b is None:
                continue
            if ORDER.index(b) < ORDER.index(a):
                wrong.append(f"{here} ({a}) imports {there} ({b}), a layer above it")
            elif a == b == "stage":
                wrong.append(f"{here} imports {there}: a stage never imports another stage; move what they "
                             "share into the core (inference, metrics, text, ...)")
    return wrong


def source_graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in SRC.rglob("*.py")}


def test_every_module_has_a_layer():
    for name in source_graph():
        assert layer(name) is not None, f"{name}: put it in a layer of LAYERS (and docs/architecture.md)"


def test_imports_go_one_way_and_stages_are_peers():
    wrong = violations(source_graph())
    assert not wrong, "\n".join(wrong)


def test_the_rule_catches_a_stage_importing_a_stage_and_an_upward_import():
    graph = source_graph()
    assert not violations(graph)
    assert violations({**graph, "lorafit.train": graph["lorafit.train"] | {"lorafit.augment.synonyms"}}) == [
        "lorafit.train imports lorafit.augment.synonyms: a stage never imports another stage; move what they "
        "share into the core (inference, metrics, text, ...)"]
    assert violations({"lorafit.metrics": {"lorafit.report"}}) == [
        "lorafit.metrics (core) imports lorafit.report (stage), a layer above it"]
    assert violations({"lorafit.predict": {"lorafit.selftrain"}}) == [
        "lorafit.predict (stage) imports lorafit.selftrain (recipe), a layer above it"]
    # downward and same-unit imports are fine
    assert not violations({"lorafit.selftrain": {"lorafit.train", "lorafit.predict"},
                           "lorafit.augment.generate": {"lorafit.augment.lm_adapt", "lorafit.inference"}})


def test_no_import_cycles_between_modules():
    graph = {m: {t for t in ts if t in source_graph_cache()} for m, ts in source_graph_cache().items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m, stack):
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if t == m or unit(t) == unit(m) and t.startswith(m + "."):  # a package importing its own modules
                continue
            if state.get(t) == 1 and not cycle:
                cycle.extend(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycle, " -> ".join(cycle)


_GRAPH: dict = {}


def source_graph_cache() -> dict[str, set[str]]:
    if not _GRAPH:
        _GRAPH.update(source_graph())
    return _GRAPH
