"""The run folder's typed records: metrics.json as RunMetrics (with one RoundRecord per self-training
round), written and read by lorafit.runs; older files (no schema_version) still read."""

from __future__ import annotations

import json

import pytest

from lorafit.errors import RunStateError
from lorafit.runs import SCHEMA_VERSION, RoundRecord, RunFacts, RunMetrics, read_metrics, write_metrics

# a metrics.json as lorafit wrote it before schema_version existed (values cut short)
OLDER = {
    "val_accuracy": 0.75, "val_macro_f1": 0.7, "val": {"accuracy": 0.75, "per_class": {"a": {"f1": 0.7}}},
    "budget": {"trainable": 1000, "total": 50000, "max_trainable": 2000, "within_budget": True},
    "data": {"train_rows": 96, "val_rows": 32}, "train_rows": 104, "augment": {},
    "selftrain": [{"confident_per_class": [3, 5], "cap": 3, "kept_per_class": [3, 3], "kept": 6, "round": 1,
                   "mode": "student", "gold_rows": 96, "train_rows": 102, "target_changed": 2,
                   "val_accuracy": 0.8, "teacher_val_accuracy": 0.75, "teacher_val_accuracy_per_adapter": [0.7, 0.8],
                   "teacher": "first teacher"}],
    "train_seconds": 12.5, "target": {"rows": 16, "predicted_distribution": [8, 8], "prior": {"mode": "none"}},
    "stage_seconds": {"data": 0.5, "train": 12.6}, "environment": {"torch": "2.x"}, "wall_seconds": 20.0,
}


def test_an_older_metrics_json_reads_as_version_0_with_its_values(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(OLDER))
    m = read_metrics(tmp_path)
    assert m.schema_version == 0 and SCHEMA_VERSION == 1
    assert (m.val_accuracy, m.val_macro_f1, m.train_rows, m.wall_seconds) == (0.75, 0.7, 104, 20.0)
    assert m.budget["trainable"] == 1000 and m.target["predicted_distribution"] == [8, 8] and m.ensemble is None
    (r,) = m.selftrain
    assert isinstance(r, RoundRecord) and (r.round, r.mode, r.kept, r.kept_per_class) == (1, "student", 6, [3, 3])
    assert r.teacher_val_accuracy == 0.75 and r.proxy_accuracy is None
    assert r.teacher_val_accuracy_per_adapter == [0.7, 0.8]  # a key the record does not type is kept
    # written again, it keeps its shape: the same keys and values, plus the version
    write_metrics(tmp_path, m)
    again = json.loads((tmp_path / "metrics.json").read_text())
    assert again == {**OLDER, "schema_version": 0}


def test_a_round_without_mode_is_a_continue_round_and_absent_keys_stay_absent():
    r = RoundRecord.model_validate({"round": 2, "kept_per_class": [1, 1], "kept": 2})
    assert r.mode == "continue" and r.target_changed is None
    assert r.to_dict() == {"round": 2, "kept_per_class": [1, 1], "kept": 2}


def test_facts_before_evaluation_are_written_with_the_version():
    facts = RunFacts(budget={"trainable": 5}, train_rows=3)
    assert facts.to_dict() == {"schema_version": SCHEMA_VERSION, "budget": {"trainable": 5}, "train_rows": 3}
    assert not isinstance(facts, RunMetrics)


def test_absent_damaged_and_foreign_metrics_files(tmp_path):
    assert read_metrics(tmp_path) is None  # not finished
    path = tmp_path / "metrics.json"
    path.write_text('{"val_accuracy": 0.5, "val_mac')
    with pytest.raises(RunStateError, match=r"metrics\.json: damaged"):
        read_metrics(tmp_path)
    path.write_text(json.dumps({"accuracy": 0.5, "macro_f1": 0.4}))  # `lorafit evaluate -o` output, not a run's
    with pytest.raises(RunStateError, match=r"metrics\.json: not a run's results \(val_accuracy: Field required\)"):
        read_metrics(tmp_path)
    path.write_text(json.dumps({**OLDER, "selftrain": [{"kept": 2}]}))  # a round without its number
    with pytest.raises(RunStateError, match=r"selftrain\.0\.round"):
        read_metrics(tmp_path)
