"""Measure sets of labeled synthetic samples side by side: label fidelity (an independent naive Bayes
judge trained on the source rows), distinct-1/2, near duplicates, and length fit to the target
texts, as every lorafit run measures its own (``lorafit.augment.quality``).

    .venv/bin/python scripts/sample_quality.py runs/X/synthetic/samples.jsonl \
        ../shared/data/seed_synthetic/gpt2_generated.csv [--n 12000] [--data-dir ../shared/data]

Distinct-n shrinks as a set grows, so every set is measured on the same number of samples (``--n``,
a seeded draw; default: the size of the smallest set).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from lorafit.augment.quality import fit_judge, sample_quality
from lorafit.data.clean import clean_text

LABELS = ["World", "Sports", "Business", "Sci/Tech"]


def read(path: str) -> pd.DataFrame:
    df = pd.read_json(path, lines=True) if path.endswith(".jsonl") else pd.read_csv(path)
    return df[["text", "label"]].fillna({"text": ""})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    data = Path(a.data_dir)
    source = pd.read_csv(data / "agnews" / "train.csv")
    target = [clean_text(t) for t in pd.read_csv(data / "target" / "test_unlabelled.csv")["text"]]
    judge = fit_judge([clean_text(t) for t in source["text"]], source["label"].to_numpy(), len(LABELS))
    sets = {f: read(f) for f in a.files}
    n = a.n or min(len(d) for d in sets.values())
    for f, df in sets.items():
        rows = np.sort(np.random.default_rng(a.seed).permutation(len(df))[:n])
        q = sample_quality([clean_text(str(t)) for t in df["text"].to_numpy()[rows]], df["label"].to_numpy()[rows],
                           judge, target, label_names=LABELS)
        print(json.dumps({"file": f, **q}))


if __name__ == "__main__":
    main()
