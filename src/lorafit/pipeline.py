"""The whole recipe of one config, top to bottom (``lorafit run``).

data -> augment -> budget check -> train (optional distillation) -> evaluate -> self-train on
the target set -> predict (optional label-prior adjustment) -> submission + summary.

Everything lands in ``<output_dir>/<name>/``. Nothing is written there until the config, the data
and the parameter budget have been checked, so a bad input leaves no half-made run folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Optional

import datasets
import numpy as np

from lorafit.budget import check_budget
from lorafit.config import CleanConfig, Config, check_run_dir, save_config
from lorafit.data import PreparedData, prepare_data
from lorafit.io_utils import atomic_path, atomic_write_json, atomic_write_text, save_dataset
from lorafit.model import build_model, load_tokenizer
from lorafit.predict import (for_inference, predict_logits, predict_target, predict_with_config, softmax,
                             write_submission)
from lorafit.report import (StageTimer, classification_metrics, distribution, environment, plot_confusion, plot_curves,
                             write_model_card, write_report)
from lorafit.selftrain import pseudo_labeled_set, with_training_columns
from lorafit.train import save_trained, teacher_logits, train_model

log = logging.getLogger(__name__)


def _attach_teacher(cfg: Config, ds: datasets.Dataset, run_dir: Path) -> datasets.Dataset:
    d = cfg.train.distill
    if not d.enabled:
        return ds
    logits = teacher_logits(d.teacher, ds["text"], run_dir / "data" / "teacher_logits.npz")
    if "teacher_logits" in ds.column_names:
        ds = ds.remove_columns("teacher_logits")
    return ds.add_column("teacher_logits", logits.tolist())


def _teacher_probs(teacher_dir: str, texts: list[str]) -> np.ndarray:
    """Probabilities of a teacher (a run or any classifier folder) on ``texts``, for selection."""
    from lorafit.train import load_teacher

    model, tok, max_length = load_teacher(teacher_dir)
    return softmax(predict_logits(model, tok, texts, max_length=max_length, clean=CleanConfig()))


def _check_augmentation_ready(cfg: Config, run_dir: Path) -> None:
    """Several processes must not adapt an LM or generate inside one `lorafit run` (they would
    race on the same folders): those stages run first, in their own commands."""
    from lorafit.augment import lm_output_dir

    a = cfg.augment
    if a.lm.enabled and not (lm_output_dir(cfg, run_dir) / "model" / "config.json").is_file():
        raise ValueError("augment.lm is enabled but the adapted LM is not on disk yet; under several processes run "
                         "`lorafit adapt-lm CONFIG` first (one process), then this command.")
    if a.generate.enabled and not (run_dir / "synthetic" / "samples.jsonl").is_file():
        raise ValueError("augment.generate is enabled but the samples are not on disk yet; run "
                         "`torchrun --nproc_per_node=N -m lorafit.cli generate CONFIG` first, then this command.")


def evaluate(model, tokenizer, cfg: Config, ds: datasets.Dataset) -> dict:
    logits = predict_with_config(model, tokenizer, cfg, ds["text"], clean=False)  # prepared sets are clean
    return classification_metrics(ds["label"], logits.argmax(1), list(map(str, cfg.data.labels)))


def run(cfg: Config, prepared: Optional[PreparedData] = None, fresh: bool = False,
        timer: Optional[StageTimer] = None, callbacks: Optional[list] = None) -> dict:
    """Run every enabled stage of ``cfg``; returns the metrics dict also saved as metrics.json.

    ``prepared``: the data stage's result when the caller already ran it (the CLI does, to fail
    fast on bad data before the model stack is imported). ``fresh``: replace a previous run in
    the run folder instead of continuing it (see :func:`lorafit.config.check_run_dir`). ``timer``: the
    caller's :class:`StageTimer` when it timed stages before this call (the CLI times the data stage).
    ``callbacks``: extra Trainer callbacks for the main training stage (``lorafit search`` prunes with one)."""
    timer = timer or StageTimer()  # seconds per stage -> metrics.json stage_seconds
    names = list(map(str, cfg.data.labels))
    k = len(names)
    run_dir = check_run_dir(cfg, fresh)  # writable, and not another adapter shape's run folder
    data = prepared or prepare_data(cfg)  # a bad data file fails here, before the model stack loads
    log.info("data: %s", data.stats)
    timer.lap("data" if prepared is None else "startup")  # startup: importing the model stack after the CLI's data stage
    from lorafit.augment import check_augment_inputs

    check_augment_inputs(cfg, has_target=data.target is not None and len(data.target) > 0)
    budget = check_budget(cfg)  # before any weight is loaded
    tokenizer = load_tokenizer(cfg)
    model = build_model(cfg, weights=True)
    trainable, _ = model.get_nb_trainable_parameters()
    assert trainable == budget.trainable, "budget count and loaded model disagree"
    timer.lap("model")
    # Under torchrun/accelerate every process runs this recipe; only the first one writes files.
    is_main = int(os.environ.get("RANK", "0")) == 0
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _check_augmentation_ready(cfg, run_dir)
    if is_main:
        if fresh and run_dir.exists():
            log.info("--fresh: removing the previous run in %s", run_dir)
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")

    # ---- augment
    train = data.train
    aug_report: dict = {}
    a = cfg.augment
    if a.synonyms.enabled or a.lm.enabled or a.generate.enabled or a.extra:
        from lorafit.augment import augment_training_data

        train, aug_report = augment_training_data(cfg, data.train, data.target, run_dir, teacher_predict=_teacher_probs)
    if is_main:
        save_dataset(train, run_dir / "data" / "train")
        save_dataset(data.val, run_dir / "data" / "val")
    timer.lap("augment" if aug_report else "data")

    # ---- train
    train_in = _attach_teacher(cfg, train, run_dir)
    t_train = time.time()
    trainer = train_model(cfg, model, tokenizer, train_in, data.val, run_dir / "checkpoints", callbacks=callbacks)
    train_seconds = time.time() - t_train
    history = list(trainer.state.log_history)
    timer.lap("train")

    # ---- self-training on the target set
    rounds = []
    st = cfg.selftrain
    target_logits = None  # the latest target predictions, reused by the next round and the submission
    if st.enabled and data.target is not None:
        target_texts = data.target["text"]
        gold = with_training_columns(train.select_columns(["text", "label"]), k, st.soft_labels)
        predict_target_logits = lambda: predict_with_config(model, tokenizer, cfg, target_texts,  # noqa: E731
                                                            progress=True)
        target_logits = predict_target_logits()
        for r in range(1, st.rounds + 1):
            probs = softmax(target_logits)
            before = distribution(probs.argmax(1), k)
            pseudo, info = pseudo_labeled_set(target_texts, probs, st)
            merged = datasets.concatenate_datasets([gold, pseudo.cast(gold.features)]).shuffle(seed=cfg.train.seed + r)
            trainer = train_model(cfg, model, tokenizer, _attach_teacher(cfg, merged, run_dir), data.val,
                                  run_dir / "selftrain" / f"round-{r}", epochs=st.epochs)
            history += [{**h, "selftrain_round": r} for h in trainer.state.log_history]
            target_logits = predict_target_logits()
            info.update(round=r, target_distribution_before=before,
                        target_distribution_after=distribution(target_logits.argmax(1), k))
            log.info("self-training round %d: kept %s per class; target distribution %s -> %s",
                     r, info["kept_per_class"], before, info["target_distribution_after"])
            rounds.append(info)
        timer.lap("selftrain")
    if not is_main:  # the other processes took part in training; evaluation and files are rank 0's
        return {}
    save_trained(model, tokenizer, history, run_dir)
    # the adapter gets its model card at once; the results are added when they exist (below)
    write_model_card(run_dir, cfg, {"budget": budget.to_dict(), "data": data.stats, "train_rows": len(train),
                                    "augment": aug_report})
    model = for_inference(model, cfg.train.precision, merge=cfg.predict.merge_lora)  # training is over
    timer.lap("save")

    # ---- evaluate
    val_metrics = evaluate(model, tokenizer, cfg, data.val)
    plot_confusion(val_metrics["confusion_matrix"], names, run_dir / "confusion_matrix.png")
    plot_curves(history, run_dir / "curves.png")
    timer.lap("evaluate")
    metrics = {
        "val_accuracy": val_metrics["accuracy"],
        "val_macro_f1": val_metrics["macro_f1"],
        "val": val_metrics,
        "budget": budget.to_dict(),
        "data": data.stats,
        "train_rows": len(train),
        "augment": aug_report,
        "selftrain": rounds,
        "train_seconds": round(train_seconds, 1),
    }

    # ---- predict the target set
    if data.target is not None:
        train_prior = np.bincount(np.asarray(train["label"]), minlength=k) / len(train)
        probs, adjusted, prior_info = predict_target(model, tokenizer, cfg, data.target["text"], train_prior,
                                                     logits=target_logits)
        preds = adjusted.argmax(1)
        save_target_probs(run_dir / "target_probs.npz", probs, data.target["text"])
        write_submission(run_dir / "submission.csv", preds, expected_rows=len(data.target))
        metrics["target"] = {"rows": len(data.target), "predicted_distribution": distribution(preds, k),
                             "raw_distribution": distribution(probs.argmax(1), k),
                             "mean_confidence": float(probs.max(1).mean()), "prior": prior_info}
        timer.lap("predict")
    metrics["stage_seconds"] = dict(timer.seconds)
    metrics["environment"] = environment()
    metrics["wall_seconds"] = round(timer.total(), 1)
    atomic_write_json(run_dir / "metrics.json", metrics)
    atomic_write_text(run_dir / "summary.md", summary(cfg, metrics))
    write_model_card(run_dir, cfg, metrics)
    try:  # the run's results are saved; a report that cannot be drawn must not fail the run
        write_report(run_dir, target_texts=data.target["text"][:] if data.target is not None else None)
    except Exception:
        log.exception("could not write %s; retry with `lorafit report %s`", run_dir / "report.html", run_dir)
    return metrics


def texts_digest(texts: list[str]) -> str:
    h = hashlib.sha1()
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    return h.hexdigest()


def save_target_probs(path: Path, probs: np.ndarray, texts: list[str]) -> None:
    """Keep the raw target probabilities so a prior can be re-applied without the model."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, probs=probs.astype(np.float32), digest=np.array(texts_digest(texts)))


def load_target_probs(path: Path, texts: list[str]) -> Optional[np.ndarray]:
    """The saved probabilities, or None when absent or computed for other texts."""
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        if str(z["digest"]) != texts_digest(texts):
            return None
        return z["probs"].astype(np.float64)


def summary(cfg: Config, m: dict) -> str:
    names = list(map(str, cfg.data.labels))
    lines = [
        f"# lorafit run `{cfg.name}`",
        "",
        f"- model: {cfg.model.name}; LoRA r={cfg.lora.r} alpha={cfg.lora.lora_alpha} on {cfg.lora.target_modules}",
        f"- trainable params: {m['budget']['trainable']:,} of {m['budget']['total']:,} "
        f"(budget {m['budget']['max_trainable']:,})",
        f"- train rows: {m['train_rows']:,}; validation rows: {m['data']['val_rows']:,}",
        f"- validation accuracy: {100 * m['val_accuracy']:.2f}%  macro-F1: {100 * m['val_macro_f1']:.2f}%",
        f"- training time: {m['train_seconds']:.0f} s; wall time: {m['wall_seconds']:.0f} s",
    ]
    if "target" in m:
        dist = ", ".join(f"{n} {c}" for n, c in zip(names, m["target"]["predicted_distribution"]))
        lines.append(f"- target set: {m['target']['rows']:,} rows predicted ({dist}) -> submission.csv")
    for r in m.get("selftrain", []):
        lines.append(f"- self-training round {r['round']}: kept {r['kept_per_class']} per class")
    lines.append(f"- files: {cfg.run_dir}/ (report.html, config.yaml, metrics.json, curves.png, model/)")
    return "\n".join(lines) + "\n"
