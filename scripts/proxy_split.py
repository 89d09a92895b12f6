"""Split the report's GPT-2 samples into a training part and a held-out, labeled proxy of the
target domain (750 per class), for the README's experiments.

The target set has no labels here; the report's samples were written by a GPT-2 adapted to the
target texts and carry the label of their prompt's class, so accuracy on held-out samples is a
(noisy) proxy for accuracy on target-style text. Run from the repo root:

    .venv/bin/python scripts/proxy_split.py [--data-dir ../shared/data] [--out runs/_data]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--out", default="runs/_data")
    ap.add_argument("--per-class", type=int, default=750)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    df = pd.read_csv(Path(a.data_dir) / "seed_synthetic" / "gpt2_generated.csv")
    rng = np.random.default_rng(a.seed)
    held = np.concatenate([rng.permutation(np.flatnonzero(df.label.values == c))[: a.per_class]
                           for c in sorted(df.label.unique())])
    mask = np.zeros(len(df), bool)
    mask[held] = True
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    df[mask].to_csv(out / "synthetic_proxy.csv", index=False)
    df[~mask].to_csv(out / "synthetic_train.csv", index=False)
    print(f"{out}/synthetic_train.csv: {(~mask).sum()} rows; {out}/synthetic_proxy.csv: {mask.sum()} rows")


if __name__ == "__main__":
    main()
