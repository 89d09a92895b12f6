"""Distillation loss, teacher-logit cache, pseudo-label selection and the self-training stage."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_overrides
from lorafit.config import SelfTrainConfig, load_config, merge_overrides
from lorafit.selftrain import pseudo_labeled_set, select_pseudo_labels, with_training_columns
from lorafit.train import lorafit_loss


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_loss_without_extras_is_cross_entropy():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    assert torch.allclose(lorafit_loss(logits, labels), F.cross_entropy(logits, labels))
    assert torch.allclose(lorafit_loss(logits, labels, label_smoothing=0.1),
                          F.cross_entropy(logits, labels, label_smoothing=0.1))


def test_distillation_term_matches_formula():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    teacher = torch.tensor([[0.0, 1.0, 0.0]])
    labels = torch.tensor([0])
    alpha, t = 0.3, 2.0
    ce = F.cross_entropy(logits, labels)
    p_t = F.softmax(teacher / t, -1)
    kl = (p_t * (p_t.log() - F.log_softmax(logits / t, -1))).sum()
    expected = alpha * ce + (1 - alpha) * t * t * kl
    got = lorafit_loss(logits, labels, teacher_logits=teacher, alpha=alpha, temperature=t)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    # alpha=1 ignores the teacher; a student equal to the teacher has zero KL
    assert lorafit_loss(logits, labels, teacher_logits=teacher, alpha=1.0).item() == pytest.approx(ce.item(), rel=1e-6)
    same = lorafit_loss(teacher, labels, teacher_logits=teacher, alpha=0.0, temperature=t)
    assert same.item() == pytest.approx(0.0, abs=1e-6)


def test_sample_weights_and_soft_labels():
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0])
    per = F.cross_entropy(logits, labels, reduction="none")
    w = torch.tensor([1.0, 0.25])
    assert lorafit_loss(logits, labels, weight=w).item() == pytest.approx(((w * per).sum() / w.sum()).item(), rel=1e-6)
    soft = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    expected = -(soft * F.log_softmax(logits, -1)).sum(-1).mean()
    assert lorafit_loss(logits, labels, soft_labels=soft).item() == pytest.approx(expected.item(), rel=1e-6)


def test_select_pseudo_labels_balances_classes_and_takes_most_confident():
    probs = np.array([
        [0.95, 0.05, 0.0], [0.99, 0.01, 0.0], [0.92, 0.08, 0.0], [0.5, 0.5, 0.0],  # class 0: 3 confident
        [0.0, 0.97, 0.03], [0.0, 0.91, 0.09],                                     # class 1: 2 confident
        [0.3, 0.3, 0.4],                                                           # class 2: none
    ])
    keep, info = select_pseudo_labels(probs, threshold=0.9, per_class_cap=None)
    assert info["confident_per_class"] == [3, 2, 0]
    assert info["cap"] == 2 and info["kept_per_class"] == [2, 2, 0]
    assert keep.tolist() == [0, 1, 4, 5]  # the two most confident of class 0 are rows 1 and 0
    keep, info = select_pseudo_labels(probs, threshold=0.9, per_class_cap=1)
    assert keep.tolist() == [1, 4]
    keep, _ = select_pseudo_labels(probs, threshold=0.999, per_class_cap=None)
    assert keep.size == 0


def test_pseudo_labeled_set_columns():
    probs = np.array([[0.95, 0.05], [0.02, 0.98], [0.6, 0.4]])
    st = SelfTrainConfig(enabled=True, threshold=0.9, weight=0.5, soft_labels=True)
    ds, info = pseudo_labeled_set(["a", "b", "c"], probs, st)
    assert ds["text"] == ["a", "b"] and ds["label"] == [0, 1] and ds["weight"] == [0.5, 0.5]
    assert np.allclose(ds["soft_labels"], probs[:2])
    import datasets

    gold = with_training_columns(datasets.Dataset.from_dict({"text": ["x"], "label": [1]}), 2, soft=True)
    assert gold["weight"] == [1.0] and gold["soft_labels"] == [[0.0, 1.0]]


def test_selftrain_and_distillation_end_to_end(tiny_roberta_dir, tiny_csvs, tmp_path, caplog):
    """A teacher run, then a student distilled from it with two self-training rounds."""
    from lorafit.pipeline import run

    base = tiny_overrides(tiny_roberta_dir, tiny_csvs, tmp_path / "runs", **{"train.epochs": 3})
    run(load_config(None, merge_overrides(base, ["name=teacher"])))
    assert (tmp_path / "runs" / "teacher" / "model" / "adapter_config.json").is_file()

    student_cfg = load_config(None, merge_overrides(base, [
        "name=student", "train.distill.enabled=true", f"train.distill.teacher={tmp_path / 'runs' / 'teacher'}",
        "train.distill.alpha=0.5", "selftrain.enabled=true", "selftrain.rounds=2", "selftrain.threshold=0.0",
        "selftrain.epochs=1", "predict.prior=uniform"]))
    m = run(student_cfg)
    # teacher logits were cached once for every distinct training text, then reused by the rounds
    cache = np.load(tmp_path / "runs" / "student" / "data" / "teacher_logits.npz")
    n_target = 16
    assert len(cache["keys"]) == len(set(cache["keys"].tolist())) >= 96
    assert cache["logits"].shape[1] == 4
    rounds = m["selftrain"]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert sum(r["kept_per_class"]) == r["kept"] <= n_target
        assert sum(r["target_distribution_before"]) == sum(r["target_distribution_after"]) == n_target
    # uniform prior: the balanced assignment is no further from 4 per class than the raw argmax
    t = m["target"]
    assert t["prior"]["mode"] == "uniform" and t["prior"]["prior"] == [0.25] * 4
    assert sum(t["predicted_distribution"]) == n_target
    spread = lambda d: max(abs(c - 4) for c in d)  # noqa: E731
    assert spread(t["predicted_distribution"]) <= spread(t["raw_distribution"])
    sub = (tmp_path / "runs" / "student" / "submission.csv").read_text().splitlines()
    assert sub[0] == "ID,Label" and len(sub) == n_target + 1
    saved = json.loads((tmp_path / "runs" / "student" / "metrics.json").read_text())
    assert saved["selftrain"] == rounds and math.isfinite(saved["val_accuracy"])
