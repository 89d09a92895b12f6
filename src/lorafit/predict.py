"""Fast batched inference and Kaggle submission writing.

Texts are sorted by token length so each batch pads only to its own longest text; LoRA weights
are merged into the base model (see ``model.load_trained``); bf16 autocast where it is fast.
"""

from __future__ import annotations

import contextlib
import io
import csv
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from lorafit.config import CleanConfig
from lorafit.data.clean import clean_text
from lorafit.io_utils import atomic_write_text
from lorafit.model import pick_precision

log = logging.getLogger(__name__)


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "fp16" and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


@torch.inference_mode()
def predict_logits(model, tokenizer, texts: Sequence[str], batch_size: int = 128, max_length: int = 512,
                   clean: Optional[CleanConfig] = None, precision: str = "auto", progress: bool = False) -> np.ndarray:
    """Logits (N x K, float32, in input order) for ``texts``, cleaned as at training time."""
    if clean is not None and clean.enabled:
        texts = [clean_text(t, clean.truncate_words) for t in texts]
    device = next(model.parameters()).device
    model.eval()
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    ids = enc["input_ids"]
    order = np.argsort([len(x) for x in ids], kind="stable")[::-1]  # longest first: OOM shows at once
    out: list[Optional[np.ndarray]] = [None] * len(ids)
    prec = pick_precision(precision)
    batches = range(0, len(order), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="predict", unit="batch")
    for start in batches:
        idx = order[start:start + batch_size]
        feats = [{k: enc[k][i] for k in enc.keys()} for i in idx]
        batch = tokenizer.pad(feats, return_tensors="pt", pad_to_multiple_of=8)
        batch = {k: v.to(device) for k, v in batch.items()}
        with _autocast(device, prec):
            logits = model(**batch).logits
        for j, row in zip(idx, logits.float().cpu().numpy()):
            out[j] = row
    if not out:
        return np.zeros((0, model.config.num_labels), dtype=np.float32)
    return np.stack(out).astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


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


def predict_target(model, tokenizer, cfg, target_texts: Sequence[str], train_prior: Optional[Sequence[float]] = None
                   ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Probabilities on the target set, adjusted to ``cfg.predict.prior``. Returns
    (raw_probs, adjusted_probs, prior_info)."""
    from lorafit.prior import adjust_predictions

    logits = predict_logits(model, tokenizer, target_texts, cfg.predict.batch_size, cfg.model.max_length,
                            clean=cfg.clean, precision=cfg.train.precision, progress=True)
    probs = softmax(logits)
    adjusted, info = adjust_predictions(probs, cfg.predict.prior,
                                        train_prior=None if train_prior is None else np.asarray(train_prior, float))
    if info.get("mode") not in (None, "none"):
        log.info("prior %s: %s; %d predictions changed", info["mode"],
                 [round(p, 3) for p in info["prior"]], info["changed"])
    return probs, adjusted, info
