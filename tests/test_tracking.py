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
