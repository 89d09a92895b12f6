"""Using the whole budget: several LoRA adapters on one frozen base averaged as an ensemble
(``train.adapters``, ``selftrain.students``, ``selftrain.ensemble_teacher``), the budget counting
every adapter, and checkpoint averaging (``train.average_checkpoints``), on the tiny RoBERTa."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from scipy.special import softmax
from typer.testing import CliRunner

from conftest import tiny_labeled_rows, tiny_overrides, write_csv
from lorafit.budget import BudgetExceeded, check_budget, count_budget
from lorafit.cli import app
from lorafit.config import ConfigError, load_config
from lorafit.model import adapter_names, add_adapter, build_model, load_base_model, load_trained
from lorafit.pipeline import run
from lorafit.inference import ensemble_logits, predict_with_config

REPO = Path(__file__).resolve().parents[1]
NO_AUGMENT = ["augment.synonyms.enabled=false", "augment.lm.enabled=false", "augment.generate.enabled=false",
              "selftrain.enabled=false"]
# learns the tiny set within a few epochs (see tests/test_pipeline.py), two adapters, the last two checkpoints averaged
ENSEMBLE = {"train.adapters": 2, "train.epochs": 4, "train.learning_rate": 0.02, "train.warmup_ratio": 0.0,
            "train.average_checkpoints": 2}
WEIGHTS = "adapter_model.safetensors"


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    yield


def _csvs(root: Path) -> dict:
    return {"train": write_csv(root / "data" / "train.csv", tiny_labeled_rows(6)),
            "dev": write_csv(root / "data" / "dev.csv", tiny_labeled_rows(2)),
            "target": write_csv(root / "data" / "target.csv",
                                [{"text": r["text"].upper()} for r in tiny_labeled_rows(1)])}


@pytest.fixture(scope="module")
def ens(tiny_roberta_dir, tmp_path_factory) -> dict:
    """One tiny run with two adapters and checkpoint averaging; files snapshotted before later tests."""
    root = tmp_path_factory.mktemp("ensemble")
    csvs = _csvs(root)
    cfg = load_config(None, [*NO_AUGMENT, *tiny_overrides(tiny_roberta_dir, csvs, root / "runs", **ENSEMBLE)])
    metrics = run(cfg).to_dict()
    run_dir = cfg.run_dir
    return {"cfg": cfg, "metrics": metrics, "run_dir": run_dir, "csvs": csvs, "root": root,
            "submission": (run_dir / "submission.csv").read_text(),
            "target_probs": np.load(run_dir / "target_probs.npz")["probs"]}


def _dev(ens) -> tuple[list[str], np.ndarray]:
    with open(ens["csvs"]["dev"], newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], np.array([int(r["label"]) for r in rows])


def test_ensemble_probabilities_are_the_mean_of_its_adapters(ens):
    run_dir = ens["run_dir"]
    model, tok, cfg, _ = load_trained(run_dir, merge=False)
    assert adapter_names(model) == ["default", "adapter-1"]
    texts, labels = _dev(ens)
    each: dict = {}
    logits = predict_with_config(model, tok, cfg, texts, each=each)
    # each adapter alone, in a model of its own (PEFT loads a sub-folder's adapter as its default)
    alone = [softmax(predict_with_config(PeftModel.from_pretrained(load_base_model(cfg).model, str(run_dir / "model" / sub)),
                                         tok, cfg, texts), axis=-1) for sub in ("", "adapter-1")]
    np.testing.assert_allclose(softmax(logits, axis=-1), np.mean(alone, axis=0), atol=1e-5)
    for name, probs in zip(["default", "adapter-1"], alone):
        np.testing.assert_allclose(softmax(each[name], axis=-1), probs, atol=1e-5)
    np.testing.assert_allclose(ensemble_logits(list(each.values())), logits, atol=1e-6)
    e = ens["metrics"]["ensemble"]
    assert e["names"] == ["default", "adapter-1"] and e["adapters"] == 2
    assert e["val_accuracy_per_adapter"] == pytest.approx([float((p.argmax(1) == labels).mean()) for p in alone])
    accuracy = float((logits.argmax(1) == labels).mean())
    assert e["val_accuracy"] == ens["metrics"]["val_accuracy"] == pytest.approx(accuracy)


def test_adapters_have_their_own_seeds_and_weights(ens):
    model_dir = ens["run_dir"] / "model"
    a, b = load_file(str(model_dir / WEIGHTS)), load_file(str(model_dir / "adapter-1" / WEIGHTS))
    assert set(a) == set(b) and any("classifier" in k for k in a)
    for key in a:  # every LoRA matrix and the head differ
        assert not torch.equal(a[key], b[key]), key
    seeds = [x["seed"] for x in ens["metrics"]["ensemble"]["train_adapters"]]
    assert seeds == [ens["cfg"].seed, ens["cfg"].seed + 1000]
    budget = ens["metrics"]["budget"]
    assert budget["adapters"] == 2 and budget["trainable"] == 2 * budget["trainable_per_adapter"]
    assert "ensemble of 2 adapters" in (ens["run_dir"] / "summary.md").read_text()
    card = (model_dir / "README.md").read_text()
    assert "An ensemble of 2 LoRA adapters" in card and "x 2 adapters" in card
    assert "Ensemble of 2 adapters" in (ens["run_dir"] / "report.html").read_text()


def test_a_new_adapter_draws_its_own_head(tiny_roberta_dir, tmp_path):
    """A head the checkpoint lacks (3 classes where it has 4: out_proj is new) is drawn from the
    adapter's seed; the head weights the checkpoint holds (dense) are copied."""
    cfg = load_config(None, tiny_overrides(tiny_roberta_dir, _csvs(tmp_path), tmp_path / "runs",
                                           **{"data.labels": "[a,b,c]"}))
    model, new_weights = build_model(cfg)
    assert new_weights == {"classifier.out_proj.weight", "classifier.out_proj.bias"}
    add_adapter(cfg.model_copy(update={"seed": cfg.seed + 1000}), model, "adapter-1", new_weights)
    heads = model.get_base_model().classifier.modules_to_save
    assert torch.equal(heads["default"].dense.weight, heads["adapter-1"].dense.weight)
    assert not torch.equal(heads["default"].out_proj.weight, heads["adapter-1"].out_proj.weight)
    assert heads["adapter-1"].out_proj.weight.std() > 0
    # without the names of the new weights, every weight of the head copy is the checkpoint's (the first head's)
    add_adapter(cfg.model_copy(update={"seed": cfg.seed + 2000}), model, "adapter-2")
    assert torch.equal(heads["default"].out_proj.weight, heads["adapter-2"].out_proj.weight)


def test_budget_counts_every_adapter(tiny_roberta_dir, tmp_path):
    base = tiny_overrides(tiny_roberta_dir, _csvs(tmp_path), tmp_path / "runs")
    one = count_budget(load_config(None, base))
    three = count_budget(load_config(None, [*base, "train.adapters=3"]))
    assert (three.trainable, three.per_adapter, three.adapters) == (3 * one.trainable, one.trainable, 3)
    assert "adapters" not in one.to_dict() and three.to_dict()["trainable_per_adapter"] == one.trainable
    assert "x 3 adapters" in three.render() and "x " not in one.render().split("\n", 1)[1]
    students = load_config(None, [*base, "train.adapters=3", "selftrain.enabled=true", "selftrain.mode=student",
                                  "selftrain.students=2", "selftrain.ensemble_teacher=true"])
    assert students.predictor_adapters == 5 and count_budget(students).trainable == 5 * one.trainable
    with pytest.raises(BudgetExceeded, match="3 adapters"):
        check_budget(load_config(None, [*base, "train.adapters=3", f"budget.max_trainable={3 * one.trainable - 1}"]))


def test_budget_cli_refuses_an_ensemble_over_the_limit(tiny_roberta_dir, tmp_path):
    """Issue 11's case: MiniLM r=8 uses 339,460 of 1,000,000, so two adapters fit and three do not;
    ``lorafit run`` refuses before writing anything (exit 3)."""
    runner, config = CliRunner(), REPO / "configs" / "cpu-agnews.yaml"
    ok = runner.invoke(app, ["budget", str(config), "train.adapters=2"])
    assert ok.exit_code == 0, ok.output
    assert "x 2 adapters" in ok.output and "678,920" in ok.output
    over = runner.invoke(app, ["budget", str(config), "train.adapters=3"])
    assert over.exit_code == 3, over.output
    assert "1,018,380" in over.output and "over budget by 18,380 (3 adapters x 339,460" in over.stderr
    overrides = tiny_overrides(tiny_roberta_dir, _csvs(tmp_path), tmp_path / "runs", **{"train.adapters": 2})
    refused = runner.invoke(app, ["run", str(REPO / "configs" / "quickstart.yaml"), *overrides, *NO_AUGMENT,
                                  f"budget.max_trainable={count_budget(load_config(None, overrides)).per_adapter}"])
    assert refused.exit_code == 3, refused.output
    assert not (tmp_path / "runs" / "tiny").exists()


def test_config_checks_of_the_ensemble_keys():
    with pytest.raises(ConfigError, match="train.adapters.*lora.bias=none"):
        load_config(None, ["train.adapters=2", "lora.bias=all"])
    with pytest.raises(ConfigError, match="selftrain.students.*selftrain.mode=student"):
        load_config(None, ["selftrain.students=2"])
    with pytest.raises(ConfigError, match="selftrain.ensemble_teacher.*mode=student"):
        load_config(None, ["selftrain.ensemble_teacher=true"])
    with pytest.raises(ConfigError, match="train.average_checkpoints.*save_total_limit >= 3"):
        load_config(None, ["train.average_checkpoints=3"])  # keeps 2 by default
    with pytest.raises(ConfigError, match="train.average_checkpoints.*early_stopping"):
        load_config(None, ["train.average_checkpoints=2", "train.early_stopping_patience=2"])
    with pytest.raises(ConfigError, match="train.adapters"):
        load_config(None, ["train.adapters=0"])
    cfg = load_config(None, ["train.average_checkpoints=3", "train.save_total_limit=null"])
    assert cfg.predictor_adapters == 1


def test_saved_ensemble_predicts_the_same_through_the_cli(ens, tmp_path):
    runner, run_dir = CliRunner(), ens["run_dir"]
    out = tmp_path / "again.csv"
    res = runner.invoke(app, ["predict", str(run_dir), "--no-reuse-probs", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_text() == ens["submission"]
    # recomputed from the saved adapters (and saved again, as the run's own target set)
    np.testing.assert_allclose(np.load(run_dir / "target_probs.npz")["probs"], ens["target_probs"], atol=1e-5)
    m = tmp_path / "eval.json"
    res = runner.invoke(app, ["evaluate", str(run_dir), str(ens["csvs"]["dev"]), "-o", str(m)])
    assert res.exit_code == 0, res.output
    assert json.loads(m.read_text())["accuracy"] == pytest.approx(ens["metrics"]["val_accuracy"])


def test_merged_and_unmerged_ensembles_agree(ens):
    merged, tok, cfg, merge_adapters = load_trained(ens["run_dir"], merge=True)
    plain, _, _, plain_merges = load_trained(ens["run_dir"], merge=False)
    assert isinstance(merged, PeftModel) and adapter_names(merged) == ["default", "adapter-1"]
    assert merge_adapters is True and plain_merges is False  # each adapter merged for its own pass, or not
    texts, _ = _dev(ens)
    weight = merged.get_base_model().roberta.encoder.layer[0].attention.self.query.base_layer.weight
    before = weight.detach().clone()
    a = predict_with_config(merged, tok, cfg, texts, merge_adapters=merge_adapters)
    b = predict_with_config(plain, tok, cfg, texts)
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert (a.argmax(1) == b.argmax(1)).all()
    torch.testing.assert_close(weight.detach(), before, atol=1e-6, rtol=0)  # each pass unmerged its adapter
    assert merged.active_adapter == "default"


def test_checkpoint_averaging_is_the_mean_of_the_checkpoints(ens):
    run_dir, record = ens["run_dir"], ens["metrics"]["checkpoint_average"]
    assert record["checkpoints"] == 2
    for name, folder, sub in (("default", "checkpoints", ""), ("adapter-1", "checkpoints/adapter-1", "adapter-1")):
        steps = record["train"][name]
        assert len(steps) == 2 and steps[0] < steps[1]
        files = [load_file(str(run_dir / folder / f"checkpoint-{s}" / sub / WEIGHTS)) for s in steps]
        saved = load_file(str(run_dir / "model" / sub / WEIGHTS))
        assert set(saved) == set(files[0])
        for key, value in saved.items():
            torch.testing.assert_close(value, (files[0][key] + files[1][key]) / 2, atol=1e-7, rtol=1e-6)
        assert any(not torch.equal(files[0][k], files[1][k]) for k in saved)  # two different states


def test_rerun_resumes_the_second_adapter(ens, tmp_path, caplog):
    """An interrupted run (adapter-1's last checkpoint missing, nothing saved) resumes adapter-1 from
    its earlier checkpoint and ends with the same weights."""
    copy = tmp_path / "runs" / "tiny"
    shutil.copytree(ens["run_dir"], copy)
    steps = ens["metrics"]["checkpoint_average"]["train"]["adapter-1"]
    shutil.rmtree(copy / "checkpoints" / "adapter-1" / f"checkpoint-{steps[-1]}")
    shutil.rmtree(copy / "model")
    (copy / "metrics.json").unlink()
    cfg = ens["cfg"].model_copy(update={"output_dir": str(tmp_path / "runs")})
    with caplog.at_level(logging.INFO, logger="lorafit.train"):
        metrics = run(cfg).to_dict()
    resumed = [r.getMessage() for r in caplog.records if "resuming from" in r.getMessage()]
    assert any(m.endswith(f"adapter-1/checkpoint-{steps[0]}") for m in resumed), resumed
    assert metrics["checkpoint_average"]["train"]["adapter-1"] == steps
    for sub in ("", "adapter-1"):
        new = load_file(str(copy / "model" / sub / WEIGHTS))
        old = load_file(str(ens["run_dir"] / "model" / sub / WEIGHTS))
        for key in old:
            torch.testing.assert_close(new[key], old[key], atol=1e-5, rtol=1e-4)


def test_students_and_the_first_teacher_in_one_ensemble(tiny_roberta_dir, tmp_path):
    """Student-mode self-training with two students per round, the first teacher (two adapters)
    averaged in: four adapters on the students' base, all counted by the budget."""
    overrides = tiny_overrides(tiny_roberta_dir, _csvs(tmp_path), tmp_path / "runs", **{
        "train.adapters": 2, "train.epochs": 2, "train.learning_rate": 0.02, "train.warmup_ratio": 0.0,
        "selftrain.enabled": "true", "selftrain.mode": "student", "selftrain.rounds": 1, "selftrain.students": 2,
        "selftrain.ensemble_teacher": "true", "selftrain.threshold": 0.3})
    cfg = load_config(None, ["augment.synonyms.enabled=false", *overrides])
    metrics = run(cfg).to_dict()
    names = ["default", "adapter-1", "teacher", "teacher-1"]
    assert metrics["ensemble"]["names"] == names and metrics["budget"]["adapters"] == 4
    r = metrics["selftrain"][0]
    assert [s["seed"] for s in r["students"]] == [cfg.seed + 1, cfg.seed + 1 + 1000]
    assert len(r["val_accuracy_per_student"]) == 2 and len(r["teacher_val_accuracy_per_adapter"]) == 2
    assert (cfg.run_dir / "selftrain" / "round-1" / "adapter-1").is_dir()
    # the teacher's default adapter is the main training's best checkpoint, copied unchanged
    last = max((cfg.run_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    best = json.loads((last / "trainer_state.json").read_text())
    teacher, original = (load_file(str(cfg.run_dir / "model" / "teacher" / WEIGHTS)),
                         load_file(str(Path(best["best_model_checkpoint"]) / WEIGHTS)))
    assert set(teacher) == set(original) and all(torch.equal(teacher[k], original[k]) for k in teacher)
    model, tok, run_cfg, merge_adapters = load_trained(cfg.run_dir)
    assert adapter_names(model) == names
    texts, labels = _dev({"csvs": {"dev": Path(cfg.data.validation)}})
    logits = predict_with_config(model, tok, run_cfg, texts, merge_adapters=merge_adapters)
    assert metrics["val_accuracy"] == pytest.approx(float((logits.argmax(1) == labels).mean()))
    # the submission's probabilities come from the rounds' target predictions (no new pass): they
    # equal what the saved four-adapter model predicts, every adapter weighted the same
    target = [r["text"] for r in csv.DictReader(open(cfg.data.target))]
    saved = np.load(cfg.run_dir / "target_probs.npz")["probs"]
    np.testing.assert_allclose(saved, softmax(predict_with_config(model, tok, run_cfg, target, merge_adapters=merge_adapters),
                                              axis=-1), atol=2e-3)


def test_loading_an_encoder_checkpoint_reports_the_new_head_and_any_missing_encoder_weight(
        tiny_roberta_dir, tmp_path, caplog, capfd):
    """An encoder-only checkpoint (no classification head, as MiniLM and roberta-base ship) loads
    with one INFO line for the new head and without transformers' LOAD REPORT table; an encoder
    weight the checkpoint lacks is drawn at random, which is a WARNING naming it."""
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoTokenizer

    encoder = tmp_path / "encoder"
    AutoModel.from_pretrained(str(tiny_roberta_dir), add_pooling_layer=False).save_pretrained(encoder)
    AutoTokenizer.from_pretrained(str(tiny_roberta_dir)).save_pretrained(encoder)
    cfg = load_config(None, [*tiny_overrides(encoder, _csvs(tmp_path), tmp_path / "runs")])
    capfd.readouterr()
    with caplog.at_level(logging.INFO, logger="lorafit.model"):
        load_base_model(cfg)
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "lorafit.model"]
    assert any(level == logging.INFO and "a new classification head (classifier.dense.bias, classifier.dense.weight, "
               "classifier.out_proj.bias, classifier.out_proj.weight)" in m for level, m in messages), messages
    assert not any(level >= logging.WARNING for level, m in messages), messages
    assert "LOAD REPORT" not in capfd.readouterr().err
    # the same checkpoint without one encoder weight
    weights = load_file(str(encoder / "model.safetensors"))
    dropped = next(k for k in weights if "layer.1.attention.self.key.weight" in k)
    save_file({k: v for k, v in weights.items() if k != dropped}, str(encoder / "model.safetensors"),
              metadata={"format": "pt"})
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lorafit.model"):
        load_base_model(cfg)
    warned = [r.getMessage() for r in caplog.records if r.name == "lorafit.model" and r.levelno == logging.WARNING]
    assert len(warned) == 1 and "1 encoder weights are not in the checkpoint" in warned[0], warned
    assert "roberta.encoder.layer.1.attention.self.key.weight" in warned[0]


def test_evaluate_with_the_prior_fitted_on_the_target_set(ens, tmp_path):
    """``lorafit evaluate --prior P --prior-fit target``: the prior's per-class factors are fitted on
    the run's saved target probabilities (what its submission got) and re-weight the labeled set."""
    from lorafit.prior import adjust_predictions, reweight

    runner, run_dir = CliRunner(), ens["run_dir"]
    m = tmp_path / "eval.json"
    res = runner.invoke(app, ["evaluate", str(run_dir), str(ens["csvs"]["dev"]), "--prior", "0.7,0.1,0.1,0.1",
                              "--prior-fit", "target", "-o", str(m)])
    assert res.exit_code == 0, res.output
    out = json.loads(m.read_text())
    weights = adjust_predictions(np.load(run_dir / "target_probs.npz")["probs"], "0.7,0.1,0.1,0.1")[1]["class_weights"]
    assert out["prior"] == {"mode": "custom", "fitted_on": "target", "class_weights": pytest.approx(weights)}
    model, tok, cfg, merge_adapters = load_trained(run_dir)
    texts, labels = _dev(ens)
    preds = reweight(softmax(predict_with_config(model, tok, cfg, texts, merge_adapters=merge_adapters), axis=-1),
                     weights).argmax(1)
    assert out["accuracy"] == pytest.approx((preds == labels).mean())

    res = runner.invoke(app, ["evaluate", str(run_dir), str(ens["csvs"]["dev"]), "--prior-fit", "target"])
    assert res.exit_code != 0 and "--prior-fit target needs --prior" in res.output
    res = runner.invoke(app, ["evaluate", str(run_dir), str(ens["csvs"]["dev"]), "--prior", "uniform",
                              "--prior-fit", "proxy"])
    assert res.exit_code != 0 and "--prior-fit must be data or target" in res.output
    bare = tmp_path / "bare"
    shutil.copytree(run_dir, bare)
    (bare / "target_probs.npz").unlink()
    res = runner.invoke(app, ["evaluate", str(bare), str(ens["csvs"]["dev"]), "--prior", "uniform",
                              "--prior-fit", "target"])
    assert res.exit_code != 0 and "no saved target probabilities" in res.output and "target_probs.npz" in res.output
