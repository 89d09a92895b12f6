"""Output a log file and a pipe can use: stdout is the summary alone, log lines go to stderr and
to run.log, and neither holds a progress bar's carriage returns or known library noise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import tiny_overrides

NO_AUGMENT = ["augment.synonyms.enabled=false", "augment.lm.enabled=false", "augment.generate.enabled=false",
              "selftrain.enabled=false"]


def lorafit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for k in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        env.pop(k, None)  # lorafit decides: stderr is a pipe here
    return subprocess.run([sys.executable, "-m", "lorafit.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def test_a_run_prints_only_its_summary_and_logs_to_run_log(tiny_roberta_dir, tiny_csvs, tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("seed: 42\n")
    args = ["run", str(base), *NO_AUGMENT, *tiny_overrides(tiny_roberta_dir, tiny_csvs, tmp_path / "runs")]
    proc = lorafit(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "runs" / "tiny"
    assert proc.stdout == (run_dir / "summary.md").read_text()  # stdout is exactly the summary
    for noise in ("\r", "{'loss'", "not sharded", "FutureWarning", "LOAD REPORT", "it/s]", "mtime may not"):
        assert noise not in proc.stderr, noise
    log = (run_dir / "run.log").read_text()
    assert "\r" not in log
    assert log.splitlines()[0].endswith("run started: lorafit " + " ".join(args))
    assert "lorafit.train: step 12/12: loss" in log and "eval_accuracy" in log and "lorafit.pipeline: data:" in log
    assert len(proc.stderr.splitlines()) < 20

    # -q: warnings and errors only on stderr; run.log still gets everything
    proc = lorafit(*args, "--fresh", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == (run_dir / "summary.md").read_text()
    assert " INFO " not in proc.stderr
    assert "lorafit.train: step 12/12: loss" in (run_dir / "run.log").read_text()


def test_progress_bars_off_a_terminal_every_library(monkeypatch):
    """Off a terminal every bar is off, a bare tqdm in a library too (GGUF conversion); -q also on one."""
    import logging

    import lorafit.logs as logs

    for k in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(logs, "_progress", None)
    root = logging.getLogger()
    before = list(root.handlers), root.level
    try:
        monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
        logs.setup_logging(0)
        assert not logs.progress_bars()
        assert os.environ["TQDM_DISABLE"] == os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
        monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
        logs.setup_logging(-1)
        assert not logs.progress_bars()
        logs.setup_logging(0)
        assert logs.progress_bars()
    finally:
        root.handlers[:], _ = before[0], root.setLevel(before[1])
