"""Read labeled and unlabeled text sets from the Hub or from local files of any common format.

Accepted forms of a data *spec*:

* a Hub dataset id, optionally with a split: ``ag_news``, ``ag_news:test``;
* a local ``.csv``/``.tsv``, ``.jsonl``/``.json``, ``.parquet``, ``.pkl``/``.pickle`` file (a
  pickled ``datasets.Dataset``, ``DatasetDict`` or pandas ``DataFrame``; pickles can run code
  when loaded and are refused unless ``allow_pickle`` is set);
* a folder written by ``Dataset.save_to_disk`` (or a ``DatasetDict``'s, with a split);
* ``pkg://sample/train.csv``: data bundled with lorafit.

Every problem raises :class:`DataError` with the file, row or column at fault and what to do.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence

import datasets
import pandas as pd

TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "json", ".json": "json", ".parquet": "parquet",
                  ".pkl": "pickle", ".pickle": "pickle"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class DataError(ValueError):
    """Bad or unreachable input data; the message names the file/row/column and the fix."""


def resolve_path(spec: str) -> Path:
    """Resolve ``pkg://...`` to the file bundled in the package; other specs are plain paths."""
    if spec.startswith("pkg://"):
        return Path(str(resources.files("lorafit.data").joinpath(spec[len("pkg://"):])))
    return Path(os.path.expanduser(spec))


def _split_spec(spec: str) -> tuple[str, Optional[str]]:
    # 'ag_news:test' -> ('ag_news', 'test'); Windows drive letters and URLs are not a concern here.
    if ":" in spec and not spec.startswith("pkg://"):
        base, split = spec.rsplit(":", 1)
        if split and "/" not in split:
            return base, split
    return spec, None


def _first_bad_utf8_line(raw: bytes) -> tuple[int, str]:
    for i, line in enumerate(raw.split(b"\n"), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as e:
            return i, repr(line[max(0, e.start - 20): e.end + 20])
    return -1, ""


def _read_text_table(path: Path, kind: str) -> pd.DataFrame:
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        line, ctx = _first_bad_utf8_line(raw)
        raise DataError(
            f"{path}: line {line} is not valid UTF-8 (near {ctx}). Re-save the file as UTF-8 "
            "(e.g. `iconv -f latin1 -t utf-8`) or fix that line."
        ) from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty; it needs a header row and at least one data row.")
    try:
        if kind == "json":
            lines = path.suffix == ".jsonl" or not text.lstrip().startswith("[")
            return pd.read_json(io.StringIO(text), lines=lines, dtype=False)
        return pd.read_csv(io.StringIO(text), sep="\t" if kind == "tsv" else ",", dtype=str,
                           keep_default_na=False, na_filter=False)
    except (ValueError, pd.errors.ParserError) as e:
        raise DataError(f"{path}: could not parse it as {kind.upper()}: {e}") from None


def _from_pickle(path: Path, split: Optional[str], allow_pickle: bool):
    if not allow_pickle:
        raise DataError(
            f"{path}: refusing to load a pickle. Pickles can run arbitrary code when loaded; load them only "
            "from sources you trust, then set data.allow_pickle=true (CLI: --allow-pickle or data.allow_pickle=true)."
        )
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f)
    except Exception as e:  # any unpickling failure is a data problem
        raise DataError(f"{path}: could not unpickle it ({type(e).__name__}: {e}).") from None
    if isinstance(obj, datasets.DatasetDict):
        return _pick_split(obj, split, path)
    if isinstance(obj, datasets.Dataset):
        return obj
    if isinstance(obj, pd.DataFrame):
        return obj
    raise DataError(
        f"{path}: the pickle holds a {type(obj).__module__}.{type(obj).__name__}, not a datasets.Dataset, "
        "DatasetDict or pandas DataFrame."
    )


def _pick_split(dd: datasets.DatasetDict, split: Optional[str], where) -> datasets.Dataset:
    if split is None:
        if len(dd) == 1:
            return next(iter(dd.values()))
        raise DataError(f"{where}: holds splits {sorted(dd)}; name one, e.g. '{where}:{sorted(dd)[0]}'.")
    if split not in dd:
        raise DataError(f"{where}: has no split '{split}'; available: {sorted(dd)}.")
    return dd[split]


def load_table(spec: str, split: Optional[str] = None, allow_pickle: bool = False):
    """Load ``spec`` as a pandas DataFrame or a ``datasets.Dataset`` (whichever is native)."""
    base, spec_split = _split_spec(spec)
    split = spec_split or split
    path = resolve_path(base)
    if path.is_dir():
        try:
            obj = datasets.load_from_disk(str(path))
        except Exception as e:
            raise DataError(f"{path}: is a folder but not one written by Dataset.save_to_disk ({e}).") from None
        return _pick_split(obj, split, path) if isinstance(obj, datasets.DatasetDict) else obj
    if path.is_file():
        kind = TABLE_SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise DataError(
                f"{path}: unknown format '{path.suffix}'. Use one of {', '.join(sorted(TABLE_SUFFIXES))} "
                "or a save_to_disk folder."
            )
        if kind == "pickle":
            return _from_pickle(path, split, allow_pickle)
        if kind == "parquet":
            try:
                return pd.read_parquet(path)
            except Exception as e:
                raise DataError(f"{path}: could not read it as Parquet ({e}).") from None
        return _read_text_table(path, kind)
    looks_local = base.startswith(("pkg://", ".", "/", "~")) or Path(base).suffix.lower() in TABLE_SUFFIXES
    if looks_local or not _HUB_ID.match(base):
        raise DataError(f"{path}: no such file or folder. Check the path (relative to {Path.cwd()}).")
    return _load_hub(base, split or "train")


def _load_hub(repo_id: str, split: str) -> datasets.Dataset:
    try:
        return datasets.load_dataset(repo_id, split=split)
    except Exception as e:
        raise DataError(
            f"could not load the Hub dataset '{repo_id}' (split '{split}'): {type(e).__name__}: {str(e)[:300]}. "
            "If this machine is offline, download it once elsewhere and point the config at a local copy "
            "(csv/jsonl/parquet or a save_to_disk folder), or set HF_DATASETS_OFFLINE=1 with a warm cache."
        ) from None


def _column(table, name: str, where: str, role: str) -> list:
    cols = list(table.columns) if isinstance(table, pd.DataFrame) else list(table.column_names)
    if name not in cols:
        raise DataError(
            f"{where}: has no {role} column '{name}' (columns: {cols}). "
            f"Set data.{'target_text_column' if role == 'target text' else role + '_column'} to the right name."
        )
    return table[name].tolist() if isinstance(table, pd.DataFrame) else list(table[name])


def _check_texts(texts: list, where: str) -> list[str]:
    out = []
    for i, t in enumerate(texts):
        if t is None or (isinstance(t, float) and t != t):
            raise DataError(f"{where}: row {i} has no text (empty cell). Remove the row or fill it in.")
        if not isinstance(t, str):
            t = str(t)
        if not t.strip():
            raise DataError(f"{where}: row {i} has an empty text. Remove the row or fill it in.")
        out.append(t)
    return out


def _to_label_ids(values: list, label_names: Sequence[str], where: str) -> list[int]:
    by_name = {str(n).lower(): i for i, n in enumerate(label_names)}
    k = len(label_names)
    ids = []
    for i, v in enumerate(values):
        lab = None
        if isinstance(v, bool):
            lab = None
        elif isinstance(v, int) or (hasattr(v, "dtype") and str(getattr(v, "dtype", "")).startswith("int")):
            lab = int(v)
        elif isinstance(v, float) and v.is_integer():
            lab = int(v)
        elif isinstance(v, str):
            s = v.strip()
            if s.lstrip("-").isdigit():
                lab = int(s)
            elif s.lower() in by_name:
                lab = by_name[s.lower()]
        if lab is None or not 0 <= lab < k:
            raise DataError(
                f"{where}: row {i} has label {v!r}, which is not in the label set "
                f"(0..{k - 1} or one of {list(label_names)}). Fix the row or set data.labels."
            )
        ids.append(lab)
    return ids


def _describe(spec: str) -> str:
    base, _ = _split_spec(spec)
    p = resolve_path(base)
    return str(p) if p.exists() else spec


def load_labeled(spec: str, text_column: str = "text", label_column: str = "label",
                 labels: Sequence[str] = (), split: Optional[str] = None, allow_pickle: bool = False
                 ) -> datasets.Dataset:
    """Load a labeled set as a ``Dataset`` with columns ``text`` (str) and ``label`` (int id)."""
    table = load_table(spec, split=split, allow_pickle=allow_pickle)
    where = _describe(spec)
    texts = _check_texts(_column(table, text_column, where, "text"), where)
    label_ids = _to_label_ids(_column(table, label_column, where, "label"), labels, where)
    if not texts:
        raise DataError(f"{where}: has no rows.")
    return datasets.Dataset.from_dict({"text": texts, "label": label_ids})


def load_unlabeled(spec: str, text_column: str = "text", split: Optional[str] = None,
                   allow_pickle: bool = False) -> datasets.Dataset:
    """Load an unlabeled set as a ``Dataset`` with a ``text`` column; row order is the submission ID."""
    table = load_table(spec, split=split, allow_pickle=allow_pickle)
    where = _describe(spec)
    texts = _check_texts(_column(table, text_column, where, "target text"), where)
    if not texts:
        raise DataError(f"{where}: the target set has no rows.")
    return datasets.Dataset.from_dict({"text": texts})
