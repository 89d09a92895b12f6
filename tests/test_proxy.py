"""Research script: the target proxy built from generated samples (scripts/proxy_judge.py,
scripts/proxy_split.py). Not part of the product."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from proxy_judge import corroborated, fit_judge, split_generated  # noqa: E402

pytestmark = pytest.mark.research

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data beside the repo
SOURCE = [
    ("the president met foreign ministers at the united nations summit on the war", 0),
    ("troops and rebels clash as the government calls elections after the war", 0),
    ("the striker scored twice as the team won the league match", 1),
    ("the coach praised the team after the championship game win", 1),
    ("shares fell as the company reported lower quarterly profit and sales", 2),
    ("the bank raised interest rates and stocks dropped on the market", 2),
    ("the new software update improves the computer chip and internet browser", 3),
    ("scientists launch a space telescope and new computer software", 3),
]


def test_split_holds_out_per_class_and_is_seeded():
    labels = np.repeat([0, 1, 2, 3], [5, 6, 7, 8])
    mask = split_generated(labels, per_class=3, seed=4)
    assert np.bincount(labels[mask]).tolist() == [3, 3, 3, 3]
    assert (split_generated(labels, 3, seed=4) == mask).all() and not (split_generated(labels, 3, seed=5) == mask).all()
    with pytest.raises(ValueError, match="class 0 has 5 samples, fewer than the 6"):
        split_generated(labels, per_class=6)


def test_the_judge_keeps_samples_whose_prompt_label_it_agrees_with():
    texts, labels = zip(*SOURCE)
    judge = fit_judge(texts, labels, num_labels=4, min_df=1)
    samples = ["rebels and troops in the war as ministers meet",       # World, labeled World
               "the team won the match and the striker scored",        # Sports, labeled Sports
               "the team won the match and the striker scored again",  # Sports, labeled Business: off-prompt
               "stocks and shares fell on the market as profit dropped"]  # Business, labeled SciTech
    keep = corroborated(judge, samples, [0, 1, 2, 3])
    assert keep.tolist() == [True, True, False, False]
    np.testing.assert_allclose(judge.predict_proba(samples).sum(1), 1.0)
    with pytest.raises(ValueError, match=r"no row of class\(es\) \[3\]"):
        fit_judge(texts[:6], labels[:6], num_labels=4)


@pytest.mark.skipif(not (DATA / "agnews" / "dev.csv").is_file(), reason="needs ../shared/data (the real AG News subset)")
def test_judge_on_the_real_source_set():
    """On the shared AG News subset the judge is a real classifier (measured: 88.6% on dev)."""
    import pandas as pd

    train, dev = pd.read_csv(DATA / "agnews" / "train.csv"), pd.read_csv(DATA / "agnews" / "dev.csv")
    judge = fit_judge(train.text.astype(str), train.label.values, num_labels=4)
    assert corroborated(judge, dev.text.astype(str), dev.label.values).mean() > 0.87
