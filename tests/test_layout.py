"""The modules use each other one way (README "Layout"): a module imports only modules below it."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "lorafit"
# top to bottom, as in the README
LAYERS = ["cli", "search", "pipeline", "selftrain", "train", "augment", "predict", "report", "proxy", "prior", "budget",
          "model", "precision", "data", "config", "io_utils", "errors"]


def _layer(module: str) -> str | None:
    """lorafit.augment.select -> augment; lorafit.report_page -> report; lorafit -> None."""
    parts = module.split(".")
    if parts[0] != "lorafit" or len(parts) < 2:
        return None
    return "report" if parts[1] == "report_page" else parts[1]


def _imports(path: Path) -> set[str]:
    """Every lorafit module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith("lorafit")}


def test_every_module_has_a_layer():
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        assert name == "lorafit" or _layer(name) in LAYERS, f"{path}: add it to the README's layers and LAYERS"


def test_imports_go_one_way():
    wrong = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        here = _layer(".".join(rel.parts).removesuffix(".__init__"))
        for module in _imports(path):
            there = _layer(module)
            if here is None or there is None or there == here:
                continue
            if LAYERS.index(there) < LAYERS.index(here):
                wrong.append(f"{path.relative_to(SRC)} ({here}) imports {module} ({there}), a layer above it")
    assert not wrong, "\n".join(wrong)
