"""docs/config.md is generated from the schema's field descriptions and kept current."""

from __future__ import annotations

from pathlib import Path

from lorafit.config.doc import render, undescribed

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_every_config_key_has_a_description():
    assert undescribed() == []


def test_docs_config_md_is_current():
    assert DOC.read_text(encoding="utf-8") == render(), \
        "docs/config.md is stale: run `python -m lorafit.config.doc > docs/config.md`"


def test_the_reference_lists_keys_with_default_and_range():
    text = render()
    assert "| `lora.r` | int | `4` | >= 1, <= 65,536 | LoRA rank. |" in text
    assert "| `data.val_fraction` | float | `0.05` | > 0, < 1 |" in text
    assert "## `train.distill`" in text and "`train.distill.alpha`" in text
