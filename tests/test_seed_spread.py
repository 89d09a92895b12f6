"""Research script scripts/seed_spread.py: mean and spread over seeds of run folders (the README's recipe table)."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

pytestmark = pytest.mark.research

SCRIPT = Path(__file__).parents[1] / "scripts" / "seed_spread.py"


def _run(folder: Path, dev: float, proxy=None, prior=None, rounds=None, corroborated=None, corr_prior=None) -> None:
    folder.mkdir(parents=True)
    # a finished run's metrics.json as an older lorafit wrote it (no schema_version), cut to what the script reads
    (folder / "metrics.json").write_text(json.dumps({"val_accuracy": dev, "val_macro_f1": dev, "selftrain": rounds or []}))
    if proxy is not None:
        (folder / "proxy-none.json").write_text(json.dumps({"accuracy": proxy}))
    if prior is not None:
        (folder / "proxy-uniform.json").write_text(json.dumps({"accuracy": prior}))
    if corroborated is not None:
        (folder / "corr-none.json").write_text(json.dumps({"accuracy": corroborated}))
    if corr_prior is not None:
        (folder / "corr-target.json").write_text(json.dumps({"accuracy": corr_prior}))


def test_groups_give_mean_sample_sd_and_values(tmp_path, capsys):
    main = runpy.run_path(str(SCRIPT))["main"]
    _run(tmp_path / "a", 0.90, 0.80, 0.82, corroborated=0.96, corr_prior=0.95)
    _run(tmp_path / "b", 0.92, 0.84, 0.86, corroborated=0.97, corr_prior=0.93)
    round_1 = {"round": 1, "teacher_val_accuracy": 0.91, "teacher_proxy_accuracy": 0.85, "teacher_proxy_accuracy_prior": 0.86,
               "val_accuracy": 0.91, "proxy_accuracy": 0.75, "proxy_accuracy_prior": 0.77}
    _run(tmp_path / "s", 0.89, rounds=[round_1])  # a student run: proxy logged by its round
    _run(tmp_path / "ens", 0.93, rounds=[round_1])
    metrics = json.loads((tmp_path / "ens" / "metrics.json").read_text())
    (tmp_path / "ens" / "metrics.json").write_text(json.dumps({**metrics, "ensemble": {"adapters": 2}}))
    main(["new=a,b", "teacher=s:teacher", "student=s", "mixed=a,s", "ens=ens", "ens-student=ens:student",
          "--runs", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| new | a, b | 91.00 ± 1.41 (90.00 / 92.00) | 82.00 ± 2.83 (80.00 / 84.00) | 84.00 ± 2.83 (82.00 / 86.00) | 96.50 ± 0.71 (96.00 / 97.00) | 94.00 ± 1.41 (95.00 / 93.00) |"
    assert lines[3] == "| teacher | s:teacher | 91.00 ± 0.00 (91.00) | 85.00 ± 0.00 (85.00) | 86.00 ± 0.00 (86.00) | n/a | n/a |"
    assert lines[4] == "| student | s | 89.00 ± 0.00 (89.00) | 75.00 ± 0.00 (75.00) | 77.00 ± 0.00 (77.00) | n/a | n/a |"
    assert lines[6] == "| ens | ens | 93.00 ± 0.00 (93.00) | n/a | n/a | n/a | n/a |"  # an ensemble's proxy is not its student's
    assert lines[7] == "| ens-student | ens:student | 91.00 ± 0.00 (91.00) | 75.00 ± 0.00 (75.00) | 77.00 ± 0.00 (77.00) | n/a | n/a |"
    _run(tmp_path / "bare", 0.5)
    main(["x=bare", "--runs", str(tmp_path)])
    assert capsys.readouterr().out.splitlines()[2] == "| x | bare | 50.00 ± 0.00 (50.00) | n/a | n/a | n/a | n/a |"


def test_bad_groups_and_missing_runs_name_the_problem(tmp_path):
    main = runpy.run_path(str(SCRIPT))["main"]
    with pytest.raises(SystemExit, match="expected NAME=RUN"):
        main(["nogroup", "--runs", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"missing.metrics\.json: not found"):
        main(["g=missing", "--runs", str(tmp_path)])
    _run(tmp_path / "plain", 0.9)
    with pytest.raises(SystemExit, match="only RUN:teacher and RUN:student"):
        main(["g=plain:teacher", "--runs", str(tmp_path)])
    with pytest.raises(SystemExit, match="only RUN:teacher and RUN:student"):
        main(["g=plain:other", "--runs", str(tmp_path)])
