"""Target-set prediction with the label prior, and Kaggle submissions.

:func:`predict_and_submit` is the one path from a trained model (or a run's saved target
probabilities) to ``submission.csv``, shared by ``lorafit run`` and ``lorafit predict``
(:func:`predict_run`). :func:`score_run_on_file` scores a trained run on a labeled set
(``lorafit evaluate``, ``lorafit agreement --data``, a search's files); :func:`target_agreement`
is the label-free estimate of ``lorafit agreement``. The batched inference itself lives in
:mod:`lorafit.inference`.

The model libraries (torch, transformers, PEFT) are imported only when a model runs, so a wrong
path, key or prior fails in a second.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from scipy.special import softmax

from lorafit.config import Config, load_config
from lorafit.errors import ConfigError, DataError, RunStateError
from lorafit.io_utils import atomic_path, atomic_write_text, texts_digest
from lorafit.metrics import agreement_estimate, classification_metrics, distribution
from lorafit.prior import adjust_predictions, carry_adjustment, parse_prior
from lorafit.runs import CONFIG, DATA, MODEL, TARGET_PROBS, require_trained_run
from lorafit.runs import read_target_probs as read_saved_target_probs
from lorafit.views import load_views, with_views

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
                       save_probs: bool = True, ids: Optional[Sequence[str]] = None,
                       views: Optional[list] = None) -> dict:
    """Predict the target ``texts``, apply ``cfg.predict.prior`` and write ``submission`` (ID,Label;
    ``ids``: the target set's own IDs, else the row numbers).

    The probabilities come from ``logits`` when given, else from the run's saved
    ``target_probs.npz`` when ``reuse_probs`` and it was computed for these texts (a prior is then
    re-applied without the model), else from ``model`` (loaded from ``run_dir`` when None;
    ``merge_adapters``: what :func:`lorafit.precision.for_inference` returned with it), averaged with
    the run's frozen ``views`` (None: those saved in ``run_dir``; see :mod:`lorafit.views`).
    Freshly computed ones are saved to ``run_dir/target_probs.npz`` when ``save_probs``. Returns
    the target-set facts of metrics.json: rows, predicted and raw class counts, mean confidence and
    the prior applied.
    """
    k = len(cfg.data.labels)
    probs_file = Path(run_dir) / "target_probs.npz"
    probs = load_target_probs(probs_file, texts) if reuse_probs and logits is None else None
    if probs is None:
        if logits is None:
            from lorafit.inference import predict_with_config

            if model is None:
                from lorafit.model import load_trained

                model, tokenizer, _, merge_adapters = load_trained(run_dir)
            logits = predict_with_config(model, tokenizer, cfg, texts, progress=True, merge_adapters=merge_adapters)
        if views is None:
            views = load_views(Path(run_dir) / MODEL)
        probs = softmax(with_views(logits, views, texts, cfg, progress=True), axis=-1)
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


def predict_run(run_dir: Path | str, submission: Path, *, target: Optional[str] = None, prior: Optional[str] = None,
                text_column: Optional[str] = None, reuse_probs: bool = True,
                allow_pickle: bool = False) -> tuple[dict, list[str]]:
    """``lorafit predict``: predict a target set with a trained run and write ``submission`` (see
    :func:`predict_and_submit`). ``target``: the target set (default the run's ``data.target``);
    ``prior``: replaces the run's ``predict.prior`` (checked like any config override, before any
    model work). The run's own target set reuses its saved probabilities (``reuse_probs``: a prior
    re-applied without the model), and probabilities computed afresh for it are kept for later
    priors. Returns the target-set facts (:func:`predict_and_submit`) and the class names."""
    from lorafit.data.io import load_unlabeled
    from lorafit.data.prepare import clean_dataset

    require_trained_run(run_dir)
    run_dir = Path(run_dir)
    # selftrain.select_after_prior needs a prior for self-training only, which prediction does not run
    cfg = load_config(run_dir / CONFIG,
                      [f"predict.prior={prior}", "selftrain.select_after_prior=false"] if prior is not None else [])
    spec = target or cfg.data.target
    if not spec:
        raise ConfigError(f"{run_dir}: its config has no data.target; pass --target PATH")
    # consent to unpickle is given per command, never read from the run's files
    ds = clean_dataset(load_unlabeled(spec, text_column or cfg.data.target_text_column, allow_pickle=allow_pickle), cfg)
    train_dir, train_prior = run_dir / DATA / "train", None
    if train_dir.is_dir():
        import datasets

        train_prior = label_prior(datasets.load_from_disk(str(train_dir))["label"], len(cfg.data.labels))
    facts = predict_and_submit(cfg, ds["text"], submission, run_dir=run_dir, train_prior=train_prior,
                               reuse_probs=reuse_probs, save_probs=target is None,
                               ids=ds["id"] if "id" in ds.column_names else None)
    return facts, list(map(str, cfg.data.labels))


@dataclass
class FileScore:
    """A trained run scored on a labeled set (:func:`score_run_on_file`)."""
    metrics: dict  # accuracy, macro-F1, per-class scores, confusion (and ``prior`` when fitted on the target set)
    predictions: np.ndarray  # the predicted class of each row (after the prior, when one is applied)
    dataset: Any  # the labeled set as read (``text`` and ``label`` columns)

    @property
    def accuracy(self) -> float:
        return self.metrics["accuracy"]


def check_prior(prior: Optional[str], num_labels: int) -> None:
    """A ``--prior`` value for ``num_labels`` classes, checked by :func:`lorafit.prior.parse_prior`
    (a ConfigError naming it otherwise)."""
    try:
        parse_prior(prior, num_labels)
    except ValueError as e:
        raise ConfigError(f"--prior {prior}: {e}") from None


def score_run_on_file(run_dir: Path | str, data: Any, *, text_column: Optional[str] = None,
                      label_column: Optional[str] = None, prior: Optional[str] = None, prior_fit: str = "data",
                      allow_pickle: bool = False, progress: bool = False) -> FileScore:
    """Accuracy, macro-F1 and per-class metrics of a trained run on a labeled set: ``data`` is a
    file, folder or Hub id (read with the run's columns, or ``text_column``/``label_column``, and
    its labels), or a dataset with ``text`` and ``label`` columns already read.

    ``prior`` (none | uniform | em | proportions) adjusts the probabilities first, fitted on this
    set (``prior_fit="data"``) or on the run's saved target probabilities (``"target"``: its
    per-class factors re-weight this set, as the submission was). Every path, key and value is
    checked before the model libraries load."""
    require_trained_run(run_dir)
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / CONFIG)
    adjust = prior not in (None, "none")
    if adjust:
        check_prior(prior, len(cfg.data.labels))
    target_probs = None
    if prior_fit == "target":  # the run must have predicted its target set
        if not adjust:
            raise ConfigError("--prior-fit target needs --prior (uniform | em | proportions)")
        probs_file = run_dir / TARGET_PROBS
        if not probs_file.is_file():
            raise RunStateError(f"{probs_file}: no saved target probabilities (the run predicted no target set); "
                                "run `lorafit predict` on it first")
        target_probs = read_saved_target_probs(probs_file)[0]
    ds = data
    if isinstance(data, (str, Path)):
        from lorafit.data.io import load_labeled

        ds = load_labeled(str(data), text_column or cfg.data.text_column, label_column or cfg.data.label_column,
                          cfg.data.labels, allow_pickle=allow_pickle)
    from lorafit.inference import predict_with_config
    from lorafit.model import load_trained

    model, tok, cfg, merge_adapters = load_trained(run_dir)
    logits = predict_with_config(model, tok, cfg, ds["text"], progress=progress, merge_adapters=merge_adapters)
    logits = with_views(logits, load_views(run_dir / MODEL), ds["text"], cfg, progress=progress)
    preds, fitted = logits.argmax(1), None
    if adjust:
        probs = softmax(logits, axis=-1)
        if target_probs is None:
            preds = adjust_predictions(probs, prior)[0].argmax(1)
        else:  # the adjustment the submission gets, carried to these rows
            adjusted, fitted = carry_adjustment(probs, target_probs, prior)
            preds = adjusted.argmax(1)
    m = classification_metrics(ds["label"], preds, list(map(str, cfg.data.labels)))
    if fitted is not None:
        m["prior"] = {"mode": fitted["mode"], "fitted_on": "target", "class_weights": fitted["class_weights"]}
    return FileScore(m, preds, ds)


def target_agreement(run_dirs: Sequence[Path | str], prior: Optional[str] = None) -> dict:
    """``lorafit agreement``: the label-free accuracy estimate of runs of one recipe trained with
    other seeds, from how often their saved target predictions disagree (1 - mean pairwise
    disagreement; Jiang et al. 2022), after ``prior`` when given. No model runs. Returns
    agreement.json's ``runs``, ``prior`` and ``target``."""
    saved = {str(run): read_saved_target_probs(Path(run) / TARGET_PROBS) for run in run_dirs}
    check_prior(prior, next(iter(saved.values()))[0].shape[1])  # a bad prior fails before any model work
    digests = {run: digest for run, (_, digest) in saved.items()}
    if len(set(digests.values())) > 1:
        raise RunStateError("the runs predicted different target sets (target_probs.npz digests differ: "
                            + ", ".join(f"{r} {d[:8]}" for r, d in digests.items()) + ")")
    adjust = prior not in (None, "none")
    target = [(adjust_predictions(probs, prior)[0] if adjust else probs).argmax(1) for probs, _ in saved.values()]
    return {"runs": [str(r) for r in run_dirs], "prior": prior or "none", "target": agreement_estimate(target)}


def data_agreement(run_dirs: Sequence[Path | str], data: str, prior: Optional[str] = None,
                   allow_pickle: bool = False, progress: bool = False) -> dict:
    """The same estimate on a labeled set (``lorafit agreement --data``): each run predicts it
    (:func:`score_run_on_file`, ``prior`` fitted on the set), and the estimate is compared with the
    runs' accuracy there (its ``gap``; see :func:`lorafit.metrics.agreement_estimate`)."""
    preds, ds = [], data
    for run in run_dirs:  # the set is read once: the runs are one recipe (same columns and labels)
        scored = score_run_on_file(run, ds, prior=prior, allow_pickle=allow_pickle, progress=progress)
        preds.append(scored.predictions)
        ds = scored.dataset
    return agreement_estimate(preds, ds["label"])
