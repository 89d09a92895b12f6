"""A labeled proxy of the target set that no generator wrote: the unlabeled target texts on which an
independent judge is confident, labeled by that judge.

The judge is the bag-of-words naive Bayes that lorafit's sample-quality measures use
(``lorafit.augment.quality.fit_judge``), trained on the labeled source rows only. It shares nothing
with the encoders being compared and nothing with any generator's samples, so it can compare recipes
that differ in their generator (the corroborated proxy cannot: it is built from the report's GPT-2
samples, and favours runs trained on their siblings). Its bias is the judge's: it keeps the target
texts that look most like the source (newswire), ``--per-class`` of each class by the judge's
confidence, so it measures agreement on the easier, source-like part of the target set.

    .venv/bin/python scripts/judge_proxy.py [--data-dir ../shared/data] [--out runs/_data]
    lorafit evaluate runs/X runs/_data/target_judge_proxy.csv --prior uniform --prior-fit target
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from lorafit.augment.quality import fit_judge
from lorafit.data.clean import clean_text
from lorafit.io_utils import atomic_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--out", default="runs/_data")
    ap.add_argument("--per-class", type=int, default=500)
    a = ap.parse_args()
    data = Path(a.data_dir)
    source = pd.read_csv(data / "agnews" / "train.csv")
    target = pd.read_csv(data / "target" / "test_unlabelled.csv")
    judge = fit_judge([clean_text(t) for t in source["text"]], source["label"].to_numpy(), 4)
    texts = [clean_text(t) for t in target["text"]]
    probs = judge.predict_proba(texts)
    pred, conf = probs.argmax(1), probs.max(1)
    keep = np.concatenate([np.flatnonzero(pred == c)[np.argsort(-conf[pred == c], kind="stable")][:a.per_class]
                           for c in range(4)])
    keep.sort()
    out = pd.DataFrame({"text": target["text"].to_numpy()[keep], "label": pred[keep]})
    path = Path(a.out) / "target_judge_proxy.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        out.to_csv(tmp, index=False)
    print(f"wrote {path}: {len(out)} target texts, per class {np.bincount(out['label'], minlength=4).tolist()}, "
          f"judge confidence >= {conf[keep].min():.4f}")


if __name__ == "__main__":
    main()
