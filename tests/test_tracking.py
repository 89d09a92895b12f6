"""train.report_to: TensorBoard by default, wandb/mlflow only when their packages are installed."""

from __future__ import annotations

import importlib.util

import pytest

from lorafit.config import ConfigError, load_config


def test_report_to_reaches_the_trainer(tmp_path):
    from lorafit.train import training_arguments

    assert training_arguments(load_config(None, []), tmp_path).report_to == ["tensorboard"]
    assert training_arguments(load_config(None, ["train.report_to=[]"]), tmp_path).report_to in ([], "none", ["none"])


@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_a_tracker_without_its_package_is_a_config_error(tracker):
    if importlib.util.find_spec(tracker) is not None:
        pytest.skip(f"{tracker} is installed")
    with pytest.raises(ConfigError, match=rf"train.report_to.*pip install 'lorafit\[{tracker}\]'"):
        load_config(None, [f"train.report_to=[{tracker}]"])


def test_an_unknown_tracker_is_a_config_error():
    with pytest.raises(ConfigError, match="tensorboard|wandb|mlflow"):
        load_config(None, ["train.report_to=[comet]"])


def test_restored_evaluation_is_the_first_best_not_the_last():
    from lorafit.metrics import restored_evaluation, restored_line

    history = [{"loss": 1.0, "step": 1}, {"eval_accuracy": 0.90, "epoch": 1.0, "step": 6},
               {"eval_accuracy": 0.9688, "epoch": 2.0, "step": 12}, {"eval_accuracy": 0.9688, "epoch": 3.0, "step": 18},
               {"eval_accuracy": 0.99, "epoch": 1.0, "step": 6, "adapter": 1},  # another adapter's
               {"eval_accuracy": 0.9479, "epoch": 4.0, "step": 24}]
    r = restored_evaluation(history)
    assert (r["evaluations"], r["best"], r["best_epoch"], r["best_accuracy"], r["last_accuracy"]) == (4, 2, 2.0, 0.9688, 0.9479)
    assert restored_line(r) == "best of 4 evaluations (epoch 2) restored: 96.88%; last evaluation 94.79%"
    assert restored_evaluation([{"loss": 1.0}]) is None
