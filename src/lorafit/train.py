"""Training stage: tokenize once, Hugging Face ``Trainer`` with the report's arguments, and a loss
that adds per-sample weights, soft labels (self-training) and knowledge distillation.

Distillation loss: ``alpha * CE + (1 - alpha) * T^2 * KL(softmax(teacher/T) || softmax(student/T))``,
with teacher logits computed once and cached next to the data (see :func:`teacher_logits`).

Synthetic rows (a ``synthetic`` column, see :mod:`lorafit.augment`) are label-smoothed by
``augment.label_smoothing``; with ``train.consistency`` each step adds a consistency loss on the
unlabeled target texts (:class:`UnlabeledBatches`, :meth:`LorafitTrainer.consistency_loss`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import dataclass
import signal
import threading
from pathlib import Path
from typing import Optional, Sequence

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import (
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from lorafit.config import Config, ConsistencyConfig
from lorafit.data.clean import clip_text
from lorafit.errors import Interrupted, LorafitError, RunStateError, TrainingDiverged
from lorafit.inference import teacher_logits
from lorafit.io_utils import as_disk_full, atomic_path, atomic_write_json, last_complete_checkpoint
from lorafit.logs import progress_bars, quiet_trainer
from lorafit.model import adapter_name, add_adapter
from lorafit.precision import pick_precision
from lorafit.train_consistency import UnlabeledBatches, _pad_cat, consistency_terms
from lorafit.metrics import classification_metrics

log = logging.getLogger(__name__)

EXTRA_COLUMNS = ("weight", "soft_labels", "teacher_logits", "synthetic")  # per-row columns the loss reads


# ------------------------------------------------------------------ data


def _encode(batch, tokenizer, max_length: int) -> dict:
    out = tokenizer([clip_text(t, max_length) for t in batch["text"]], truncation=True, max_length=max_length)
    out["length"] = [len(x) for x in out["input_ids"]]
    return out


def tokenize(ds: datasets.Dataset, tokenizer, max_length: int) -> datasets.Dataset:
    """Tokenize once without padding (padding happens per batch); keep label/extra columns and a
    ``length`` column used for length-grouped batching.

    The new dataset's fingerprint is given, so ``datasets`` does not hash the map function and its
    tokenizer: it does that inside a bare ``except:``, which swallowed a Ctrl-C or SIGTERM arriving
    meanwhile (the run then went on and finished with exit 0)."""
    keep = [c for c in ds.column_names if c in ("label", *EXTRA_COLUMNS)]
    key = f"lorafit-tokenize|{ds._fingerprint}|{getattr(tokenizer, 'name_or_path', '')}|{len(tokenizer)}|{max_length}"
    tok = ds.map(_encode, batched=True, batch_size=1000, fn_kwargs={"tokenizer": tokenizer, "max_length": max_length},
                 remove_columns=[c for c in ds.column_names if c not in keep], desc="tokenize",
                 load_from_cache_file=False, new_fingerprint=hashlib.sha1(key.encode()).hexdigest())
    if "label" in tok.column_names:
        tok = tok.rename_column("label", "labels", new_fingerprint=hashlib.sha1(f"{key}|labels".encode()).hexdigest())
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
                 label_smoothing: float = 0.0, smoothing=None) -> torch.Tensor:
    """Per-sample weighted mean of cross-entropy against the labels or the soft labels (with
    ``label_smoothing``), optionally mixed with the distillation term. With no extras this is
    ``F.cross_entropy(logits, labels)``.

    ``smoothing``: per-row label smoothing on top of ``label_smoothing`` (a row's target is smoothed
    by ``1 - (1 - label_smoothing)(1 - smoothing)`` in all, as if smoothed twice), e.g. the synthetic
    rows' ``augment.label_smoothing``."""
    logits = logits.float()
    target = soft_labels.float() if soft_labels is not None else labels.long()
    if smoothing is None:
        per_sample = F.cross_entropy(logits, target, reduction="none", label_smoothing=label_smoothing)
    else:  # (1 - eps) * CE(target) + eps * CE(uniform), what F.cross_entropy does with one eps for all
        eps = 1 - (1 - label_smoothing) * (1 - smoothing.float())
        uniform = -F.log_softmax(logits, dim=-1).mean(-1)
        per_sample = (1 - eps) * F.cross_entropy(logits, target, reduction="none") + eps * uniform
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
    """``Trainer`` whose loss is :func:`lorafit_loss` (weights, soft labels, distillation), with
    ``synthetic_smoothing`` on the rows marked ``synthetic`` and, given ``unlabeled`` batches,
    ``consistency.weight`` times the consistency loss (:meth:`consistency_loss`)."""

    def __init__(self, *args, distill_alpha: float = 0.5, distill_temperature: float = 2.0,
                 label_smoothing: float = 0.0, synthetic_smoothing: float = 0.0,
                 unlabeled: Optional[UnlabeledBatches] = None, consistency: Optional[ConsistencyConfig] = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.distill_alpha = distill_alpha
        self.distill_temperature = distill_temperature
        self.smoothing = label_smoothing
        self.synthetic_smoothing = synthetic_smoothing
        self.unlabeled, self.consistency = unlabeled, consistency or ConsistencyConfig()
        self._consistency_log = [0.0, 0.0, 0, 0]  # loss sum, masked rows, rows, steps since the last log (tensors
        # are summed on the device: no synchronisation per step)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        extras = {k: inputs.pop(k) for k in EXTRA_COLUMNS if k in inputs}
        synthetic = extras.pop("synthetic", None)
        if synthetic is not None and self.synthetic_smoothing and model.training:
            extras["smoothing"] = synthetic * self.synthetic_smoothing
        if self.unlabeled is not None and model.training:
            return self.consistency_loss(model, inputs, labels, extras, return_outputs)
        outputs = model(**inputs)
        loss = lorafit_loss(outputs.logits, labels, alpha=self.distill_alpha, temperature=self.distill_temperature,
                            label_smoothing=self.smoothing if model.training else 0.0, **extras)
        return (loss, outputs) if return_outputs else loss

    def consistency_loss(self, model, inputs, labels, extras, return_outputs=False):
        """Supervised loss + ``weight`` * consistency loss on this step's unlabeled batch.

        The originals are predicted without gradient, in eval mode (no dropout), by the unwrapped
        model (a DDP model's module: a forward outside the gradient pass). The synonym copies get a
        forward of their own, so neither batch is padded to the other's length; a data-parallel
        model, which allows one forward per backward, takes the training rows and the copies in one
        forward together. All run under the Trainer's autocast."""
        c = self.consistency
        original, augmented = self.unlabeled.batch(self.state.global_step, self.args.process_index,
                                                    self.args.world_size)
        inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
        device = inputs["input_ids"].device
        inner.eval()
        try:
            with torch.no_grad():
                orig_logits = inner(**{k: v.to(device) for k, v in original.items()}).logits
        finally:
            inner.train()
        n = labels.shape[0]
        if inner is model:
            outputs = model(**inputs)
            logits = outputs.logits
            aug_logits = model(**{k: v.to(device) for k, v in augmented.items()}).logits
        else:
            outputs = model(**_pad_cat(inputs, augmented, self.tokenizer_pad_id,
                                       left=getattr(self.unlabeled.tokenizer, "padding_side", "right") == "left"))
            logits, aug_logits = outputs.logits[:n], outputs.logits[n:]
        loss = lorafit_loss(logits, labels, alpha=self.distill_alpha, temperature=self.distill_temperature,
                            label_smoothing=self.smoothing, **extras)
        loss_u, mask = consistency_terms(orig_logits, aug_logits, c.threshold, c.temperature, c.hard)
        log = self._consistency_log
        log[0] = log[0] + loss_u.detach()
        log[1] = log[1] + mask.sum()
        log[2] += int(mask.numel())
        log[3] += 1
        total = loss + c.weight * loss_u
        outputs.logits = logits
        return (total, outputs) if return_outputs else total

    @property
    def tokenizer_pad_id(self) -> int:
        pad = self.unlabeled.tokenizer.pad_token_id
        return 0 if pad is None else pad

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        for cb in self.callback_handler.callbacks:  # the Trainer itself tests every step's loss for nan/inf
            if isinstance(cb, StopOnNonFinite):
                cb.note_loss(loss)
        return loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        """Adds the mean consistency loss and the share of unlabeled rows inside the mask since the
        last training log (``consistency_loss``, ``consistency_mask_rate``)."""
        loss_sum, masked, rows, steps = self._consistency_log
        if steps and "loss" in logs:
            logs["consistency_loss"] = float(loss_sum) / steps
            logs["consistency_mask_rate"] = float(masked) / rows
            self._consistency_log = [0.0, 0.0, 0, 0]
        super().log(logs, *args, **kwargs)

    def _load_best_model(self) -> None:
        """Trainer loads a checkpoint's top-level adapter into the active one; a model holding several
        adapters (``train.adapters``) has PEFT save all but ``default`` in sub-folders, so another
        adapter loads its best weights from its own."""
        name = getattr(self.model, "active_adapter", "default")
        if not isinstance(self.model, PeftModel) or name == "default":
            return super()._load_best_model()
        best = Path(self.state.best_model_checkpoint) / name
        log.info("loading the best checkpoint of adapter %s from %s (score: %s)", name, best, self.state.best_metric)
        self.model.load_adapter(str(best), name)


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
        load_best_model_at_end=eval_enabled and t.average_checkpoints == 1,  # averaging keeps the final state
        metric_for_best_model="accuracy",
        greater_is_better=True,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        length_column_name="length",
        **{_CHECKPOINTING_ARG: t.gradient_checkpointing},
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,  # every LoRA parameter gets a gradient: skip DDP's extra graph walk
        dataloader_num_workers=t.dataloader_workers,
        report_to=list(t.report_to) or "none",
        disable_tqdm=not progress_bars(),  # bars on a terminal only; a log file gets lines
        use_cpu=device == "cpu",
    )


class StopOnNonFinite(TrainerCallback):
    """Stop training with :class:`TrainingDiverged` at the end of the first step whose loss was
    NaN or infinite, or after which a trainable weight is, before that step's checkpoint is saved,
    so no diverged model is written. (The Trainer would leave the nan out of the logged loss and
    train on; the run saved a NaN model and prediction failed later.) The loss comes from
    :meth:`LorafitTrainer.training_step` (:meth:`note_loss`)."""

    def __init__(self, learning_rate: Optional[float] = None):
        self.learning_rate = learning_rate
        self.bad_loss: Optional[float] = None

    def note_loss(self, loss: torch.Tensor) -> None:
        if self.bad_loss is None and not bool(torch.isfinite(loss.detach()).all()):
            self.bad_loss = float(loss.detach().float().mean())

    def on_step_end(self, args, state, control, model=None, **kwargs):
        what = None
        if self.bad_loss is not None:
            what = f"the training loss became {self.bad_loss}"
        elif model is not None:
            trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            finite = torch.stack([torch.isfinite(p.detach()).all() for _, p in trained]) if trained else None
            if finite is not None and not bool(finite.all()):  # one device sync per step
                what = f"trainable weight '{trained[int((~finite).nonzero()[0])][0]}' became NaN or infinite"
        if what is not None:
            lr = f" (now {self.learning_rate:g})" if self.learning_rate is not None else ""
            fp32 = " or train in fp32 (train.precision=fp32)" if args.fp16 or args.bf16 else ""
            raise TrainingDiverged(
                f"training diverged: {what} at step {state.global_step} (epoch {state.epoch or 0:.2f}); stopped "
                f"without saving a model. Lower train.learning_rate{lr}{fp32}, then rerun with --fresh "
                f"(checkpoints in '{args.output_dir}' may hold the diverging weights)")
        return control


class SaveAndStop(TrainerCallback):
    """Checkpoint every ``save_steps`` steps (``train.save_steps``), and on SIGINT/SIGTERM save a
    checkpoint at the end of the current step and stop, so an interrupted run resumes from there.
    A second signal interrupts at once (the previous handler)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, save_steps: Optional[int] = None):
        self.save_steps = save_steps
        self.received: Optional[str] = None
        self.steps_run = 0  # steps of this call to train (0: it failed while loading a checkpoint)
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
        self.steps_run += 1
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
                callbacks: Optional[list] = None, unlabeled: Optional[Sequence[str]] = None):
    """Train ``model`` (a PEFT model) in place; checkpoints go to ``out_dir``. Returns the trainer.

    ``train_ds``/``val_ds`` carry ``text`` and ``label`` (and optionally ``weight``,
    ``soft_labels``, ``teacher_logits``, ``synthetic``). Resumes from the last checkpoint in
    ``out_dir`` when ``train.resume`` is set. ``callbacks``: extra ``TrainerCallback`` objects (e.g.
    the search's pruning callback). ``unlabeled``: texts for the consistency loss with the settings
    of ``train.consistency`` (the caller decides whether it applies; None = no consistency loss).
    """
    set_seed(cfg.seed)
    batches = None
    if unlabeled is not None:
        c = cfg.train.consistency
        batches = UnlabeledBatches(unlabeled, tokenizer, cfg.model.max_length, c.batch_size or cfg.train.batch_size,
                                   cfg.seed, c.fraction, group_by_length=cfg.train.group_by_length)
        log.info("consistency loss on %d unlabeled texts (%d synonym copies differ from their text), weight %g, "
                 "threshold %g", len(batches), batches.changed, c.weight, c.threshold)
    tr = tokenize(train_ds, tokenizer, cfg.model.max_length)
    va = tokenize(val_ds.select_columns(["text", "label"]), tokenizer, cfg.model.max_length) if val_ds is not None else None
    args = training_arguments(cfg, out_dir, epochs, eval_enabled=va is not None)
    stopper = SaveAndStop(cfg.train.save_steps)
    callbacks = [stopper, StopOnNonFinite(cfg.train.learning_rate), *(callbacks or [])]
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
        synthetic_smoothing=cfg.augment.label_smoothing,
        unlabeled=batches,
        consistency=cfg.train.consistency,
    )
    quiet_trainer(trainer)  # its metric dicts go to the log (stderr, run.log), not to stdout
    resume = cfg.train.resume if resume is None else resume
    last = last_complete_checkpoint(out_dir) if resume and out_dir.is_dir() else None
    if last:
        log.info("resuming from %s", last)
    with stopper.handling_signals():
        try:
            trainer.train(resume_from_checkpoint=last)
        except Exception as e:
            if last is None or stopper.steps_run or isinstance(e, LorafitError) or as_disk_full(e) is not None:
                raise
            # nothing trained since the resume: the checkpoint's files did not load (truncated, garbage)
            raise RunStateError(
                f"resuming from checkpoint '{last}' failed before any step ({type(e).__name__}: {str(e)[:120]}): a "
                f"checkpoint in '{out_dir}' is damaged; delete that checkpoint folder to resume from the one before, "
                "or rerun with --fresh to train anew") from None
    if stopper.received:
        saved = last_complete_checkpoint(out_dir)
        raise Interrupted(f"interrupted by {stopper.received} at step {trainer.state.global_step}: saved checkpoint "
                          f"'{saved}'; run the same command again to resume from it")
    return trainer


# ------------------------------------------------------------------ several adapters, checkpoint averaging


@dataclass
class TrainedAdapters:
    history: list  # the Trainer logs, those of adapter i >= 1 marked ``adapter: i``
    adapters: list  # per adapter: name, seed, checkpoint folder (and the steps averaged)
    trainer: Trainer  # the first adapter's


def adapter_seed(cfg: Config, i: int) -> int:
    """The seed of adapter ``i``: ``seed + 1000 * i`` (wrapped to 32 bits)."""
    return (cfg.seed + 1000 * i) % 2**32


def train_adapters(cfg: Config, model, tokenizer, train_ds: datasets.Dataset, val_ds: Optional[datasets.Dataset],
                   out_dir: Path, count: int = 1, epochs: Optional[float] = None, callbacks: Optional[list] = None,
                   new_weights: frozenset = frozenset(), **kwargs) -> TrainedAdapters:
    """Train ``count`` adapters of PEFT ``model`` one after another on its frozen base (see
    :func:`train_model`; ``kwargs`` go to it): ``default`` (with ``cfg.seed``, checkpoints in
    ``out_dir``), then ``adapter-i`` with :func:`adapter_seed` (added by
    :func:`lorafit.model.add_adapter` unless the model has it: its own LoRA, head and data order;
    checkpoints in ``out_dir/adapter-i``; each resumes; ``new_weights``: the weights the base
    checkpoint lacked, from :func:`lorafit.model.build_model`, drawn afresh in each added head). With
    ``train.average_checkpoints`` each is then replaced by the mean of its last checkpoints
    (:func:`average_checkpoints`).
    ``callbacks`` apply to the first adapter's training only. With ``count=1`` this is one
    :func:`train_model` call."""
    history, records, first = [], [], None
    for i in range(count):
        name = adapter_name(i)
        cfg_i = cfg if i == 0 else cfg.model_copy(update={"seed": adapter_seed(cfg, i)})
        if name not in model.peft_config:
            add_adapter(cfg_i, model, name, new_weights)
        if len(model.peft_config) > 1:
            model.set_adapter(name)  # the others are frozen; each checkpoint holds them all
            log.info("training adapter %s (%d of %d, seed %d)", name, i + 1, count, cfg_i.seed)
        folder = Path(out_dir) if i == 0 else Path(out_dir) / name
        trainer = train_model(cfg_i, model, tokenizer, train_ds, val_ds, folder, epochs=epochs,
                      callbacks=callbacks if i == 0 else None, **kwargs)
        first = first or trainer
        record = {"name": name, "seed": cfg_i.seed, "checkpoints": str(folder)}
        if cfg.train.average_checkpoints > 1:
            record["averaged_steps"] = average_checkpoints(model, folder, cfg.train.average_checkpoints, name,
                                                           trainer.state.global_step)
        history += [h if i == 0 else {**h, "adapter": i} for h in trainer.state.log_history]
        records.append(record)
    if len(model.peft_config) > 1:
        model.set_adapter("default")
    return TrainedAdapters(history, records, first)


def average_checkpoints(model, out_dir: Path, n: int, adapter: str = "default",
                        final_step: Optional[int] = None) -> list[int]:
    """Replace the weights of ``adapter`` (LoRA and head) by the mean of its last ``n`` checkpoints:
    its final state (the model's weights now, at step ``final_step``) and the ``n - 1`` latest
    complete checkpoints in ``out_dir`` before it (their adapter files: ``adapter_model.safetensors``,
    in the adapter's sub-folder for one other than ``default``). PEFT's state-dict functions read
    and set the weights. Returns the steps averaged; fewer than ``n`` (logged) when fewer
    checkpoints exist."""
    if n <= 1:
        return []
    final = get_peft_model_state_dict(model, adapter_name=adapter)
    sub = "" if adapter == "default" else adapter
    earlier = []
    for p in Path(out_dir).glob("checkpoint-*"):
        step, f = p.name.rsplit("-", 1)[-1], p / sub / "adapter_model.safetensors"
        if step.isdigit() and (final_step is None or int(step) < final_step) and f.is_file() \
                and (p / "trainer_state.json").is_file():
            earlier.append((int(step), f))
    earlier = sorted(earlier)[-(n - 1):]
    if len(earlier) < n - 1:
        log.warning("train.average_checkpoints=%d: adapter %s has only %d earlier checkpoint(s) in %s; averaging %d",
                    n, adapter, len(earlier), out_dir, len(earlier) + 1)
    states = [load_file(str(f)) for _, f in earlier] + [final]
    mean = {k: torch.stack([s[k].to(v.device, torch.float32) for s in states]).mean(0).to(v.dtype)
            for k, v in final.items()}
    set_peft_model_state_dict(model, mean, adapter_name=adapter)
    steps = [step for step, _ in earlier] + [final_step]
    log.info("adapter %s: weights averaged over the checkpoints of steps %s", adapter, steps)
    return steps


# next to adapter_config.json: the head's class names (id2label, label2id as in a transformers config.json), which
# a stock loader needs as keyword arguments, since PEFT builds the base model from the base's own config
LABELS_FILE = "labels.json"


def save_trained(model, tokenizer, log_history: list, run_dir: Path) -> Path:
    """Save the LoRA adapter + tokenizer to ``run_dir/model`` and the log to ``train_log.json``
    (several adapters as PEFT saves them: ``default`` at the top, the others in sub-folders), with
    the head's class names in ``labels.json`` (``id2label``/``label2id``)."""
    with atomic_path(run_dir / "model") as tmp:
        model.save_pretrained(str(tmp), save_embedding_layers=False)  # LoRA never trains the embeddings
        tokenizer.save_pretrained(str(tmp))
        config = model.get_base_model().config  # the head's class names, which PEFT's files do not hold
        atomic_write_json(tmp / LABELS_FILE, {"id2label": {str(i): n for i, n in sorted(config.id2label.items())},
                                              "label2id": dict(config.label2id)})
    atomic_write_json(run_dir / "train_log.json", log_history)
    return run_dir / "model"


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
