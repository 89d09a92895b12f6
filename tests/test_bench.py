"""The benchmark's own logic (argument handling, summaries, ablation styles), without timing anything.

The measurements themselves need ../shared/data and minutes; `make bench` runs them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def bench():
    return _load("run")


@pytest.fixture(scope="module")
def tasks():
    return _load("tasks")


def _data_dir(tmp_path: Path) -> Path:
    (tmp_path / "agnews").mkdir()
    (tmp_path / "agnews" / "train.csv").write_text("text,label\na,0\n")
    return tmp_path


def test_quick_and_full_sizes_and_task_validation(bench, tmp_path):
    data = _data_dir(tmp_path)
    quick = bench.parse_args(["--quick", "--data-dir", str(data)])
    full = bench.parse_args(["--data-dir", str(data), "--n-predict", "123"])
    assert quick.n_predict == bench.SIZES["n_predict"][0] and quick.n_train == bench.SIZES["n_train"][0]
    assert full.n_predict == 123 and full.n_train == bench.SIZES["n_train"][1]
    assert quick.tasks == list(bench.TASK_NAMES) and not quick.ablate
    with pytest.raises(SystemExit):
        bench.parse_args(["--tasks", "train,nope", "--data-dir", str(data)])
    with pytest.raises(SystemExit):
        bench.parse_args(["--data-dir", str(tmp_path / "missing")])


def _run(ok=True, **values):
    return {"ok": ok, **values}


def test_summary_takes_medians_and_ratios(bench):
    runs = {"predict": {"ref": [_run(texts_per_s=4.0, peak_rss_mb=700), _run(texts_per_s=6.0, peak_rss_mb=710),
                                _run(texts_per_s=5.0, peak_rss_mb=705)],
                        "lorafit": [_run(texts_per_s=100.0, peak_rss_mb=600), _run(ok=False, texts_per_s=1.0),
                                    _run(texts_per_s=110.0, peak_rss_mb=650)]}}
    out = bench.summarize(runs, {"device": "cpu"})["predict"]
    assert out["texts_per_s"] == {"reference": 5.0, "lorafit": 105.0, "ratio": 21.0}
    assert out["speedup"] == 21.0
    assert out["peak_rss_mb"] == {"reference": 710, "lorafit": 650}  # failed runs are ignored


def test_ablation_summary_says_what_each_fast_path_is_worth(bench, capsys):
    runs = {"train": {"ref": [], "lorafit": [_run(samples_per_s=16.0)]}}
    ablation_runs = {"train": {"train.precision=fp32": [_run(samples_per_s=8.0, peak_rss_mb=900, val_accuracy=0.5)],
                               "train.optim=adamw_torch": [_run(ok=False)]}}
    out = bench.summarize_ablation(runs, ablation_runs)["train"]
    assert out["lorafit_default"] == 16.0
    assert out["variants"]["train.precision=fp32"]["default_over_variant"] == 2.0
    assert out["variants"]["train.precision=fp32"]["val_accuracy"] == [0.5]
    assert out["variants"]["train.optim=adamw_torch"]["default_over_variant"] is None
    bench.print_ablation({"train": out})
    printed = capsys.readouterr().out
    assert "train.precision=fp32" in printed and "2.00x" in printed
    # every ablation is a valid config override
    from lorafit.config import load_config

    for overrides in bench.ABLATIONS.values():
        for o in overrides:
            load_config(None, [o])


def test_ablation_style_applies_its_override(tasks, tmp_path):
    s = {"model": "minilm", "max_length": 64, "batch_size": 8, "train_epochs": 1.0, "seed": 1, "tmp": str(tmp_path),
         "config": str(BENCH.parent / "configs" / "cpu-agnews.yaml")}
    base = tasks._classifier_cfg(s, "lorafit")
    ref = tasks._classifier_cfg(s, "ref")
    off = tasks._classifier_cfg(s, "lorafit+train.group_by_length=false")
    assert base.train.group_by_length and not off.train.group_by_length
    assert off.name == base.name == "lorafit-classifier"
    assert ref.model.attn_implementation is None and base.model.max_length == 64


def test_results_carry_no_machine_paths(bench):
    res = {"a": "/scratch/x/predict.json", "b": ["/repo/configs/c.yaml"], "c": 3}
    assert bench.portable(res, {"/scratch/x": "<tmp>", "/repo/": ""}) == \
        {"a": "<tmp>/predict.json", "b": ["configs/c.yaml"], "c": 3}
