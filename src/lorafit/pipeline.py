"""The recipe of ``lorafit run``: one call per stage, top to bottom.

data -> check inputs and budget -> model -> augment -> train (optional distillation; ``train.adapters``
adapters on one frozen base, averaged as an ensemble) -> self-train
on the target set (teacher/student rounds) -> save -> evaluate -> predict the target set (label prior) -> submission,
metrics, summary, report.

Everything lands in ``<output_dir>/<name>/``. Nothing is written there until the config, the data,
the inputs of every enabled stage and the parameter budget have been checked, so a bad input
leaves no half-made run folder. Under torchrun every process runs this recipe; only the first
writes files.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import datasets
import numpy as np

from lorafit.augment import (augment_training_data, augmentation_enabled, check_augment_inputs,
                             check_augmentation_ready)
from lorafit.budget import BudgetReport, check_budget
from lorafit.config import Config, save_config
from lorafit.data import PreparedData, load_labeled, prepare_data
from lorafit.io_utils import (atomic_write_text, check_unlocked, is_ours, lock_folder, mark_ours,
                              release_folder, remove_ours, save_dataset)
from lorafit.model import adapter_names, build_model, load_tokenizer
from lorafit.precision import for_inference, inference_precision
from lorafit.inference import predict_with_config
from lorafit.predict import label_prior, predict_and_submit
from lorafit.metrics import classification_metrics, restored_evaluation, restored_line
import lorafit.runs as runs
from lorafit.runs import RunFacts, RunMetrics, check_run_dir, is_legacy_run, write_metrics
from lorafit.report import (StageTimer, environment, plot_confusion, plot_curves,
                            write_model_card, write_report)
from lorafit.selftrain import SelfTrainResult, self_train
from lorafit.train import TrainedAdapters, save_trained, train_adapters, with_teacher_logits
from lorafit.views import View, combine, fit_views, view_probabilities

log = logging.getLogger(__name__)

RUN_FOLDER = "run folder (output_dir/name)"


def run(cfg: Config, prepared: Optional[PreparedData] = None, fresh: bool = False,
        timer: Optional[StageTimer] = None, callbacks: Optional[list] = None,
        provenance: Optional[dict] = None) -> Optional[RunMetrics]:
    """Run every enabled stage of ``cfg``; returns the run's results, also saved as metrics.json
    (None on the other processes of a multi-process run).

    ``prepared``: the data stage's result when the caller already ran it (the CLI does, to fail
    fast on bad data before the model stack is imported). ``fresh``: replace a previous run in
    the run folder instead of continuing it (see :func:`lorafit.runs.check_run_dir`). ``timer``: the
    caller's :class:`StageTimer` when it timed stages before this call (the CLI times the data stage).
    ``callbacks``: extra Trainer callbacks for the main training stage (``lorafit search`` prunes with one).
    ``provenance``: where the run came from (:func:`lorafit.runs.provenance`), saved in metrics.json."""
    timer = timer or StageTimer()  # seconds per stage -> metrics.json stage_seconds
    run_dir = check_run_dir(cfg, fresh)  # writable, and not another adapter shape's run folder
    if is_first_process():  # another process writing this folder: refused now, not after loading
        check_unlocked(run_dir, RUN_FOLDER)
    data = prepared or prepare_data(cfg)  # a bad data file fails here, before the model stack loads
    if cfg.data.labels is None:  # inferred from the source: the run's config.yaml states them
        cfg = data.config(cfg)
        check_run_dir(cfg, fresh)  # a run in the folder trained with other labels
    log.info("data: %s", data.stats)
    timer.lap("data" if prepared is None else "startup")  # startup: the model stack's imports after the CLI's data
    check_augment_inputs(cfg, has_target=data.target is not None and len(data.target) > 0)
    proxy = load_proxy(cfg)  # a bad selftrain.proxy file fails here, before training
    budget = check_budget(cfg)  # before any weight is loaded
    tokenizer, (model, new_weights) = load_model(cfg, budget)
    timer.lap("model")
    is_main = start_run_folder(cfg, run_dir, fresh)

    train, facts = augmented_training_set(cfg, data, run_dir, budget, save=is_main)
    timer.lap("augment" if facts.augment else "data")
    trained, train_seconds = train_main(cfg, model, tokenizer, train, data, run_dir, callbacks, new_weights)
    timer.lap("train")
    selftrain = SelfTrainResult()
    if cfg.selftrain.enabled and data.target is not None:
        selftrain = self_train(cfg, model, tokenizer, train, data.val, data.target["text"], run_dir,
                               source=data.train, proxy=proxy)
        model = selftrain.model  # the last round's model (a fresh student in student mode) is the run's
        timer.lap("selftrain")
    if not is_main:  # the other processes took part in training; evaluation and files are rank 0's
        return None
    model, merge = save_model(cfg, model, tokenizer, trained.history + selftrain.history, run_dir, facts)
    timer.lap("save")
    views = []
    if cfg.views:  # frozen views, fitted on the labeled source rows, saved beside the adapters
        views = fit_views(cfg, data.train["text"], data.train["label"], run_dir / runs.MODEL, progress=True)
        timer.lap("views")

    metrics = evaluate_run(cfg, model, tokenizer, data.val, facts, trained, selftrain, train_seconds, run_dir, merge,
                           views=views)
    timer.lap("evaluate")
    if data.target is not None:
        metrics.target = predict_target_set(cfg, model, tokenizer, data.target, train, selftrain, run_dir, merge,
                                            views=views)
        timer.lap("predict")
    metrics.provenance = provenance or runs.provenance()
    finish_run(cfg, run_dir, metrics, timer, data.target)
    release_folder(run_dir)
    return metrics


def is_first_process() -> bool:
    """Whether this process writes the run's files (rank 0, or the only process)."""
    return int(os.environ.get("RANK", "0")) == 0


def load_model(cfg: Config, budget: BudgetReport) -> tuple:
    """The tokenizer and the model with its first adapter (a :class:`lorafit.model.LoadedModel`, with the
    weights its checkpoint lacked), checked against the budget's count."""
    tokenizer, built = load_tokenizer(cfg), build_model(cfg, weights=True)
    # one adapter so far: the budget counts it times the adapters the run's model will average
    assert built.model.get_nb_trainable_parameters()[0] == budget.per_adapter, "budget count and loaded model disagree"
    return tokenizer, built


def augmented_training_set(cfg: Config, data: PreparedData, run_dir: Path, budget: BudgetReport,
                           save: bool) -> tuple[datasets.Dataset, RunFacts]:
    """The training set (augmented when any augmentation is enabled), saved with the validation set
    under ``data/`` (``save``: first process only), and the run's facts so far."""
    train, report = (augment_training_data(cfg, data.train, data.target, run_dir) if augmentation_enabled(cfg)
                     else (data.train, {}))
    if save:
        save_dataset(train, run_dir / runs.DATA / "train")
        save_dataset(data.val, run_dir / runs.DATA / "val")
    return train, RunFacts(budget=budget.to_dict(), data=data.stats, train_rows=len(train), augment=report)


def train_main(cfg: Config, model, tokenizer, train: datasets.Dataset, data: PreparedData, run_dir: Path,
               callbacks: Optional[list], new_weights: frozenset = frozenset()) -> tuple[TrainedAdapters, float]:
    """The main training (``train.adapters`` adapters, with distillation's teacher logits and the
    consistency loss on the target texts when enabled); returns them and the seconds training took.
    ``new_weights``: those the base checkpoint lacked (:func:`lorafit.model.build_model`)."""
    train_in, start = with_teacher_logits(cfg, train, run_dir), time.time()
    unlabeled = data.target["text"][:] if cfg.train.consistency.enabled else None  # checked: there is a target
    trained = train_adapters(cfg, model, tokenizer, train_in, data.val, run_dir / runs.CHECKPOINTS,
                             cfg.train.adapters, callbacks=callbacks, unlabeled=unlabeled, new_weights=new_weights)
    return trained, time.time() - start


def save_model(cfg: Config, model, tokenizer, history: list, run_dir: Path, facts: RunFacts):
    """Save the run's model, its training log and its model card (results are added at the end);
    returns the model prepared for prediction (training is over) and whether prediction merges each
    adapter of an ensemble (:func:`lorafit.precision.for_inference`)."""
    n, counted = len(adapter_names(model)), facts.budget.get("adapters", 1)
    if n > 1 and n != counted:
        log.warning("the run's model averages %d adapters but the budget counted %d", n, counted)
    save_trained(model, tokenizer, history, run_dir)
    write_model_card(run_dir, cfg, facts)  # the adapter's card at once; the results are added at the end
    return for_inference(model, inference_precision(cfg), merge=cfg.predict.merge_lora)


def evaluate_run(cfg: Config, model, tokenizer, val: datasets.Dataset, facts: RunFacts, trained: TrainedAdapters,
                 selftrain: SelfTrainResult, train_seconds: float, run_dir: Path,
                 merge_adapters: bool = False, views: Sequence[View] = ()) -> RunMetrics:
    """The run's results on the validation set (with the confusion and curves plots); with ``views``,
    those of the adapters averaged with the views, and each one's alone in ``views``."""
    each: dict = {}  # an ensemble's adapters' validation logits
    seen: dict = {}  # the views' validation accuracies
    val_metrics = evaluate(model, tokenizer, cfg, val, each=each, merge_adapters=merge_adapters, views=views,
                           view_metrics=seen)
    plot_confusion(val_metrics["confusion_matrix"], list(map(str, cfg.data.labels)), run_dir / runs.CONFUSION_PLOT)
    plot_curves(trained.history + selftrain.history, run_dir / runs.CURVES_PLOT)
    # the main training's model is its best evaluation, not its last (one adapter; averaging keeps the last)
    restored = (restored_evaluation(trained.history)
                if len(trained.adapters) == 1 and trained.trainer.args.load_best_model_at_end else None)
    return RunMetrics(val_accuracy=val_metrics["accuracy"], val_macro_f1=val_metrics["macro_f1"], val=val_metrics,
                      **facts.to_dict(), selftrain=selftrain.rounds, train_seconds=round(train_seconds, 1),
                      **({"restored": restored} if restored else {}), **({"views": seen} if seen else {}),
                      **ensemble_metrics(cfg, each, val_metrics, val, trained))


def predict_target_set(cfg: Config, model, tokenizer, target: datasets.Dataset, train: datasets.Dataset,
                       selftrain: SelfTrainResult, run_dir: Path, merge_adapters: bool = False,
                       views: Sequence[View] = ()) -> dict:
    """Predict the target set with the label prior (reusing self-training's last predictions, averaged
    with the ``views``) and write submission.csv; returns metrics.json's ``target``."""
    return predict_and_submit(
        cfg, target["text"], run_dir / runs.SUBMISSION, run_dir=run_dir, model=model, tokenizer=tokenizer,
        merge_adapters=merge_adapters, views=list(views),
        logits=selftrain.target_logits, train_prior=label_prior(train["label"], len(cfg.data.labels)),
        ids=target["id"] if "id" in target.column_names else None)


def load_proxy(cfg: Config) -> Optional[datasets.Dataset]:
    """The labeled ``selftrain.proxy`` set scored per self-training round, or None."""
    st = cfg.selftrain
    if not (st.enabled and st.proxy):
        return None
    return load_labeled(st.proxy, cfg.data.text_column, cfg.data.label_column, cfg.data.labels,
                        allow_pickle=cfg.data.allow_pickle)


def start_run_folder(cfg: Config, run_dir: Path, fresh: bool) -> bool:
    """Make the run folder and save the resolved config in it (first process only; ``fresh``
    replaces an earlier run). Returns whether this is the process that writes files."""
    is_main = is_first_process()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        check_augmentation_ready(cfg, run_dir)
    if is_main:
        if fresh and run_dir.exists():
            if is_ours(run_dir):  # not while another process runs in it
                lock_folder(run_dir, RUN_FOLDER)
            log.info("--fresh: removing the previous run in %s", run_dir)
            remove_ours(run_dir, "run folder (output_dir/name)", legacy=is_legacy_run)
        mark_ours(run_dir, "run")
        lock_folder(run_dir, RUN_FOLDER)  # held until this process ends: a second run here is refused
        save_config(cfg, run_dir / runs.CONFIG)
    return is_main


def evaluate(model, tokenizer, cfg: Config, ds: datasets.Dataset, each: Optional[dict] = None,
             merge_adapters: bool = False, views: Sequence[View] = (), view_metrics: Optional[dict] = None) -> dict:
    """Accuracy, macro-F1, per-class metrics and confusion matrix on a prepared (clean) labeled set.
    ``each``: receives an ensemble's adapters' logits by name (see :func:`lorafit.inference.predict_logits`).
    ``views``: averaged in (:func:`lorafit.views.combine`); ``view_metrics`` then receives the
    adapters' accuracy alone and each view's (weight, trainable parameters, accuracy alone)."""
    logits = predict_with_config(model, tokenizer, cfg, ds["text"], clean=False, each=each,  # prepared: clean
                                 merge_adapters=merge_adapters)
    if views:
        labels = np.asarray(ds["label"])
        probs = view_probabilities(views, ds["text"], cfg, clean=False, progress=True)
        if view_metrics is not None:
            view_metrics["adapters_val_accuracy"] = float((logits.argmax(1) == labels).mean())
            view_metrics["views"] = [{"name": v.name, "kind": v.spec["kind"], "model": v.spec.get("model"),
                                      **({"analyzer": v.spec.get("analyzer", "word")}
                                         if v.spec["kind"] == "tfidf" else {}),
                                      "weight": v.weight, "trainable": v.parameters,
                                      "val_accuracy": float((p.argmax(1) == labels).mean())}
                                     for v, p in zip(views, probs)]
        logits = combine(logits, probs, [v.weight for v in views])
    return classification_metrics(ds["label"], logits.argmax(1), list(map(str, cfg.data.labels)))


def ensemble_metrics(cfg: Config, each: dict, val_metrics: dict, val: datasets.Dataset,
                     trained: TrainedAdapters) -> dict:
    """metrics.json's ``ensemble`` (a model averaging several adapters: each one's validation
    accuracy next to the ensemble's) and ``checkpoint_average`` (``train.average_checkpoints``: the
    steps averaged per adapter of the main training); {} for one adapter without averaging."""
    out: dict = {}
    if len(each) > 1:
        labels = np.asarray(val["label"])
        names = list(each)
        out["ensemble"] = {"adapters": len(names), "names": names,
                           "val_accuracy_per_adapter": [float((each[n].argmax(1) == labels).mean()) for n in names],
                           "val_accuracy": val_metrics["accuracy"], "train_adapters": trained.adapters}
    if cfg.train.average_checkpoints > 1:
        out["checkpoint_average"] = {"checkpoints": cfg.train.average_checkpoints,
                                     "train": {a["name"]: a.get("averaged_steps") for a in trained.adapters}}
    return out


def finish_run(cfg: Config, run_dir: Path, metrics: RunMetrics, timer: StageTimer,
               target: Optional[datasets.Dataset]) -> None:
    """metrics.json (with times per stage and the environment), summary.md, the model card with
    the results, and report.html."""
    metrics.stage_seconds = dict(timer.seconds)
    metrics.environment = environment()
    metrics.wall_seconds = round(timer.total(), 1)
    write_metrics(run_dir, metrics)
    atomic_write_text(run_dir / runs.SUMMARY, summary(cfg, metrics))
    write_model_card(run_dir, cfg, metrics)
    try:  # the run's results are saved; a report that cannot be drawn must not fail the run
        write_report(run_dir, target_texts=target["text"][:] if target is not None else None)
    except Exception:
        log.exception("could not write %s; retry with `lorafit report %s`", run_dir / runs.REPORT, run_dir)


def summary(cfg: Config, m: RunMetrics) -> str:
    """summary.md: the run in a few lines (what the CLI prints at the end of ``lorafit run``)."""
    names = list(map(str, cfg.data.labels))
    b = m.budget
    lines = [
        f"# lorafit run `{cfg.name}`",
        "",
        f"- model: {cfg.model.name}; LoRA r={cfg.lora.r} alpha={cfg.lora.lora_alpha} on {cfg.lora.target_modules}",
        *([f"- labels inferred from data.source: {names}"] if m.data.get("labels_inferred") else []),
        f"- trainable params: {b['trainable']:,} of {b['total']:,} (budget {b['max_trainable']:,})",
        f"- train rows: {m.train_rows:,}; validation rows: {m.data['val_rows']:,}",
        f"- validation accuracy: {100 * m.val_accuracy:.2f}%  macro-F1: {100 * m.val_macro_f1:.2f}%",
        *([f"- {'main training: ' if m.selftrain else ''}{restored_line(m.restored)}"] if m.restored else []),
        f"- training time: {m.train_seconds:.0f} s; wall time: {m.wall_seconds:.0f} s",
    ]
    if m.ensemble:
        e = m.ensemble
        each = b.get("trainable_per_adapter", 0)
        lines.append(f"- ensemble of {e['adapters']} adapters ({each:,} trainable each), probabilities averaged; "
                     "validation accuracy per adapter: "
                     + ", ".join(f"{n} {100 * a:.2f}%" for n, a in zip(e["names"], e["val_accuracy_per_adapter"])))
    if m.views:
        lines.append("- views averaged in: " + "; ".join(
            f"{v['name']}{' (' + v['analyzer'] + 's)' if v.get('analyzer') else ''} (weight {v['weight']:g}, "
            f"{v['trainable']:,} trainable) {100 * v['val_accuracy']:.2f}%"
            for v in m.views["views"]) + f"; the adapters alone {100 * m.views['adapters_val_accuracy']:.2f}%")
    if m.target:
        dist = ", ".join(f"{n} {c}" for n, c in zip(names, m.target["predicted_distribution"]))
        lines.append(f"- target set: {m.target['rows']:,} rows predicted ({dist}) -> submission.csv")
    for r in m.selftrain:
        scores = "".join(f"; {name} {100 * value:.2f}%" for value, name in
                         ((r.val_accuracy, "validation accuracy"), (r.proxy_accuracy, "proxy accuracy"),
                          (r.proxy_accuracy_target_prior, "with the target prior")) if value is not None)
        changed = f"; {r.target_changed:,} target labels changed" if r.target_changed is not None else ""
        by = f", labeled by the {r.teacher}" if r.teacher not in (None, "first teacher", "previous round") else ""
        lines.append(f"- self-training round {r.round} ({r.mode}{by}): kept {r.kept_per_class} per class"
                     f"{changed}{scores}")
    lines.append(f"- files: {cfg.run_dir}/ (report.html, config.yaml, metrics.json, curves.png, model/)")
    return "\n".join(lines) + "\n"
