"""Fast batched inference, target-set prediction with the label prior, and Kaggle submissions.

:func:`predict_and_submit` is the one path from a trained model (or a run's saved target
probabilities) to ``submission.csv``, shared by ``lorafit run`` and ``lorafit predict``;
:func:`predict_teacher` gives a teacher's logits to distillation and to the selection stage.

Texts are tokenized once, sorted by token length and cut into batches that pad only to their own
longest text; on CPU a batch also holds at most ``max_tokens`` padded tokens (see
:func:`plan_batches`). LoRA weights are merged into the base model and linear weights stored in
bf16 where the device runs bf16 natively (:func:`lorafit.precision.for_inference`); on CPU several batches run at
once, one core each. ``bench/run.py`` measures this against the report's style (every text padded to 512 tokens, batches of 8, unmerged, fp32).
"""

from __future__ import annotations

import csv
import io
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from scipy.special import softmax
from tqdm.auto import tqdm

from lorafit.config import CleanConfig, Config
from lorafit.data.clean import clean_text, clip_text
from lorafit.errors import DataError
from lorafit.io_utils import atomic_path, atomic_write_text, texts_digest
from lorafit.model import adapter_names, adapter_pass, load_teacher, load_trained
from lorafit.precision import autocast, inference_precision, pick_precision
from lorafit.prior import adjust_predictions
from lorafit.report import distribution

log = logging.getLogger(__name__)


def default_max_tokens(device: torch.device, workers: int = 1) -> Optional[int]:
    """Padded tokens per batch. On CPU, batches run by ``workers`` > 1 threads (one core each)
    hold 1024; one batch at a time on all cores, ``max(2048, 1024 * threads)``. On accelerators no
    limit (``batch_size`` texts per batch).

    Measured on MiniLM-L6 (bf16, 2 cores): one core per batch, ~1k-token batches run ~1.1x faster
    per text than ~2k; all cores on one batch, ~2k runs ~1.1x faster than ~4k and ~1.4x faster than
    ~16k (activations stay in cache), and small batches pad less.
    """
    if device.type == "cpu":
        return 1024 if workers > 1 else max(2048, 1024 * torch.get_num_threads())
    return None


def pad_multiple(device: torch.device) -> int:
    """Pad batches to a multiple of 8 tokens on GPUs (tensor-core shapes); not at all on CPU, where
    the extra tokens are only extra work (~5% on AG News)."""
    return 1 if device.type == "cpu" else 8


def plan_batches(lengths: Sequence[int], batch_size: int, max_tokens: Optional[int] = None,
                 multiple_of: int = 8) -> list[np.ndarray]:
    """Indices of each batch: longest texts first (an out-of-memory error shows at once), each
    batch at most ``batch_size`` texts and, when ``max_tokens`` is set, at most that many tokens
    once padded to its longest text (rounded up to ``multiple_of``); never an empty batch."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        n = batch_size
        if max_tokens:
            longest = -(-int(lengths[order[start]]) // multiple_of) * multiple_of
            n = max(1, min(batch_size, max_tokens // max(longest, 1)))
        batches.append(order[start:start + n])
        start += n
    return batches


def cpu_workers(device: torch.device, workers="auto") -> int:
    """Batches predicted at once on CPU (one thread each); 1 on accelerators. ``auto``: torch's
    intra-op thread count, at most 8 (each thread holds the GIL for the Python part of a forward)."""
    if device.type != "cpu":
        return 1
    if workers == "auto":
        return max(1, min(torch.get_num_threads(), 8))
    return max(1, int(workers))


def plan_prediction(lengths: Sequence[int], device: torch.device, batch_size: int, max_tokens: Optional[int] = -1,
                    workers="auto") -> tuple[list[np.ndarray], int, int]:
    """What :func:`predict_logits` runs for texts of these token lengths: the batches (see
    :func:`plan_batches`), the multiple they are padded to, and the number of worker threads."""
    n_workers = cpu_workers(device, workers)
    if max_tokens == -1:
        max_tokens = default_max_tokens(device, n_workers)
    multiple = pad_multiple(device)
    batches = plan_batches(lengths, batch_size, max_tokens, multiple_of=multiple)
    return batches, multiple, min(n_workers, len(batches))


def padded_tokens(lengths: Sequence[int], batches: Sequence[np.ndarray], multiple: int) -> int:
    """Tokens computed for those batches: each padded to its longest text, rounded up to ``multiple``."""
    return sum(len(b) * multiple * -(-int(max(lengths[i] for i in b)) // multiple) for b in batches)


def predict_with_config(model, tokenizer, cfg, texts: Sequence[str], clean: bool = True,
                        progress: bool = False, each: Optional[dict] = None) -> np.ndarray:
    """:func:`predict_logits` with a run config's settings (``predict.batch_size``/``workers``,
    ``model.max_length``, ``predict.precision``; ``clean``: apply ``cfg.clean`` first)."""
    return predict_logits(model, tokenizer, texts, cfg.predict.batch_size, cfg.model.max_length,
                          clean=cfg.clean if clean else None, precision=inference_precision(cfg), progress=progress,
                          workers=cfg.predict.workers, each=each)


@torch.inference_mode()
def predict_logits(model, tokenizer, texts: Sequence[str], batch_size: int = 128, max_length: int = 512,
                   clean: Optional[CleanConfig] = None, precision: str = "auto", progress: bool = False,
                   max_tokens: Optional[int] = -1, workers="auto", each: Optional[dict] = None) -> np.ndarray:
    """Logits (N x K, float32, in input order) for ``texts``, cleaned as at training time.

    A PEFT model holding several adapters (``train.adapters``, ``selftrain.students``) is an
    ensemble: the texts are tokenized and batched once, each adapter predicts them in a pass of its
    own (merged into the base weights for it when :func:`for_inference` was asked to merge), and the
    result is :func:`ensemble_logits` of theirs (the log of the mean probability). ``each``: a dict
    that receives each adapter's logits by name.

    ``max_tokens``: padded tokens per batch (``-1``: :func:`default_max_tokens` of the model's
    device and the workers; ``None``: no limit, ``batch_size`` texts per batch). A model whose weights
    :func:`for_inference` stored in bf16 always runs under bf16 autocast.

    On CPU, ``workers`` threads (:func:`cpu_workers`) each take the next batch and run it on one
    core, instead of every batch being split across all cores: the matrices of one batch are too
    small to keep several cores busy (2 cores: ~1.15x more texts/s). Each batch's numbers do not
    depend on which thread ran it, so the result is the same for any number of workers.
    """
    texts = [clip_text(t, max_length) for t in texts]
    if clean is not None and clean.enabled:
        texts = [clean_text(t, clean.truncate_words) for t in texts]
    if len(texts) == 0:
        return np.zeros((0, model.config.num_labels), dtype=np.float32)
    device = next(model.parameters()).device
    model.eval()
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    ids = enc["input_ids"]
    prec = pick_precision(precision)
    if any(p.dtype == torch.bfloat16 for p in model.parameters()):
        prec = "bf16"
    batches, multiple, n_workers = plan_prediction([len(x) for x in ids], device, batch_size, max_tokens, workers)
    keys = list(enc.keys())

    def run(idx: np.ndarray) -> np.ndarray:
        feats = [{k: enc[k][i] for k in keys} for i in idx]
        batch = tokenizer.pad(feats, return_tensors="pt", pad_to_multiple_of=multiple if multiple > 1 else None)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.inference_mode(), autocast(device, prec):  # both are per thread
            return model(**batch).logits.float().cpu().numpy()

    names = adapter_names(model)  # several: an ensemble, one pass per adapter over the same batches
    bar = tqdm(total=len(batches) * max(1, len(names)), desc="predict", unit="batch") if progress else None

    def run_all() -> np.ndarray:
        out: Optional[np.ndarray] = None

        def store(idx, logits):
            nonlocal out
            if out is None:
                out = np.zeros((len(ids), logits.shape[-1]), dtype=np.float32)
            out[idx] = logits
            if bar is not None:
                bar.update(1)

        if n_workers <= 1:
            for idx in batches:
                store(idx, run(idx))
        else:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # each worker runs its batch's kernels itself, on one core
            try:
                with ThreadPoolExecutor(n_workers, thread_name_prefix="lorafit-predict") as pool:
                    for idx, logits in zip(batches, pool.map(run, batches)):
                        store(idx, logits)
            finally:
                torch.set_num_threads(threads)
        return out

    try:
        if len(names) < 2:
            return run_all()
        per_adapter = {}
        for name in names:  # merged for its own pass when for_inference asked for merged prediction
            with adapter_pass(model, name, merge=getattr(model, "lorafit_merge", False)):
                per_adapter[name] = run_all()
    finally:
        if bar is not None:
            bar.close()
    if each is not None:
        each.update(per_adapter)
    return ensemble_logits(list(per_adapter.values()))


def ensemble_logits(logits: Sequence[np.ndarray], weights: Optional[Sequence[float]] = None) -> np.ndarray:
    """An ensemble's prediction from its members' logits: the log of their mean softmax probability
    (so softmax and argmax downstream read the mean probability), float32. ``weights``: a weighted
    mean, e.g. members that are themselves ensembles of that many adapters."""
    mean = np.average([softmax(np.asarray(x, dtype=np.float64), axis=-1) for x in logits], axis=0, weights=weights)
    return np.log(np.maximum(mean, 1e-30)).astype(np.float32)


def write_submission(path: Path | str, labels: Sequence[int], expected_rows: Optional[int] = None) -> Path:
    """Write ``ID,Label`` (ID = row index of the target set) atomically."""
    if expected_rows is not None and len(labels) != expected_rows:
        raise ValueError(f"submission has {len(labels)} predictions but the target set has {expected_rows} rows; "
                         "the target set changed since prediction; rerun `lorafit predict`.")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["ID", "Label"])
    for i, lab in enumerate(labels):
        w.writerow([i, int(lab)])
    atomic_write_text(path, buf.getvalue())
    return Path(path)


def predict_teacher(teacher_dir: str | Path, texts: Sequence[str], batch_size: int = 128,
                    clean: Optional[CleanConfig] = None) -> np.ndarray:
    """Logits of a teacher (a trained run or any classifier folder, see
    :func:`lorafit.model.load_teacher`) on ``texts`` (cleaned first with ``clean``)."""
    model, tok, max_length = load_teacher(teacher_dir)
    return predict_logits(model, tok, texts, batch_size=batch_size, max_length=max_length, clean=clean)


def predict_target(model, tokenizer, cfg, target_texts: Sequence[str], train_prior: Optional[Sequence[float]] = None,
                   logits: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Probabilities on the target set, adjusted to ``cfg.predict.prior``. Returns
    (raw_probs, adjusted_probs, prior_info). ``logits`` already computed for these texts are reused."""
    if logits is None:
        logits = predict_with_config(model, tokenizer, cfg, target_texts, progress=True)
    return _with_prior(softmax(logits, axis=-1), cfg, train_prior)


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
                       model=None, tokenizer=None, logits: Optional[np.ndarray] = None,
                       train_prior: Optional[Sequence[float]] = None, reuse_probs: bool = False,
                       save_probs: bool = True) -> dict:
    """Predict the target ``texts``, apply ``cfg.predict.prior`` and write ``submission`` (ID,Label).

    The probabilities come from ``logits`` when given, else from the run's saved
    ``target_probs.npz`` when ``reuse_probs`` and it was computed for these texts (a prior is then
    re-applied without the model), else from ``model`` (loaded from ``run_dir`` when None).
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
                model, tokenizer, _ = load_trained(run_dir)
            logits = predict_with_config(model, tokenizer, cfg, texts, progress=True)
        probs = softmax(logits, axis=-1)
        if save_probs:
            save_target_probs(probs_file, probs, texts)
    probs, adjusted, info = _with_prior(probs, cfg, train_prior)
    preds = adjusted.argmax(1)
    write_submission(submission, preds, expected_rows=len(texts))
    return {"rows": len(texts), "predicted_distribution": distribution(preds, k),
            "raw_distribution": distribution(probs.argmax(1), k),
            "mean_confidence": float(probs.max(1).mean()), "prior": info}


def save_target_probs(path: Path, probs: np.ndarray, texts: Sequence[str]) -> None:
    """Keep the raw target probabilities so a prior can be re-applied without the model."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, probs=probs.astype(np.float32), digest=np.array(texts_digest(texts)))


def read_target_probs(path: Path) -> tuple[np.ndarray, str]:
    """A run's saved target probabilities and the digest of the texts they were computed for;
    a missing or unreadable file is a DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found; `lorafit predict {path.parent}` writes the run's target probabilities")
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["probs"].astype(np.float64), str(z["digest"])
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{path}: not a target_probs file ({e})") from e


def load_target_probs(path: Path, texts: Sequence[str]) -> Optional[np.ndarray]:
    """The saved probabilities, or None when absent or computed for other texts."""
    if not Path(path).is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        if str(z["digest"]) != texts_digest(texts):
            return None
        return z["probs"].astype(np.float64)
