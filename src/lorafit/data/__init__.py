"""Data stage: read any supported format, clean, filter and split."""

from lorafit.data.clean import clean_text, clean_texts
from lorafit.data.io import DataError, load_labeled, load_table, load_unlabeled, resolve_path
from lorafit.data.prepare import PreparedData, prepare_data, stratified_split

__all__ = [
    "DataError",
    "PreparedData",
    "clean_text",
    "clean_texts",
    "load_labeled",
    "load_table",
    "load_unlabeled",
    "prepare_data",
    "resolve_path",
    "stratified_split",
]
