"""Self-training on the unlabeled target set.

Each round: predict the target texts, keep pseudo-labels whose confidence reaches
``selftrain.threshold`` (at most ``per_class_cap`` per class, the most confident first, so classes
stay balanced), add them to the labeled data with weight ``selftrain.weight`` (or as soft labels),
and continue training the same adapter for ``selftrain.epochs``. Each round's pseudo-labels join
the gold rows of the (augmented) training set, reshuffled with ``seed + round``; its checkpoints go
to ``<run>/selftrain/round-N``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import datasets
import numpy as np
from scipy.special import softmax

from lorafit.config import Config, SelfTrainConfig
from lorafit.predict import predict_with_config
from lorafit.report import distribution
from lorafit.train import train_model, with_teacher_logits

log = logging.getLogger(__name__)


@dataclass
class SelfTrainResult:
    rounds: list = field(default_factory=list)  # per round: pseudo-label counts, target distribution before/after
    history: list = field(default_factory=list)  # the rounds' Trainer logs, each entry marked with its round
    target_logits: Optional[np.ndarray] = None  # the last round's target predictions (reused for the submission)


def self_train(cfg: Config, model, tokenizer, train: datasets.Dataset, val: datasets.Dataset,
               target_texts: list[str], run_dir: Path) -> SelfTrainResult:
    """``selftrain.rounds`` rounds of pseudo-labeling the target texts and training ``model`` (in
    place) on them with the gold rows of ``train``."""
    st, k = cfg.selftrain, len(cfg.data.labels)
    result = SelfTrainResult()
    gold = with_training_columns(train.select_columns(["text", "label"]), k, st.soft_labels)
    logits = predict_with_config(model, tokenizer, cfg, target_texts, progress=True)
    for r in range(1, st.rounds + 1):
        probs = softmax(logits, axis=-1)
        before = distribution(probs.argmax(1), k)
        pseudo, info = pseudo_labeled_set(target_texts, probs, st)
        merged = datasets.concatenate_datasets([gold, pseudo.cast(gold.features)]).shuffle(seed=cfg.seed + r)
        trainer = train_model(cfg, model, tokenizer, with_teacher_logits(cfg, merged, run_dir), val,
                              Path(run_dir) / "selftrain" / f"round-{r}", epochs=st.epochs)
        result.history += [{**h, "selftrain_round": r} for h in trainer.state.log_history]
        logits = predict_with_config(model, tokenizer, cfg, target_texts, progress=True)
        info.update(round=r, target_distribution_before=before,
                    target_distribution_after=distribution(logits.argmax(1), k))
        log.info("self-training round %d: kept %s per class; target distribution %s -> %s",
                 r, info["kept_per_class"], before, info["target_distribution_after"])
        result.rounds.append(info)
    result.target_logits = logits
    return result


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
