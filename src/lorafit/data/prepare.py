"""Data stage of a run: load, clean, filter by length, split train/validation, load the target."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import datasets
import numpy as np

from lorafit.config import Config, with_labels
from lorafit.data.clean import clean_text, clip_text, word_count
from lorafit.data.io import (DataError, describe_spec, infer_label_names, load_labeled, load_table, load_unlabeled,
                             read_labeled)

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    train: datasets.Dataset
    val: datasets.Dataset
    target: Optional[datasets.Dataset]
    stats: dict = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)  # the class names: data.labels, or inferred from the source

    def config(self, cfg: Config) -> Config:
        """``cfg`` with the class names of this data in ``data.labels`` (those inferred from the
        source when the config gives none; ``cfg`` itself when it does)."""
        return with_labels(cfg, self.labels, f"data.source '{cfg.data.source}'")


def stratified_split(labels, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out): ``fraction`` of every class held out, seeded, at least one
    row per class on each side where the class has two or more rows."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n = int(round(len(idx) * fraction))
        if len(idx) >= 2:
            n = min(max(n, 1), len(idx) - 1)
        held.append(idx[:n])
        keep.append(idx[n:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def clean_dataset(ds: datasets.Dataset, cfg: Config) -> datasets.Dataset:
    """Apply the configured cleaning to the ``text`` column (the same function predict uses)."""
    texts = [clip_text(t, cfg.model.max_length) for t in ds["text"]]  # cleaning a 50 MB line is wasted work
    tw = cfg.clean.truncate_words
    if cfg.clean.enabled:
        texts = [clean_text(t, tw) for t in texts]
    elif tw is not None:
        texts = [" ".join(t.split()[:tw]) for t in texts]
    cols = ds.to_dict()
    cols["text"] = texts
    return datasets.Dataset.from_dict(cols, features=ds.features)


def filter_length(ds: datasets.Dataset, min_words: int, max_words: Optional[int]) -> tuple[datasets.Dataset, int]:
    counts = np.array([word_count(t) for t in ds["text"]])
    ok = counts >= min_words
    if max_words is not None:
        ok &= counts <= max_words
    return ds.select(np.flatnonzero(ok)), int((~ok).sum())


def subsample(ds: datasets.Dataset, n: Optional[int], seed: int) -> datasets.Dataset:
    """Exactly ``n`` rows, stratified: per-class quotas by largest remainder, seeded."""
    if n is None or n >= len(ds):
        return ds
    labels = np.asarray(ds["label"])
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n / len(ds)
    take = np.floor(quota).astype(int)
    for j in np.argsort(-(quota - take), kind="stable")[: n - int(take.sum())]:
        take[j] += 1
    rng = np.random.default_rng(seed)
    picked = []
    for c, t in zip(classes, take):
        rows = np.flatnonzero(labels == c)
        rng.shuffle(rows)
        picked.append(rows[:t])
    return ds.select(np.sort(np.concatenate(picked)))


def deduplicate(ds: datasets.Dataset, labels: list, where: str) -> tuple[datasets.Dataset, dict]:
    """``ds`` with one row per text: repeated rows with the same label keep their first copy; a text
    given with two or more labels is dropped altogether (every copy: which label is right cannot be
    told) and reported, with an example, in a warning. Rows are compared after cleaning, and a
    ``row`` column, if present, is each row's index in the file (for the warning); it is removed.
    Returns the set and the counts ``duplicate_rows_dropped``, ``conflicting_texts`` and
    ``conflicting_rows_dropped``.

    Done before the train/validation split, so no text is on both sides of it (a set holding each
    row three times had 282 of its 288 validation rows in training too)."""
    texts, ids = list(ds["text"]), list(ds["label"])
    rows = list(ds["row"]) if "row" in ds.column_names else range(len(ds))
    first: dict[str, int] = {}
    seen_labels: dict[str, dict[int, int]] = {}  # text -> label -> first row with it
    for i, (t, y) in enumerate(zip(texts, ids)):
        first.setdefault(t, i)
        seen_labels.setdefault(t, {}).setdefault(int(y), i)
    conflicting = {t for t, by in seen_labels.items() if len(by) > 1}
    keep = sorted(i for t, i in first.items() if t not in conflicting)
    conflict_rows = sum(1 for t in texts if t in conflicting)
    stats = {"duplicate_rows_dropped": len(ds) - len(keep) - conflict_rows,
             "conflicting_texts": len(conflicting), "conflicting_rows_dropped": conflict_rows}
    if conflicting:
        t = min(conflicting, key=lambda x: first[x])
        example = " and ".join(f"row {rows[i]} as {labels[y]!r}" for y, i in sorted(seen_labels[t].items(),
                                                                                   key=lambda kv: kv[1])[:2])
        log.warning("%s: %d text(s) are given with two or more labels (e.g. %r: %s); all %d of their rows were "
                    "dropped", where, len(conflicting), t[:80], example, conflict_rows)
    if stats["duplicate_rows_dropped"]:
        log.info("%s: %d duplicate row(s) dropped (same text and label as an earlier row)", where,
                 stats["duplicate_rows_dropped"])
    out = ds.select(keep)
    return (out.remove_columns("row") if "row" in out.column_names else out), stats


def prepare_data(cfg: Config) -> PreparedData:
    """Load and clean the source, validation and target sets described by ``cfg.data``; the
    source's duplicate rows and texts with conflicting labels are dropped before the split
    (:func:`deduplicate`, counted in ``stats``)."""
    d = cfg.data
    source, labels = read_labeled(d.source, d.text_column, d.label_column, d.labels, d.source_split, d.allow_pickle)
    stats = {"source_rows": len(source)}
    if d.labels is None:  # the run's config.yaml gets them (PreparedData.config)
        stats["labels_inferred"] = True
        log.info("labels inferred from data.source '%s': %s (set data.labels to choose them)", d.source, labels)
    source = clean_dataset(source.add_column("row", list(range(len(source)))), cfg)
    source, dropped = filter_length(source, cfg.clean.min_words, cfg.clean.max_words)
    stats["dropped_by_length"] = dropped
    if len(source) == 0:
        raise DataError(f"no row of data.source '{d.source}' is left after the length filter: all "
                        f"{stats['source_rows']:,} have fewer than clean.min_words ({cfg.clean.min_words}) or more "
                        f"than clean.max_words ({cfg.clean.max_words}) words; widen that range")
    source, dedup = deduplicate(source, labels, f"data.source '{d.source}'")
    stats.update(dedup)
    if d.validation:
        train = source
        val = clean_dataset(load_labeled(d.validation, d.text_column, d.label_column, labels,
                                         "test", d.allow_pickle), cfg)
        in_train = set(train["text"])
        stats["val_rows_in_train"] = sum(t in in_train for t in val["text"])
        if stats["val_rows_in_train"]:
            log.warning("data.validation '%s': %d of its %d rows are also training rows (same text)", d.validation,
                        stats["val_rows_in_train"], len(val))
    else:
        keep, held = stratified_split(source["label"], d.val_fraction, cfg.seed)
        train, val = source.select(keep), source.select(held)
    train = subsample(train, d.max_train_samples, cfg.seed)
    val = subsample(val, d.max_val_samples, cfg.seed)
    target = None
    if d.target:
        target = clean_dataset(load_unlabeled(d.target, d.target_text_column, allow_pickle=d.allow_pickle), cfg)
        stats["target_rows"] = len(target)
        stats["target_empty_texts"] = sum(not t.strip() for t in target["text"])  # predicted from no words
    stats.update(train_rows=len(train), val_rows=len(val),
                 train_label_counts=label_counts(train, len(labels)),
                 val_label_counts=label_counts(val, len(labels)))
    check_splits(cfg, stats, labels)
    return PreparedData(train, val, target, stats, labels)


def resolve_labels(cfg: Config) -> Config:
    """``cfg`` with ``data.labels`` set: as given, or when null inferred from ``data.source`` (read
    for it: :func:`lorafit.data.io.infer_label_names`), for what needs the number of classes
    before a run loads its data (``lorafit budget``, a search's trials, a model built alone).
    A run infers them once, when it loads its data (:meth:`PreparedData.config`)."""
    d = cfg.data
    if d.labels is not None:
        return cfg
    try:
        table = load_table(d.source, split=d.source_split, allow_pickle=d.allow_pickle)
    except DataError as e:  # e.g. a Hub data set offline: say why it was read
        raise DataError(f"data.labels is not set, and the class names could not be read from data.source: {e} "
                        "Or set data.labels.") from None
    labels = infer_label_names(table, d.label_column, describe_spec(d.source))
    log.info("labels inferred from data.source '%s': %s (set data.labels to choose them)", d.source, labels)
    return with_labels(cfg, labels, f"data.source '{d.source}'")


def check_splits(cfg: Config, stats: dict, labels: list[str]) -> None:
    """Refuse, before any training, a split that cannot train or be evaluated: no training rows,
    a class with no training row (the model could never predict it, and its prior would be 0),
    or an empty validation set. The messages give the counts."""
    d = cfg.data
    if stats["train_rows"] == 0:
        raise DataError(f"no training rows left from '{d.source}' ({stats['source_rows']:,} rows, "
                        f"{stats['dropped_by_length']:,} dropped by clean.min_words/max_words, "
                        f"{stats.get('conflicting_rows_dropped', 0):,} for texts given with conflicting labels); "
                        "loosen the length filter or check data.source")
    missing = [f"{labels[i]!r} (label {i})" for i, n in enumerate(stats["train_label_counts"]) if n == 0]
    if missing:
        raise DataError(f"the training set from '{d.source}' has no row of class {', '.join(missing)} "
                        f"(rows per class: {stats['train_label_counts']}); every class in data.labels needs "
                        "training rows: add some, or remove the class from data.labels")
    if stats["val_rows"] == 0:
        where = (f"data.validation '{d.validation}' has no rows" if d.validation else
                 f"data.val_fraction={d.val_fraction} of {stats['train_rows']:,} training rows "
                 f"(per class {stats['train_label_counts']}) holds out none")
        raise DataError(f"the validation set is empty: {where}; give data.validation or more source rows")


def label_counts(ds: datasets.Dataset, k: int) -> list[int]:
    c = Counter(ds["label"])
    return [int(c.get(i, 0)) for i in range(k)]
