"""Fast batched inference and Kaggle submission writing.

Texts are tokenized once, sorted by token length and cut into batches that pad only to their own
longest text; on CPU a batch also holds at most ``max_tokens`` padded tokens (see
:func:`plan_batches`). LoRA weights are merged into the base model and linear weights stored in
bf16 where the device runs bf16 natively (:func:`for_inference`); on CPU several batches run at
once, one core each. ``bench/run.py`` measures this against the report's style (every text padded to 512 tokens, batches of 8, unmerged, fp32).
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
from lorafit.data.clean import clean_text, clip_text
from lorafit.io_utils import atomic_write_text
from lorafit.model import pick_precision

log = logging.getLogger(__name__)


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "fp16" and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


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


def for_inference(model, precision: str = "auto", merge: bool = True):
    """The model as prediction wants it: LoRA merged into the base weights (``merge``; one matrix
    product per layer instead of three) and, when ``precision`` resolves to bf16, every
    ``nn.Linear`` weight stored in bf16.

    Under bf16 autocast each linear layer casts its fp32 weight to bf16 on every call; storing it
    so once gives the same numbers (the same rounding) without the copies (~1.2x faster on a
    2-core CPU, see ``bench/``). Do not train the returned model further: it is changed in place.
    """
    from peft import PeftModel

    if merge and isinstance(model, PeftModel):
        model = model.merge_and_unload()
    if pick_precision(precision) == "bf16":
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.to(torch.bfloat16)
    return model.eval()


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
                        progress: bool = False) -> np.ndarray:
    """:func:`predict_logits` with a run config's settings (``predict.batch_size``/``workers``,
    ``model.max_length``, ``train.precision``; ``clean``: apply ``cfg.clean`` first)."""
    return predict_logits(model, tokenizer, texts, cfg.predict.batch_size, cfg.model.max_length,
                          clean=cfg.clean if clean else None, precision=cfg.train.precision, progress=progress,
                          workers=cfg.predict.workers)


@torch.inference_mode()
def predict_logits(model, tokenizer, texts: Sequence[str], batch_size: int = 128, max_length: int = 512,
                   clean: Optional[CleanConfig] = None, precision: str = "auto", progress: bool = False,
                   max_tokens: Optional[int] = -1, workers="auto") -> np.ndarray:
    """Logits (N x K, float32, in input order) for ``texts``, cleaned as at training time.

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
        with torch.inference_mode(), _autocast(device, prec):  # both are per thread
            return model(**batch).logits.float().cpu().numpy()

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(batches), desc="predict", unit="batch")
    out: Optional[np.ndarray] = None

    def store(idx, logits):
        nonlocal out
        if out is None:
            out = np.zeros((len(ids), logits.shape[-1]), dtype=np.float32)
        out[idx] = logits
        if bar is not None:
            bar.update(1)

    try:
        if n_workers <= 1:
            for idx in batches:
                store(idx, run(idx))
        else:
            from concurrent.futures import ThreadPoolExecutor

            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # each worker runs its batch's kernels itself, on one core
            try:
                with ThreadPoolExecutor(n_workers, thread_name_prefix="lorafit-predict") as pool:
                    for idx, logits in zip(batches, pool.map(run, batches)):
                        store(idx, logits)
            finally:
                torch.set_num_threads(threads)
    finally:
        if bar is not None:
            bar.close()
    return out


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


def predict_target(model, tokenizer, cfg, target_texts: Sequence[str], train_prior: Optional[Sequence[float]] = None,
                   logits: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Probabilities on the target set, adjusted to ``cfg.predict.prior``. Returns
    (raw_probs, adjusted_probs, prior_info). ``logits`` already computed for these texts are reused."""
    from lorafit.prior import adjust_predictions

    if logits is None:
        logits = predict_with_config(model, tokenizer, cfg, target_texts, progress=True)
    probs = softmax(logits)
    adjusted, info = adjust_predictions(probs, cfg.predict.prior,
                                        train_prior=None if train_prior is None else np.asarray(train_prior, float))
    if info.get("mode") not in (None, "none"):
        log.info("prior %s: %s; %d predictions changed", info["mode"],
                 [round(p, 3) for p in info["prior"]], info["changed"])
    return probs, adjusted, info
