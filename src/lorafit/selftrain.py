"""Self-training on the unlabeled target set: teacher/student rounds.

Each round the current model (the teacher; in round 1 the trained model) predicts the target
texts; pseudo-labels whose confidence reaches ``selftrain.threshold`` are kept (at most
``per_class_cap`` per class, the most confident first, so classes stay balanced; with
``select_after_prior`` after ``predict.prior`` is imposed on the teacher's probabilities), added
to the gold rows with weight ``selftrain.weight`` (or as soft labels), reshuffled with
``seed + round``, and a model is trained on them for ``selftrain.epochs``:

- ``mode: continue``: the same adapter, trained further;
- ``mode: student``: a fresh adapter (re-initialised with ``seed + round``, its own optimizer and
  schedule).

The round's model is the next round's teacher and, after the last round, the run's model. The
gold rows are the (augmented) training set, or the cleaned source rows only when
``keep_synthetic`` is false. Each round's checkpoints go to ``<run>/selftrain/round-N`` (a rerun
resumes them), and each round records its pseudo-label counts, the target labels it changed
against its teacher, and the validation (and ``selftrain.proxy``) accuracy of its model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import datasets
import numpy as np
from scipy.special import softmax

from lorafit.config import Config, SelfTrainConfig
from lorafit.model import build_model
from lorafit.predict import label_prior, predict_with_config
from lorafit.prior import adjust_predictions
from lorafit.report import distribution
from lorafit.train import train_model, with_teacher_logits

log = logging.getLogger(__name__)


@dataclass
class SelfTrainResult:
    rounds: list = field(default_factory=list)  # per round: pseudo-label counts, label changes, accuracies
    history: list = field(default_factory=list)  # the rounds' Trainer logs, each entry marked with its round
    target_logits: Optional[np.ndarray] = None  # the last round's target predictions (reused for the submission)
    model: Any = None  # the last round's model: the run's model (the input model itself in continue mode)


def self_train(cfg: Config, model, tokenizer, train: datasets.Dataset, val: Optional[datasets.Dataset],
               target_texts: list[str], run_dir: Path, source: Optional[datasets.Dataset] = None,
               proxy: Optional[datasets.Dataset] = None) -> SelfTrainResult:
    """``selftrain.rounds`` teacher/student rounds on the target texts, starting from ``model``.

    ``train``: the (augmented) training set; ``source``: the cleaned source rows (the gold rows
    when ``selftrain.keep_synthetic`` is false; defaults to ``train``). ``proxy``: an optional
    labeled set scored per round. Returns the rounds' records, logs, the last model and its
    target logits."""
    st, k = cfg.selftrain, len(cfg.data.labels)
    rows = train if st.keep_synthetic or source is None else source
    gold = with_training_columns(rows.select_columns(["text", "label"]), k, st.soft_labels)
    gold_prior = label_prior(gold["label"], k)
    result, teacher = SelfTrainResult(), model
    logits = predict_with_config(teacher, tokenizer, cfg, target_texts, progress=True)
    teacher_scores = round_scores(cfg, teacher, tokenizer, val, proxy, gold_prior)
    for r in range(1, st.rounds + 1):
        probs = softmax(logits, axis=-1)
        before = probs.argmax(1)
        chosen, prior_info = selection_probs(cfg, probs, gold_prior)
        pseudo, info = pseudo_labeled_set(target_texts, chosen, st)
        merged = datasets.concatenate_datasets([gold, pseudo.cast(gold.features)]).shuffle(seed=cfg.seed + r)
        if st.mode == "student":  # a fresh adapter and head, initialised from this round's seed
            round_cfg = cfg.model_copy(update={"seed": cfg.seed + r})
            student = build_model(round_cfg, weights=True)
        else:
            round_cfg, student = cfg, teacher
        log.info("self-training round %d (%s): %d gold + %d pseudo-labeled rows %s", r, st.mode, len(gold),
                 info["kept"], info["kept_per_class"])
        trainer = train_model(round_cfg, student, tokenizer, with_teacher_logits(cfg, merged, run_dir), val,
                              Path(run_dir) / "selftrain" / f"round-{r}", epochs=st.epochs)
        result.history += [{**h, "selftrain_round": r} for h in trainer.state.log_history]
        logits = predict_with_config(student, tokenizer, cfg, target_texts, progress=True)
        after = logits.argmax(1)
        scores = round_scores(cfg, student, tokenizer, val, proxy, gold_prior)
        info.update(round=r, mode=st.mode, gold_rows=len(gold), train_rows=len(merged),
                    target_distribution_before=distribution(before, k),
                    target_distribution_after=distribution(after, k),
                    target_changed=int((after != before).sum()), **scores)
        if prior_info is not None:
            info["selection_prior"] = {"mode": prior_info["mode"], "changed": prior_info["changed"]}
        if r == 1:  # the starting model's scores, to compare the rounds with
            info.update({f"teacher_{key}": v for key, v in teacher_scores.items()})
        log.info("self-training round %d: kept %s per class; %d target labels changed; target distribution %s -> %s%s",
                 r, info["kept_per_class"], info["target_changed"], info["target_distribution_before"],
                 info["target_distribution_after"],
                 "".join(f"; {key} {v:.4f}" for key, v in scores.items()))
        result.rounds.append(info)
        teacher = student
    result.target_logits, result.model = logits, teacher
    return result


def selection_probs(cfg: Config, probs: np.ndarray, train_prior: Optional[np.ndarray] = None
                    ) -> tuple[np.ndarray, Optional[dict]]:
    """The probabilities pseudo-labels are selected from: the teacher's, or with
    ``selftrain.select_after_prior`` those adjusted to ``predict.prior`` (and the prior's info)."""
    if not cfg.selftrain.select_after_prior:
        return probs, None
    adjusted, info = adjust_predictions(probs, cfg.predict.prior, train_prior=train_prior)
    return adjusted, info


def round_scores(cfg: Config, model, tokenizer, val: Optional[datasets.Dataset], proxy: Optional[datasets.Dataset],
                 train_prior: np.ndarray) -> dict:
    """Validation accuracy of ``model`` and, with a proxy set, its accuracy there (plain argmax,
    and with ``predict.prior`` applied when one is set)."""
    out = {}
    if val is not None and len(val):
        logits = predict_with_config(model, tokenizer, cfg, val["text"], clean=False)  # prepared sets are clean
        out["val_accuracy"] = float((logits.argmax(1) == np.asarray(val["label"])).mean())
    if proxy is not None and len(proxy):
        logits, labels = predict_with_config(model, tokenizer, cfg, proxy["text"]), np.asarray(proxy["label"])
        out["proxy_accuracy"] = float((logits.argmax(1) == labels).mean())
        if cfg.predict.prior != "none":
            adjusted, _ = adjust_predictions(softmax(logits, axis=-1), cfg.predict.prior, train_prior=train_prior)
            out["proxy_accuracy_prior"] = float((adjusted.argmax(1) == labels).mean())
    return out


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
