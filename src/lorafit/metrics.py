"""Classification metrics of predictions: accuracy, macro-F1, per-class scores, the confusion
matrix, the class distribution, and the label-free agreement estimate of several runs."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from lorafit.errors import DataError


def classification_metrics(labels: Sequence[int], preds: Sequence[int], names: Sequence[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix
    (rows = true class, columns = predicted)."""
    y, p = np.asarray(labels, int), np.asarray(preds, int)
    k = len(names)
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (y, p), 1)
    per_class = {}
    f1s = []
    for c, name in enumerate(names):
        tp = cm[c, c]
        prec = tp / cm[:, c].sum() if cm[:, c].sum() else 0.0
        rec = tp / cm[c, :].sum() if cm[c, :].sum() else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        f1s.append(f1)
        per_class[str(name)] = {"precision": float(prec), "recall": float(rec), "f1": float(f1),
                                "support": int(cm[c, :].sum())}
    return {"accuracy": float((y == p).mean()) if len(y) else 0.0, "macro_f1": float(np.mean(f1s)),
            "per_class": per_class, "confusion_matrix": cm.tolist()}


def disagreement_matrix(preds: Sequence[Sequence[int]]) -> np.ndarray:
    """The share of rows on which each pair of prediction vectors differs (k x k, zero diagonal)."""
    p = np.asarray(preds, int)
    if p.ndim != 2 or len(p) < 2 or p.shape[1] == 0:
        raise DataError(f"need predictions of at least 2 runs on the same rows; got shape {p.shape}")
    return (p[:, None, :] != p[None, :, :]).mean(-1)


def agreement_estimate(preds: Sequence[Sequence[int]], labels: Optional[Sequence[int]] = None) -> dict:
    """A label-free accuracy estimate from runs trained independently (other seeds) with the same
    recipe: the expected disagreement of two such runs on unlabeled rows approaches their expected
    error when the runs are calibrated as an ensemble (Jiang et al. 2022, "Assessing generalization
    of SGD via disagreement"), so ``1 - mean pairwise disagreement`` estimates their accuracy.

    Returns the pairwise ``disagreement`` matrix, ``mean_disagreement`` and
    ``estimated_accuracy``; with ``labels`` also each run's ``accuracy``, their ``mean_accuracy``
    and ``gap`` = estimate - mean accuracy (how far the estimate is off where it can be checked).
    """
    d = disagreement_matrix(preds)
    k = len(d)
    mean = float(d[np.triu_indices(k, 1)].mean())
    out = {"runs": k, "rows": int(np.asarray(preds).shape[1]), "disagreement": d.round(6).tolist(),
           "mean_disagreement": mean, "estimated_accuracy": 1.0 - mean}
    if labels is not None:
        y = np.asarray(labels, int)
        if len(y) != out["rows"]:
            raise DataError(f"{len(y)} labels for {out['rows']} predicted rows")
        acc = [float((np.asarray(p, int) == y).mean()) for p in preds]
        out.update(accuracy=acc, mean_accuracy=float(np.mean(acc)), gap=out["estimated_accuracy"] - float(np.mean(acc)))
    return out


def distribution(labels: Sequence[int], k: int) -> list[int]:
    """How many of ``labels`` fall in each of the ``k`` classes."""
    return np.bincount(np.asarray(labels, int), minlength=k).tolist()


def restored_evaluation(log_history: list[dict]) -> Optional[dict]:
    """Which evaluation the Trainer's ``load_best_model_at_end`` restored, from its log: the first
    with the highest ``eval_accuracy`` among the first adapter's evaluations (``adapter``-marked
    entries belong to the others), next to the last one. None without evaluations."""
    evals = [h for h in log_history if "eval_accuracy" in h and "adapter" not in h]
    if not evals:
        return None
    i = max(range(len(evals)), key=lambda j: (evals[j]["eval_accuracy"], -j))
    best, last = evals[i], evals[-1]
    return {"evaluations": len(evals), "best": i + 1, "best_epoch": best.get("epoch"), "best_step": best.get("step"),
            "best_accuracy": best["eval_accuracy"], "last_epoch": last.get("epoch"), "last_step": last.get("step"),
            "last_accuracy": last["eval_accuracy"]}


def restored_line(r: Optional[dict]) -> Optional[str]:
    """``best of 4 evaluations (epoch 2) restored: 96.88%; last evaluation 94.79%`` (None without one)."""
    if not r:
        return None
    epoch = r.get("best_epoch")
    where = f"epoch {epoch:g}" if isinstance(epoch, (int, float)) else f"step {r.get('best_step')}"
    if r["evaluations"] == 1:
        return f"one evaluation ({where}): {100 * r['best_accuracy']:.2f}%"
    return (f"best of {r['evaluations']} evaluations ({where}) restored: {100 * r['best_accuracy']:.2f}%; "
            f"last evaluation {100 * r['last_accuracy']:.2f}%")
