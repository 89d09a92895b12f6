"""Loading labeled/unlabeled sets from every supported form, the errors a user sees, and
``prepare_data`` (seeded stratified split, length filter, cleaning of every set)."""

from __future__ import annotations

import json
import pickle
from collections import Counter

import datasets
import numpy as np
import pandas as pd
import pytest

from conftest import write_csv
from lorafit.config import AG_NEWS_LABELS, load_config
from lorafit.data import DataError, load_labeled, load_table, load_unlabeled, prepare_data, stratified_split

LABELS = list(AG_NEWS_LABELS)
TEXTS = [
    "Talks resume in Geneva, envoys say",
    "Striker scores twice in the cup final",
    "Shares rise as the bank reports profit",
    "New chip doubles battery life",
    "Election results delayed after protests",
    "Tennis champion withdraws with an injury",
    "Oil prices climb after output cut",
    "Probe launched to study Jupiter's moons",
]
IDS = [0, 1, 2, 3, 0, 1, 2, 3]


def _assert_labeled(ds: datasets.Dataset, texts=TEXTS, ids=IDS):
    assert isinstance(ds, datasets.Dataset)
    assert ds.column_names == ["text", "label"]
    assert ds["text"] == list(texts)
    assert ds["label"] == list(ids)
    assert all(isinstance(x, int) for x in ds["label"])


def _df(text_col="text", label_col="label"):
    return pd.DataFrame({text_col: TEXTS, label_col: IDS})


# ------------------------------------------------------------------ formats


def test_csv(tmp_path):
    p = write_csv(tmp_path / "train.csv", [{"text": t, "label": i} for t, i in zip(TEXTS, IDS)])
    _assert_labeled(load_labeled(str(p), labels=LABELS))


def test_tsv_keeps_commas_and_quotes_in_text(tmp_path):
    p = tmp_path / "train.tsv"
    p.write_text("text\tlabel\n" + "".join(f"{t}\t{i}\n" for t, i in zip(TEXTS, IDS)), encoding="utf-8")
    ds = load_labeled(str(p), labels=LABELS)
    _assert_labeled(ds)
    assert ds["text"][0] == "Talks resume in Geneva, envoys say"


def test_csv_with_utf8_bom(tmp_path):
    p = tmp_path / "bom.csv"
    p.write_bytes(b"\xef\xbb\xbftext,label\ncaf\xc3\xa9 opens,2\n")
    ds = load_labeled(str(p), labels=LABELS)
    assert ds["text"] == ["caf\u00e9 opens"] and ds["label"] == [2]


def test_jsonl(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps({"text": t, "label": i}) + "\n" for t, i in zip(TEXTS, IDS)), encoding="utf-8")
    _assert_labeled(load_labeled(str(p), labels=LABELS))


def test_json_array(tmp_path):
    p = tmp_path / "train.json"
    p.write_text(json.dumps([{"text": t, "label": i} for t, i in zip(TEXTS, IDS)]), encoding="utf-8")
    _assert_labeled(load_labeled(str(p), labels=LABELS))


def test_parquet(tmp_path):
    p = tmp_path / "train.parquet"
    _df().to_parquet(p)
    _assert_labeled(load_labeled(str(p), labels=LABELS))


def test_pickled_dataset_like_competition_test_set(tmp_path):
    """The competition's test_unlabelled.pkl is a pickled datasets.Dataset with a text column."""
    p = tmp_path / "test_unlabelled.pkl"
    with open(p, "wb") as f:
        pickle.dump(datasets.Dataset.from_dict({"text": TEXTS}), f)
    ds = load_unlabeled(str(p), allow_pickle=True)
    assert ds.column_names == ["text"]
    assert ds["text"] == TEXTS  # row order is the submission ID


def test_pickled_labeled_dataset(tmp_path):
    p = tmp_path / "train.pkl"
    with open(p, "wb") as f:
        pickle.dump(datasets.Dataset.from_dict({"text": TEXTS, "label": IDS}), f)
    _assert_labeled(load_labeled(str(p), labels=LABELS, allow_pickle=True))


def test_pickled_dataframe(tmp_path):
    p = tmp_path / "train.pickle"
    _df().to_pickle(p)
    _assert_labeled(load_labeled(str(p), labels=LABELS, allow_pickle=True))


@pytest.mark.parametrize("name", ["train.pkl", "train.pickle"])
def test_pickle_refused_without_allow_pickle(tmp_path, name):
    p = tmp_path / name
    _df().to_pickle(p)
    with pytest.raises(DataError) as e:
        load_labeled(str(p), labels=LABELS)
    assert "allow_pickle" in str(e.value)
    assert name in str(e.value)
    with pytest.raises(DataError, match="allow_pickle"):
        load_unlabeled(str(p))


def test_pickle_of_another_type_is_an_error(tmp_path):
    p = tmp_path / "odd.pkl"
    with open(p, "wb") as f:
        pickle.dump({"text": TEXTS}, f)
    with pytest.raises(DataError, match=r"odd\.pkl.*dict"):
        load_labeled(str(p), labels=LABELS, allow_pickle=True)


def test_save_to_disk_dataset(tmp_path):
    d = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": TEXTS, "label": IDS}).save_to_disk(str(d))
    _assert_labeled(load_labeled(str(d), labels=LABELS))


def test_save_to_disk_datasetdict_with_split(tmp_path):
    d = tmp_path / "dd"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": TEXTS, "label": IDS}),
        "test": datasets.Dataset.from_dict({"text": TEXTS[:2][::-1], "label": IDS[:2][::-1]}),
    }).save_to_disk(str(d))
    _assert_labeled(load_labeled(f"{d}:train", labels=LABELS))
    _assert_labeled(load_labeled(f"{d}:test", labels=LABELS), TEXTS[:2][::-1], IDS[:2][::-1])
    # the split can also come from the split argument (data.source_split)
    _assert_labeled(load_labeled(str(d), labels=LABELS, split="test"), TEXTS[:2][::-1], IDS[:2][::-1])
    assert load_unlabeled(f"{d}:test")["text"] == TEXTS[:2][::-1]
    # ambiguous or unknown split: the error names the folder and the available splits
    with pytest.raises(DataError) as e:
        load_labeled(str(d), labels=LABELS)
    assert str(d) in str(e.value) and "test" in str(e.value) and "train" in str(e.value)
    with pytest.raises(DataError, match=r"no split 'dev'.*\['test', 'train'\]"):
        load_labeled(f"{d}:dev", labels=LABELS)


def test_folder_that_is_not_a_saved_dataset(tmp_path):
    d = tmp_path / "plain_folder"
    d.mkdir()
    (d / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="save_to_disk") as e:
        load_labeled(str(d), labels=LABELS)
    assert "plain_folder" in str(e.value)


def test_bundled_sample_data():
    ds = load_labeled("pkg://sample/train.csv", labels=LABELS)
    assert len(ds) == 480
    assert Counter(ds["label"]) == {0: 120, 1: 120, 2: 120, 3: 120}
    assert all(t.strip() for t in ds["text"])
    target = load_unlabeled("pkg://sample/target.csv")
    assert len(target) == 128 and target.column_names == ["text"]


def test_configurable_column_names(tmp_path):
    rows = [{"id": k, "headline": t, "category": i} for k, (t, i) in enumerate(zip(TEXTS, IDS))]
    p = write_csv(tmp_path / "news.csv", rows)
    _assert_labeled(load_labeled(str(p), text_column="headline", label_column="category", labels=LABELS))
    assert load_unlabeled(str(p), text_column="headline")["text"] == TEXTS


def test_string_labels_mapped_through_label_names(tmp_path):
    names = ["World", "Sports", "Business", "Sci/Tech", "sports", " Sci/Tech ", "WORLD", "2"]
    p = write_csv(tmp_path / "named.csv", [{"text": t, "label": n} for t, n in zip(TEXTS, names)])
    ds = load_labeled(str(p), labels=LABELS)
    assert ds["label"] == [0, 1, 2, 3, 1, 3, 0, 2]
    # custom label sets work the same way
    p2 = write_csv(tmp_path / "pos_neg.csv", [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}])
    assert load_labeled(str(p2), labels=["neg", "pos"])["label"] == [1, 0]


def test_numeric_label_names_map_by_name(tmp_path):
    """Star ratings: label names '1'..'5'. A CSV cell is always a string, and a string label is
    mapped through data.labels, so '1' is class 0 and '5' is class 4 (not id 1 / out of range)."""
    stars = ["1", "2", "3", "4", "5"]
    p = write_csv(tmp_path / "stars.csv", [{"text": f"review {k}", "label": s} for k, s in enumerate(["1", "5", "3", "2", "4"])])
    assert load_labeled(str(p), labels=stars)["label"] == [0, 4, 2, 1, 3]


# ------------------------------------------------------------------ errors


def test_missing_file(tmp_path):
    missing = tmp_path / "nope" / "train.csv"
    with pytest.raises(DataError) as e:
        load_labeled(str(missing), labels=LABELS)
    msg = str(e.value)
    assert str(missing) in msg
    assert "no such file" in msg.lower()


def test_missing_relative_file_is_not_treated_as_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def no_hub(*a, **k):  # pragma: no cover - the point is that it is never called
        raise AssertionError("a local-looking path must not go to the Hub")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    with pytest.raises(DataError, match=r"train\.csv.*no such file"):
        load_labeled("train.csv", labels=LABELS)
    with pytest.raises(DataError, match="no such file"):
        load_labeled("./data/train", labels=LABELS)


def test_unknown_suffix(tmp_path):
    p = tmp_path / "train.xlsx"
    p.write_bytes(b"PK\x03\x04 not really a spreadsheet")
    with pytest.raises(DataError) as e:
        load_labeled(str(p), labels=LABELS)
    msg = str(e.value)
    assert str(p) in msg and ".xlsx" in msg
    assert ".csv" in msg and ".parquet" in msg  # says what is accepted


def test_missing_text_column_lists_available_columns(tmp_path):
    p = write_csv(tmp_path / "cols.csv", [{"headline": t, "label": i} for t, i in zip(TEXTS, IDS)])
    with pytest.raises(DataError) as e:
        load_labeled(str(p), labels=LABELS)
    msg = str(e.value)
    assert str(p) in msg
    assert "'text'" in msg
    assert "headline" in msg and "label" in msg
    assert "data.text_column" in msg


def test_missing_label_column_lists_available_columns(tmp_path):
    p = write_csv(tmp_path / "cols.csv", [{"text": t, "category": i} for t, i in zip(TEXTS, IDS)])
    with pytest.raises(DataError) as e:
        load_labeled(str(p), labels=LABELS)
    msg = str(e.value)
    assert str(p) in msg and "'label'" in msg and "category" in msg
    assert "data.label_column" in msg


def test_missing_target_text_column(tmp_path):
    p = write_csv(tmp_path / "target.csv", [{"body": t} for t in TEXTS])
    with pytest.raises(DataError) as e:
        load_unlabeled(str(p))
    assert str(p) in str(e.value) and "body" in str(e.value) and "data.target_text_column" in str(e.value)


@pytest.mark.parametrize("blank", ["", "   "])
def test_empty_text_names_the_row(tmp_path, blank):
    rows = [{"text": t, "label": i} for t, i in zip(TEXTS, IDS)]
    rows[5]["text"] = blank
    p = write_csv(tmp_path / "gaps.csv", rows)
    with pytest.raises(DataError) as e:
        load_labeled(str(p), labels=LABELS)
    msg = str(e.value)
    assert str(p) in msg
    assert "row 5" in msg
    assert "empty" in msg


def test_missing_text_in_parquet_names_the_row(tmp_path):
    df = _df()
    df.loc[3, "text"] = None
    p = tmp_path / "gaps.parquet"
    df.to_parquet(p)
    with pytest.raises(DataError, match=r"row 3"):
        load_labeled(str(p), labels=LABELS)


def test_non_utf8_names_the_line(tmp_path):
    p = tmp_path / "latin1.csv"
    p.write_bytes("text,label\nfine row,0\nanother fine row,1\n".encode() + "caf\u00e9 au lait,2\n".encode("latin-1"))
    with pytest.raises(DataError) as e:
        load_labeled(str(p), labels=LABELS)
    msg = str(e.value)
    assert str(p) in msg
    assert "line 4" in msg  # header is line 1
    assert "UTF-8" in msg


@pytest.mark.parametrize("bad", ["7", "4", "-1", "Politics"])
def test_label_out_of_range_names_row_and_value(tmp_path, bad):
    rows = [{"text": t, "label": i} for t, i in zip(TEXTS, IDS)]
    rows[6]["label"] = bad
    p = write_csv(tmp_path / "labels.csv", rows)
    with pytest.raises(DataError) as e:
        load_labeled(str(p), labels=LABELS)
    msg = str(e.value)
    assert str(p) in msg
    assert "row 6" in msg
    assert bad in msg
    assert "0..3" in msg


def test_integer_label_out_of_range_in_parquet(tmp_path):
    df = _df()
    df.loc[2, "label"] = 9
    p = tmp_path / "labels.parquet"
    df.to_parquet(p)
    with pytest.raises(DataError, match=r"row 2 has label 9\b"):
        load_labeled(str(p), labels=LABELS)


def test_hub_id_offline_says_to_use_a_local_copy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # so 'ag_news' is not a local folder

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'ag_news' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as e:
        load_labeled("ag_news", labels=LABELS)
    msg = str(e.value)
    assert "ag_news" in msg
    assert "offline" in msg
    assert "local copy" in msg


def test_hub_id_with_split_is_passed_through(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = []

    def fake_load_dataset(repo_id, split=None, **kwargs):
        calls.append((repo_id, split))
        return datasets.Dataset.from_dict({"text": TEXTS, "label": IDS})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    _assert_labeled(load_labeled("ag_news:test", labels=LABELS))
    _assert_labeled(load_labeled("fancyzhx/ag_news", labels=LABELS, split="train"))
    assert calls == [("ag_news", "test"), ("fancyzhx/ag_news", "train")]


def test_empty_file(tmp_path):
    p = tmp_path / "empty.csv"
    p.write_text("\n")
    with pytest.raises(DataError, match="empty"):
        load_labeled(str(p), labels=LABELS)


def test_load_table_returns_native_objects(tmp_path):
    p = write_csv(tmp_path / "t.csv", [{"text": t, "label": i} for t, i in zip(TEXTS, IDS)])
    table = load_table(str(p))
    assert isinstance(table, pd.DataFrame) and list(table.columns) == ["text", "label"] and len(table) == 8


# ------------------------------------------------------------------ prepare_data


def _uneven_rows() -> list[dict]:
    """40 rows: class sizes 8, 16, 4, 12 (so proportional hold-out differs per class)."""
    sizes = {0: 8, 1: 16, 2: 4, 3: 12}
    return [{"text": f"class {c} sample number {k} with some words", "label": c}
            for c, n in sizes.items() for k in range(n)]


def test_stratified_split_is_seeded_and_proportional():
    labels = np.array([0] * 20 + [1] * 40 + [2] * 8 + [3] * 12)
    keep, held = stratified_split(labels, 0.25, seed=7)
    assert sorted(np.concatenate([keep, held]).tolist()) == list(range(len(labels)))  # a partition
    assert not set(keep) & set(held)
    assert np.bincount(labels[held], minlength=4).tolist() == [5, 10, 2, 3]
    keep2, held2 = stratified_split(labels, 0.25, seed=7)
    assert held.tolist() == held2.tolist() and keep.tolist() == keep2.tolist()
    _, held3 = stratified_split(labels, 0.25, seed=8)
    assert held.tolist() != held3.tolist()
    assert np.bincount(labels[held3], minlength=4).tolist() == [5, 10, 2, 3]


def test_stratified_split_keeps_one_row_per_class_on_each_side():
    labels = np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2])
    keep, held = stratified_split(labels, 0.01, seed=0)
    assert set(labels[held]) == {0, 1}  # a class with 2+ rows always reaches validation
    assert set(labels[keep]) == {0, 1, 2}


def _cfg(tmp_path, *overrides):
    return load_config(None, [f"output_dir={tmp_path / 'runs'}", *overrides])


def test_prepare_data_split_is_seeded_and_per_class_proportional(tmp_path):
    src = write_csv(tmp_path / "src.csv", _uneven_rows())
    a = prepare_data(_cfg(tmp_path, f"data.source={src}", "data.val_fraction=0.25", "train.seed=3"))
    assert a.stats["source_rows"] == 40
    assert a.stats["val_label_counts"] == [2, 4, 1, 3]
    assert a.stats["train_label_counts"] == [6, 12, 3, 9]
    assert (len(a.train), len(a.val)) == (30, 10)
    assert not set(a.train["text"]) & set(a.val["text"])
    assert a.target is None
    b = prepare_data(_cfg(tmp_path, f"data.source={src}", "data.val_fraction=0.25", "train.seed=3"))
    assert a.val["text"] == b.val["text"] and a.train["text"] == b.train["text"]
    c = prepare_data(_cfg(tmp_path, f"data.source={src}", "data.val_fraction=0.25", "train.seed=4"))
    assert set(c.val["text"]) != set(a.val["text"])
    assert c.stats["val_label_counts"] == [2, 4, 1, 3]


def test_prepare_data_length_filter_counts(tmp_path):
    rows = [
        {"text": "one two", "label": 0},                                  # 2 words: dropped (min 3)
        {"text": "one two three", "label": 0},                            # kept
        {"text": "Hello &lt;b&gt; &lt;/b&gt; world", "label": 1},        # 2 words once cleaned: dropped
        {"text": "a b c d e f g h", "label": 1},                          # 8 words: kept (max 8)
        {"text": "a b c d e f g h i", "label": 2},                        # 9 words: dropped
        {"text": "four words are here", "label": 2},                      # kept
        {"text": "Iran #39;s talks resume", "label": 3},                  # kept
        {"text": "<p>three words here</p>", "label": 3},                  # kept
    ] + [{"text": f"filler text number {k}", "label": k % 4} for k in range(8)]
    src = write_csv(tmp_path / "src.csv", rows)
    dev = write_csv(tmp_path / "dev.csv", [{"text": "ok", "label": 0}])  # validation is never length-filtered
    prep = prepare_data(_cfg(tmp_path, f"data.source={src}", f"data.validation={dev}",
                             "clean.min_words=3", "clean.max_words=8"))
    assert prep.stats["source_rows"] == 16
    assert prep.stats["dropped_by_length"] == 3
    assert len(prep.train) == 13
    assert "one two" not in prep.train["text"]
    assert "a b c d e f g h" in prep.train["text"]
    assert prep.val["text"] == ["ok"]


def test_prepare_data_cleans_train_val_and_target(tmp_path):
    src = write_csv(tmp_path / "src.csv", [
        {"text": "Iran #39;s talks  resume", "label": 0},
        {"text": "Pilots OK  #36;265 Mln deal", "label": 2},
        {"text": "&lt;b&gt;Striker&lt;/b&gt; scores", "label": 1},
        {"text": "New chip\\doubles battery life", "label": 3},
    ])
    dev = write_csv(tmp_path / "dev.csv", [
        {"text": "quot;Ceasefire now!quot;  say envoys", "label": 0},
        {"text": "Oil &amp; gas #36;50 rally", "label": 2},
    ])
    target = write_csv(tmp_path / "target.csv", [
        {"text": "AT&amp;T   profit <i>rises</i>"},
        {"text": "Probe #39;s launch\\delayed"},
        {"text": "Mars rover finds water ice today"},
    ])
    prep = prepare_data(_cfg(tmp_path, f"data.source={src}", f"data.validation={dev}", f"data.target={target}"))
    assert prep.train["text"] == ["Iran's talks resume", "Pilots OK $265 Mln deal", "Striker scores",
                                  "New chip doubles battery life"]
    assert prep.val["text"] == ['"Ceasefire now!" say envoys', "Oil & gas $50 rally"]
    assert prep.val["label"] == [0, 2]
    assert prep.target["text"] == ["AT&T profit rises", "Probe's launch delayed", "Mars rover finds water ice today"]
    assert prep.stats["target_rows"] == 3
    # truncation applies to the target set too (identical at training and prediction time)
    prep = prepare_data(_cfg(tmp_path, f"data.source={src}", f"data.validation={dev}", f"data.target={target}",
                             "clean.truncate_words=2"))
    assert prep.target["text"] == ["AT&T profit", "Probe's launch", "Mars rover"]
    assert prep.val["text"] == ['"Ceasefire now!"', "Oil &"]


def test_prepare_data_without_cleaning_keeps_text(tmp_path):
    src = write_csv(tmp_path / "src.csv", [{"text": "Iran #39;s talks", "label": 0}, {"text": "b c d", "label": 1}])
    dev = write_csv(tmp_path / "dev.csv", [{"text": "x &amp; y", "label": 1}])
    prep = prepare_data(_cfg(tmp_path, f"data.source={src}", f"data.validation={dev}", "clean.enabled=false",
                             "data.labels=[a,b]"))
    assert prep.train["text"] == ["Iran #39;s talks", "b c d"]
    assert prep.val["text"] == ["x &amp; y"]


def test_prepare_data_max_samples_are_stratified(tmp_path):
    rows = [{"text": f"text {c} {k} words", "label": c} for c in range(4) for k in range(20)]
    src = write_csv(tmp_path / "src.csv", rows)
    prep = prepare_data(_cfg(tmp_path, f"data.source={src}", "data.val_fraction=0.25",
                             "data.max_train_samples=20", "data.max_val_samples=8"))
    assert len(prep.train) == 20 and prep.stats["train_label_counts"] == [5, 5, 5, 5]
    assert len(prep.val) == 8 and prep.stats["val_label_counts"] == [2, 2, 2, 2]


def test_prepare_data_error_names_the_validation_file(tmp_path):
    src = write_csv(tmp_path / "src.csv", [{"text": "a b", "label": 0}, {"text": "c d", "label": 1}])
    dev = write_csv(tmp_path / "dev.csv", [{"text": "a b", "label": 0}, {"text": "c d", "label": 5}])
    with pytest.raises(DataError) as e:
        prepare_data(_cfg(tmp_path, f"data.source={src}", f"data.validation={dev}"))
    assert "dev.csv" in str(e.value) and "row 1" in str(e.value)


@pytest.mark.parametrize("cap", [10, 14, 29])
def test_max_train_samples_is_an_exact_cap(tmp_path, cap):
    """3 classes x 10 rows: a cap of n gives n rows (per-class counts within one of each other),
    never more than asked for and not fewer because of per-class rounding."""
    rows = [{"text": f"text {c} {k} words", "label": c} for c in range(3) for k in range(10)]
    dev = write_csv(tmp_path / "dev.csv", [{"text": "a b", "label": c} for c in range(3)])
    src = write_csv(tmp_path / "src.csv", rows)
    prep = prepare_data(_cfg(tmp_path, f"data.source={src}", f"data.validation={dev}",
                             "data.labels=[a,b,c]", f"data.max_train_samples={cap}"))
    assert len(prep.train) == cap
    counts = prep.stats["train_label_counts"]
    assert sum(counts) == cap and max(counts) - min(counts) <= 1


# ------------------------------------------------------------------ labels inferred (data.labels null)


def test_labels_inferred_from_names_ids_and_a_class_label_feature(tmp_path):
    """data.labels null: a column of names gives its distinct names sorted (names differing only in
    case are one class, as labels map case-insensitively); integer ids (a CSV's digits, a Parquet
    file's ints) give "0".."max"; a datasets ClassLabel feature gives its names."""
    from lorafit.data import read_labeled

    names = write_csv(tmp_path / "names.csv", [{"text": f"t{i}", "label": y} for i, y in
                                               enumerate(["pos", "neg", " Pos", "neutral", "neg"])])
    ds, labels = read_labeled(str(names))
    assert labels == ["neg", "neutral", "pos"] and ds["label"] == [2, 0, 2, 1, 0]
    ds, labels = read_labeled(str(write_csv(tmp_path / "ids.csv", [{"text": TEXTS[i], "label": y}
                                                                   for i, y in enumerate(IDS)])))
    assert labels == ["0", "1", "2", "3"] and ds["label"] == IDS
    _df().to_parquet(tmp_path / "ids.parquet")
    assert read_labeled(str(tmp_path / "ids.parquet"))[1] == ["0", "1", "2", "3"]
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    datasets.Dataset.from_dict({"text": ["a", "b"], "label": [1, 1]}, features=features).save_to_disk(
        str(tmp_path / "hub"))
    assert read_labeled(str(tmp_path / "hub"))[1] == ["neg", "pos"]  # the feature's names, both, not the data's one
    assert read_labeled(str(names), labels=["pos", "neg", "neutral"])[1] == ["pos", "neg", "neutral"]  # given: as is


@pytest.mark.parametrize("values, says", [
    (["pos", "neg", 1], "row 2 (line 4 of the file) has label '1', an integer id, but row 0 (line 2 of the file) has "
                        "'pos', a class name"),
    ([0, 1, "neg"], "row 2 (line 4 of the file) has label 'neg', a class name, but row 0 (line 2 of the file) has '0'"),
    (["pos", "", "neg"], "row 1 (line 3 of the file) has no label (empty cell)"),
    ([0, -1, 1], "row 1 (line 3 of the file) has label '-1', neither a class name nor an id"),
    ([1, 2, 2], "the integer labels go up to 2, but no row has label 0"),
])
def test_labels_that_cannot_be_inferred_are_one_line_naming_file_and_row(tmp_path, values, says):
    from lorafit.data import read_labeled

    p = write_csv(tmp_path / "mixed.csv", [{"text": f"text {i}", "label": v} for i, v in enumerate(values)])
    with pytest.raises(DataError) as e:
        read_labeled(str(p))
    msg = str(e.value)
    assert msg.startswith(f"{p}: ") and says in msg and "set data.labels" in msg and "\n" not in msg


def test_resolve_labels_fills_the_config_and_checks_the_prior(tmp_path):
    from lorafit.config import ConfigError
    from lorafit.data import resolve_labels

    src = write_csv(tmp_path / "src.csv", [{"text": f"t{i}", "label": y} for i, y in enumerate("bacbac")])
    cfg = _cfg(tmp_path, f"data.source={src}")
    assert cfg.data.labels is None and resolve_labels(cfg).data.labels == ["a", "b", "c"]
    given = _cfg(tmp_path, f"data.source={src}", "data.labels=[c,b,a]")
    assert resolve_labels(given) is given
    prep = prepare_data(_cfg(tmp_path, f"data.source={src}", "data.val_fraction=0.5"))
    assert prep.labels == ["a", "b", "c"] and prep.stats["labels_inferred"] is True
    assert prep.config(cfg).data.labels == ["a", "b", "c"]
    with pytest.raises(ConfigError) as e:  # a prior of 2 classes for the 3 inferred
        resolve_labels(_cfg(tmp_path, f"data.source={src}", "predict.prior=[0.5,0.5]"))
    assert str(e.value) == (f"config key 'predict.prior': has 2 proportions but data.labels has 3 classes (data.labels "
                            f"is not set: inferred from data.source '{src}' as ['a', 'b', 'c']); set data.labels")
    with pytest.raises(DataError) as e:  # a source that cannot be read: the one line says why it was read
        resolve_labels(_cfg(tmp_path, "data.source=lorafit-test/no-such-set"))
    msg = str(e.value)
    assert msg.startswith("data.labels is not set, and the class names could not be read from data.source: could "
                          "not load the Hub dataset 'lorafit-test/no-such-set'") and msg.endswith("Or set data.labels.")
    assert "\n" not in msg
