"""Shared fixtures: tiny randomly initialised models saved to temp folders (no network) and small
labeled/unlabeled CSVs."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


NEWS = {
    0: ["Talks resume in Geneva as envoys seek a ceasefire in the border war",
        "Election results delayed after protests in the capital turn violent",
        "Flood relief reaches villages as the prime minister visits the region",
        "Foreign ministers meet to discuss sanctions and the nuclear programme"],
    1: ["Striker scores twice as the home side wins the cup final",
        "Tennis champion withdraws from the open with a knee injury",
        "Coach signs a new contract after the team reaches the playoffs",
        "Marathon record falls as runners enjoy cool weather in the race"],
    2: ["Shares rise as the bank reports higher quarterly profit",
        "Oil prices climb after the cartel agrees to cut output",
        "Retailer plans to buy its rival in a billion dollar merger",
        "Unemployment falls as factories hire more workers this quarter"],
    3: ["New chip doubles battery life for laptops and phones",
        "Space agency launches a probe to study the moons of Jupiter",
        "Software update fixes a security flaw in the web browser",
        "Researchers sequence the genome of a drought resistant plant"],
}


def write_csv(path: Path, rows: list[dict], fieldnames: list[str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fieldnames = fieldnames or list(rows[0])
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fieldnames)
        w.writeheader()
        w.writerows(rows)
    return path


EXTRA_ROWS = [{"text": f"Extra story number {i} about the markets", "label": i % 4} for i in range(8)]


def write_extra_csv(tmp_path: Path) -> Path:
    """An ``augment.extra`` file of 8 labeled rows (2 per class), as generated samples would be."""
    return write_csv(tmp_path / "extra.csv", EXTRA_ROWS)


def tiny_labeled_rows(copies: int = 6) -> list[dict]:
    """4 classes x 4 texts x ``copies`` slight variants: learnable by a tiny model."""
    rows = []
    for c in range(copies):
        for label, texts in NEWS.items():
            for t in texts:
                rows.append({"text": f"{t} report {c}", "label": label})
    return rows


@pytest.fixture(scope="session")
def tiny_roberta_dir(tmp_path_factory) -> Path:
    """A tiny random RoBERTa (2 layers, hidden 32) with a byte-level BPE tokenizer, saved locally."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaForSequenceClassification, RobertaTokenizerFast

    out = tmp_path_factory.mktemp("tiny-roberta")
    corpus = [t for texts in NEWS.values() for t in texts] * 3
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok = RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                               sep_token="</s>", cls_token="<s>", unk_token="<unk>", pad_token="<pad>",
                               mask_token="<mask>", model_max_length=64)
    cfg = RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=80, type_vocab_size=1, num_labels=4, initializer_range=0.2,
                        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    import torch

    torch.manual_seed(0)
    RobertaForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests: on tiny models thread synchronisation dominates."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def tiny_csvs(tmp_path) -> dict:
    """train.csv (96 rows), dev.csv (32 rows) and target.csv (16 unlabeled rows) in tmp_path."""
    return write_tiny_csvs(tmp_path)


# A config of its own (defaults, augmentation off) so changes to the shipped demos do not change
# what the CLI tests measure; the tiny model and data come in as command-line overrides.
TINY_YAML = """name: tiny
augment:
  synonyms: {enabled: false}
  lm: {enabled: false}
  generate: {enabled: false}
selftrain: {enabled: false}
"""


def write_tiny_csvs(folder: Path) -> dict:
    """The three CSVs of :func:`tiny_csvs` written into ``folder``; their paths by name."""
    return {"train": write_csv(folder / "train.csv", tiny_labeled_rows(6)),
            "dev": write_csv(folder / "dev.csv", tiny_labeled_rows(2)),
            "target": write_csv(folder / "target.csv", [{"text": r["text"].upper()} for r in tiny_labeled_rows(1)])}


def tiny_overrides(model_dir: Path, csvs: dict, run_root: Path, **extra) -> list[str]:
    """Overrides turning any config into a few-second run on the tiny model."""
    ov = {
        "name": "tiny", "output_dir": str(run_root),
        "data.source": str(csvs["train"]), "data.validation": str(csvs["dev"]), "data.target": str(csvs["target"]),
        "data.labels": "[World,Sports,Business,Sci/Tech]",  # the tiny sets' ids 0..3 (null: "0".."3" inferred)
        "model.name": str(model_dir), "model.max_length": 32, "model.attn_implementation": "eager",
        "lora.r": 4, "lora.lora_alpha": 8, "lora.target_modules": "[query,value]", "lora.bias": "none",
        "lora.modules_to_save": "null",
        "train.epochs": 2, "train.batch_size": 16, "train.learning_rate": 5e-3, "train.precision": "fp32",
        "train.logging_steps": 2, "train.optim": "adamw_torch",
    }
    ov.update(extra)
    return [f"{k}={v}" for k, v in ov.items()]

