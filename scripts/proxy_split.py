"""Split the report's GPT-2 samples into a training part and a held-out, labeled proxy of the
target domain (750 per class), and write the proxy's corroborated part, for the README's
experiments.

The target set has no labels here; the report's samples were written by a GPT-2 adapted to the
target texts and carry the label of their prompt's class, so accuracy on held-out samples is a
(noisy) proxy for accuracy on target-style text. Many samples do not match their prompt; a model
trained on the other samples learns the generator's habits and scores high on those. The
corroborated proxy keeps the held-out samples whose prompt label an independent judge (bag of
words + naive Bayes trained on the source set, ``scripts/proxy_judge.py``) agrees with. Score a run on it
with the prior its submission gets:

    lorafit evaluate runs/X runs/_data/synthetic_proxy_corroborated.csv --prior uniform --prior-fit target

Run from the repo root:

    .venv/bin/python scripts/proxy_split.py [--data-dir ../shared/data] [--out runs/_data]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from lorafit.io_utils import atomic_path
from proxy_judge import corroborated, fit_judge, split_generated  # scripts/proxy_judge.py, beside this script


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--out", default="runs/_data")
    ap.add_argument("--per-class", type=int, default=750)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    data = Path(a.data_dir)
    df = pd.read_csv(data / "seed_synthetic" / "gpt2_generated.csv")
    source = pd.read_csv(data / "agnews" / "train.csv")
    mask = split_generated(df.label.values, a.per_class, a.seed)
    proxy = df[mask]
    k = int(source.label.max()) + 1
    judge = fit_judge(source.text.astype(str), source.label.values, num_labels=k)
    agree = corroborated(judge, proxy.text.astype(str), proxy.label.values)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("synthetic_proxy.csv", proxy), ("synthetic_train.csv", df[~mask]),
                       ("synthetic_proxy_corroborated.csv", proxy[agree])):
        with atomic_path(out / name) as tmp:
            part.to_csv(tmp, index=False)
    per_class = np.bincount(proxy.label.values[agree], minlength=k).tolist()
    print(f"{out}/synthetic_train.csv: {(~mask).sum()} rows; {out}/synthetic_proxy.csv: {mask.sum()} rows; "
          f"{out}/synthetic_proxy_corroborated.csv: {agree.sum()} rows (per class {per_class}: the judge, "
          f"naive Bayes on {len(source):,} source rows, agrees with their prompt label)")


if __name__ == "__main__":
    main()
