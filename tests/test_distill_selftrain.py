"""Distillation loss, teacher-logit cache, pseudo-label selection and the self-training stage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_overrides
from lorafit.config import SelfTrainConfig, load_config, merge_overrides
from lorafit.selftrain import pseudo_labeled_set, select_pseudo_labels, with_training_columns
from lorafit.train import lorafit_loss


def _by_stage(main, rounds):
    """A stand-in for ``lorafit.train.train_model`` that hands the main training to ``main`` and the
    self-training rounds (checkpoints in ``<run>/selftrain/round-N``) to ``rounds``."""
    def fit(cfg, model, tokenizer, train_ds, val_ds, out_dir, *a, **kw):
        chosen = rounds if "selftrain" in Path(out_dir).parts else main
        return chosen(cfg, model, tokenizer, train_ds, val_ds, out_dir, *a, **kw)
    return fit


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one thread per test module


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


def test_a_pseudo_label_exactly_at_the_threshold_is_kept():
    """``selftrain.threshold`` is the least confidence kept (>=), as documented: a row whose top
    probability equals it is a pseudo-label, one just below is not."""
    probs = np.array([[0.8, 0.2], [0.2, 0.8], [0.79, 0.21], [0.3, 0.7]])
    keep, info = select_pseudo_labels(probs, threshold=0.8, per_class_cap=5)
    assert keep.tolist() == [0, 1] and info["confident_per_class"] == [1, 1]
    keep, _ = select_pseudo_labels(probs, threshold=0.79, per_class_cap=5)
    assert keep.tolist() == [0, 1, 2]


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
    m = run(student_cfg).to_dict()
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


# ------------------------------------------------------------------ teacher/student rounds (issue 11)


def test_select_after_prior_balances_the_selection():
    """A teacher that calls every target row class 0: selecting on its raw probabilities keeps
    class 0 only; after the uniform prior is imposed, every class gets its two rows."""
    from lorafit.selftrain import selection_probs

    probs = np.full((8, 4), 0.05)
    probs[:, 0] = 0.7
    for i in range(8):  # rows 2j, 2j+1 lean towards class j as their second choice
        probs[i, i // 2] += 0.2 if i // 2 else 0.15
    probs /= probs.sum(1, keepdims=True)
    raw = load_config(None, ["selftrain.enabled=true", "selftrain.threshold=0.0", "selftrain.per_class_cap=2",
                             "predict.prior=uniform"])
    same, prior_info = selection_probs(raw, probs)  # select_after_prior is off: the teacher's own
    assert same is probs and prior_info is None
    _, info = select_pseudo_labels(same, 0.0, 2)
    assert info["kept_per_class"] == [2, 0, 0, 0]
    cfg = raw.model_copy(update={"selftrain": raw.selftrain.model_copy(update={"select_after_prior": True})})
    adjusted, prior_info = selection_probs(cfg, probs)
    assert prior_info["mode"] == "uniform" and prior_info["changed"] == 6
    keep, info = select_pseudo_labels(adjusted, 0.0, 2)
    assert info["kept_per_class"] == [2, 2, 2, 2]
    assert adjusted[keep].argmax(1).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def _lora_state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k or "classifier" in k}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_student_rounds_chain_fresh_adapters(tiny_roberta_dir, tiny_csvs, tmp_path, monkeypatch):
    """mode=student, 2 rounds: each round trains a freshly initialised adapter (seed + round) on the
    cleaned source rows (not the extra rows) + the previous model's capped pseudo-labels; the
    last student is saved, evaluated and predicts the submission as `lorafit predict` does."""
    from scipy.special import softmax
    from typer.testing import CliRunner

    import lorafit.pipeline as pipeline
    import lorafit.selftrain as selftrain
    import lorafit.train as train
    from conftest import write_extra_csv
    from lorafit.cli import app
    from lorafit.data import prepare_data
    from lorafit.model import build_model, load_trained
    from lorafit.inference import predict_with_config
    from lorafit.prior import adjust_predictions, reweight

    extra = write_extra_csv(tmp_path)
    cfg = load_config(None, merge_overrides(tiny_overrides(tiny_roberta_dir, tiny_csvs, tmp_path / "runs"), [
        "name=student", f"augment.extra=[{extra}]", "augment.select.enabled=false",
        "selftrain.enabled=true", "selftrain.mode=student", "selftrain.rounds=2", "selftrain.threshold=0.0",
        "selftrain.per_class_cap=2", "selftrain.keep_synthetic=false", "selftrain.weight=0.5",
        "selftrain.epochs=1", "selftrain.select_after_prior=true", f"selftrain.proxy={tiny_csvs['dev']}",
        "predict.prior=uniform"]))

    seen = {"main": [], "rounds": []}
    real_main = real_round = train.train_model

    def main_train(cfg_, model, *a, **kw):
        trainer = real_main(cfg_, model, *a, **kw)
        seen["main"].append((model, _lora_state(model)))
        return trainer

    def round_train(cfg_, model, tokenizer, train_ds, *a, **kw):
        start = _lora_state(model)
        trainer = real_round(cfg_, model, tokenizer, train_ds, *a, **kw)
        pseudo = [i for i, w in enumerate(train_ds["weight"]) if w == 0.5]
        texts = [train_ds["text"][i] for i in pseudo]
        seen["rounds"].append({"cfg": cfg_, "model": model, "start": start, "end": _lora_state(model),
                               "rows": len(train_ds), "pseudo_texts": texts,
                               "pseudo_labels": [train_ds["label"][i] for i in pseudo], "tokenizer": tokenizer})
        return trainer

    monkeypatch.setattr(train, "train_model", _by_stage(main_train, round_train))
    m = pipeline.run(cfg).to_dict()

    (teacher, teacher_end), = seen["main"]
    r1, r2 = seen["rounds"]
    # fresh adapters: each round starts from a model built anew with seed + round, not from its teacher
    for r, info in ((1, r1), (2, r2)):
        assert info["cfg"].seed == cfg.seed + r
        assert _same(info["start"], _lora_state(build_model(cfg.model_copy(update={"seed": cfg.seed + r})).model))
    assert r1["model"] is not teacher and r2["model"] is not r1["model"]
    assert not _same(r1["start"], teacher_end) and not _same(r2["start"], r1["end"])
    rounds = m["selftrain"]
    # teacher -> student -> student: round 2's pseudo-labels are round 1's student's predictions
    # (in student mode a round's model is not touched after its round)
    assert len(r2["pseudo_texts"]) == rounds[1]["kept"] > 0
    target = prepare_data(cfg).target["text"][:]
    logits = predict_with_config(r1["model"], r1["tokenizer"], cfg, target)
    probs, _ = selftrain.selection_probs(cfg, softmax(logits, -1))
    keep, _ = select_pseudo_labels(probs, 0.0, 2)
    assert sorted(zip(r2["pseudo_texts"], r2["pseudo_labels"])) == sorted(
        (target[i], int(probs[i].argmax())) for i in keep)
    # round 1's proxy accuracy with the prior fitted on its target predictions, carried to the proxy
    proxy = pipeline.load_proxy(cfg)
    proxy_probs = softmax(predict_with_config(r1["model"], r1["tokenizer"], cfg, proxy["text"]), -1)
    _, fitted = adjust_predictions(softmax(logits, -1), "uniform")  # the uniform prior needs no train prior
    carried = reweight(proxy_probs, fitted["class_weights"]).argmax(1)
    assert m["selftrain"][0]["proxy_accuracy_target_prior"] == pytest.approx(
        float((carried == np.asarray(proxy["label"])).mean()))
    summary = (cfg.run_dir / "summary.md").read_text()
    assert f"with the target prior {100 * m['selftrain'][0]['proxy_accuracy_target_prior']:.2f}%" in summary
    # gold = the 96 cleaned source rows only (keep_synthetic=false), not the 104 augmented rows
    assert m["train_rows"] == 104 and m["data"]["train_rows"] == 96
    for rec, info in zip(rounds, (r1, r2)):
        assert rec["mode"] == "student" and rec["gold_rows"] == 96
        assert rec["kept_per_class"] == [min(n, 2) for n in rec["confident_per_class"]]  # capped at 2 per class
        assert rec["train_rows"] == info["rows"] == 96 + rec["kept"] and len(info["pseudo_texts"]) == rec["kept"]
        assert rec["selection_prior"]["mode"] == "uniform"
        assert 0 <= rec["target_changed"] <= 16 and 0.0 <= rec["val_accuracy"] <= 1.0
        assert 0.0 <= rec["proxy_accuracy"] <= 1.0 and "proxy_accuracy_prior" in rec
        assert 0.0 <= rec["proxy_accuracy_target_prior"] <= 1.0
    assert "teacher_val_accuracy" in rounds[0] and "teacher_val_accuracy" not in rounds[1]
    assert rounds[1]["target_distribution_before"] == rounds[0]["target_distribution_after"]
    # labels changed: round 2's model against its teacher (round 1's); dev accuracy of round 2's model
    last = predict_with_config(r2["model"], r2["tokenizer"], cfg, target).argmax(1)
    assert rounds[1]["target_changed"] == int((last != logits.argmax(1)).sum())
    val = prepare_data(cfg).val
    dev = predict_with_config(r2["model"], r2["tokenizer"], cfg, val["text"], clean=False).argmax(1)
    assert rounds[1]["val_accuracy"] == pytest.approx(float((dev == np.asarray(val["label"])).mean()))
    saved = json.loads((cfg.run_dir / "metrics.json").read_text())
    assert saved["selftrain"] == rounds
    # the run's model is the last student: its saved adapter holds round 2's weights ...
    loaded, tok, _, _ = load_trained(cfg.run_dir, merge=False)
    assert _same(_lora_state(loaded), r2["end"])
    # ... and `lorafit predict` with it writes the run's submission
    out = tmp_path / "again.csv"
    res = CliRunner().invoke(app, ["predict", str(cfg.run_dir), "-o", str(out), "--no-reuse-probs"])
    assert res.exit_code == 0, res.output
    assert out.read_text() == (cfg.run_dir / "submission.csv").read_text()
    assert "(student)" in (cfg.run_dir / "summary.md").read_text()


def test_round_teacher_ensemble_labels_with_the_students_and_the_first_teacher(tiny_roberta_dir, tiny_csvs, tmp_path,
                                                                               monkeypatch):
    """selftrain.round_teacher=ensemble: round 2's pseudo-labels come from round 1's student averaged
    with the first teacher (probabilities, one weight per adapter), and the same two models judge
    round 2's synthetic gold rows; round 1 is labeled by the first teacher alone."""
    from scipy.special import softmax

    import lorafit.pipeline as pipeline
    import lorafit.selftrain as selftrain
    import lorafit.train as train
    from conftest import write_extra_csv
    from lorafit.data import prepare_data
    from lorafit.inference import ensemble_logits, predict_with_config

    extra = write_extra_csv(tmp_path)
    cfg = load_config(None, merge_overrides(tiny_overrides(tiny_roberta_dir, tiny_csvs, tmp_path / "runs"), [
        "name=ens", f"augment.extra=[{extra}]", "augment.select.enabled=false", "train.epochs=1",
        "selftrain.enabled=true", "selftrain.mode=student", "selftrain.rounds=2", "selftrain.threshold=0.0",
        "selftrain.per_class_cap=2", "selftrain.epochs=1", "selftrain.round_teacher=ensemble",
        "selftrain.ensemble_teacher=true", "selftrain.synthetic=relabel", "selftrain.synthetic_confidence=0.0"]))
    seen = {"main": [], "rounds": [], "chosen": [], "judges": []}
    real_main = real_round = train.train_model
    real_pseudo, real_judge = selftrain.pseudo_labeled_set, selftrain.judge_synthetic

    def main_train(cfg_, model, *a, **kw):
        seen["main"].append(model)
        return real_main(cfg_, model, *a, **kw)

    def round_train(cfg_, model, *a, **kw):
        seen["rounds"].append(model)
        return real_round(cfg_, model, *a, **kw)

    def pseudo(texts, probs, st):
        seen["chosen"].append(np.array(probs))
        return real_pseudo(texts, probs, st)

    def judge(cfg_, teacher, tokenizer, rows):
        seen["judges"].append(teacher)
        return real_judge(cfg_, teacher, tokenizer, rows)

    for mod, name, fn in ((train, "train_model", _by_stage(main_train, round_train)),
                          (selftrain, "pseudo_labeled_set", pseudo), (selftrain, "judge_synthetic", judge)):
        monkeypatch.setattr(mod, name, fn)
    m = pipeline.run(cfg).to_dict()

    (first,), (student1, student2) = seen["main"], seen["rounds"]
    data = prepare_data(cfg)
    target = data.target["text"][:]
    from lorafit.model import load_trained
    tok = load_trained(cfg.run_dir).tokenizer
    l0 = predict_with_config(first, tok, cfg, target)
    l1 = predict_with_config(student1, tok, cfg, target)
    both = ensemble_logits([l1, l0], weights=[1, 1])
    np.testing.assert_allclose(seen["chosen"][0], softmax(l0, -1), atol=1e-5)  # round 1: the first teacher
    np.testing.assert_allclose(seen["chosen"][1], softmax(both, -1), atol=1e-5)  # round 2: student 1 + teacher
    assert not np.allclose(seen["chosen"][1], softmax(l1, -1), atol=1e-3)  # not student 1 alone
    assert seen["judges"][0] is first
    models, weights = seen["judges"][1]
    assert models[0] is student1 and models[1] is first and weights == [1, 1]
    r1, r2 = m["selftrain"]
    assert (r1["teacher"], r2["teacher"]) == ("first teacher", "students + first teacher")
    l2 = predict_with_config(student2, tok, cfg, target)
    assert r2["target_changed"] == int((l2.argmax(1) != both.argmax(1)).sum())
    assert r2["target_distribution_before"] == np.bincount(both.argmax(1), minlength=4).tolist()
    # the run's model: the last student + the first teacher, as with round_teacher=students
    assert m["ensemble"]["names"] == ["default", "teacher"]
    assert "labeled by the students + first teacher" in (cfg.run_dir / "summary.md").read_text()


def test_round_teacher_needs_student_mode():
    from lorafit.config import ConfigError
    with pytest.raises(ConfigError, match="selftrain.round_teacher.*mode=student"):
        load_config(None, ["selftrain.round_teacher=ensemble"])
    with pytest.raises(ConfigError, match="selftrain.round_teacher"):
        load_config(None, ["selftrain.mode=student", "selftrain.round_teacher=teacher"])
    assert load_config(None, ["selftrain.mode=student", "selftrain.round_teacher=ensemble"]).selftrain.round_teacher \
        == "ensemble"
