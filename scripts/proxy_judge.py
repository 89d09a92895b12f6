"""A labeled proxy of the target domain, built from generated samples.

Samples written by a language model adapted to the target texts carry the label of their
prompt's class. Held out of training they are target-style text with labels, but two biases make
their plain accuracy a poor judge of a recipe:

* many samples do not match their prompt (off-topic or empty text: about 30% of the report's
  GPT-2 samples by the judge below), and a model trained on the same generator's other samples
  learns to predict the *prompt* from the generator's habits, which nothing else rewards;
* the prior a submission gets is fitted on the target set, not on a balanced proxy.

:func:`split_generated` holds samples out per class; :func:`fit_judge` trains an independent
judge on the labeled source set (bag of words + multinomial naive Bayes, scikit-learn: no
encoder, so it shares no bias with the models being compared); :func:`corroborated` keeps the
samples whose prompt label the judge agrees with. ``lorafit evaluate --prior-fit target`` applies
the run's own target-fitted prior to such a proxy. ``scripts/proxy_split.py`` writes both files.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def split_generated(labels: Sequence[int], per_class: int, seed: int = 0) -> np.ndarray:
    """Boolean mask of ``per_class`` rows of every class (drawn with ``seed``) to hold out."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        if len(rows) < per_class:
            raise ValueError(f"class {c} has {len(rows)} samples, fewer than the {per_class} to hold out")
        mask[rng.permutation(rows)[:per_class]] = True
    return mask


def fit_judge(texts: Sequence[str], labels: Sequence[int], num_labels: int, min_df: int = 2):
    """lorafit's sample-quality judge (:func:`lorafit.augment.quality.fit_judge`: bag of words,
    multinomial naive Bayes with a uniform class prior), with every class required in ``labels``:
    a proxy built from a judge that cannot name a class would be silently one-sided."""
    from lorafit.augment.quality import fit_judge as quality_judge

    missing = sorted(set(range(num_labels)) - set(np.asarray(labels).tolist()))
    if missing:
        raise ValueError(f"the judge's training set has no row of class(es) {missing}")
    return quality_judge(texts, labels, num_labels, min_df=min_df)


def corroborated(judge, texts: Sequence[str], labels: Sequence[int]) -> np.ndarray:
    """Boolean mask of the rows whose label is the judge's most probable class."""
    return judge.predict(list(texts)) == np.asarray(labels)
