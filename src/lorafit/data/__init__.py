"""Data stage: read any supported format, clean, filter and split."""

from lorafit.data.clean import clean_text, clean_texts
from lorafit.data.io import (DataError, infer_label_names, load_labeled, load_table, load_unlabeled, read_labeled,
                             resolve_path)
from lorafit.data.prepare import PreparedData, prepare_data, resolve_labels, stratified_split

__all__ = [
    "DataError",
    "PreparedData",
    "clean_text",
    "clean_texts",
    "infer_label_names",
    "load_labeled",
    "load_table",
    "load_unlabeled",
    "prepare_data",
    "read_labeled",
    "resolve_labels",
    "resolve_path",
    "stratified_split",
]
