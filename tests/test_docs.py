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
