"""How good is a set of generated (or otherwise synthetic) labeled samples?

Every generation run is measured on the same four questions, so lorafit's samples can be compared
with any other set (for instance the report's GPT-2 samples) on equal terms:

- **label fidelity**: does the text belong to the class of its prompt? Judged by an independent
  model trained on the labeled source rows only: a bag-of-words multinomial naive Bayes
  (scikit-learn), which shares nothing with the encoders lorafit trains, and, when the run has one,
  by the teacher;
- **diversity**: distinct-1 / distinct-2 (unique word uni/bigrams over all of them) and the share
  of near duplicates (character-shingle Jaccard, as the selection stage measures it);
- **length fit**: words per sample against the target texts (mean, median, sd and the
  Kolmogorov-Smirnov distance between the two length distributions);
- **target fit** (style): how well a classifier tells the samples from the target texts, a
  cross-validated ROC AUC of a logistic regression on word uni/bigram TF-IDF over the samples and
  as many target texts: 0.5 means the samples read like the target texts, 1.0 that they are
  always told apart. It uses no labels and no generator, so it compares any two sample sets;
- emptiness: samples with no text at all.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy import stats

from lorafit.augment.select import near_duplicates
from lorafit.data.clean import word_count


def fit_judge(texts: Sequence[str], labels: Sequence[int], num_labels: int = 0, min_df: int = 2):
    """A bag-of-words multinomial naive Bayes (uniform class prior, Laplace smoothing) trained on the
    labeled source texts: a scikit-learn pipeline with ``predict``/``predict_proba``."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.naive_bayes import MultinomialNB
    from sklearn.pipeline import make_pipeline

    labels = np.asarray(labels)  # a class without rows is never predicted (tiny or filtered sets)
    judge = make_pipeline(CountVectorizer(lowercase=True, min_df=min(min_df, len(texts))),
                          MultinomialNB(alpha=1.0, fit_prior=False))
    return judge.fit(list(texts), labels)


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique word n-grams over all n-grams of ``texts`` (lowercased); 0 when there are none."""
    seen, total = set(), 0
    for t in texts:
        w = t.lower().split()
        grams = list(zip(*(w[i:] for i in range(n))))
        seen.update(grams)
        total += len(grams)
    return len(seen) / total if total else 0.0


def target_separability(texts: Sequence[str], target_texts: Sequence[str], max_rows: int = 2000,
                         folds: int = 5, seed: int = 0) -> float:
    """Cross-validated ROC AUC of telling ``texts`` from ``target_texts`` (the same number of each,
    at most ``max_rows``, a seeded draw): TF-IDF word uni/bigrams + logistic regression, stratified
    ``folds``-fold. 0.5 = indistinguishable; NaN when either side has fewer than ``folds`` texts."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline

    n = min(len(texts), len(target_texts), max_rows)
    if n < folds:
        return float("nan")
    rng = np.random.default_rng(seed)
    a = [texts[i] for i in rng.choice(len(texts), n, replace=False)]
    b = [target_texts[i] for i in rng.choice(len(target_texts), n, replace=False)]
    y = np.r_[np.ones(n, int), np.zeros(n, int)]
    clf = make_pipeline(TfidfVectorizer(lowercase=True, ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                        LogisticRegression(C=1.0, max_iter=1000))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(clf, a + b, y, cv=cv, scoring="roc_auc").mean())


def _lengths(words: np.ndarray) -> dict:
    if words.size == 0:
        return {}
    return {"mean": round(float(words.mean()), 2), "median": float(np.median(words)),
            "std": round(float(words.std()), 2)}


def sample_quality(texts: Sequence[str], labels: Sequence[int], judge, target_texts: Sequence[str] = (),
                   teacher_pred: Optional[Sequence[int]] = None, near_duplicate: float = 0.8,
                   label_names: Sequence[str] = ()) -> dict:
    """The measures above for one set of labeled samples (a JSON-ready dict)."""
    texts, labels = list(texts), np.asarray(labels)
    keep = np.array([bool(t.strip()) for t in texts], bool)
    kept = [t for t, k in zip(texts, keep) if k]
    out: dict = {"samples": len(texts), "empty": int((~keep).sum())}
    if not kept:
        return out
    judged = np.asarray(judge.predict(kept))
    agree = judged == labels[keep]
    names = list(label_names) or [str(c) for c in sorted(set(labels.tolist()))]
    out["judge_fidelity"] = round(float(agree.mean()), 4)
    out["judge_fidelity_per_class"] = {names[c] if c < len(names) else str(c): round(float(agree[labels[keep] == c].mean()), 4)
                                       for c in sorted(set(labels[keep].tolist()))}
    if teacher_pred is not None:
        out["teacher_fidelity"] = round(float((np.asarray(teacher_pred)[keep] == labels[keep]).mean()), 4)
    out["distinct_1"] = round(distinct_n(kept, 1), 4)
    out["distinct_2"] = round(distinct_n(kept, 2), 4)
    out["near_duplicate_rate"] = round(len(near_duplicates(kept, near_duplicate)) / len(kept), 4)
    words = np.array([word_count(t) for t in kept], dtype=np.float64)
    out["words"] = _lengths(words)
    if len(target_texts):
        target_words = np.array([word_count(t) for t in target_texts], dtype=np.float64)
        out["target_words"] = _lengths(target_words)
        out["length_ks"] = round(float(stats.ks_2samp(words, target_words).statistic), 4)
        auc = target_separability(kept, [t for t in target_texts if t.strip()])
        if auc == auc:
            out["target_separability"] = round(auc, 4)
    return out
