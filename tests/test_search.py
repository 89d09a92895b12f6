"""``lorafit search``: budget first (an over-budget trial is never trained), pruning, resuming a
killed study, two workers on one storage, the results, and the best config run by ``lorafit run``;
``lorafit budget --fit``. All on the tiny RoBERTa (2 layers, hidden 32)."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from conftest import tiny_labeled_rows, write_csv
from lorafit.budget import count_budget, fit_ranks, largest_rank
from lorafit.cli import app
from lorafit.config import ConfigError, load_config
from lorafit.search_space import load_search_config
from lorafit.search import make_pruner, pareto_front, run_search

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# The tiny model with LoRA r=4 on query/value and its classifier head: 2,212 trainable parameters;
# r=64 needs 17,572, over the 3,000 budget below.
BUDGET = 3000


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def search_config(root: Path, model_dir: Path, search: dict, **train) -> Path:
    """A tiny search config: 96 training rows, 32 validation rows, 6 steps per epoch."""
    train_csv = write_csv(root / "data" / "train.csv", tiny_labeled_rows(6))
    dev_csv = write_csv(root / "data" / "dev.csv", tiny_labeled_rows(2))
    cfg = {
        "name": "tiny-search", "output_dir": str(root / "runs"),
        "data": {"source": str(train_csv), "validation": str(dev_csv)},
        "augment": {"synonyms": {"enabled": False}, "lm": {"enabled": False}, "generate": {"enabled": False}},
        "model": {"name": str(model_dir), "max_length": 32, "attn_implementation": "eager"},
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"], "bias": "none",
                 "modules_to_save": None},
        "budget": {"max_trainable": BUDGET},
        "train": {"epochs": 4, "batch_size": 16, "learning_rate": 0.02, "warmup_ratio": 0.0, "precision": "fp32",
                  "optim": "adamw_torch", "logging_steps": 2, "save_total_limit": 1, **train},
        "search": search,
    }
    path = root / "search.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def load_study(root: Path, name: str = "tiny-search") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{root / 'runs' / name / 'search.db'}")


def states(study) -> list[str]:
    return [("infeasible" if "infeasible" in t.user_attrs else t.state.name.lower()) for t in study.trials]


def test_budget_first_pruning_results_and_best_config(tiny_roberta_dir, tmp_path):
    """Trial 0 trains; trial 1 (r=64) is over budget: rejected from its count, no folder, not
    counted; trial 2 (learning rate 1e-7) is pruned by the median rule at the last evaluation."""
    path = search_config(tmp_path, tiny_roberta_dir, {
        "space": {"lora.r": {"choices": [2, 4, 64]}, "train.learning_rate": {"choices": [0.02, 1.0e-7]}},
        "enqueue": [{"lora.r": 4, "train.learning_rate": 0.02}, {"lora.r": 64, "train.learning_rate": 0.02},
                    {"lora.r": 4, "train.learning_rate": 1.0e-7}],
        # only the evaluation at step 24 (of 30) is judged: trial 2 against trial 0's accuracy there
        "pruner": {"type": "median", "n_startup_trials": 1, "n_warmup_steps": 24},
    }, epochs=5)
    result = run_search(path, [], trials=2)
    study = load_study(tmp_path)
    assert states(study) == ["complete", "infeasible", "pruned"]
    assert study.metric_names == ["val_accuracy"]  # optuna-dashboard's name for the objective
    runs = tmp_path / "runs" / "tiny-search"
    t0, t1, t2 = study.trials

    # budget first: the exact count of every trial is recorded; the over-budget one never trained
    cfg1 = load_config(path, ["lora.r=64"])
    assert t1.user_attrs["trainable"] == count_budget(cfg1).trainable > BUDGET
    assert t1.user_attrs["infeasible"].startswith("over budget by")
    assert not (runs / "trial-1").exists() and "seconds" not in t1.user_attrs and not t1.intermediate_values
    assert t0.user_attrs["trainable"] == t2.user_attrs["trainable"] == count_budget(load_config(path)).trainable

    # pruning: reported at each evaluation (every 6 steps), stopped at step 24 of 30, before saving a model
    assert sorted(t0.intermediate_values) == [6, 12, 18, 24, 30]
    assert max(t2.intermediate_values) == 24 and t2.intermediate_values[24] < t0.intermediate_values[24]
    assert (runs / "trial-0" / "model" / "adapter_config.json").is_file()
    assert (runs / "trial-2" / "checkpoints").is_dir() and not (runs / "trial-2" / "model").exists()
    saved = json.loads((runs / "trial-0" / "metrics.json").read_text())
    assert t0.value == t0.user_attrs["val_accuracy"] == saved["val_accuracy"]

    # results: leaderboard (best first), plot, best config
    lines = (runs / "leaderboard.csv").read_text().splitlines()
    assert lines[0].startswith("trial,state,objective,val_accuracy,trainable,seconds,lora.r,train.learning_rate")
    assert [ln.split(",")[:2] for ln in lines[1:]] == [["0", "complete"], ["2", "pruned"], ["1", "infeasible"]]
    assert (runs / "search.png").read_bytes()[:8] == PNG_MAGIC
    assert result["best"]["trial"] == 0 and result["pareto"] == [0]

    # the best config runs as is with `lorafit run`, to the same result as its trial
    best = runs / "best.yaml"
    out = CliRunner().invoke(app, ["run", str(best)])
    assert out.exit_code == 0, out.output
    metrics = json.loads((tmp_path / "runs" / "tiny-search-best" / "metrics.json").read_text())
    assert metrics["budget"]["trainable"] == t0.user_attrs["trainable"]
    assert metrics["val_accuracy"] == pytest.approx(t0.value)

    # a rerun with the study complete trains nothing and rewrites the same results
    again = run_search(path, [], trials=2)
    assert len(load_study(tmp_path).trials) == 3 and again["best"]["trial"] == 0


def _complete_checkpoint(folder) -> bool:
    for p in folder.glob("checkpoint-*"):
        try:
            json.loads((p / "trainer_state.json").read_text())
            return True
        except (OSError, ValueError):
            pass
    return False


def _wait_for(predicate, timeout: float, proc=None):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"search process exited early ({proc.returncode}): {proc.stdout.read()[-3000:]}")
        time.sleep(0.2)
    return False


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def test_resume_after_kill(tiny_roberta_dir, tmp_path, caplog):
    """SIGKILL during a trial's training; the rerun marks that trial failed at once (its pid is
    gone), retries it in the same folder from its last checkpoint and finishes the study."""
    path = search_config(tmp_path, tiny_roberta_dir, {
        "space": {"train.learning_rate": {"choices": [0.02, 0.01]}}, "pruner": {"type": "none"}}, epochs=6)
    proc = subprocess.Popen([sys.executable, "-m", "lorafit.cli", "search", str(path), "--trials", "2"],
                            cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    runs = tmp_path / "runs" / "tiny-search"
    try:  # kill once the second trial has a checkpoint
        # a complete checkpoint (trainer_state.json written, Trainer's last file): a kill in the
        # middle of a save leaves an incomplete one, which the rerun rightly discards
        assert _wait_for(lambda: _complete_checkpoint(runs / "trial-1" / "checkpoints"), 240, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    study = load_study(tmp_path)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "RUNNING"]

    with caplog.at_level(logging.INFO, logger="lorafit.train"):
        result = run_search(path, [], trials=2)
    study = load_study(tmp_path)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    killed, retry = study.trials[1], study.trials[2]
    assert "died" in killed.user_attrs["error"]
    assert retry.user_attrs["retry_of"] == 1 and retry.user_attrs["folder"] == "trial-1"
    assert retry.params == killed.params
    assert not (runs / "trial-2").exists() and (runs / "trial-1" / "model").is_dir()
    # the retry continued from the killed trial's checkpoint instead of starting over
    assert any("resuming from" in r.getMessage() and "trial-1" in r.getMessage() for r in caplog.records)
    assert [r["state"] for r in result["rows"]] == ["complete", "complete", "failed"]


def test_two_workers_share_one_storage(tiny_roberta_dir, tmp_path):
    """--workers 2: a second process joins the study through the same SQLite file; together they
    train exactly the requested number of trials, each once."""
    path = search_config(tmp_path, tiny_roberta_dir, {
        "space": {"train.learning_rate": {"low": 0.005, "high": 0.03, "log": True}}, "pruner": {"type": "none"}},
        epochs=8)
    out = CliRunner().invoke(app, ["search", str(path), "--trials", "4", "--workers", "2"])
    assert out.exit_code == 0, out.output
    study = load_study(tmp_path)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    pids = {t.user_attrs["pid"] for t in study.trials}
    worker_log = (tmp_path / "runs" / "tiny-search" / "worker-1.log").read_text()
    assert os.getpid() in pids and len(pids) == 2, (pids, worker_log[-2000:])
    folders = sorted(t.user_attrs["folder"] for t in study.trials)
    assert folders == [f"trial-{i}" for i in range(4)]
    assert "leaderboard" in out.output and "best: trial" in out.output


def test_a_file_objective_scores_each_trial_as_lorafit_evaluate_does(tiny_roberta_dir, tmp_path):
    """search.objective ``file:PATH``: each trial's saved model is scored on the labeled file by
    :func:`lorafit.predict.score_run_on_file`, the function behind ``lorafit evaluate``, and the
    weighted terms add up to the trial's value."""
    from lorafit.data.io import load_labeled
    from lorafit.inference import predict_with_config
    from lorafit.model import load_trained

    dev = tmp_path / "data" / "dev.csv"  # written by search_config
    path = search_config(tmp_path, tiny_roberta_dir, {"space": {"lora.r": {"choices": [4]}}, "pruner": {"type": "none"},
                                                     "objective": {"val_accuracy": 0.5, f"file:{dev}": 2.0}}, epochs=2)
    run_search(path, [], trials=1)
    (t0,) = load_study(tmp_path).trials
    score, trial = t0.user_attrs[f"file:{dev}"], tmp_path / "runs" / "tiny-search" / "trial-0"
    assert t0.value == pytest.approx(0.5 * t0.user_attrs["val_accuracy"] + 2.0 * score)
    out = tmp_path / "eval.json"
    res = CliRunner().invoke(app, ["evaluate", str(trial), str(dev), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["accuracy"] == score
    # counted here from the trial's model's own predictions on the file
    model, tok, cfg, merge_adapters = load_trained(trial)
    ds = load_labeled(str(dev), cfg.data.text_column, cfg.data.label_column, cfg.data.labels)
    logits = predict_with_config(model, tok, cfg, ds["text"], merge_adapters=merge_adapters)
    right = sum(int(p) == label for p, label in zip(logits.argmax(1), ds["label"]))
    assert 0 < len(ds) and score == pytest.approx(right / len(ds))


def test_search_section_is_validated_when_the_search_starts(tmp_path):
    def load(search):
        p = tmp_path / "c.yaml"
        p.write_text(yaml.safe_dump({"search": search}))
        return load_search_config(p, [])

    cfg = load({"space": {"lora.r": {"low": 2, "high": 16, "log": True},
                          "train.learning_rate": {"low": "1e-4", "high": "1e-2", "log": True},
                          "lora.target_modules": {"choices": {"qv": ["query", "value"],
                                                              "qkv": ["query", "key", "value"]}}}})
    assert cfg.search.space["train.learning_rate"] == {"low": 1e-4, "high": 1e-2, "log": True}
    for bad, key in [({"space": {"lora.rank": {"low": 2, "high": 8}}}, "search.space.lora.rank"),
                     ({"space": {"lora.r": {"low": 0, "high": 8, "log": True}}}, "search.space.lora.r.low"),
                     ({"space": {"lora.bias": {"low": 0, "high": 8}}}, "search.space.lora.bias"),
                     ({"space": {"lora.r": {"choices": ["four"]}}}, "search.space.lora.r"),
                     ({"space": {"lora.r": {"choices": [4]}}, "enqueue": [{"lora.r": 8}]}, "search.enqueue[0].lora.r"),
                     ({"objective": "test_accuracy"}, "search.objective"),
                     ({"pruner": {"type": "threshold"}}, "search.pruner.lower")]:
        with pytest.raises(ConfigError, match=re.escape(f"'{key}'")):
            load(bad)


def test_search_refuses_before_anything_runs(tiny_roberta_dir, tmp_path):
    """An empty space, or a choice that makes the config invalid, is one line and exit 2; no study."""
    empty = search_config(tmp_path, tiny_roberta_dir, {})
    out = CliRunner().invoke(app, ["search", str(empty), "--trials", "1"])
    assert out.exit_code == 2 and "search.space' is empty" in out.output
    bad = search_config(tmp_path, tiny_roberta_dir, {"space": {"lora.lora_dropout": {"choices": [0.1, 1.5]}}})
    out = CliRunner().invoke(app, ["search", str(bad), "--trials", "1"])
    assert out.exit_code == 2 and "'search.space.lora.lora_dropout': the value 1.5" in out.output
    assert not (tmp_path / "runs" / "tiny-search" / "search.db").exists()


def test_budget_fit_ranks_are_the_largest_that_fit(tiny_roberta_dir, tmp_path):
    cfg = load_config(None, [f"model.name={tiny_roberta_dir}", f"budget.max_trainable={BUDGET}",
                             "lora.modules_to_save=null", "model.max_length=32", "data.labels=[a,b,c,d]"])
    fit = fit_ranks(cfg)
    labels = [r["target_modules"] for r in fit["rows"]]
    assert labels[:4] == ["query,value", "query,key,value", "attention (q,k,v,out)", "attention + feed-forward"]
    for row in fit["rows"]:
        for bias in ("none", "all"):
            r = row[bias]["r"]
            if r is None:
                continue
            def count(rank):
                lora = cfg.lora.model_copy(update={"r": rank, "target_modules": row["modules"], "bias": bias})
                return count_budget(cfg.model_copy(update={"lora": lora})).trainable
            assert count(r) == row[bias]["trainable"] <= BUDGET < count(r + 1)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": str(tiny_roberta_dir), "max_length": 32},
                                    "budget": {"max_trainable": BUDGET},
                                    "lora": {"modules_to_save": None}, "data": {"labels": ["a", "b", "c", "d"]}}))
    out = CliRunner().invoke(app, ["budget", "--fit", str(path)])
    assert out.exit_code == 0, out.output
    first = fit["rows"][0]
    assert f"{first['none']['r']:>16} {first['none']['trainable']:>11,}" in out.output


def test_largest_rank_and_pareto_front():
    assert largest_rank(lambda r: 100 + 7 * r, 1000, 512) == 128
    assert largest_rank(lambda r: 100 + 7 * r, 50, 512) is None
    assert largest_rank(lambda r: 10 * r * r, 1000, 512) == 10  # not linear: still exact
    assert largest_rank(lambda r: r, 10**9, 64) == 64
    pts = [(100, 0.80, "a"), (200, 0.85, "b"), (150, 0.79, "c"), (300, 0.85, "d"), (50, 0.70, "e")]
    assert [t for _, _, t in pareto_front(pts)] == ["e", "a", "b"]


def _prune_steps(pruner, values, steps=(30, 60, 90, 180, 270, 360)) -> list:
    """The step at which each trial (reporting its value at every step) was stopped, or None."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", pruner=pruner, sampler=optuna.samplers.RandomSampler(seed=0))
    stopped = []
    for v in values:
        trial, at = study.ask(), None
        for step in steps:
            trial.report(v, step)
            if trial.should_prune():
                at = step
                break
        study.tell(trial, v if at is None else None,
                   state=optuna.trial.TrialState.PRUNED if at else optuna.trial.TrialState.COMPLETE)
        stopped.append(at)
    return stopped


def test_successive_halving_and_hyperband_stop_trials_at_rungs_counted_in_training_steps(tmp_path):
    def pruner(spec):
        p = tmp_path / "c.yaml"
        p.write_text(yaml.safe_dump({"search": {"space": {"lora.r": {"choices": [4]}}, "pruner": spec}}))
        return make_pruner(load_search_config(p, []).search)

    # rungs at 90 and 270 steps (never before step 90, though every trial reports from step 30): only
    # the best third of the trials at a rung goes on
    sha = pruner({"type": "successive_halving", "min_resource": 90, "reduction_factor": 3})
    assert isinstance(sha, optuna.pruners.SuccessiveHalvingPruner)
    assert _prune_steps(sha, [0.9, 0.8, 0.7, 0.95, 0.5]) == [None, 90, 90, None, 90]
    hb = pruner({"type": "hyperband", "min_resource": 90, "max_resource": 360, "reduction_factor": 3})
    assert isinstance(hb, optuna.pruners.HyperbandPruner)
    stopped = _prune_steps(hb, [0.9, 0.5, 0.95, 0.4, 0.3, 0.92, 0.2, 0.1, 0.91, 0.35])
    assert stopped[0] is None and stopped[2] is None  # the best trials of their brackets finish
    assert {s for s in stopped if s is not None} <= {90, 270} and sum(s is not None for s in stopped) >= 4
    with pytest.raises(ConfigError, match=re.escape("'search.pruner.reduction_factor'")):
        pruner({"type": "hyperband", "reduction_factor": 1})
