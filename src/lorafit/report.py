"""Metrics, plots and the run summary."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

from lorafit.io_utils import atomic_write_bytes


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


def _save_fig(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_confusion(cm: Sequence[Sequence[int]], names: Sequence[str], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black", fontsize=8)
    ax.set_title(title or "confusion matrix (validation)")
    _save_fig(fig, path)


def plot_curves(log_history: list[dict], path: Path) -> None:
    """Loss and accuracy against step, like the report's Figure 4."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    ev = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    acc = [(h["step"], h["eval_accuracy"]) for h in log_history if "eval_accuracy" in h]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    if acc:
        a1.plot(*zip(*acc), marker="o", label="validation")
    a1.set_title("accuracy vs step")
    a1.set_xlabel("step")
    a1.legend() if acc else None
    if tr:
        a2.plot(*zip(*tr), label="train")
    if ev:
        a2.plot(*zip(*ev), marker="o", label="validation")
    a2.set_title("loss vs step")
    a2.set_xlabel("step")
    if tr or ev:
        a2.legend()
    _save_fig(fig, path)


def distribution(labels: Sequence[int], k: int) -> list[int]:
    return np.bincount(np.asarray(labels, int), minlength=k).tolist()
