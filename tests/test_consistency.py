"""Consistency training on the target texts (train.consistency, selftrain.consistency): the loss
on hand-computable cases, the unlabeled batches, the trainer's loss and logs, determinism, and a
tiny end-to-end run."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import NEWS, tiny_overrides, write_csv
from lorafit.config import ConfigError, ConsistencyConfig, load_config, merge_overrides
from lorafit.train import LorafitTrainer, UnlabeledBatches, consistency_terms

TARGET = [t for texts in NEWS.values() for t in texts]  # 16 texts


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one thread per test module


def test_consistency_terms_on_known_probabilities():
    orig = torch.log(torch.tensor([[0.9, 0.1], [0.6, 0.4]]))  # row 0 confident, row 1 not
    aug = torch.zeros(2, 2)  # uniform prediction on the copies: CE = ln 2 against any target
    loss, mask = consistency_terms(orig, aug, threshold=0.8)
    assert mask.tolist() == [1.0, 0.0] and loss.item() == pytest.approx(math.log(2) / 2, rel=1e-6)
    aug = torch.log(torch.tensor([[0.7, 0.3], [0.5, 0.5]]))
    loss, _ = consistency_terms(orig, aug, threshold=0.8)  # T=1: target (0.9, 0.1)
    assert loss.item() == pytest.approx(-(0.9 * math.log(0.7) + 0.1 * math.log(0.3)) / 2, rel=1e-6)
    loss, _ = consistency_terms(orig, aug, threshold=0.8, temperature=0.5)  # target (0.81, 0.01) / 0.82
    assert loss.item() == pytest.approx(-(0.81 * math.log(0.7) + 0.01 * math.log(0.3)) / 0.82 / 2, rel=1e-6)
    loss, _ = consistency_terms(orig, aug, threshold=0.8, hard=True)  # FixMatch: class 0
    assert loss.item() == pytest.approx(-math.log(0.7) / 2, rel=1e-6)
    loss, mask = consistency_terms(orig, aug, threshold=0.5)
    assert mask.tolist() == [1.0, 1.0]
    assert loss.item() == pytest.approx(-(0.9 * math.log(0.7) + 0.1 * math.log(0.3) + math.log(0.5)) / 2, rel=1e-6)
    loss, mask = consistency_terms(orig, aug, threshold=1.0)  # mask all off
    assert loss.item() == 0.0 and mask.sum().item() == 0


def _tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def test_unlabeled_batches_cycle_in_a_seeded_order(tiny_roberta_dir):
    tok = _tokenizer(tiny_roberta_dir)
    b = UnlabeledBatches(TARGET, tok, 32, batch_size=6, seed=3, fraction=0.3)
    assert len(b) == 16 and b.changed > 8  # most copies have a synonym replaced
    first_pass = b.indices(0) + b.indices(1) + b.indices(2)[:4]  # 16 = 6 + 6 + 4
    assert sorted(first_pass) == list(range(16))
    assert sorted(b.indices(2)[4:] + b.indices(3) + b.indices(4) + b.indices(5)[:2]) == list(range(16))
    same = UnlabeledBatches(TARGET, tok, 32, batch_size=6, seed=3, fraction=0.3)
    assert [same.indices(s) for s in range(6)] == [b.indices(s) for s in range(6)]
    assert same.augmented == b.augmented
    other = UnlabeledBatches(TARGET, tok, 32, batch_size=6, seed=4, fraction=0.3)
    assert [other.indices(s) for s in range(3)] != [b.indices(s) for s in range(3)]
    # two processes take interleaved batches: together, the single process's batches
    assert b.indices(0, rank=0, world_size=2) == b.indices(0) and b.indices(0, rank=1, world_size=2) == b.indices(1)
    original, augmented = b.batch(0)
    assert original["input_ids"].shape[0] == augmented["input_ids"].shape[0] == 6
    assert original["input_ids"].shape[1] % 8 == 0 and set(original) == {"input_ids", "attention_mask"}


def test_unlabeled_batches_grouped_by_length(tiny_roberta_dir):
    """train.group_by_length: each run of 50 batches is sorted longest first, so a batch pads to
    the lengths of similar texts; every pass still takes every text once, in a seeded order."""
    tok = _tokenizer(tiny_roberta_dir)
    texts = [("word " * (1 + (7 * i) % 20)).strip() for i in range(120)]  # 1..20 words, mixed
    plain = UnlabeledBatches(texts, tok, 64, batch_size=2, seed=5, fraction=0.3)
    grouped = UnlabeledBatches(texts, tok, 64, batch_size=2, seed=5, fraction=0.3, group_by_length=True)
    first = [i for s in range(60) for i in grouped.indices(s)]
    assert sorted(first) == list(range(120))
    lengths = grouped.lengths
    assert [lengths[i] for i in first[:100]] == sorted((lengths[i] for i in first[:100]), reverse=True)
    assert [lengths[i] for i in first[100:]] == sorted((lengths[i] for i in first[100:]), reverse=True)
    # the megabatches are the plain order's runs of 100 (50 batches of 2), sorted
    plain_first = [i for s in range(60) for i in plain.indices(s)]
    assert set(first[:100]) == set(plain_first[:100]) and first != plain_first
    assert [grouped.indices(s) for s in range(60, 70)] != [grouped.indices(s) for s in range(10)]  # pass 2 reshuffled
    again = UnlabeledBatches(texts, tok, 64, batch_size=2, seed=5, fraction=0.3, group_by_length=True)
    assert [again.indices(s) for s in range(120)] == [grouped.indices(s) for s in range(120)]

    def padded(b, steps):
        return sum(b.batch(s)[1]["input_ids"].numel() for s in range(steps))

    plain8 = UnlabeledBatches(texts, tok, 64, batch_size=8, seed=5, fraction=0.3)
    grouped8 = UnlabeledBatches(texts, tok, 64, batch_size=8, seed=5, fraction=0.3, group_by_length=True)
    assert padded(grouped8, 15) < 0.8 * padded(plain8, 15)  # a pass of batches of 8 pads much less


def _trainer(model_dir, tmp_path, **kw):
    from transformers import AutoModelForSequenceClassification, TrainingArguments

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, hidden_dropout_prob=0.0,
                                                               attention_probs_dropout_prob=0.0)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    return LorafitTrainer(model=model, args=args, **kw), model


def test_trainer_loss_is_supervised_plus_weighted_consistency(tiny_roberta_dir, tmp_path):
    tok = _tokenizer(tiny_roberta_dir)
    texts = [t for texts in NEWS.values() for t in texts[:1]]
    enc, labels = dict(tok(texts, padding=True, return_tensors="pt")), torch.tensor([0, 1, 2, 3])
    batches = UnlabeledBatches(TARGET, tok, 32, batch_size=5, seed=0)
    plain, model = _trainer(tiny_roberta_dir, tmp_path)
    model.train()
    supervised = plain.compute_loss(model, {**enc, "labels": labels}).item()
    # threshold 1: the mask is all off, the loss is the supervised loss
    off, _ = _trainer(tiny_roberta_dir, tmp_path, unlabeled=batches, consistency=ConsistencyConfig(threshold=1.0))
    got = off.compute_loss(model, {**enc, "labels": labels}).item()
    assert got == pytest.approx(supervised, rel=1e-6, abs=1e-7)
    off.log({"loss": got})
    assert off.state.log_history[-1]["consistency_mask_rate"] == 0.0
    assert off.state.log_history[-1]["consistency_loss"] == 0.0
    # threshold 0: every row counts; by hand from the model's own predictions
    c = ConsistencyConfig(threshold=0.0, weight=0.5, temperature=0.4)
    on, _ = _trainer(tiny_roberta_dir, tmp_path, unlabeled=batches, consistency=c)
    got = on.compute_loss(model, {**enc, "labels": labels}).item()
    assert model.training  # left in training mode after the no-grad pass
    original, augmented = batches.batch(0)
    with torch.no_grad():
        target = F.softmax(model(**original).logits / 0.4, -1)
        ce = -(target * F.log_softmax(model(**augmented).logits, -1)).sum(-1)
    assert got == pytest.approx(supervised + 0.5 * ce.mean().item(), rel=1e-5)
    on.log({"loss": got})
    assert on.state.log_history[-1]["consistency_mask_rate"] == 1.0
    assert on.state.log_history[-1]["consistency_loss"] == pytest.approx(ce.mean().item(), rel=1e-5)
    on.log({"eval_loss": 1.0})  # evaluation logs get nothing added
    assert "consistency_loss" not in on.state.log_history[-1]
    model.eval()  # evaluation: the supervised loss only
    assert on.compute_loss(model, {**enc, "labels": labels}).item() == pytest.approx(
        F.cross_entropy(model(**enc).logits, labels).item(), rel=1e-6)


@pytest.fixture()
def csvs(tiny_csvs, tmp_path) -> dict:
    """The tiny CSVs with a target set in normal case (synonyms replace no all-caps word)."""
    return {**tiny_csvs, "target": write_csv(tmp_path / "target-cased.csv", [{"text": t} for t in TARGET])}


def _run_cfg(model_dir, csvs, root, *extra):
    return load_config(None, merge_overrides(tiny_overrides(model_dir, csvs, root), [
        "train.consistency.enabled=true", "train.consistency.threshold=0.0", "train.consistency.batch_size=8",
        *extra]))


def test_same_seed_same_weights(tiny_roberta_dir, csvs, tmp_path):
    from lorafit.data import prepare_data
    from lorafit.model import build_model, load_tokenizer
    from lorafit.train import train_model

    cfg = _run_cfg(tiny_roberta_dir, csvs, tmp_path, "train.max_steps=3", "train.logging_steps=1")
    data = prepare_data(cfg)
    states, logs = [], []
    for i in range(2):
        model = build_model(cfg, weights=True).model
        trainer = train_model(cfg, model, load_tokenizer(cfg), data.train, None, tmp_path / f"out-{i}",
                              unlabeled=data.target["text"][:])
        states.append({k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k})
        logs.append([h for h in trainer.state.log_history if "consistency_loss" in h])
    assert states[0].keys() and all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert len(logs[0]) == 3 and logs[0] == logs[1]
    assert all(h["consistency_mask_rate"] == 1.0 and h["consistency_loss"] > 0 for h in logs[0])


def test_end_to_end_with_consistency_and_selftrain(tiny_roberta_dir, csvs, tmp_path):
    from lorafit.pipeline import run

    cfg = _run_cfg(tiny_roberta_dir, csvs, tmp_path / "runs", "train.epochs=1", "selftrain.enabled=true",
                   "selftrain.rounds=1", "selftrain.epochs=1", "selftrain.threshold=0.0",
                   "selftrain.consistency=true", "train.consistency.hard=true")
    m = run(cfg).to_dict()
    log = json.loads((tmp_path / "runs" / "tiny" / "train_log.json").read_text())
    main = [h for h in log if "consistency_loss" in h and "selftrain_round" not in h]
    rounds = [h for h in log if "consistency_loss" in h and h.get("selftrain_round") == 1]
    assert main and rounds and all(0.0 <= h["consistency_mask_rate"] <= 1.0 for h in main + rounds)
    assert math.isfinite(m["val_accuracy"]) and (tmp_path / "runs" / "tiny" / "curves.png").is_file()


def test_end_to_end_loss_is_supervised_plus_weight_times_consistency(tiny_roberta_dir, csvs, tmp_path):
    """The same run with consistency weights 0 and 2: the first step sees the same batch from the same
    weights, so its logged loss differs by exactly 2 x the consistency loss (the weight is applied)."""
    from lorafit.pipeline import run

    first = {}
    for w in (0, 2):
        cfg = _run_cfg(tiny_roberta_dir, csvs, tmp_path / f"runs-{w}", "train.max_steps=2", "train.logging_steps=1",
                       f"train.consistency.weight={w}")
        run(cfg)
        log = json.loads((tmp_path / f"runs-{w}" / "tiny" / "train_log.json").read_text())
        first[w] = next(h for h in log if "consistency_loss" in h and h.get("step") == 1)
    c = first[2]["consistency_loss"]
    assert c > 0.01 and first[0]["consistency_loss"] == pytest.approx(c, rel=1e-4)
    assert first[2]["loss"] == pytest.approx(first[0]["loss"] + 2 * c, abs=2e-3)


def test_consistency_needs_target_texts(tiny_roberta_dir, tiny_csvs, tmp_path):
    from lorafit.pipeline import run

    for key in ("train.consistency.enabled=true", "selftrain.consistency=true"):
        extra = ["selftrain.enabled=true"] if key.startswith("selftrain") else []
        cfg = load_config(None, merge_overrides(tiny_overrides(tiny_roberta_dir, tiny_csvs, tmp_path / "runs"),
                                                [key, "data.target=null", *extra]))
        with pytest.raises(ConfigError, match=key.split("=")[0].replace(".", r"\.") + ".*data.target"):
            run(cfg)
        assert not (tmp_path / "runs" / "tiny").exists()  # failed before the run folder was made
