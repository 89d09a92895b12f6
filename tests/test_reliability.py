"""Reliability round 3 (issue 26): probes a hostile but realistic user tried, each reproduced here.
Every one ends in a one-line error naming the file/row/key, or in correct behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import TINY_YAML, tiny_labeled_rows, tiny_overrides, write_csv, write_tiny_csvs
from lorafit.cli import app

pytestmark = pytest.mark.usefixtures("one_torch_thread")



@pytest.fixture()
def tiny_inputs(tiny_roberta_dir, tmp_path) -> dict:
    csvs = write_tiny_csvs(tmp_path / "data")
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_YAML)
    return {"model": tiny_roberta_dir, "csvs": csvs, "runs": tmp_path / "runs", "tmp": tmp_path, "config": config}


@pytest.fixture(scope="module")
def trained_run(tiny_roberta_dir, tmp_path_factory) -> dict:
    """One tiny trained run (with selftrain.select_after_prior and a uniform prior) that tests copy
    before changing anything in it: see :func:`copy_run`."""
    tmp = tmp_path_factory.mktemp("trained")
    data = tmp / "data"
    csvs = {
        "train": write_csv(data / "train.csv", tiny_labeled_rows(6)),
        "dev": write_csv(data / "dev.csv", tiny_labeled_rows(2)),
        "target": write_csv(data / "target.csv", [{"ID": f"t{i:02d}", "text": r["text"].upper()}
                                                  for i, r in enumerate(tiny_labeled_rows(1))]),
    }
    config = tmp / "tiny.yaml"
    config.write_text(TINY_YAML)
    inp = {"model": tiny_roberta_dir, "csvs": csvs, "runs": tmp / "runs", "tmp": tmp, "config": config}
    result = invoke(*run_args(inp, **{"predict.prior": "uniform", "selftrain.select_after_prior": "true"}))
    assert result.exit_code == 0, result.output
    return {**inp, "run": tmp / "runs" / "tiny"}


def copy_run(trained_run: dict, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(trained_run["run"], tmp_path / "runs" / "tiny", symlinks=True))


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def run_args(inp: dict, **extra) -> list[str]:
    return ["run", str(inp["config"]), *tiny_overrides(inp["model"], inp["csvs"], inp["runs"], **extra)]


def one_line_error(result, code: int, *needles: str) -> str:
    """Exit ``code`` through the CLI's error path: one ``error:`` line naming ``needles``, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    err = result.stderr[result.stderr.rindex("error: "):].strip()
    assert "\n" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


# ------------------------------------------------------------------ item 16: Ctrl-C during tokenization


def test_tokenize_hashes_no_function_so_an_interrupt_cannot_be_swallowed(tiny_roberta_dir, monkeypatch):
    """datasets hashes a map function inside a bare ``except:``: a Ctrl-C arriving then was swallowed
    and the run went on. Simulate the signal arriving whenever a function is hashed: tokenize must
    not hash one (it gives the new fingerprint), and an interrupt inside the map still propagates."""
    from transformers import AutoTokenizer

    from lorafit import train

    tok = AutoTokenizer.from_pretrained(str(tiny_roberta_dir))
    ds = datasets.Dataset.from_list(tiny_labeled_rows(1))
    hashed = []
    real_update = datasets.fingerprint.Hasher.update

    def update(self, value):
        if callable(value) and not isinstance(value, type):
            hashed.append(value)
            raise KeyboardInterrupt  # the signal arrives while dill pickles the function
        return real_update(self, value)

    monkeypatch.setattr(datasets.fingerprint.Hasher, "update", update)
    out = train.tokenize(ds, tok, 32)
    assert hashed == []  # nothing was hashed, so nothing was swallowed
    assert set(out.column_names) == {"labels", "input_ids", "attention_mask", "length"}
    assert list(out["labels"]) == list(ds["label"])
    assert out["length"][0] == len(tok(ds["text"][0], truncation=True, max_length=32)["input_ids"])

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "clip_text", interrupted)  # Ctrl-C inside the map function itself
    with pytest.raises(KeyboardInterrupt):
        train.tokenize(ds, tok, 32)


# ------------------------------------------------------------------ item 10: a NaN loss stops training


def test_nan_loss_stops_training_with_one_line_and_saves_no_model(tiny_inputs):
    run_dir = tiny_inputs["runs"] / "tiny"
    result = invoke(*run_args(tiny_inputs, **{"train.learning_rate": 1e30}))
    err = one_line_error(result, 2, "training diverged", "train.learning_rate (now 1e+30)", "--fresh")
    assert "loss became nan at step" in err, err
    assert not (run_dir / "model").exists() and not (run_dir / "submission.csv").exists()
    assert not (run_dir / "metrics.json").exists()
    # the checkpoints left hold finite weights only (the step that diverged saved none)
    from safetensors.numpy import load_file

    for f in run_dir.glob("checkpoints/checkpoint-*/adapter_model.safetensors"):
        assert all(np.isfinite(v).all() for v in load_file(str(f)).values()), f


# ------------------------------------------------------------------ item 13: searches started together


def _open_storage_at(url, barrier, results):
    from lorafit import search

    barrier.wait()  # every process creates the fresh database's tables at the same moment
    try:
        search.open_storage(url, 1)
        results.put("ok")
    except Exception as e:  # noqa: BLE001 (reported to the test)
        results.put(f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")


def test_processes_opening_a_fresh_sqlite_study_together_all_succeed(tmp_path):
    """Two `lorafit search` started together on a fresh SQLite study: one died with IntegrityError /
    'table studies already exists' in open_storage (it raced the other's table creation)."""
    import multiprocessing as mp

    import lorafit.search  # noqa: F401  (imported before the fork: the children start at once)

    ctx = mp.get_context("fork")
    outcomes = []
    for attempt in range(3):
        url = f"sqlite:///{tmp_path / f'search-{attempt}.db'}"
        barrier, results = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_open_storage_at, args=(url, barrier, results)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        outcomes += [results.get(timeout=5) for _ in procs]
    assert outcomes == ["ok"] * 12, outcomes


# ------------------------------------------------------------------ item 7: duplicates and conflicting labels


def _prepare(tmp_path, rows, **overrides):
    from lorafit.config import load_config
    from lorafit.data import prepare_data

    src = write_csv(tmp_path / "source.csv", rows)
    ov = {"data.source": str(src), "data.val_fraction": 0.25, "clean.min_words": 1,
          "data.labels": "[World,Sports,Business,Sci/Tech]", **overrides}
    return prepare_data(load_config(None, [f"{k}={v}" for k, v in ov.items()]))


def test_duplicate_rows_are_dropped_before_the_split_and_counted(tmp_path):
    rows = tiny_labeled_rows(6)  # 96 distinct texts
    data = _prepare(tmp_path, rows * 3)  # each row three times, as the probe had it
    assert not set(data.val["text"]) & set(data.train["text"])  # no validation text is a training text
    assert len(data.train) + len(data.val) == 96
    assert data.stats["source_rows"] == 288 and data.stats["duplicate_rows_dropped"] == 192
    assert data.stats["conflicting_texts"] == 0 and data.stats["conflicting_rows_dropped"] == 0
    # texts that differ only in what cleaning removes are duplicates too
    data = _prepare(tmp_path, rows + [{"text": "  " + rows[0]["text"].replace(" ", "  "), "label": rows[0]["label"]}])
    assert data.stats["duplicate_rows_dropped"] == 1 and len(data.train) + len(data.val) == 96


def test_a_text_with_two_labels_is_dropped_and_reported_with_its_rows(tmp_path, caplog):
    rows = tiny_labeled_rows(6)
    clash = {"text": rows[5]["text"], "label": (rows[5]["label"] + 1) % 4}  # row 96: row 5's text, another label
    with caplog.at_level("WARNING", logger="lorafit.data.prepare"):
        data = _prepare(tmp_path, rows + [clash, dict(rows[5])])
    assert rows[5]["text"] not in set(data.train["text"]) | set(data.val["text"])
    assert len(data.train) + len(data.val) == 95
    assert data.stats["conflicting_texts"] == 1 and data.stats["conflicting_rows_dropped"] == 3
    assert data.stats["duplicate_rows_dropped"] == 0
    warning = next(r.getMessage() for r in caplog.records if "labels" in r.getMessage())
    assert "source.csv" in warning and "row 5 as 'Sports'" in warning and "row 96 as 'Business'" in warning, warning


# ------------------------------------------------------------------ item 19: predict --prior none


def test_predict_prior_none_is_allowed_for_a_run_with_select_after_prior(trained_run, tmp_path):
    """select_after_prior needs a prior for self-training's selection only; prediction runs none."""
    run = copy_run(trained_run, tmp_path)
    out = tmp_path / "plain.csv"
    result = invoke("predict", run, "--prior", "none", "-o", out)
    assert result.exit_code == 0, result.output
    with np.load(run / "target_probs.npz") as z:
        raw = z["probs"].argmax(1)
    rows = out.read_text().splitlines()
    assert rows[0] == "ID,Label" and [int(r.split(",")[1]) for r in rows[1:]] == raw.tolist()


# ------------------------------------------------------------------ item 8: the target set's IDs, empty target texts


def test_target_ids_come_from_the_files_id_column(tmp_path):
    from lorafit.data.io import DataError, load_unlabeled

    p = write_csv(tmp_path / "t.csv", [{"ID": "0007", "text": "b"}, {"ID": "12", "text": "a"}, {"ID": "3", "text": "c"}])
    ds = load_unlabeled(str(p))
    assert list(ds["id"]) == ["0007", "12", "3"] and list(ds["text"]) == ["b", "a", "c"]  # as written
    assert "id" not in load_unlabeled(str(write_csv(tmp_path / "n.csv", [{"text": "a"}]))).column_names
    p = write_csv(tmp_path / "dup.csv", [{"id": "1", "text": "a"}, {"id": "2", "text": "b"}, {"id": "1", "text": "c"}])
    with pytest.raises(DataError, match=r"dup\.csv: ID '1' \(column 'id'\) is given twice: row 0 \(line 2 of the file\) "
                                        r"and row 2 \(line 4 of the file\)"):
        load_unlabeled(str(p))
    p = write_csv(tmp_path / "gap.csv", [{"id": "1", "text": "a"}, {"id": "", "text": "b"}])
    with pytest.raises(DataError, match=r"gap\.csv: row 1 \(line 3 of the file\) has no ID in column 'id'"):
        load_unlabeled(str(p))


def _submission(path: Path) -> dict:
    rows = path.read_text().splitlines()
    assert rows[0] == "ID,Label"
    return dict(r.split(",") for r in rows[1:])


def test_shuffled_target_with_ids_and_an_empty_text_is_submitted_under_its_own_ids(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path)
    texts = [r["text"].upper() for r in tiny_labeled_rows(1)]
    plain = tmp_path / "plain.csv"
    assert invoke("predict", run, "--prior", "none", "-o", plain).exit_code == 0
    by_id = _submission(plain)  # the run's target file has IDs t00..t15
    assert list(by_id) == [f"t{i:02d}" for i in range(len(texts))]
    assert list(_submission(run / "submission.csv")) == list(by_id)  # `lorafit run` used them too
    order = np.random.default_rng(0).permutation(len(texts))
    rows = [{"text": texts[i], "ID": f"row-{i}"} for i in order] + [{"text": "", "ID": "empty-one"}]
    shuffled = write_csv(tmp_path / "shuffled.csv", rows)
    out = tmp_path / "shuffled-sub.csv"
    result = invoke("predict", run, "--target", shuffled, "--prior", "none", "-o", out)
    assert result.exit_code == 0, result.output
    got = _submission(out)
    assert list(got) == [f"row-{i}" for i in order] + ["empty-one"]  # the file's IDs, in its order
    assert all(got[f"row-{i}"] == by_id[f"t{i:02d}"] for i in range(len(texts)))  # each ID kept its text's label
    assert got["empty-one"] in {"0", "1", "2", "3"}  # the empty text is predicted, not refused


# ------------------------------------------------------------------ item 9: one process per run folder


HOLD = ("import sys, time\n"
        "from lorafit.io_utils import lock_folder\n"
        "lock_folder(sys.argv[1], 'run folder')\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n")


@pytest.fixture()
def holder():
    """Start a process that takes a folder's lock the way `lorafit run` does, and hold it."""
    import subprocess
    import sys

    procs = []

    def start(folder: Path) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "held"
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_a_second_process_on_a_run_folder_is_refused_naming_the_first(trained_run, tmp_path, holder):
    import time

    run = copy_run(trained_run, tmp_path)
    (run / "metrics.json").unlink()  # an unfinished run, which a rerun continues
    inp = {**trained_run, "runs": tmp_path / "runs"}
    extra = {"predict.prior": "uniform", "selftrain.select_after_prior": "true"}
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    first = holder(run)
    for command in (run_args(inp, **extra),  # lorafit run, and the stages that write a run folder alone
                    ["adapt-lm", inp["config"], *run_args(inp)[2:]], ["generate", inp["config"], *run_args(inp)[2:]]):
        t0 = time.perf_counter()
        result = invoke(*command)
        one_line_error(result, 2, f"'{run}' is in use by another lorafit process: pid {first.pid} on ",
                       "lorafit")
        assert time.perf_counter() - t0 < 5  # refused before the data and the model are loaded
    # nothing in the folder was touched
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != ".lorafit.lock"} == \
           {p: t for p, t in before.items() if p.name != ".lorafit.lock"}
    # the holder dies without cleaning up: its lock is stale and taken over at once
    first.kill()
    first.wait()
    assert (run / ".lorafit.lock").is_file()
    from lorafit.io_utils import lock_folder, release_folder

    lock = lock_folder(run, "run folder")
    import os

    assert json.loads(lock.read_text())["pid"] == os.getpid()
    release_folder(run)
    assert not lock.exists()
    result = invoke(*run_args(inp, **extra))  # and a run proceeds
    assert result.exit_code == 0, result.output
    assert not (run / ".lorafit.lock").exists()  # released when the run is done


# ------------------------------------------------------------------ item 12: a full disk that is not the working directory's


def test_disk_full_during_a_checkpoint_on_another_filesystem_is_one_line(tiny_inputs, monkeypatch):
    """torch.save's C++ writer reports a full disk without an errno; the check of free space must
    look at the disk of the run folder (here full), not the working directory's (here roomy)."""
    import shutil

    import torch

    from lorafit import io_utils

    runs = tiny_inputs["runs"].resolve()

    class OtherDisks:  # the run folder's filesystem has 1 MiB left; the working directory's plenty
        def __getattr__(self, name):
            return getattr(shutil, name)

        @staticmethod
        def disk_usage(p):
            real = shutil.disk_usage(p)
            if Path(p).resolve() == runs or runs in Path(p).resolve().parents:
                return type(real)(real.total, real.total - 2**20, 2**20)
            return real

    def cut_off(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(io_utils, "shutil", OtherDisks())
    monkeypatch.setattr(torch, "save", cut_off)
    result = invoke(*run_args(tiny_inputs, **{"train.epochs": 1}))
    err = one_line_error(result, 2, "no space left on the device", f"'{runs / 'tiny'}'", "(free: 1.0 MiB)")
    assert "working directory" not in err


# ------------------------------------------------------------------ item 14: damaged run state


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_target_probs_is_one_line_or_recomputed(trained_run, tmp_path, damage):
    run = copy_run(trained_run, tmp_path)
    probs = run / "target_probs.npz"
    good = probs.read_bytes()
    # "garbage" is what numpy takes for a pickle (its error advised allow_pickle=True)
    bad = {"truncated": good[: len(good) // 2], "garbage": b"hello world" * 10, "empty": b""}[damage]
    dev = trained_run["csvs"]["dev"]
    for command in (["agreement", run, run], ["report", run],
                    ["evaluate", run, dev, "--prior", "em", "--prior-fit", "target"]):
        probs.write_bytes(bad)
        err = one_line_error(invoke(*command), 2, f"{probs}: damaged, not a target_probs file lorafit wrote",
                             f"lorafit predict {run}")
        assert "allow_pickle" not in err and "pickle" not in err, err
    # lorafit predict owns that cache: it computes the probabilities again and replaces the file
    probs.write_bytes(bad)
    out = tmp_path / "sub.csv"
    result = invoke("predict", run, "-o", out)
    assert result.exit_code == 0, result.output
    with np.load(probs) as z, np.load(io_bytes(good)) as g:
        assert z["probs"].shape == g["probs"].shape and str(z["digest"]) == str(g["digest"])
    assert out.read_text() == (run / "submission.csv").read_text()  # the same prior, the same labels


def io_bytes(data: bytes):
    import io

    return io.BytesIO(data)


def test_damaged_or_missing_adapter_and_edited_labels_are_one_line(trained_run, tmp_path):
    import yaml

    run = copy_run(trained_run, tmp_path)
    weights = run / "model" / "adapter_model.safetensors"
    good = weights.read_bytes()
    predict = ["predict", run, "-o", tmp_path / "sub.csv", "--no-reuse-probs"]
    weights.write_bytes(good[: len(good) // 2])
    one_line_error(invoke(*predict), 2, f"{weights}: the run's trained model cannot be read", "damaged",
                   f"lorafit run {run / 'config.yaml'}", "--fresh")
    weights.unlink()
    one_line_error(invoke(*predict), 2, f"{weights}: missing", "--fresh")
    weights.write_bytes(good)
    config = run / "config.yaml"
    saved = yaml.safe_load(config.read_text())
    saved["data"]["labels"] = saved["data"]["labels"][:3]
    saved["predict"]["prior"] = "none"
    saved["selftrain"]["select_after_prior"] = False
    config.write_text(yaml.safe_dump(saved, sort_keys=False))
    one_line_error(invoke(*predict), 2, f"{config}: data.labels (3 classes)", "no longer match the trained model",
                   "--fresh")
    assert not (tmp_path / "sub.csv").exists()


def test_a_damaged_checkpoint_is_one_line_advising_fresh(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path)
    (run / "metrics.json").unlink()  # an unfinished run, which a rerun resumes from its last checkpoint
    inp = {**trained_run, "runs": tmp_path / "runs"}
    last = max(run.glob("checkpoints/checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    weights = last / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # trainer_state.json intact: the checkpoint looks complete
    result = invoke(*run_args(inp, **{"predict.prior": "uniform", "selftrain.select_after_prior": "true"}))
    one_line_error(result, 2, f"resuming from checkpoint '{last}' failed", "damaged", "--fresh")


def test_a_truncated_metrics_json_is_refused_not_taken_for_absent(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path)
    metrics = run / "metrics.json"
    metrics.write_text(metrics.read_text()[:200])
    card, page = (run / "model" / "README.md").read_bytes(), (run / "report.html").read_bytes()
    one_line_error(invoke("report", run), 2, f"{metrics}: damaged, the run's results cannot be read (not valid JSON",
                   f"delete it and run `lorafit run {run / 'config.yaml'}`")
    assert (run / "model" / "README.md").read_bytes() == card and (run / "report.html").read_bytes() == page
    one_line_error(invoke("compare", run, run), 2, f"{metrics}")


# ------------------------------------------------------------------ item 17: empty options, outputs onto others' files


def test_empty_name_or_output_dir_is_an_error_not_ignored(tiny_inputs):
    for option in ("--name", "--output-dir"):
        result = invoke(*run_args(tiny_inputs)[:2], option, "", *run_args(tiny_inputs)[2:])
        one_line_error(result, 2, f"{option} is empty")
        one_line_error(invoke("search", tiny_inputs["config"], option, ""), 2, f"{option} is empty")
    assert not tiny_inputs["runs"].exists()


def test_outputs_never_replace_a_runs_files_or_a_users_file(trained_run, tmp_path):
    import time

    run = copy_run(trained_run, tmp_path)
    config = run / "config.yaml"
    before = config.read_bytes()
    dev = trained_run["csvs"]["dev"]
    mine = tmp_path / "notes.csv"
    mine.write_text("my own notes\n")
    cases = [(["predict", run, "-o", config], "is the run's own config.yaml"),
             (["predict", run, "-o", run / "model" / "README.md"], "is inside model/ of run folder"),
             (["evaluate", run, dev, "-o", run / "metrics.json"], "is the run's own metrics.json"),
             (["agreement", run, run, "-o", config], "is the run's own config.yaml"),
             (["predict", run, "-o", mine], "exists and is not a file lorafit wrote (not an ID,Label submission)"),
             (["evaluate", run, dev, "-o", mine], "not lorafit evaluate metrics"),
             (["compare", run, "--html", mine], "not a lorafit page")]
    for command, needle in cases:
        t0 = time.perf_counter()
        one_line_error(invoke(*command), 2, needle)
        assert time.perf_counter() - t0 < 2  # refused before any work (no model is loaded)
    assert config.read_bytes() == before and mine.read_text() == "my own notes\n"
    # lorafit's own earlier outputs may be written again
    sub = tmp_path / "sub.csv"
    for _ in range(2):
        assert invoke("predict", run, "-o", sub).exit_code == 0
    page = tmp_path / "compare.html"
    for _ in range(2):
        assert invoke("compare", run, "--html", page).exit_code == 0


# ------------------------------------------------------------------ item 18: mistakes fail in a second


PROBE = ("import sys, time\n"
         "t0 = time.perf_counter()\n"
         "sys.argv = ['lorafit', *sys.argv[1:]]\n"
         "from lorafit.cli import main\n"
         "try:\n"
         "    main()\n"
         "except SystemExit as e:\n"
         "    code = e.code\n"
         "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'optuna_integration') if m in sys.modules)\n"
         "print('RESULT', code, round(time.perf_counter() - t0, 2), ','.join(heavy) or '-')\n")


def _probe(*args, env=None):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))
    _, code, seconds, heavy = line.split()
    return int(code), float(seconds), heavy, proc.stderr


def test_path_and_config_mistakes_fail_before_the_model_libraries_load(trained_run, tmp_path):
    """adapt-lm, generate, search, predict, evaluate and agreement took 5-16 s to report a wrong path or
    key: they imported torch/transformers first. Each must now fail without loading them."""
    missing, run, dev = tmp_path / "nope.yaml", trained_run["run"], trained_run["csvs"]["dev"]
    config = trained_run["config"]
    cases = [("adapt-lm", missing), ("adapt-lm", config, "lora.rank=3"), ("generate", missing),
             ("generate", config, "train.epochs=many"), ("search", missing), ("search", config, "lora.rank=3"),
             ("predict", tmp_path / "no-run"), ("predict", run, "-o", tmp_path / "no" / "such" / "dir" / "x.csv"),
             ("predict", run, "--prior", "bogus"),
             ("evaluate", tmp_path / "no-run", dev), ("evaluate", run, dev, "--prior", "bogus"),
             ("evaluate", run, dev, "-o", run / "config.yaml"), ("agreement", tmp_path / "a", tmp_path / "b")]
    (tmp_path / "no").write_text("a file where a folder is expected")
    for case in cases:
        code, seconds, heavy, err = _probe(*case)
        assert code == 2, (case, err[-500:])
        assert err.strip().splitlines()[-1].startswith("error: "), (case, err[-500:])
        assert heavy == "-", (case, heavy)  # no model library was imported to find the mistake
        assert seconds < 5, (case, seconds)  # ~0.6 s on an idle machine (was 12-15 s)
    # a missing data file needs the data libraries but still not the model's
    code, seconds, heavy, err = _probe("evaluate", run, tmp_path / "missing.csv")
    assert code == 2 and "missing.csv" in err and heavy == "-", (err[-300:], heavy)


def test_an_unreachable_hub_switches_to_offline_at_once(monkeypatch):
    from lorafit.io_utils import offline_if_hub_unreachable

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    assert offline_if_hub_unreachable(timeout=2) is not None
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "1"
    assert offline_if_hub_unreachable() is None  # already offline: no second check


def test_a_command_with_an_unreachable_hub_fails_in_seconds_not_minutes(tmp_path):
    """Without HF_HUB_OFFLINE, huggingface_hub retried each file for ~23 s (24-76 s per command)."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    import subprocess
    import sys

    code = ("import sys, time\nt0 = time.perf_counter()\nsys.argv = ['lorafit', *sys.argv[1:]]\n"
            "from lorafit.cli import main\ntry:\n    main()\nexcept SystemExit as e:\n"
            "    print('RESULT', e.code, round(time.perf_counter() - t0, 1))\n")
    proc = subprocess.run([sys.executable, "-c", code, "budget", str(Path(__file__).parents[1] / "configs" /
                                                                       "quickstart.yaml"), "model.name=lorafit-test/no-such-model"],
                          capture_output=True, text=True, env=env, timeout=300)
    result = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT")).split()
    assert result[1] == "2", proc.stderr[-800:]
    assert "cannot be reached" in proc.stderr and "set HF_HUB_OFFLINE=1" in proc.stderr
    assert float(result[2]) < 20, result  # the model libraries' import only; the retries took 23 s more
