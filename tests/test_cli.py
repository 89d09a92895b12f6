"""The ``lorafit`` command line: exit codes, one-paragraph errors without tracebacks, no half-made
run folders, and the run -> predict round trip on the tiny model."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import TINY_YAML, tiny_labeled_rows, tiny_overrides, write_csv, write_tiny_csvs
from lorafit.cli import EXIT_BUDGET, EXIT_INPUT, app

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "configs" / "seed.yaml"
PEFT_LINE = "trainable params: 916,996 || all params: 125,463,560 || trainable%: 0.7309"


pytestmark = pytest.mark.usefixtures("one_torch_thread")




def _tiny_config(folder: Path) -> Path:
    p = folder / "tiny.yaml"
    p.write_text(TINY_YAML)
    return p


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def _invoke(runner: CliRunner, *args: str):
    return runner.invoke(app, [str(a) for a in args])


def _assert_clean_failure(result, code: int, *needles: str) -> str:
    """Exit ``code`` through the CLI's own error path: one ``error:`` line, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    # a deliberate exit (typer.Exit -> SystemExit), not an exception that escaped the CLI
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    # progress bars may precede it; the error is the last thing printed, as one paragraph
    assert "error: " in result.stderr, result.stderr
    err = result.stderr[result.stderr.rindex("error: "):].strip()
    assert "\n" not in err, f"the error must be one line: {err!r}"
    assert "error: " not in result.stdout
    for needle in needles:
        assert needle in err, (needle, err)
    return err


# ------------------------------------------------------------------ budget


def test_budget_prints_the_peft_line(runner):
    result = _invoke(runner, "budget", SEED)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == PEFT_LINE
    out = result.stdout
    assert "221,184" in out and "102,144" in out and "593,668" in out and "OK" in out


def test_budget_over_limit_exits_3_naming_contributors(runner):
    result = _invoke(runner, "budget", SEED, "lora.r=16")
    assert result.stdout.splitlines()[0].startswith("trainable params: 1,580,548 || all params: 126,127,112")
    err = _assert_clean_failure(result, EXIT_BUDGET, "580,548", "largest contributors",
                                "classifier.modules_to_save.dense", "query.lora_A")
    assert err.index("classifier.modules_to_save.dense") < err.index("query.lora_A")  # largest first


def test_budget_unknown_key(runner):
    result = _invoke(runner, "budget", SEED, "lora.rank=8")
    _assert_clean_failure(result, EXIT_INPUT, "unknown config key 'lora.rank'")


def test_budget_console_script_over_limit():
    """The installed entry point: exit 3, message on stderr, the PEFT line on stdout, no traceback."""
    exe = Path(sys.executable).with_name("lorafit")
    assert exe.is_file(), f"the project's set-up (make setup) installs the lorafit console script next to {sys.executable}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([str(exe), "budget", str(SEED), "lora.r=16"], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)
    assert proc.returncode == EXIT_BUDGET, proc.stderr
    assert proc.stdout.splitlines()[0].startswith("trainable params: 1,580,548 || all params: 126,127,112")
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert "error: over budget by 580,548; largest contributors: classifier.modules_to_save.dense" in proc.stderr


# ------------------------------------------------------------------ run: input errors leave nothing behind


@pytest.fixture()
def tiny_inputs(tiny_roberta_dir, tmp_path) -> dict:
    csvs = write_tiny_csvs(tmp_path / "data")
    runs = tmp_path / "runs"
    return {"model": tiny_roberta_dir, "csvs": csvs, "runs": runs, "tmp": tmp_path, "config": _tiny_config(tmp_path)}


def _run_args(inp: dict, **extra) -> list[str]:
    return ["run", str(inp["config"]), *tiny_overrides(inp["model"], inp["csvs"], inp["runs"], **extra)]


def _assert_no_run_folder(inp: dict) -> None:
    runs = inp["runs"]
    assert not runs.exists() or not any(runs.iterdir()), sorted(p.name for p in runs.rglob("*"))


def test_run_missing_data_file(runner, tiny_inputs):
    missing = tiny_inputs["tmp"] / "data" / "no_such_train.csv"
    result = _invoke(runner, *_run_args(tiny_inputs, **{"data.source": missing}))
    _assert_clean_failure(result, EXIT_INPUT, str(missing), "no such file")
    _assert_no_run_folder(tiny_inputs)


def test_run_unknown_config_key(runner, tiny_inputs):
    result = _invoke(runner, *_run_args(tiny_inputs), "train.epochz=3")
    _assert_clean_failure(result, EXIT_INPUT, "unknown config key 'train.epochz'", "epochs")
    _assert_no_run_folder(tiny_inputs)


def test_run_wrong_type(runner, tiny_inputs):
    result = _invoke(runner, *_run_args(tiny_inputs, **{"train.batch_size": "abc"}))
    _assert_clean_failure(result, EXIT_INPUT, "'train.batch_size'", "integer")
    _assert_no_run_folder(tiny_inputs)


def test_run_label_out_of_range(runner, tiny_inputs):
    rows = tiny_labeled_rows(6)
    rows[17]["label"] = 9
    bad = write_csv(tiny_inputs["tmp"] / "data" / "bad_labels.csv", rows)
    result = _invoke(runner, *_run_args(tiny_inputs, **{"data.source": bad}))
    _assert_clean_failure(result, EXIT_INPUT, str(bad), "row 17", "9")
    _assert_no_run_folder(tiny_inputs)


def test_run_label_out_of_range_in_validation_file(runner, tiny_inputs):
    rows = tiny_labeled_rows(2)
    rows[3]["label"] = "Politics"
    bad = write_csv(tiny_inputs["tmp"] / "data" / "bad_dev.csv", rows)
    result = _invoke(runner, *_run_args(tiny_inputs, **{"data.validation": bad}))
    _assert_clean_failure(result, EXIT_INPUT, str(bad), "row 3", "Politics")
    _assert_no_run_folder(tiny_inputs)


def test_run_non_utf8_file(runner, tiny_inputs):
    bad = tiny_inputs["tmp"] / "data" / "latin1_target.csv"
    bad.write_bytes(b"text\nfine\nalso fine\ncaf\xe9 society\n")
    result = _invoke(runner, *_run_args(tiny_inputs, **{"data.target": bad}))
    _assert_clean_failure(result, EXIT_INPUT, str(bad), "line 4", "UTF-8")
    _assert_no_run_folder(tiny_inputs)


def test_run_missing_config_file(runner, tmp_path):
    result = _invoke(runner, "run", tmp_path / "nope.yaml", f"output_dir={tmp_path / 'runs'}")
    _assert_clean_failure(result, EXIT_INPUT, "nope.yaml", "does not exist")
    assert not (tmp_path / "runs").exists()


def test_run_over_budget_exits_3_before_training(runner, tiny_inputs):
    result = _invoke(runner, *_run_args(tiny_inputs), "budget.max_trainable=100")
    _assert_clean_failure(result, EXIT_BUDGET, "budget.max_trainable=100", "Largest contributors")
    _assert_no_run_folder(tiny_inputs)


# ------------------------------------------------------------------ run + predict


@pytest.fixture(scope="module")
def trained(tiny_roberta_dir, tmp_path_factory) -> dict:
    """One successful tiny ``lorafit run ... key=value`` shared by the run/predict tests."""
    tmp = tmp_path_factory.mktemp("cli-run")
    csvs = {
        "train": write_csv(tmp / "data" / "train.csv", tiny_labeled_rows(6)),
        "dev": write_csv(tmp / "data" / "dev.csv", tiny_labeled_rows(2)),
        "target": write_csv(tmp / "data" / "target.csv", [{"text": r["text"].upper()} for r in tiny_labeled_rows(1)]),
    }
    inp = {"model": tiny_roberta_dir, "csvs": csvs, "runs": tmp / "runs", "tmp": tmp, "config": _tiny_config(tmp)}
    result = _invoke(CliRunner(), *_run_args(inp, **{"train.epochs": 1}))
    assert result.exit_code == 0, (result.output, result.exception)
    return {**inp, "run_dir": inp["runs"] / "tiny", "stdout": result.stdout}


def _submission(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_run_writes_metrics_and_submission(trained):
    run_dir = trained["run_dir"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    cm = np.array(metrics["val"]["confusion_matrix"])
    assert cm.sum() == 32 and metrics["val_accuracy"] == pytest.approx(np.trace(cm) / 32)
    rows = _submission(run_dir / "submission.csv")
    assert rows[0] == ["ID", "Label"] and len(rows) == 17
    assert {int(r[1]) for r in rows[1:]} <= {0, 1, 2, 3}
    assert "# lorafit run `tiny`" in trained["stdout"]  # the summary is printed
    # the overrides given on the command line are what the run used
    from lorafit.config import load_config

    saved = load_config(run_dir / "config.yaml")
    assert saved.train.epochs == 1.0 and saved.model.name == str(trained["model"])
    assert saved.lora.target_modules == ["query", "value"]


def test_predict_with_uniform_prior(runner, trained):
    out = trained["tmp"] / "preds" / "out.csv"
    result = _invoke(runner, "predict", trained["run_dir"], "--prior", "uniform", "-o", out)
    assert result.exit_code == 0, (result.output, result.exception)
    assert str(out) in result.stdout and "16 rows" in result.stdout
    rows = _submission(out)
    assert rows[0] == ["ID", "Label"]
    assert [int(r[0]) for r in rows[1:]] == list(range(16))
    got = [int(r[1]) for r in rows[1:]]
    assert set(got) <= {0, 1, 2, 3}

    assert "prior uniform" in result.stdout

    # what the library computes with the uniform prior (up to near-ties of the adjusted
    # probabilities, which float rounding may break either way)
    import datasets

    from scipy.special import softmax

    from lorafit.inference import predict_with_config
    from lorafit.model import load_trained
    from lorafit.prior import adjust_predictions

    model, tok, cfg, _ = load_trained(trained["run_dir"], merge=False)
    cfg.predict.prior = "uniform"
    texts = [r["text"] for r in csv.DictReader(open(trained["csvs"]["target"], encoding="utf-8"))]
    labels = datasets.load_from_disk(str(trained["run_dir"] / "data" / "train"))["label"]
    probs = softmax(predict_with_config(model, tok, cfg, texts), axis=-1)
    adjusted, info = adjust_predictions(probs, cfg.predict.prior, train_prior=np.bincount(labels, minlength=4) / len(labels))
    assert info["mode"] == "uniform"
    chosen = adjusted[np.arange(len(got)), got]
    assert np.all(chosen >= adjusted.max(1) - 1e-4), (got, adjusted.argmax(1).tolist())
    # the run's own submission is untouched
    assert len(_submission(trained["run_dir"] / "submission.csv")) == 17


def test_predict_other_target_and_bad_prior(runner, trained):
    other = write_csv(trained["tmp"] / "other.csv", [{"body": "Shares rise as profit grows"}, {"body": "Cup final tonight"}])
    out = trained["tmp"] / "other_sub.csv"
    result = _invoke(runner, "predict", trained["run_dir"], "--target", other, "--text-column", "body", "-o", out)
    assert result.exit_code == 0, (result.output, result.exception)
    assert len(_submission(out)) == 3
    bad = _invoke(runner, "predict", trained["run_dir"], "--prior", "0.5,0.5", "-o", trained["tmp"] / "x.csv")
    _assert_clean_failure(bad, EXIT_INPUT, "prior")
    assert not (trained["tmp"] / "x.csv").exists()


def test_predict_without_a_trained_model(runner, tmp_path):
    """A folder that is not a trained run: the error says so (not 'pass a YAML file')."""
    folder = tmp_path / "empty-run"
    folder.mkdir()
    result = _invoke(runner, "predict", folder, "-o", tmp_path / "out.csv")
    err = _assert_clean_failure(result, EXIT_INPUT, str(folder), "no trained model")
    assert "lorafit run" in err
    assert not (tmp_path / "out.csv").exists()


# ------------------------------------------------------------------ every user error is one line (issue 10)


@contextlib.contextmanager
def _read_only(folder: Path):
    """``folder`` cannot be written for the duration: mode 555 and, as root (whom mode bits do not
    stop), the effective uid of 'nobody'."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    as_root = os.geteuid() == 0
    try:
        if as_root:
            os.seteuid(65534)
        yield folder
    finally:
        if as_root:
            os.seteuid(0)
        folder.chmod(0o755)


@pytest.fixture()
def open_tmp():
    """A temporary folder that 'nobody' can enter (pytest's own are private to root)."""
    d = Path(tempfile.mkdtemp(prefix="lorafit-test-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_wordnet_error_is_one_line_and_leaves_no_run_folder(runner, tiny_inputs):
    missing = tiny_inputs["tmp"] / "no-wordnet-here"
    result = _invoke(runner, *_run_args(tiny_inputs, **{"augment.synonyms.enabled": "true",
                                                        "augment.synonyms.wordnet_dir": missing}))
    _assert_clean_failure(result, EXIT_INPUT, "augment.synonyms.wordnet_dir", str(missing))
    _assert_no_run_folder(tiny_inputs)


@pytest.mark.parametrize("case", ["under-a-file", "onto-a-folder", "read-only"])
def test_predict_output_path_errors(runner, trained, open_tmp, case):
    if case == "under-a-file":
        blocker = open_tmp / "blocker.txt"
        blocker.write_text("not a folder")
        out, needles = blocker / "sub" / "submission.csv", (str(blocker), "is a file")
    elif case == "onto-a-folder":
        out = open_tmp / "existing-folder"
        out.mkdir()
        needles = (str(out), "is a folder")
    else:
        out, needles = open_tmp / "ro" / "submission.csv", (str(open_tmp / "ro"), "not writable")
    with _read_only(open_tmp / "ro") if case == "read-only" else contextlib.nullcontext():
        result = _invoke(runner, "predict", trained["run_dir"], "-o", out)
    _assert_clean_failure(result, EXIT_INPUT, "-o", *needles)
    assert not out.is_file()
    if case == "read-only":
        assert list((open_tmp / "ro").iterdir()) == []  # not even a temporary file


@pytest.mark.parametrize("case", ["read-only", "a-file"])
def test_run_output_dir_that_cannot_be_written(runner, tiny_inputs, open_tmp, case):
    config = open_tmp / "tiny.yaml"
    config.write_text(TINY_YAML)
    if case == "a-file":
        out = open_tmp / "runs-file"
        out.write_text("")
        ctx = contextlib.nullcontext()
    else:
        out = open_tmp / "ro-runs"
        ctx = _read_only(out)
    with ctx:
        result = _invoke(runner, "run", config, *tiny_overrides(tiny_inputs["model"], tiny_inputs["csvs"], out))
    _assert_clean_failure(result, EXIT_INPUT, "run folder", str(out))
    assert not (out / "tiny").exists()


def test_run_refuses_a_training_set_missing_a_class(runner, tiny_inputs):
    rows = [r for r in tiny_labeled_rows(6) if r["label"] != 3]
    src = write_csv(tiny_inputs["tmp"] / "data" / "three_classes.csv", rows)
    result = _invoke(runner, *_run_args(tiny_inputs, **{"data.source": src}))
    _assert_clean_failure(result, EXIT_INPUT, str(src), "'Sci/Tech' (label 3)", "[24, 24, 24, 0]", "data.labels")
    _assert_no_run_folder(tiny_inputs)


def test_run_refuses_an_empty_validation_split(runner, tiny_inputs):
    one_each = write_csv(tiny_inputs["tmp"] / "data" / "one_each.csv", tiny_labeled_rows(6)[:16:4])
    assert sorted(r["label"] for r in tiny_labeled_rows(6)[:16:4]) == [0, 1, 2, 3]
    result = _invoke(runner, *_run_args(tiny_inputs, **{"data.source": one_each, "data.validation": "null"}))
    _assert_clean_failure(result, EXIT_INPUT, "validation set is empty", "data.val_fraction=0.05", "[1, 1, 1, 1]")
    _assert_no_run_folder(tiny_inputs)


def test_run_refuses_max_length_beyond_the_model_positions(runner, tiny_inputs):
    result = _invoke(runner, *_run_args(tiny_inputs, **{"model.max_length": 100}))
    _assert_clean_failure(result, EXIT_INPUT, "'model.max_length': 100", "78 positions")
    _assert_no_run_folder(tiny_inputs)


def test_rerun_with_another_adapter_shape_is_refused_then_fresh_replaces_it(runner, tiny_inputs):
    ok = _invoke(runner, *_run_args(tiny_inputs, **{"train.epochs": 1}))
    assert ok.exit_code == 0, ok.output
    run_dir = tiny_inputs["runs"] / "tiny"
    before = {p: p.read_bytes() for p in (run_dir / "config.yaml", run_dir / "model" / "adapter_config.json")}

    result = _invoke(runner, *_run_args(tiny_inputs, **{"train.epochs": 1, "lora.r": 8}))
    _assert_clean_failure(result, EXIT_INPUT, str(run_dir), "lora.r 4 -> 8", "--fresh")
    assert {p: p.read_bytes() for p in before} == before  # nothing was overwritten

    fresh = _invoke(runner, *_run_args(tiny_inputs, **{"train.epochs": 1, "lora.r": 8}), "--fresh")
    assert fresh.exit_code == 0, fresh.output
    assert json.loads((run_dir / "model" / "adapter_config.json").read_text())["r"] == 8
    assert "r: 8" in (run_dir / "config.yaml").read_text()


def test_save_steps_checkpoint_within_an_epoch(runner, tiny_inputs):
    # 96 rows, batch 16: 6 steps in the one epoch; save_steps=2 adds checkpoints at steps 2 and 4
    result = _invoke(runner, *_run_args(tiny_inputs, **{"train.epochs": 1, "train.save_steps": 2,
                                                        "train.save_total_limit": "null"}))
    assert result.exit_code == 0, result.output
    steps = sorted(int(p.name.split("-")[1]) for p in (tiny_inputs["runs"] / "tiny" / "checkpoints").glob("checkpoint-*"))
    assert steps == [2, 4, 6]


def test_sigint_saves_a_checkpoint_says_so_in_one_line_and_the_rerun_resumes(tiny_inputs):
    args = [sys.executable, "-m", "lorafit.cli", *_run_args(tiny_inputs, **{
        "train.epochs": 400, "train.logging_steps": 1, "train.save_total_limit": "null"})]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    logged, lines = 0, []
    for line in proc.stderr:  # a log line per logged training step: training is under way
        lines.append(line)
        logged += "lorafit.train: step " in line and ": loss " in line
        if logged >= 3:
            proc.send_signal(signal.SIGINT)
            break
    err = "".join(lines) + proc.communicate(timeout=300)[1]
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: interrupted by SIGINT at step "), last
    step = int(last.split(" at step ")[1].split(":")[0])
    ckpt = tiny_inputs["runs"] / "tiny" / "checkpoints" / f"checkpoint-{step}"
    assert f"saved checkpoint '{ckpt}'" in last and "run the same command again to resume" in last
    assert (ckpt / "trainer_state.json").is_file()
    assert not (tiny_inputs["runs"] / "tiny" / "metrics.json").exists()

    resumed = subprocess.run([*args, f"train.max_steps={step + 2}"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {ckpt}" in resumed.stderr
    history = json.loads((tiny_inputs["runs"] / "tiny" / "train_log.json").read_text())
    assert max(h["step"] for h in history) == step + 2
