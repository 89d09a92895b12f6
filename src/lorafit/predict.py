"""Target-set prediction with the label prior, and Kaggle submissions.

:func:`predict_and_submit` is the one path from a trained model (or a run's saved target
probabilities) to ``submission.csv``, shared by ``lorafit run`` and ``lorafit predict``. The
batched inference itself lives in :mod:`lorafit.inference`.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from scipy.special import softmax

from lorafit.config import Config
from lorafit.errors import DataError, RunStateError
from lorafit.inference import predict_with_config
from lorafit.io_utils import atomic_path, atomic_write_text, texts_digest
from lorafit.metrics import distribution
from lorafit.model import load_trained
from lorafit.prior import adjust_predictions
from lorafit.runs import read_target_probs as read_saved_target_probs

log = logging.getLogger(__name__)


def write_submission(path: Path | str, labels: Sequence[int], expected_rows: Optional[int] = None,
                     ids: Optional[Sequence[str]] = None) -> Path:
    """Write ``ID,Label`` atomically; ID = the target set's own IDs (``ids``, in its row order) or
    else its row index."""
    if expected_rows is not None and len(labels) != expected_rows:
        raise DataError(f"submission has {len(labels)} predictions but the target set has {expected_rows} rows; "
                         "the target set changed since prediction; rerun `lorafit predict`.")
    if ids is not None and len(ids) != len(labels):
        raise ValueError(f"submission has {len(labels)} predictions but {len(ids)} IDs")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["ID", "Label"])
    for i, lab in zip(range(len(labels)) if ids is None else ids, labels):
        w.writerow([i, int(lab)])
    atomic_write_text(path, buf.getvalue())
    return Path(path)


def _with_prior(probs: np.ndarray, cfg, train_prior) -> tuple[np.ndarray, np.ndarray, dict]:
    adjusted, info = adjust_predictions(probs, cfg.predict.prior,
                                        train_prior=None if train_prior is None else np.asarray(train_prior, float))
    if info.get("mode") not in (None, "none"):
        log.info("prior %s: %s; %d predictions changed", info["mode"],
                 [round(p, 3) for p in info["prior"]], info["changed"])
    return probs, adjusted, info


def label_prior(labels: Sequence[int], k: int) -> np.ndarray:
    """Class proportions of a labeled set (the training prior that EM starts from)."""
    labels = np.asarray(labels, int)
    return np.bincount(labels, minlength=k) / len(labels)


def predict_and_submit(cfg: Config, texts: Sequence[str], submission: Path, *, run_dir: Path,
                       model=None, tokenizer=None, merge_adapters: bool = False, logits: Optional[np.ndarray] = None,
                       train_prior: Optional[Sequence[float]] = None, reuse_probs: bool = False,
                       save_probs: bool = True, ids: Optional[Sequence[str]] = None) -> dict:
    """Predict the target ``texts``, apply ``cfg.predict.prior`` and write ``submission`` (ID,Label;
    ``ids``: the target set's own IDs, else the row numbers).

    The probabilities come from ``logits`` when given, else from the run's saved
    ``target_probs.npz`` when ``reuse_probs`` and it was computed for these texts (a prior is then
    re-applied without the model), else from ``model`` (loaded from ``run_dir`` when None;
    ``merge_adapters``: what :func:`lorafit.precision.for_inference` returned with it).
    Freshly computed ones are saved to ``run_dir/target_probs.npz`` when ``save_probs``. Returns
    the target-set facts of metrics.json: rows, predicted and raw class counts, mean confidence and
    the prior applied.
    """
    k = len(cfg.data.labels)
    probs_file = Path(run_dir) / "target_probs.npz"
    probs = load_target_probs(probs_file, texts) if reuse_probs and logits is None else None
    if probs is None:
        if logits is None:
            if model is None:
                model, tokenizer, _, merge_adapters = load_trained(run_dir)
            logits = predict_with_config(model, tokenizer, cfg, texts, progress=True, merge_adapters=merge_adapters)
        probs = softmax(logits, axis=-1)
        if save_probs:
            save_target_probs(probs_file, probs, texts)
    probs, adjusted, info = _with_prior(probs, cfg, train_prior)
    preds = adjusted.argmax(1)
    write_submission(submission, preds, expected_rows=len(texts), ids=ids)
    return {"rows": len(texts), "predicted_distribution": distribution(preds, k),
            "raw_distribution": distribution(probs.argmax(1), k),
            "mean_confidence": float(probs.max(1).mean()), "prior": info}


def save_target_probs(path: Path, probs: np.ndarray, texts: Sequence[str]) -> None:
    """Keep the raw target probabilities so a prior can be re-applied without the model."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, probs=probs.astype(np.float32), digest=np.array(texts_digest(texts)))


def read_target_probs(path: Path) -> tuple[np.ndarray, str]:
    """A run's saved target probabilities and the digest of the texts they were computed for;
    a missing or damaged file is a RunStateError naming it (:func:`lorafit.runs.read_target_probs`)."""
    return read_saved_target_probs(path)


def load_target_probs(path: Path, texts: Sequence[str]) -> Optional[np.ndarray]:
    """The saved probabilities, or None when absent or computed for other texts. A damaged file
    (truncated, garbage) is also None, with a warning: it is this run's cache, computed again and
    replaced."""
    if not Path(path).is_file():
        return None
    try:
        probs, digest = read_saved_target_probs(path)
    except RunStateError as e:
        log.warning("%s; computing the target probabilities again", e)
        return None
    return probs if digest == texts_digest(texts) else None
