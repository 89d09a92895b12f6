"""Batched inference shared by the stages: logits of a model on texts, ensembles of adapters, and
a teacher's logits (cached by text hash for distillation).

Texts are tokenized once, sorted by token length and cut into batches that pad only to their own
longest text; on CPU a batch also holds at most ``max_tokens`` padded tokens (see
:func:`plan_batches`). LoRA weights are merged into the base model and linear weights stored in
bf16 where the device runs bf16 natively (:func:`lorafit.precision.for_inference`); on CPU several
batches run at once, one core each. ``bench/run.py`` measures this against the report's style
(every text padded to 512 tokens, batches of 8, unmerged, fp32).
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from scipy.special import softmax
from tqdm.auto import tqdm

from lorafit.config import CleanConfig
from lorafit.data.clean import clean_text, clip_text
from lorafit.io_utils import atomic_path
from lorafit.logs import progress_bars
from lorafit.model import adapter_names, adapter_pass, load_teacher
from lorafit.precision import autocast, inference_precision, pick_precision

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
                        progress: bool = False, each: Optional[dict] = None,
                        merge_adapters: bool = False) -> np.ndarray:
    """:func:`predict_logits` with a run config's settings (``predict.batch_size``/``workers``,
    ``model.max_length``, ``predict.precision``; ``clean``: apply ``cfg.clean`` first).
    ``merge_adapters`` is the caller's, not ``cfg.predict.merge_lora``: a model still training (self-training's
    students) is never merged; a prepared one says so (:func:`lorafit.precision.for_inference`)."""
    return predict_logits(model, tokenizer, texts, cfg.predict.batch_size, cfg.model.max_length,
                          clean=cfg.clean if clean else None, precision=inference_precision(cfg), progress=progress,
                          workers=cfg.predict.workers, each=each, merge_adapters=merge_adapters)


@torch.inference_mode()
def predict_logits(model, tokenizer, texts: Sequence[str], batch_size: int = 128, max_length: int = 512,
                   clean: Optional[CleanConfig] = None, precision: str = "auto", progress: bool = False,
                   max_tokens: Optional[int] = -1, workers="auto", each: Optional[dict] = None,
                   merge_adapters: bool = False) -> np.ndarray:
    """Logits (N x K, float32, in input order) for ``texts``, cleaned as at training time.

    A PEFT model holding several adapters (``train.adapters``, ``selftrain.students``) is an
    ensemble: the texts are tokenized and batched once, each adapter predicts them in a pass of its
    own (merged into the base weights for it with ``merge_adapters``, what :func:`for_inference` returns), and the
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
    bar = (tqdm(total=len(batches) * max(1, len(names)), desc="predict", unit="batch")
           if progress and progress_bars() else None)

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
            with adapter_pass(model, name, merge=merge_adapters):
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


def predict_teacher(teacher_dir: str | Path, texts: Sequence[str], batch_size: int = 128,
                    clean: Optional[CleanConfig] = None) -> np.ndarray:
    """Logits of a teacher (a trained run or any classifier folder, see
    :func:`lorafit.model.load_teacher`) on ``texts`` (cleaned first with ``clean``)."""
    model, tok, max_length, merge_adapters = load_teacher(teacher_dir)
    return predict_logits(model, tok, texts, batch_size=batch_size, max_length=max_length, clean=clean,
                          merge_adapters=merge_adapters)


def _text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def teacher_logits(teacher_dir: str | Path, texts: list[str], cache_file: Path, batch_size: int = 128) -> np.ndarray:
    """Logits of a teacher (a trained lorafit run or a classifier folder) for ``texts``, computed
    once and cached by text hash."""
    cache: dict[str, np.ndarray] = {}
    if cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as z:
            cache = dict(zip(z["keys"].tolist(), z["logits"]))
    keys = [_text_key(t) for t in texts]
    missing = sorted({k: t for k, t in zip(keys, texts) if k not in cache}.items())
    if missing:
        new = predict_teacher(teacher_dir, [t for _, t in missing], batch_size=batch_size)
        cache.update({k: v for (k, _), v in zip(missing, new)})
        with atomic_path(cache_file, suffix=".npz") as tmp:
            np.savez(tmp, keys=np.array(list(cache)), logits=np.stack(list(cache.values())))
        log.info("teacher logits: computed %d, reused %d (cache %s)", len(missing), len(texts) - len(missing), cache_file)
    return np.stack([cache[k] for k in keys]).astype(np.float32)
