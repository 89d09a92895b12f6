"""Noisy synthetic labels (issue 11): the teacher-disagreement rule (drop | relabel | downweight) of
the selection and of the self-training rounds, the ``synthetic`` column, and label smoothing of
the synthetic rows only."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lorafit.augment
from conftest import EXTRA_ROWS, tiny_overrides, write_csv, write_extra_csv
from lorafit.augment import augment_training_data
from lorafit.augment.select import apply_disagreement, select_samples, teacher_disagreement
from lorafit.config import AugmentConfig, Config, DataConfig, SelectConfig, load_config, merge_overrides
from lorafit.train import LorafitTrainer, lorafit_loss

TEXTS = [
    "Oil prices climbed to a record high amid supply worries in the Gulf.",      # teacher agrees (1)
    "Astronomers spotted a comet passing close to the planet Jupiter.",         # confidently class 0, not 2
    "The striker scored twice in the second half of the final match.",          # class 2, unsure: kept as is
    "Leaders met in Geneva to discuss a peace agreement for the region.",       # confidently class 1, not 0
]
LABELS = [1, 2, 2, 0]
PROBS = np.array([[0.05, 0.9, 0.05], [0.95, 0.03, 0.02], [0.6, 0.1, 0.3], [0.02, 0.97, 0.01]])


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one thread per test module


def _pool():
    return datasets.Dataset.from_dict({"text": TEXTS, "label": LABELS, "source": list("abcd")})


def _select(rule, weight=0.3):
    return select_samples(_pool(), min_words=1, near_duplicate=None, teacher_probs=PROBS, teacher_confidence=0.9,
                          disagree=rule, disagree_weight=weight)


def test_teacher_disagreement_mask_and_classes():
    mask, pred = teacher_disagreement(LABELS, PROBS, 0.9)
    assert mask.tolist() == [False, True, False, True] and pred.tolist() == [1, 0, 0, 1]
    mask, _ = teacher_disagreement(LABELS, PROBS, 0.5)  # row 2 (0.6 for class 0) now counts too
    assert mask.tolist() == [False, True, True, True]


def test_select_drop_is_the_old_rule():
    out, rep = _select("drop")
    assert out["source"] == ["a", "c"] and out["label"] == [1, 2] and out.column_names == ["text", "label", "source"]
    assert rep["removed"]["teacher_disagrees"] == 2 and rep["kept"] == 2
    assert "relabeled" not in rep and "downweighted" not in rep and "disagree" not in rep["settings"]
    default, rep_default = select_samples(_pool(), min_words=1, near_duplicate=None, teacher_probs=PROBS)
    assert default.to_dict() == out.to_dict() and rep_default == rep


def test_select_relabel_gives_the_teachers_class():
    out, rep = _select("relabel")
    assert out["source"] == ["a", "b", "c", "d"] and out["label"] == [1, 0, 2, 1]
    assert out.column_names == ["text", "label", "source"] and out.features["label"] == _pool().features["label"]
    assert rep["removed"]["teacher_disagrees"] == 0 and rep["relabeled"] == 2 and rep["kept"] == 4
    assert rep["kept_per_class"] == {0: 1, 1: 2, 2: 1} and rep["settings"]["disagree"] == "relabel"


def test_select_downweight_keeps_the_label_with_a_weight():
    out, rep = _select("downweight", 0.25)
    assert out["label"] == LABELS and out["weight"] == [1.0, 0.25, 1.0, 0.25]
    assert out.column_names == ["text", "label", "source", "weight"]
    assert rep["downweighted"] == 2 and rep["removed"]["teacher_disagrees"] == 0
    assert rep["settings"]["disagree_weight"] == 0.25
    # an existing weight is multiplied
    ds = _pool().add_column("weight", [0.5, 0.5, 1.0, 1.0])
    again, n = apply_disagreement(ds, np.array([0, 1, 0, 1], bool), np.zeros(4, int), "downweight", 0.5)
    assert n == 2 and again["weight"] == [0.5, 0.25, 1.0, 0.5]
    with pytest.raises(ValueError, match="unknown"):
        apply_disagreement(ds, np.zeros(4, bool), np.zeros(4, int), "ignore")


def _augment_cfg(tmp_path, **augment):
    extra = write_csv(tmp_path / "extra.csv", [{"text": t, "label": ["World", "Sports", "Business"][y]}
                                              for t, y in zip(TEXTS, LABELS)])
    return Config(data=DataConfig(labels=["World", "Sports", "Business"]),
                  augment=AugmentConfig(extra=[str(extra)], **augment))


def test_augment_marks_synthetic_rows_and_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(lorafit.augment, "teacher_probabilities", lambda teacher, texts: PROBS[: len(texts)])
    train = datasets.Dataset.from_dict({"text": ["Gold text one about the markets", "Gold text two about sport"],
                                        "label": [2, 1]})
    select = SelectConfig(min_words=1, near_duplicate=None, teacher="teacher-run", disagree="downweight",
                          disagree_weight=0.3)
    cfg = _augment_cfg(tmp_path, select=select, label_smoothing=0.2)
    merged, rep = augment_training_data(cfg, train, None, tmp_path / "run")
    assert merged.column_names == ["text", "label", "weight", "synthetic"]
    rows = {t: (y, w, s) for t, y, w, s in zip(merged["text"], merged["label"], merged["weight"], merged["synthetic"])}
    assert rows["Gold text one about the markets"] == (2, 1.0, 0)
    assert rows[TEXTS[1]] == (2, 0.3, 1) and rows[TEXTS[3]] == (0, 0.3, 1) and rows[TEXTS[0]] == (1, 1.0, 1)
    assert rep["selection"]["downweighted"] == 2
    saved = json.loads((tmp_path / "run" / "augment_report.json").read_text())
    assert saved["selection"]["downweighted"] == 2

    # relabel without smoothing or a selftrain rule: no extra column at all (as before)
    cfg = _augment_cfg(tmp_path, select=select.model_copy(update={"disagree": "relabel"}))
    merged, rep = augment_training_data(cfg, train, None, tmp_path / "run2")
    assert merged.column_names == ["text", "label"] and rep["selection"]["relabeled"] == 2
    assert dict(zip(merged["text"], merged["label"]))[TEXTS[1]] == 0


def test_label_smoothing_of_synthetic_rows_matches_the_soft_targets():
    """Row 0 gold (hard), row 1 synthetic (smoothed by 0.2), row 2 synthetic with weight 0.5; K=4."""
    torch.manual_seed(0)
    logits, labels = torch.randn(3, 4), torch.tensor([0, 1, 3])
    synthetic = torch.tensor([0.0, 1.0, 1.0])
    weight = torch.tensor([1.0, 1.0, 0.5])
    logp = F.log_softmax(logits, -1)
    q = torch.tensor([[1.0, 0, 0, 0], [0.05, 0.85, 0.05, 0.05], [0.05, 0.05, 0.05, 0.85]])  # 0.8 + 0.2/4
    expected = -(q * logp).sum(-1)
    got = lorafit_loss(logits, labels, smoothing=0.2 * synthetic)
    assert got.item() == pytest.approx(expected.mean().item(), rel=1e-6)
    got = lorafit_loss(logits, labels, smoothing=0.2 * synthetic, weight=weight)
    assert got.item() == pytest.approx(((weight * expected).sum() / weight.sum()).item(), rel=1e-6)
    # with train.label_smoothing=0.1 as well: every row smoothed by 0.1 on top
    q2 = 0.9 * q + 0.1 / 4
    got = lorafit_loss(logits, labels, smoothing=0.2 * synthetic, label_smoothing=0.1)
    assert got.item() == pytest.approx(-(q2 * logp).sum(-1).mean().item(), rel=1e-6)
    # no synthetic row: the plain loss, also with train.label_smoothing
    zero = torch.zeros(3)
    assert lorafit_loss(logits, labels, smoothing=zero, label_smoothing=0.1).item() == pytest.approx(
        F.cross_entropy(logits, labels, label_smoothing=0.1).item(), rel=1e-6)
    # soft labels (self-training) are smoothed the same way
    soft = torch.softmax(torch.randn(3, 4), -1)
    q3 = (1 - 0.2 * synthetic[:, None]) * soft + 0.2 * synthetic[:, None] / 4
    got = lorafit_loss(logits, labels, soft_labels=soft, smoothing=0.2 * synthetic)
    assert got.item() == pytest.approx(-(q3 * logp).sum(-1).mean().item(), rel=1e-6)


def test_trainer_smooths_only_the_rows_marked_synthetic(tiny_roberta_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainingArguments

    tok = AutoTokenizer.from_pretrained(tiny_roberta_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_roberta_dir, hidden_dropout_prob=0.0,
                                                               attention_probs_dropout_prob=0.0)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    trainer = LorafitTrainer(model=model, args=args, label_smoothing=0.1, synthetic_smoothing=0.3)
    enc = dict(tok(TEXTS, padding=True, return_tensors="pt"))
    labels, synthetic = torch.tensor([0, 1, 2, 3]), torch.tensor([0.0, 1.0, 0.0, 1.0])
    model.train()
    loss = trainer.compute_loss(model, {**enc, "labels": labels, "synthetic": synthetic})
    logp = F.log_softmax(model(**enc).logits.float(), -1)
    eps = 1 - 0.9 * (1 - 0.3 * synthetic)  # 0.1 for gold rows, 0.37 for synthetic ones
    q = (1 - eps[:, None]) * F.one_hot(labels, 4) + eps[:, None] / 4
    assert loss.item() == pytest.approx(-(q * logp).sum(-1).mean().item(), rel=1e-5)
    model.eval()  # evaluation: no smoothing at all
    loss = trainer.compute_loss(model, {**enc, "labels": labels, "synthetic": synthetic})
    assert loss.item() == pytest.approx(F.nll_loss(logp, labels).item(), rel=1e-5)


def test_config_checks_of_the_rules():
    from lorafit.config import ConfigError

    with pytest.raises(ConfigError, match="augment.select.disagree.*teacher"):
        load_config(None, ["augment.select.disagree=relabel"])
    with pytest.raises(ConfigError, match="augment.label_smoothing.*synthetic"):
        load_config(None, ["augment.label_smoothing=0.1"])
    with pytest.raises(ConfigError, match="selftrain.synthetic.*keep_synthetic"):
        load_config(None, ["selftrain.synthetic=drop", "selftrain.keep_synthetic=false", "augment.extra=[x.csv]"])
    with pytest.raises(ConfigError, match="augment.select.disagree_weight"):
        load_config(None, ["augment.select.disagree_weight=0"])
    cfg = load_config(None, [])
    assert (cfg.augment.select.disagree, cfg.augment.label_smoothing, cfg.selftrain.synthetic) == ("drop", 0.0, "keep")


def test_selftrain_rounds_judge_the_synthetic_rows(tiny_roberta_dir, tiny_csvs, tmp_path, monkeypatch):
    """Student mode, keep_synthetic, synthetic=relabel with confidence 0: each round's teacher gives
    every synthetic gold row its own class; counted in the round's record. With
    augment.label_smoothing the training set carries the synthetic column; the pseudo-labeled rows
    are not synthetic."""
    import lorafit.pipeline as pipeline
    import lorafit.selftrain as selftrain
    from lorafit.inference import predict_with_config

    extra = write_extra_csv(tmp_path)
    cfg = load_config(None, merge_overrides(tiny_overrides(tiny_roberta_dir, tiny_csvs, tmp_path / "runs"), [
        "name=judge", f"augment.extra=[{extra}]", "augment.select.enabled=false", "augment.label_smoothing=0.1",
        "train.epochs=1", "selftrain.enabled=true", "selftrain.mode=student", "selftrain.rounds=1",
        "selftrain.threshold=0.0", "selftrain.per_class_cap=1", "selftrain.epochs=1",
        "selftrain.synthetic=relabel", "selftrain.synthetic_confidence=0.0"]))
    seen = {}
    real_judge, real_teacher_logits = selftrain.judge_synthetic, selftrain.with_teacher_logits

    def judge(cfg_, teacher, tokenizer, rows):  # the round's teacher, at the time it judges
        texts = [t for t, s in zip(rows["text"], rows["synthetic"]) if s == 1]
        seen["teacher"] = predict_with_config(teacher, tokenizer, cfg_, texts, clean=False).argmax(1)
        return real_judge(cfg_, teacher, tokenizer, rows)

    def merged_rows(cfg_, ds, run_dir):  # the round's training rows
        seen["round"] = ds
        return real_teacher_logits(cfg_, ds, run_dir)

    monkeypatch.setattr(selftrain, "judge_synthetic", judge)
    monkeypatch.setattr(selftrain, "with_teacher_logits", merged_rows)
    m = pipeline.run(cfg).to_dict()
    saved = datasets.load_from_disk(str(tmp_path / "runs" / "judge" / "data" / "train"))
    assert saved.column_names == ["text", "label", "synthetic"] and sum(saved["synthetic"]) == 8
    (rec,) = m["selftrain"]
    ds = seen["round"]
    synth = {t: y for t, y, s in zip(ds["text"], ds["label"], ds["synthetic"]) if s == 1}
    assert len(synth) == 8 and rec["synthetic"]["rows"] == 8 and rec["synthetic"]["rule"] == "relabel"
    assert sum(1 for s in ds["synthetic"] if s == 0) == 96 + rec["kept"]  # gold source + pseudo rows
    texts = [t for t, s in zip(saved["text"], saved["synthetic"]) if s == 1]
    teacher = seen["teacher"]
    assert [synth[t] for t in texts] == teacher.tolist()  # confidence 0: every row gets the teacher's class
    original = {r["text"]: r["label"] for r in EXTRA_ROWS}
    assert rec["synthetic"]["relabeled"] == sum(int(teacher[i] != original[t]) for i, t in enumerate(texts))
    assert rec["gold_rows"] == 104 and rec["train_rows"] == 104 + rec["kept"]
    saved = json.loads((tmp_path / "runs" / "judge" / "metrics.json").read_text())
    assert saved["selftrain"][0]["synthetic"] == rec["synthetic"]
