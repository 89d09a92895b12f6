"""lorafit never deletes or overwrites a folder it did not make, and runs no code from a data or
model file unless the command itself says so (a config file or a saved run cannot consent)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from conftest import tiny_labeled_rows, tiny_overrides
from lorafit.config import load_config, save_config
from lorafit.io_utils import MARK, NotOursError, check_ours, is_ours, mark_ours, remove_ours

REPO = Path(__file__).resolve().parents[1]


def app_():
    from lorafit.cli import app

    return app


def _run(args):
    return CliRunner().invoke(app_(), args)


def _user_folder(root: Path) -> Path:
    victim = root / "victim"
    (victim / "model").mkdir(parents=True)
    (victim / "notes.txt").write_text("important")
    (victim / "submission.csv").write_text("ID,Label\n0,mine\n")
    (victim / "model" / "my.bin").write_bytes(b"\x00weights")
    return victim


def _untouched(victim: Path) -> bool:
    return ((victim / "notes.txt").read_text() == "important"
            and (victim / "submission.csv").read_text() == "ID,Label\n0,mine\n"
            and (victim / "model" / "my.bin").read_bytes() == b"\x00weights"
            and not (victim / MARK).exists() and not (victim / "config.yaml").exists())


@pytest.mark.parametrize("flags", [["--fresh"], []])
def test_run_refuses_a_folder_lorafit_did_not_make(tmp_path, flags):
    victim = _user_folder(tmp_path / "scratch")
    res = _run(["run", str(REPO / "configs" / "quickstart.yaml"), f"output_dir={tmp_path / 'scratch'}",
                "name=victim", *flags])
    assert res.exit_code == 2, res.output
    assert "did not write" in res.output and "victim" in res.output
    assert _untouched(victim)


@pytest.mark.parametrize("command", ["adapt-lm", "generate"])
def test_adapt_lm_and_generate_refuse_a_user_folder(tmp_path, command):
    victim = _user_folder(tmp_path / "scratch")
    res = _run([command, str(REPO / "configs" / "quickstart.yaml"), f"output_dir={tmp_path / 'scratch'}",
                "name=victim"])
    assert res.exit_code == 2, res.output
    assert "did not write" in res.output
    assert _untouched(victim)


def test_fresh_removes_only_a_marked_folder(tmp_path):
    ours = mark_ours(tmp_path / "run", "run")
    (ours / "metrics.json").write_text("{}")
    assert is_ours(ours) and json.loads((ours / MARK).read_text())["made_by"] == "lorafit"
    remove_ours(ours, "run folder")
    assert not ours.exists()

    theirs = _user_folder(tmp_path)
    with pytest.raises(NotOursError, match="did not write"):
        remove_ours(theirs, "run folder")
    assert _untouched(theirs)

    link = tmp_path / "link"
    link.symlink_to(mark_ours(tmp_path / "real", "run"))
    with pytest.raises(NotOursError, match="symbolic link"):
        remove_ours(link, "run folder")
    assert (tmp_path / "real" / MARK).is_file()

    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_ours(empty, "run folder") == empty  # nothing in it to lose


def test_an_unmarked_run_of_an_earlier_lorafit_is_still_a_run(tmp_path):
    from lorafit.runs import is_legacy_run

    old = tmp_path / "old"
    (old / "model").mkdir(parents=True)
    save_config(load_config(REPO / "configs" / "quickstart.yaml"), old / "config.yaml")
    assert is_legacy_run(old)
    remove_ours(old, "run folder", legacy=is_legacy_run)
    assert not old.exists()
    fake = tmp_path / "fake"
    (fake / "model").mkdir(parents=True)
    (fake / "config.yaml").write_text("recipe: my own notes\n")
    assert not is_legacy_run(fake)


def test_tilde_in_output_dir_means_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = load_config(REPO / "configs" / "quickstart.yaml", ["output_dir=~/runs"])
    assert cfg.run_dir == tmp_path / "home" / "runs" / "quickstart"
    assert "~" not in str(cfg.run_dir)


def _payload_pickle(path: Path, marker: Path) -> Path:
    class Payload:  # unpickling calls Path.touch(marker): proof that code from the file ran
        def __reduce__(self):
            return (Path.touch, (marker,))

    path.write_bytes(pickle.dumps(Payload()))
    return path


def test_allow_pickle_is_never_read_from_a_file(tmp_path, caplog):
    cfg_file = tmp_path / "exp.yaml"
    cfg_file.write_text("name: p\ndata:\n  allow_pickle: true\nmodel:\n  trust_remote_code: true\n")
    cfg = load_config(cfg_file)
    assert cfg.data.allow_pickle is False and cfg.model.trust_remote_code is False
    assert "--allow-pickle" in caplog.text and "--trust-remote-code" in caplog.text
    granted = load_config(cfg_file, ["data.allow_pickle=true", "model.trust_remote_code=true"])
    assert granted.data.allow_pickle is True and granted.model.trust_remote_code is True
    save_config(granted, tmp_path / "saved.yaml")  # a saved run never carries the consent on
    saved = yaml.safe_load((tmp_path / "saved.yaml").read_text())
    assert saved["data"]["allow_pickle"] is False and saved["model"]["trust_remote_code"] is False


def test_a_config_file_cannot_make_lorafit_unpickle(tmp_path, tiny_roberta_dir, tiny_csvs):
    marker = tmp_path / "payload-ran"
    evil = _payload_pickle(tmp_path / "train.pkl", marker)
    cfg_file = tmp_path / "exp.yaml"
    cfg_file.write_text("name: p\ndata:\n  allow_pickle: true\n")
    ov = tiny_overrides(tiny_roberta_dir, {**tiny_csvs, "train": evil}, tmp_path / "runs")
    res = _run(["run", str(cfg_file), *ov])
    assert res.exit_code == 2 and "--allow-pickle" in res.output, res.output
    assert not marker.exists()


def test_predict_does_not_inherit_pickle_consent_from_a_run(tmp_path, tiny_roberta_dir, tiny_csvs):
    run_root = tmp_path / "runs"
    ov = tiny_overrides(tiny_roberta_dir, tiny_csvs, run_root, **{"train.epochs": 1})
    res = _run(["run", str(REPO / "configs" / "quickstart.yaml"), *ov, "augment.synonyms.enabled=false",
                "augment.lm.enabled=false", "augment.generate.enabled=false", "augment.select.enabled=false",
                "data.allow_pickle=true"])
    assert res.exit_code == 0, res.output
    run_dir = run_root / "tiny"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["allow_pickle"] is False
    raw = yaml.safe_load((run_dir / "config.yaml").read_text())  # as a hostile hand would edit it
    raw["data"]["allow_pickle"] = True
    (run_dir / "config.yaml").write_text(yaml.safe_dump(raw))
    marker = tmp_path / "payload-ran"
    evil = _payload_pickle(tmp_path / "target.pkl", marker)
    res = _run(["predict", str(run_dir), "--target", str(evil), "-o", str(tmp_path / "sub.csv")])
    assert res.exit_code == 2 and "--allow-pickle" in res.output, res.output
    assert not marker.exists() and not (tmp_path / "sub.csv").exists()
    res = _run(["report", str(run_dir), "--no-card"])
    assert res.exit_code == 0, res.output
    assert not marker.exists()


def _remote_code_model(tmp_path: Path, tiny_roberta_dir: Path, marker: Path) -> Path:
    folder = tmp_path / "custom-model"
    folder.mkdir()
    for f in tiny_roberta_dir.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "lorafit-test-custom"  # no built-in class to fall back on: only its own code loads it
    config["auto_map"] = {"AutoConfig": "custom.CustomConfig",
                          "AutoModelForSequenceClassification": "custom.CustomModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "custom.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n"
        "from transformers import RobertaConfig as CustomConfig\n"
        "from transformers import RobertaForSequenceClassification as CustomModel\n")
    return folder


@pytest.mark.parametrize("command", ["budget", "run"])
def test_model_code_never_runs_without_the_flag(tmp_path, tiny_roberta_dir, tiny_csvs, command):
    marker = tmp_path / "model-code-ran"
    folder = _remote_code_model(tmp_path, tiny_roberta_dir, marker)
    ov = tiny_overrides(tiny_roberta_dir, tiny_csvs, tmp_path / "runs")
    ov = [o for o in ov if not o.startswith("model.name=")] + [f"model.name={folder}"]
    res = CliRunner().invoke(app_(), [command, str(REPO / "configs" / "quickstart.yaml"), *ov], input="y\ny\n")
    assert res.exit_code == 2, res.output
    assert "--trust-remote-code" in res.output and "custom-model" in res.output
    assert "[y/N]" not in res.output
    assert not marker.exists()


def test_a_broken_teacher_run_is_refused_before_the_run_folder_is_made(tmp_path):
    teacher = tmp_path / "teacher"
    (teacher / "model").mkdir(parents=True)
    (teacher / "model" / "adapter_config.json").write_text('{"peft_type": "LORA"}')  # no config.yaml, no weights
    res = _run(["run", str(REPO / "configs" / "quickstart.yaml"), f"output_dir={tmp_path / 'runs'}",
                f"augment.select.teacher={teacher}", "augment.lm.enabled=false", "augment.generate.enabled=false",
                "augment.extra=[src/lorafit/data/sample/train.csv]"])
    assert res.exit_code == 2 and "no trained model in it" in res.output, res.output
    assert not (tmp_path / "runs").exists()
