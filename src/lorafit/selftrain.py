"""Self-training on the unlabeled target set: teacher/student rounds.

Each round the current model (the teacher; in round 1 the trained model) predicts the target
texts; pseudo-labels whose confidence reaches ``selftrain.threshold`` are kept (at most
``per_class_cap`` per class, the most confident first, so classes stay balanced; with
``select_after_prior`` after ``predict.prior`` is imposed on the teacher's probabilities), added
to the gold rows with weight ``selftrain.weight`` (or as soft labels), reshuffled with
``seed + round``, and a model is trained on them for ``selftrain.epochs``:

- ``mode: continue``: the same adapter, trained further;
- ``mode: student``: a fresh adapter (re-initialised with ``seed + round``, its own optimizer and
  schedule).

The round's model is the next round's teacher (with ``selftrain.round_teacher: ensemble``, the
round's students averaged with the first teacher) and, after the last round, the run's model. With
several adapters it is an ensemble (probabilities averaged): in student mode each round trains
``selftrain.students`` fresh students (student i seeded ``seed + round + 1000 * i``); in continue
mode each of the ``train.adapters`` adapters is trained further; ``selftrain.ensemble_teacher``
adds the first teacher's adapters to the run's model (:func:`add_first_teacher`). The
gold rows are the (augmented) training set, or the cleaned source rows only when
``keep_synthetic`` is false. Each round's checkpoints go to ``<run>/selftrain/round-N`` (a rerun
resumes them), and each round records its pseudo-label counts, the target labels it changed
against its teacher, and the validation (and ``selftrain.proxy``) accuracy of its model.

With ``selftrain.synthetic`` (and ``keep_synthetic``) each round's teacher also judges the
synthetic gold rows (``synthetic`` column): those it assigns to another class with probability
>= ``synthetic_confidence`` are dropped, relabeled or down-weighted for that round
(:func:`judge_synthetic`; counted in the round's record under ``synthetic``). With
``selftrain.consistency`` the rounds add the consistency loss on the target texts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import datasets
import numpy as np
from scipy.special import softmax

from lorafit.augment.select import apply_disagreement, teacher_disagreement
from lorafit.config import Config, ConfigError, SelfTrainConfig
from lorafit.model import adapter_names, base_differences, build_model, copy_adapter
from lorafit.inference import ensemble_logits, predict_with_config
from lorafit.predict import label_prior
from lorafit.prior import adjust_predictions, carry_adjustment
from lorafit.metrics import distribution
from lorafit.runs import SELFTRAIN, RoundRecord
from lorafit.train import train_adapters, with_teacher_logits

log = logging.getLogger(__name__)


@dataclass
class SelfTrainResult:
    rounds: list[RoundRecord] = field(default_factory=list)  # pseudo-label counts, label changes, accuracies
    history: list = field(default_factory=list)  # the rounds' Trainer logs, each entry marked with its round
    target_logits: Optional[np.ndarray] = None  # the last round's target predictions (reused for the submission)
    model: Any = None  # the last round's model: the run's model (the input model itself in continue mode)


def self_train(cfg: Config, model, tokenizer, train: datasets.Dataset, val: Optional[datasets.Dataset],
               target_texts: list[str], run_dir: Path, source: Optional[datasets.Dataset] = None,
               proxy: Optional[datasets.Dataset] = None) -> SelfTrainResult:
    """``selftrain.rounds`` teacher/student rounds on the target texts, starting from ``model``.

    ``train``: the (augmented) training set; ``source``: the cleaned source rows (the gold rows
    when ``selftrain.keep_synthetic`` is false; defaults to ``train``). ``proxy``: an optional
    labeled set scored per round. Returns the rounds' records, logs, the last model and its
    target logits."""
    st, k = cfg.selftrain, len(cfg.data.labels)
    rows = train if st.keep_synthetic or source is None else source
    rows = rows.select_columns([c for c in ("text", "label", "weight", "synthetic") if c in rows.column_names])
    gold = with_training_columns(rows, k, st.soft_labels)
    gold_prior = label_prior(gold["label"], k)
    result, teacher = SelfTrainResult(), model
    logits = predict_with_config(teacher, tokenizer, cfg, target_texts, progress=True)
    first_logits, first_adapters = logits, len(adapter_names(model))  # the first teacher's, for ensemble_teacher
    teacher_scores = round_scores(cfg, teacher, tokenizer, val, proxy, gold_prior, target_logits=logits)
    judges, last_logits = teacher, logits  # judges: the model(s) that judge a round's synthetic gold rows
    for r in range(1, st.rounds + 1):
        probs = softmax(logits, axis=-1)
        before = probs.argmax(1)
        chosen, prior_info = selection_probs(cfg, probs, gold_prior)
        pseudo, info = pseudo_labeled_set(target_texts, chosen, st)
        round_gold = gold
        if st.synthetic != "keep":  # this round's teacher judges the synthetic gold rows
            round_gold, info["synthetic"] = judge_synthetic(cfg, judges, tokenizer, rows)
        if "synthetic" in round_gold.column_names:  # pseudo-labeled rows are not synthetic
            pseudo = pseudo.add_column("synthetic", [0] * len(pseudo))
        merged = datasets.concatenate_datasets([round_gold, pseudo.cast(round_gold.features)]
                                               ).shuffle(seed=cfg.seed + r)
        if st.mode == "student":  # a fresh adapter and head, initialised from this round's seed
            round_cfg = cfg.model_copy(update={"seed": cfg.seed + r})
            student, new_weights = build_model(round_cfg, weights=True)  # students i >= 1: added by train_adapters
        else:
            round_cfg, student, new_weights = cfg, teacher, frozenset()  # its adapters exist: none is added
        log.info("self-training round %d (%s): %d gold + %d pseudo-labeled rows %s", r, st.mode, len(round_gold),
                 info["kept"], info["kept_per_class"])
        trained = train_adapters(round_cfg, student, tokenizer, with_teacher_logits(cfg, merged, run_dir), val,
                                 Path(run_dir) / SELFTRAIN / f"round-{r}",
                                 st.students if st.mode == "student" else cfg.train.adapters, epochs=st.epochs,
                                 unlabeled=target_texts if st.consistency else None, new_weights=new_weights)
        result.history += [{**h, "selftrain_round": r} for h in trained.history]
        logits = last_logits = predict_with_config(student, tokenizer, cfg, target_texts, progress=True)
        after = logits.argmax(1)
        scores = round_scores(cfg, student, tokenizer, val, proxy, gold_prior, target_logits=logits,
                              per="student" if st.mode == "student" else "adapter")
        if len(trained.adapters) > 1 or cfg.train.average_checkpoints > 1:  # seeds (and the steps averaged)
            info["students" if st.mode == "student" else "adapters"] = trained.adapters
        if prior_info is not None:
            info["selection_prior"] = {"mode": prior_info["mode"], "changed": prior_info["changed"]}
        if r == 1:  # the starting model's scores, to compare the rounds with
            info.update({f"teacher_{key}": v for key, v in teacher_scores.items()})
        record = RoundRecord(round=r, mode=st.mode, gold_rows=len(round_gold), train_rows=len(merged),
                             target_distribution_before=distribution(before, k),
                             target_distribution_after=distribution(after, k),
                             target_changed=int((after != before).sum()), **scores, **info,
                             teacher="first teacher" if r == 1 else "students + first teacher"
                             if st.round_teacher == "ensemble" else "previous round")
        log.info("self-training round %d: kept %s per class; %d target labels changed; target distribution %s -> %s%s",
                 r, record.kept_per_class, record.target_changed, record.target_distribution_before,
                 record.target_distribution_after,
                 "".join(f"; {key} {v:.4f}" for key, v in scores.items() if isinstance(v, float)))
        result.rounds.append(record)
        teacher = judges = student
        if st.mode == "student" and st.round_teacher == "ensemble" and r < st.rounds:
            # the next round's pseudo-labels come from this round's students averaged with the first
            # teacher (every adapter weighted the same), the model ensemble_teacher makes the run's
            weights = [len(adapter_names(student)), first_adapters]
            logits = ensemble_logits([logits, first_logits], weights=weights)
            judges = ([student, model], weights)
    result.target_logits, result.model = last_logits, teacher
    if st.mode == "student" and st.ensemble_teacher and st.rounds:
        students = len(adapter_names(teacher))
        add_first_teacher(cfg, model, teacher)
        # the run's model averages every adapter's probabilities equally: both sides' target
        # predictions are at hand, so the submission needs no new pass over the target texts
        result.target_logits = ensemble_logits([last_logits, first_logits], weights=[students, first_adapters])
    return result


def add_first_teacher(cfg: Config, first, students) -> list[str]:
    """``selftrain.ensemble_teacher``: copy the adapters of the first teacher (the main training's)
    into the last round's students' model, as ``teacher`` (its ``default``) and ``teacher-i``, so
    the run's model averages them all on one base (saved and loaded as one PEFT folder). Returns
    the names added."""
    differ = base_differences(first, students)
    if differ:  # weights the checkpoint lacks, drawn from other seeds: the teacher's adapters see other ones
        log.warning("selftrain.ensemble_teacher: the students' base differs from the teacher's in %d frozen weights "
                    "the checkpoint does not hold (%s); the teacher's adapters run on the students' base",
                    len(differ), ", ".join(differ[:3]))
    added = []
    for name in adapter_names(first):
        new = "teacher" if name == "default" else f"teacher-{name.rpartition('-')[2]}"
        copy_adapter(cfg, first, name, students, new)
        added.append(new)
    log.info("selftrain.ensemble_teacher: the run's model averages the students %s and the first teacher's %s",
             [n for n in adapter_names(students) if n not in added], added)
    return added


def selection_probs(cfg: Config, probs: np.ndarray, train_prior: Optional[np.ndarray] = None
                    ) -> tuple[np.ndarray, Optional[dict]]:
    """The probabilities pseudo-labels are selected from: the teacher's, or with
    ``selftrain.select_after_prior`` those adjusted to ``predict.prior`` (and the prior's info)."""
    if not cfg.selftrain.select_after_prior:
        return probs, None
    adjusted, info = adjust_predictions(probs, cfg.predict.prior, train_prior=train_prior)
    return adjusted, info


def round_scores(cfg: Config, model, tokenizer, val: Optional[datasets.Dataset], proxy: Optional[datasets.Dataset],
                 train_prior: np.ndarray, per: str = "adapter", target_logits: Optional[np.ndarray] = None) -> dict:
    """Validation accuracy of ``model`` and, with a proxy set, its accuracy there: plain argmax
    (``proxy_accuracy``) and, when ``predict.prior`` is set, with the prior fitted on the proxy
    itself (``proxy_accuracy_prior``) and with the prior's per-class factors fitted on
    ``target_logits``, the model's predictions on the target texts, then carried to the proxy
    (``proxy_accuracy_target_prior``: the adjustment its submission gets; ``lorafit evaluate
    --prior-fit target``). An ensemble also gets each adapter's validation accuracy
    (``val_accuracy_per_<per>``)."""
    out = {}
    if val is not None and len(val):
        each: dict = {}
        logits = predict_with_config(model, tokenizer, cfg, val["text"], clean=False, each=each)  # prepared: clean
        labels = np.asarray(val["label"])
        out["val_accuracy"] = float((logits.argmax(1) == labels).mean())
        if len(each) > 1:
            out[f"val_accuracy_per_{per}"] = [float((x.argmax(1) == labels).mean()) for x in each.values()]
    if proxy is not None and len(proxy):
        logits, labels = predict_with_config(model, tokenizer, cfg, proxy["text"]), np.asarray(proxy["label"])
        out["proxy_accuracy"] = float((logits.argmax(1) == labels).mean())
        if cfg.predict.prior != "none":
            adjusted, _ = adjust_predictions(softmax(logits, axis=-1), cfg.predict.prior, train_prior=train_prior)
            out["proxy_accuracy_prior"] = float((adjusted.argmax(1) == labels).mean())
            if target_logits is not None and len(target_logits):
                carried, _ = carry_adjustment(softmax(logits, axis=-1), softmax(target_logits, axis=-1),
                                              cfg.predict.prior, train_prior=train_prior)
                out["proxy_accuracy_target_prior"] = float((carried.argmax(1) == labels).mean())
    return out


def select_pseudo_labels(probs: np.ndarray, threshold: float, per_class_cap: Optional[int]) -> tuple[np.ndarray, dict]:
    """Indices of target rows to pseudo-label, and per-class counts.

    ``per_class_cap=None`` caps every class at the smallest non-zero count of confident rows, so
    the added data is balanced (classes with no confident row contribute none).
    """
    probs = np.asarray(probs)
    k = probs.shape[1]
    conf, pred = probs.max(1), probs.argmax(1)
    confident = [np.flatnonzero((pred == c) & (conf >= threshold)) for c in range(k)]
    counts = [len(ix) for ix in confident]
    cap = per_class_cap
    if cap is None:
        nonzero = [n for n in counts if n > 0]
        cap = min(nonzero) if nonzero else 0
    chosen = []
    for ix in confident:
        order = ix[np.argsort(-conf[ix], kind="stable")]
        chosen.append(order[:cap])
    keep = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, int)
    return keep, {"confident_per_class": counts, "cap": int(cap),
                  "kept_per_class": [int(len(c)) for c in chosen], "kept": int(len(keep))}


def pseudo_labeled_set(texts: list[str], probs: np.ndarray, st: SelfTrainConfig) -> tuple[datasets.Dataset, dict]:
    """The pseudo-labeled rows of one round as a Dataset (text, label, weight[, soft_labels])."""
    keep, info = select_pseudo_labels(probs, st.threshold, st.per_class_cap)
    cols = {"text": [texts[i] for i in keep], "label": probs[keep].argmax(1).astype(int).tolist(),
            "weight": [float(st.weight)] * len(keep)}
    if st.soft_labels:
        cols["soft_labels"] = probs[keep].astype(np.float32).tolist()
    return datasets.Dataset.from_dict(cols), info


def judge_synthetic(cfg: Config, teacher, tokenizer, rows: datasets.Dataset) -> tuple[datasets.Dataset, dict]:
    """``selftrain.synthetic`` on the gold ``rows``: ``teacher`` predicts the rows marked ``synthetic``
    (one prediction pass over them; ``teacher`` may be ``([model, ...], weights)``: their
    probabilities averaged with those weights); those it assigns to another class with probability >=
    ``synthetic_confidence`` are dropped, relabeled to its class or down-weighted by
    ``synthetic_weight`` (see :func:`lorafit.augment.select.apply_disagreement`). Returns the gold
    rows with the training columns, and the counts for the round's record."""
    st, k = cfg.selftrain, len(cfg.data.labels)
    if "synthetic" not in rows.column_names:
        raise ConfigError("selftrain.synthetic needs the training set's synthetic column (augment.generate or "
                         "augment.extra rows)")
    synthetic = np.flatnonzero(np.asarray(rows["synthetic"][:], dtype=int) == 1)
    labels = np.asarray(rows["label"][:], dtype=int)
    mask, pred = np.zeros(len(rows), dtype=bool), labels.copy()
    if len(synthetic):  # the gold texts are prepared (clean) already
        texts = rows["text"][:]
        models, weights = teacher if isinstance(teacher, tuple) else ([teacher], None)
        chosen = [texts[i] for i in synthetic]
        logits = ensemble_logits([predict_with_config(m, tokenizer, cfg, chosen, clean=False) for m in models],
                                 weights=weights)
        mask[synthetic], pred[synthetic] = teacher_disagreement(labels[synthetic], softmax(logits, axis=-1),
                                                                st.synthetic_confidence)
    judged, n = apply_disagreement(rows, mask, pred, st.synthetic, st.synthetic_weight)
    done = {"drop": "dropped", "relabel": "relabeled", "downweight": "downweighted"}[st.synthetic]
    info = {"rule": st.synthetic, "rows": int(len(synthetic)), done: n, "confidence": st.synthetic_confidence}
    if st.synthetic == "downweight":
        info["weight"] = st.synthetic_weight
    log.info("self-training: the teacher contradicts %d of %d synthetic gold rows (%s)", n, len(synthetic), done)
    return with_training_columns(judged, k, st.soft_labels), info


def with_training_columns(ds: datasets.Dataset, k: int, soft: bool) -> datasets.Dataset:
    """Give gold rows weight 1 (and one-hot soft labels) so they concatenate with pseudo rows."""
    if "weight" not in ds.column_names:
        ds = ds.add_column("weight", [1.0] * len(ds))
    if soft and "soft_labels" not in ds.column_names:
        eye = np.eye(k, dtype=np.float32)
        ds = ds.add_column("soft_labels", eye[np.asarray(ds["label"], int)].tolist())
    return ds
