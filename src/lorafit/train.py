"""Training stage: tokenize once, Hugging Face ``Trainer`` with the report's arguments, and a loss
that adds per-sample weights, soft labels (self-training) and knowledge distillation.

Distillation loss: ``alpha * CE + (1 - alpha) * T^2 * KL(softmax(teacher/T) || softmax(student/T))``,
with teacher logits computed once and cached next to the data (see :func:`teacher_logits`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import signal
import threading
from pathlib import Path
from typing import Optional

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from transformers import (
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from lorafit.config import Config
from lorafit.data.clean import clip_text
from lorafit.errors import Interrupted
from lorafit.io_utils import atomic_path, atomic_write_json, last_complete_checkpoint
from lorafit.precision import pick_precision
from lorafit.predict import predict_teacher
from lorafit.report import classification_metrics

log = logging.getLogger(__name__)

EXTRA_COLUMNS = ("weight", "soft_labels", "teacher_logits")


# ------------------------------------------------------------------ data


def tokenize(ds: datasets.Dataset, tokenizer, max_length: int) -> datasets.Dataset:
    """Tokenize once without padding (padding happens per batch); keep label/extra columns and a
    ``length`` column used for length-grouped batching."""

    def enc(batch):
        out = tokenizer([clip_text(t, max_length) for t in batch["text"]], truncation=True, max_length=max_length)
        out["length"] = [len(x) for x in out["input_ids"]]
        return out

    keep = [c for c in ds.column_names if c in ("label", *EXTRA_COLUMNS)]
    tok = ds.map(enc, batched=True, batch_size=1000, remove_columns=[c for c in ds.column_names if c not in keep],
                 desc="tokenize", load_from_cache_file=False)
    if "label" in tok.column_names:
        tok = tok.rename_column("label", "labels")
    return tok


class Collator:
    """Dynamic padding of the token columns; extra per-sample columns are stacked as tensors."""

    def __init__(self, tokenizer):
        self.pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)

    def __call__(self, features):
        extras = {k: [f.pop(k) for f in features] for k in EXTRA_COLUMNS if k in features[0]}
        for f in features:
            f.pop("length", None)
        batch = self.pad(features)
        for k, v in extras.items():
            batch[k] = torch.tensor(np.asarray(v, dtype=np.float32))
        return batch


# ------------------------------------------------------------------ loss


def lorafit_loss(logits: torch.Tensor, labels: torch.Tensor, *, weight=None, soft_labels=None,
                 teacher_logits=None, alpha: float = 0.5, temperature: float = 2.0,
                 label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-sample weighted mean of cross-entropy against the labels or the soft labels (with
    ``label_smoothing``), optionally mixed with the distillation term. With no extras this is
    ``F.cross_entropy(logits, labels)``."""
    logits = logits.float()
    target = soft_labels.float() if soft_labels is not None else labels.long()
    per_sample = F.cross_entropy(logits, target, reduction="none", label_smoothing=label_smoothing)
    if teacher_logits is not None:
        t = temperature
        kl = F.kl_div(F.log_softmax(logits / t, dim=-1), F.log_softmax(teacher_logits.float() / t, dim=-1),
                      reduction="none", log_target=True).sum(-1)
        per_sample = alpha * per_sample + (1 - alpha) * (t * t) * kl
    if weight is None:
        return per_sample.mean()
    w = weight.float()
    return (w * per_sample).sum() / w.sum().clamp_min(1e-12)


class LorafitTrainer(Trainer):
    """``Trainer`` whose loss is :func:`lorafit_loss` (weights, soft labels, distillation)."""

    def __init__(self, *args, distill_alpha: float = 0.5, distill_temperature: float = 2.0,
                 label_smoothing: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.distill_alpha = distill_alpha
        self.distill_temperature = distill_temperature
        self.smoothing = label_smoothing

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        extras = {k: inputs.pop(k) for k in EXTRA_COLUMNS if k in inputs}
        outputs = model(**inputs)
        loss = lorafit_loss(outputs.logits, labels, alpha=self.distill_alpha, temperature=self.distill_temperature,
                            label_smoothing=self.smoothing if model.training else 0.0, **extras)
        return (loss, outputs) if return_outputs else loss


def compute_metrics(eval_pred) -> dict:
    """Accuracy and macro-F1 of an evaluation (the same numbers as metrics.json's)."""
    logits, labels = eval_pred
    logits = np.asarray(logits)
    m = classification_metrics(labels, logits.argmax(-1), [str(c) for c in range(logits.shape[-1])])
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}


# ------------------------------------------------------------------ optimiser choice


def resolve_optim(requested: str, device: str) -> str:
    """Fused AdamW where this torch build supports it on ``device``, else plain AdamW (logged)."""
    if "fused" not in requested:
        return requested
    try:
        p = torch.nn.Parameter(torch.zeros(2, device=device))
        opt = torch.optim.AdamW([p], fused=True)
        p.grad = torch.ones_like(p)
        opt.step()
        return requested
    except (RuntimeError, TypeError) as e:
        log.warning("fused AdamW is not supported on %s (%s); falling back to adamw_torch", device, e)
        return "adamw_torch"


# transformers renamed gradient_checkpointing to activation_checkpointing (the old name warns, and goes in v6)
_CHECKPOINTING_ARG = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
                      else "gradient_checkpointing")


def training_arguments(cfg: Config, output_dir: Path, epochs: Optional[float] = None,
                       eval_enabled: bool = True) -> TrainingArguments:
    t = cfg.train
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = pick_precision(t.precision)
    per_epoch_eval = t.eval_steps is None
    strategy = ("epoch" if per_epoch_eval else "steps") if eval_enabled else "no"
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=float(epochs if epochs is not None else t.epochs),
        max_steps=t.max_steps if epochs is None else -1,  # self-training rounds count epochs
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size or 4 * t.batch_size,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        lr_scheduler_type=t.lr_scheduler,
        optim=resolve_optim(t.optim, device),
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        eval_strategy=strategy,
        save_strategy=strategy if eval_enabled else "epoch",
        eval_steps=t.eval_steps,
        save_steps=t.eval_steps,
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=eval_enabled,
        metric_for_best_model="accuracy",
        greater_is_better=True,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        length_column_name="length",
        **{_CHECKPOINTING_ARG: t.gradient_checkpointing},
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,  # every LoRA parameter gets a gradient: skip DDP's extra graph walk
        dataloader_num_workers=t.dataloader_workers,
        report_to=["tensorboard"],
        disable_tqdm=False,
        use_cpu=device == "cpu",
    )


class SaveAndStop(TrainerCallback):
    """Checkpoint every ``save_steps`` steps (``train.save_steps``), and on SIGINT/SIGTERM save a
    checkpoint at the end of the current step and stop, so an interrupted run resumes from there.
    A second signal interrupts at once (the previous handler)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, save_steps: Optional[int] = None):
        self.save_steps = save_steps
        self.received: Optional[str] = None
        self._previous: dict = {}

    @contextlib.contextmanager
    def handling_signals(self):
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield self
            return
        self._previous = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS}
        try:
            yield self
        finally:
            for s, h in self._previous.items():
                signal.signal(s, h)

    def _on_signal(self, signum, frame):
        self.received = signal.Signals(signum).name
        for s, h in self._previous.items():  # a second signal acts as it did before training
            signal.signal(s, h)
        log.warning("%s received: saving a checkpoint at the end of this step, then stopping "
                    "(send it again to stop at once)", self.received)

    def on_step_end(self, args, state, control, **kwargs):
        if self.received:
            control.should_save = True
            control.should_training_stop = True
        elif self.save_steps and state.global_step % self.save_steps == 0:
            control.should_save = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.received:  # saved at the step already; skip the end-of-epoch evaluation
            control.should_evaluate = False
            control.should_save = False
        return control


def train_model(cfg: Config, model, tokenizer, train_ds: datasets.Dataset, val_ds: Optional[datasets.Dataset],
                out_dir: Path, epochs: Optional[float] = None, resume: Optional[bool] = None,
                callbacks: Optional[list] = None):
    """Train ``model`` (a PEFT model) in place; checkpoints go to ``out_dir``. Returns the trainer.

    ``train_ds``/``val_ds`` carry ``text`` and ``label`` (and optionally ``weight``,
    ``soft_labels``, ``teacher_logits``). Resumes from the last checkpoint in ``out_dir`` when
    ``train.resume`` is set. ``callbacks``: extra ``TrainerCallback`` objects (e.g. the search's
    pruning callback).
    """
    set_seed(cfg.seed)
    tr = tokenize(train_ds, tokenizer, cfg.model.max_length)
    va = tokenize(val_ds.select_columns(["text", "label"]), tokenizer, cfg.model.max_length) if val_ds is not None else None
    args = training_arguments(cfg, out_dir, epochs, eval_enabled=va is not None)
    stopper = SaveAndStop(cfg.train.save_steps)
    callbacks = [stopper, *(callbacks or [])]
    if cfg.train.early_stopping_patience and va is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    d = cfg.train.distill
    trainer = LorafitTrainer(
        model=model,
        args=args,
        train_dataset=tr,
        eval_dataset=va,
        data_collator=Collator(tokenizer),
        compute_metrics=compute_metrics,
        callbacks=callbacks,
        distill_alpha=d.alpha,
        distill_temperature=d.temperature,
        label_smoothing=cfg.train.label_smoothing,
    )
    resume = cfg.train.resume if resume is None else resume
    last = last_complete_checkpoint(out_dir) if resume and out_dir.is_dir() else None
    if last:
        log.info("resuming from %s", last)
    with stopper.handling_signals():
        trainer.train(resume_from_checkpoint=last)
    if stopper.received:
        saved = last_complete_checkpoint(out_dir)
        raise Interrupted(f"interrupted by {stopper.received} at step {trainer.state.global_step}: saved checkpoint "
                          f"'{saved}'; run the same command again to resume from it")
    return trainer


def save_trained(model, tokenizer, log_history: list, run_dir: Path) -> Path:
    """Save the LoRA adapter + tokenizer to ``run_dir/model`` and the log to ``train_log.json``."""
    with atomic_path(run_dir / "model") as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    atomic_write_json(run_dir / "train_log.json", log_history)
    return run_dir / "model"


# ------------------------------------------------------------------ teacher logits (distillation)


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


def with_teacher_logits(cfg: Config, ds: datasets.Dataset, run_dir: Path) -> datasets.Dataset:
    """``ds`` with a ``teacher_logits`` column when ``train.distill`` is enabled (cached in
    ``run_dir/data/teacher_logits.npz``), else ``ds`` itself."""
    d = cfg.train.distill
    if not d.enabled:
        return ds
    logits = teacher_logits(d.teacher, ds["text"], run_dir / "data" / "teacher_logits.npz")
    if "teacher_logits" in ds.column_names:
        ds = ds.remove_columns("teacher_logits")
    return ds.add_column("teacher_logits", logits.tolist())
