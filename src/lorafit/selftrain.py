"""Self-training on the unlabeled target set.

Each round: predict the target texts, keep pseudo-labels whose confidence reaches
``selftrain.threshold`` (at most ``per_class_cap`` per class, the most confident first, so classes
stay balanced), add them to the labeled data with weight ``selftrain.weight`` (or as soft labels),
and continue training the same adapter for ``selftrain.epochs``.
"""

from __future__ import annotations

import logging
from typing import Optional

import datasets
import numpy as np

from lorafit.config import SelfTrainConfig

log = logging.getLogger(__name__)


def select_pseudo_labels(probs: np.ndarray, threshold: float, per_class_cap: Optional[int]) -> tuple[np.ndarray, dict]:
    """Indices of target rows to pseudo-label, and per-class counts.

    ``per_class_cap=None`` caps every class at the smallest non-zero count of confident rows, so
    the added data is balanced (classes with no confident row contribute none).
    """
    probs = np.asarray(probs)
    k = probs.shape[1]
    conf, pred = probs.max(1), probs.argmax(1)
    confident = [np.flatnonzero((pred == c) & (conf >= threshold)) for c in range(k)]
    counts = [len(ix) for ix in confident]
    cap = per_class_cap
    if cap is None:
        nonzero = [n for n in counts if n > 0]
        cap = min(nonzero) if nonzero else 0
    chosen = []
    for ix in confident:
        order = ix[np.argsort(-conf[ix], kind="stable")]
        chosen.append(order[:cap])
    keep = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, int)
    return keep, {"confident_per_class": counts, "cap": int(cap),
                  "kept_per_class": [int(len(c)) for c in chosen], "kept": int(len(keep))}


def pseudo_labeled_set(texts: list[str], probs: np.ndarray, st: SelfTrainConfig) -> tuple[datasets.Dataset, dict]:
    """The pseudo-labeled rows of one round as a Dataset (text, label, weight[, soft_labels])."""
    keep, info = select_pseudo_labels(probs, st.threshold, st.per_class_cap)
    cols = {"text": [texts[i] for i in keep], "label": probs[keep].argmax(1).astype(int).tolist(),
            "weight": [float(st.weight)] * len(keep)}
    if st.soft_labels:
        cols["soft_labels"] = probs[keep].astype(np.float32).tolist()
    return datasets.Dataset.from_dict(cols), info


def with_training_columns(ds: datasets.Dataset, k: int, soft: bool) -> datasets.Dataset:
    """Give gold rows weight 1 (and one-hot soft labels) so they concatenate with pseudo rows."""
    if "weight" not in ds.column_names:
        ds = ds.add_column("weight", [1.0] * len(ds))
    if soft and "soft_labels" not in ds.column_names:
        eye = np.eye(k, dtype=np.float32)
        ds = ds.add_column("soft_labels", eye[np.asarray(ds["label"], int)].tolist())
    return ds
