"""The label-free target accuracy estimate (``lorafit agreement``): pairwise disagreement of runs of
one recipe, on hand-made predictions, on saved target probabilities, and checked against labels on
two tiny trained runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import tiny_labeled_rows, tiny_overrides, write_csv
from lorafit.cli import app
from lorafit.config import load_config
from lorafit.pipeline import run
from lorafit.predict import save_target_probs
from lorafit.prior import adjust_predictions
from lorafit.metrics import agreement_estimate, disagreement_matrix
from test_pipeline import NO_AUGMENT

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one thread per test module


def test_disagreement_and_estimate_on_known_predictions():
    a, b, c = [0, 1, 2, 3, 0, 1, 2, 3], [0, 1, 2, 3, 0, 1, 2, 0], [0, 1, 2, 3, 1, 1, 0, 0]
    d = disagreement_matrix([a, b, c])
    np.testing.assert_allclose(d, [[0, 1 / 8, 3 / 8], [1 / 8, 0, 2 / 8], [3 / 8, 2 / 8, 0]])
    est = agreement_estimate([a, b, c])
    assert est["runs"] == 3 and est["rows"] == 8
    assert est["mean_disagreement"] == pytest.approx(6 / 24) and est["estimated_accuracy"] == pytest.approx(0.75)
    assert "gap" not in est
    labelled = agreement_estimate([a, b, c], labels=a)
    assert labelled["accuracy"] == pytest.approx([1.0, 7 / 8, 5 / 8])
    assert labelled["mean_accuracy"] == pytest.approx(2.5 / 3)
    assert labelled["gap"] == pytest.approx(0.75 - 2.5 / 3)  # the estimate is 8.3 points low here
    with pytest.raises(ValueError, match="at least 2 runs"):
        disagreement_matrix([a])
    with pytest.raises(ValueError, match="3 labels for 8"):
        agreement_estimate([a, b], labels=[0, 1, 2])


def _fake_run(folder, probs, texts):
    folder.mkdir(parents=True)
    save_target_probs(folder / "target_probs.npz", np.asarray(probs, np.float32), texts)
    return folder


def test_cli_reads_saved_target_probabilities(tmp_path):
    texts = ["a", "b", "c", "d"]
    one = [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]
    two = [[0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.45, 0.55]]  # disagrees on row 3 (0.6 vs 0.4)
    r1, r2 = _fake_run(tmp_path / "r1", one, texts), _fake_run(tmp_path / "r2", two, texts)
    out = tmp_path / "agreement.json"
    res = CliRunner().invoke(app, ["agreement", str(r1), str(r2), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "mean pairwise disagreement 25.00% -> estimated accuracy 75.00%" in res.output
    saved = json.loads(out.read_text())
    assert saved["target"]["estimated_accuracy"] == 0.75 and saved["prior"] == "none"
    # --prior: the runs' probabilities are adjusted first (here run 2's bias to class 1 is balanced away)
    two = [[0.45, 0.55], [0.1, 0.9], [0.3, 0.7], [0.48, 0.52]]
    r3 = _fake_run(tmp_path / "r3", two, texts)
    expected = [adjust_predictions(np.array(p, float), "uniform")[0].argmax(1) for p in (one, two)]
    assert (expected[1] != np.argmax(two, 1)).any()  # the prior changes predictions here
    res = CliRunner().invoke(app, ["agreement", str(r1), str(r3), "--prior", "uniform", "-o", str(out)])
    assert res.exit_code == 0, res.output
    saved = json.loads(out.read_text())
    assert saved["prior"] == "uniform"
    assert saved["target"]["mean_disagreement"] == pytest.approx((expected[0] != expected[1]).mean())
    res = CliRunner().invoke(app, ["agreement", str(r1), str(r3)])
    assert "mean pairwise disagreement 50.00%" in res.output, res.output  # without it: rows 0 and 2 differ


def test_cli_errors_name_the_problem_and_write_nothing(tmp_path):
    r1 = _fake_run(tmp_path / "r1", [[0.9, 0.1], [0.2, 0.8]], ["a", "b"])
    other = _fake_run(tmp_path / "other", [[0.9, 0.1], [0.2, 0.8]], ["a", "c"])
    out = tmp_path / "agreement.json"
    cases = [([str(r1)], "2 or more run folders"),
             ([str(r1), str(tmp_path / "missing")], "missing/target_probs.npz: not found"),
             ([str(r1), str(other)], "predicted different target sets"),
             ([str(r1), str(r1), "--prior", "bogus"], "--prior bogus")]
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "target_probs.npz").write_bytes(b"not a zip")
    cases.append(([str(r1), str(tmp_path / "broken")], "not a target_probs file"))
    for args, message in cases:
        res = CliRunner().invoke(app, ["agreement", *args, "-o", str(out)])
        assert res.exit_code == 2 and message in res.output, (args, res.output)
        assert not out.exists()


def test_cli_checks_the_estimate_on_a_labeled_set(tiny_roberta_dir, tmp_path):
    """Two tiny runs of one recipe with other seeds: --data predicts the labeled set with each
    and reports their accuracy, the estimate there and its gap."""
    csvs = {"train": write_csv(tmp_path / "train.csv", tiny_labeled_rows(4)),
            "dev": write_csv(tmp_path / "dev.csv", tiny_labeled_rows(2)),
            "target": write_csv(tmp_path / "target.csv", [{"text": r["text"].upper()} for r in tiny_labeled_rows(1)])}
    runs = []
    for seed in (1, 2):
        cfg = load_config(None, [*NO_AUGMENT, *tiny_overrides(tiny_roberta_dir, csvs, tmp_path / "runs",
                                                              name=f"s{seed}", seed=seed)])
        run(cfg)
        runs.append(tmp_path / "runs" / f"s{seed}")
    out = tmp_path / "agreement.json"
    res = CliRunner().invoke(app, ["agreement", *map(str, runs), "--data", str(csvs["dev"]), "-o", str(out)])
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())
    dev = got["data"]
    assert dev["rows"] == 32 and len(dev["accuracy"]) == 2
    for r, acc in zip(runs, dev["accuracy"]):  # each run's accuracy is the one its metrics.json reports
        assert acc == pytest.approx(json.loads((r / "metrics.json").read_text())["val_accuracy"], abs=1 / 32 + 1e-9)
    assert dev["gap"] == pytest.approx(dev["estimated_accuracy"] - np.mean(dev["accuracy"]))
    assert got["target_estimate_minus_gap"] == pytest.approx(got["target"]["estimated_accuracy"] - dev["gap"])
    assert got["target"]["rows"] == 16
    assert f"(gap {100 * dev['gap']:+.2f} points)" in res.output
