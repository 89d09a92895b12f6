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

import csv
import io
import json
import logging
import os
import pickle
import re
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence

import datasets
import numpy as np
import pandas as pd

TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "json", ".json": "json", ".parquet": "parquet",
                  ".pkl": "pickle", ".pickle": "pickle"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


from lorafit.errors import DataError  # noqa: E402  (re-exported: lorafit.data.io.DataError)


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


def _decode(path: Path, raw: bytes) -> str:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 with a byte-order mark (Excel "Unicode text")
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: starts with a UTF-16 byte-order mark but is not valid UTF-16 ({e}). "
                            "Re-save the file as UTF-8.") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        line, ctx = _first_bad_utf8_line(raw)
        raise DataError(
            f"{path}: line {line} is not valid UTF-8 (near {ctx}). Re-save the file as UTF-8 "
            "(e.g. `iconv -f latin1 -t utf-8`) or fix that line."
        ) from None


def _table(columns: list[str], rows: list[list], lines: list[int]) -> pd.DataFrame:
    """A DataFrame of Python objects (no type guessing); ``attrs['lines']`` holds each row's line in
    the file, so errors found later can name it."""
    df = pd.DataFrame({c: pd.Series([r[j] for r in rows], dtype=object) for j, c in enumerate(columns)},
                      columns=columns)
    df.attrs["lines"] = lines
    return df


def _unique_names(names: list[str]) -> list[str]:
    # duplicate header names get '.1', '.2' suffixes, as pandas does
    seen: dict[str, int] = {}
    out = []
    for n in names:
        k = seen.get(n, 0)
        seen[n] = k + 1
        out.append(n if k == 0 else f"{n}.{k}")
    return out


def _read_delimited(path: Path, text: str, delimiter: str) -> pd.DataFrame:
    """CSV/TSV with a header row. Quoted fields may hold delimiters, quotes and newlines; blank lines
    are skipped; a row with more fields than the header is an error naming its line (its values
    would otherwise shift into the wrong columns); missing trailing fields are empty."""
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))  # default 128 KiB per field
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: Optional[list[str]] = None
    header_line = 0
    rows: list[list] = []
    lines: list[int] = []
    next_line = 1  # first physical line of the next record
    try:
        for rec in reader:
            first, next_line = next_line, reader.line_num + 1
            if not rec or (len(rec) == 1 and rec[0] and not rec[0].strip()):
                continue  # a blank (or whitespace-only) line
            if header is None:
                header, header_line = _unique_names([h.strip() for h in rec]), first
                continue
            if len(rec) > len(header):
                raise DataError(
                    f"{path}: line {first} has {len(rec)} fields but the header (line {header_line}) has "
                    f"{len(header)} ({', '.join(header)}). Quote texts that contain "
                    f"{'tabs' if delimiter == chr(9) else 'commas'} (\"like, this\") or fix the row."
                )
            rows.append(rec + [""] * (len(header) - len(rec)))
            lines.append(first)
    except csv.Error as e:
        raise DataError(f"{path}: line {reader.line_num} could not be parsed as "
                        f"{'TSV' if delimiter == chr(9) else 'CSV'}: {e}") from None
    if header is None:
        raise DataError(f"{path}: the file is empty; it needs a header row and at least one data row.")
    return _table(header, rows, lines)


def _records_table(path: Path, records: list, lines: list[int]) -> pd.DataFrame:
    columns: dict[str, None] = {}
    for rec in records:
        columns.update(dict.fromkeys(rec))
    return _table(list(columns), [[rec.get(c) for c in columns] for rec in records], lines)


def _read_json_lines(path: Path, text: str) -> pd.DataFrame:
    records, lines = [], []
    for i, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 may sit inside a string
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise DataError(f"{path}: line {i} is not valid JSON ({e}). JSON Lines files hold one JSON object "
                            "per line.") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}: line {i} holds a JSON {type(rec).__name__}, not an object "
                            '(expected e.g. {"text": "...", "label": 0}).')
        records.append(rec)
        lines.append(i)
    return _records_table(path, records, lines)


def _read_json(path: Path, text: str) -> pd.DataFrame:
    if path.suffix.lower() == ".jsonl":
        return _read_json_lines(path, text)
    try:
        obj = json.loads(text)
    except ValueError:
        return _read_json_lines(path, text)  # a .json file holding JSON Lines
    if isinstance(obj, list):
        bad = next((i for i, r in enumerate(obj) if not isinstance(r, dict)), None)
        if bad is not None:
            raise DataError(f"{path}: item {bad} of the JSON array is a {type(obj[bad]).__name__}, not an object "
                            '(expected [{"text": "...", "label": 0}, ...]).')
        return _records_table(path, obj, [])
    if isinstance(obj, dict):
        try:
            return pd.DataFrame(obj)  # columns: {"text": [...], "label": [...]}
        except ValueError as e:
            raise DataError(f"{path}: a JSON object must map column names to equally long lists ({e}).") from None
    raise DataError(f"{path}: holds a JSON {type(obj).__name__}; expected an array of objects or JSON Lines.")


def _read_text_table(path: Path, kind: str) -> pd.DataFrame:
    text = _decode(path, path.read_bytes())
    if not text.strip():
        raise DataError(f"{path}: the file is empty; it needs a header row and at least one data row.")
    if kind == "json":
        return _read_json(path, text)
    return _read_delimited(path, text, "\t" if kind == "tsv" else ",")


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


def _line_numbers(table) -> Optional[list[int]]:
    """Line in the file of each row, for text formats (see :func:`_table`); None otherwise."""
    lines = table.attrs.get("lines") if isinstance(table, pd.DataFrame) else None
    return lines if lines and len(lines) == len(table) else None


def _row(i: int, lines: Optional[list[int]]) -> str:
    return f"row {i} (line {lines[i]} of the file)" if lines else f"row {i}"


def _is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and v != v) or v is pd.NA or v is pd.NaT


def _check_texts(texts: list, where: str, lines: Optional[list[int]] = None, allow_empty: bool = False) -> list[str]:
    """The texts as strings; a missing or blank one is an error naming its row unless ``allow_empty``
    (a target set: each row is a submission row, so an empty text is predicted, not dropped)."""
    out = []
    for i, t in enumerate(texts):
        if _is_missing(t):
            if allow_empty:
                out.append("")
                continue
            raise DataError(f"{where}: {_row(i, lines)} has no text (empty cell). Remove the row or fill it in.")
        if isinstance(t, (bytes, bytearray)):
            try:
                t = bytes(t).decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{where}: {_row(i, lines)} holds bytes that are not UTF-8 text.") from None
        elif isinstance(t, (list, tuple, dict, set)) or hasattr(t, "shape"):
            raise DataError(f"{where}: {_row(i, lines)} has a {type(t).__name__} where a text is expected.")
        elif not isinstance(t, str):
            t = str(t)  # numbers are texts too ("1984")
        if not t.strip() and not allow_empty:
            raise DataError(f"{where}: {_row(i, lines)} has an empty text. Remove the row or fill it in.")
        out.append(t)
    return out


ID_COLUMN = "id"  # a target set's column of submission IDs, matched case-insensitively ("ID", "Id", "id")


def _target_ids(table, where: str, lines: Optional[list[int]]) -> Optional[list[str]]:
    """The target set's own submission IDs (its ``ID``/``id`` column, as written), or None when it
    has none (the IDs are then the row numbers). A missing or repeated ID is an error naming the rows."""
    cols = list(table.columns) if isinstance(table, pd.DataFrame) else list(table.column_names)
    named = [c for c in cols if str(c).strip().lower() == ID_COLUMN]
    if not named:
        return None
    name = "ID" if "ID" in named else named[0]
    ids, first = [], {}
    for i, v in enumerate(_column(table, name, where, "ID")):
        if _is_missing(v) or (isinstance(v, str) and not v.strip()):
            raise DataError(f"{where}: {_row(i, lines)} has no ID in column '{name}'; fill it in (the submission "
                            "uses the file's IDs when it has that column)")
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            v = int(v)
        v = str(v).strip()
        if v in first:
            raise DataError(f"{where}: ID {v!r} (column '{name}') is given twice: {_row(first[v], lines)} and "
                            f"{_row(i, lines)}; submission IDs must be unique")
        first[v] = i
        ids.append(v)
    return ids


def _to_label_ids(values: list, label_names: Sequence[str], where: str,
                  lines: Optional[list[int]] = None) -> list[int]:
    """Label ids from ints (0..k-1), integral floats, digit strings, or class names (case-insensitive).
    A string that is a class name is read as that name even when it is made of digits, so label sets
    such as ["1", "2", "3", "4", "5"] (star ratings) map "1" to id 0, not to id 1."""
    by_name = {str(n).strip().lower(): i for i, n in enumerate(label_names)}
    k = len(label_names)
    ids = []
    for i, v in enumerate(values):
        lab = None
        if isinstance(v, (bool, np.bool_)):
            lab = None
        elif isinstance(v, (int, np.integer)):
            lab = int(v)
        elif isinstance(v, (float, np.floating)) and float(v).is_integer():
            lab = int(v)
        elif isinstance(v, str):
            s = v.strip()
            if s.lower() in by_name:
                lab = by_name[s.lower()]
            elif s.isascii() and s.lstrip("-").isdigit():
                lab = int(s)
        if lab is None or not 0 <= lab < k:
            allowed = f"0..{k - 1} or one of {list(label_names)}"
            if _is_missing(v) or (isinstance(v, str) and not v.strip()):
                raise DataError(f"{where}: {_row(i, lines)} has no label (empty cell). Fill it in ({allowed}) "
                                "or remove the row.")
            raise DataError(
                f"{where}: {_row(i, lines)} has label {v!r}, which is not in the label set "
                f"({allowed}). Fix the row or set data.labels."
            )
        ids.append(lab)
    return ids


def describe_spec(spec: str) -> str:
    base, _ = _split_spec(spec)
    p = resolve_path(base)
    return str(p) if p.exists() else spec


def _label_kind(v) -> Optional[tuple[str, object]]:
    """("id", n) for an integer label (an int, an integral float, a string of digits), ("name", s)
    for a class name, None for a missing or unusable one."""
    if isinstance(v, (bool, np.bool_)) or _is_missing(v):
        return None
    if isinstance(v, (int, np.integer)):
        return ("id", int(v)) if v >= 0 else None
    if isinstance(v, (float, np.floating)):
        return ("id", int(v)) if float(v).is_integer() and v >= 0 else None
    if isinstance(v, str):
        s = v.strip()
        if not s:
            return None
        if s.isascii() and s.lstrip("+-").isdigit():
            return ("id", int(s)) if int(s) >= 0 else None
        return ("name", s)
    return None


def infer_label_names(table, label_column: str, where: str) -> list[str]:
    """The class names of a labeled set whose config names none (``data.labels`` null): a
    ``ClassLabel`` feature's names (a Hub or ``datasets`` set); else the distinct class names of a
    column of names, sorted (names differing only in case are one class, as when labels are
    mapped); else, for integer ids, "0".."max". A missing label, a mix of names and ids, or ids that
    leave one of 0..max without a row is a :class:`DataError` naming the file and row."""
    if isinstance(table, datasets.Dataset):
        feature = table.features.get(label_column)
        if isinstance(feature, datasets.ClassLabel):
            return [str(n) for n in feature.names]
    values = _column(table, label_column, where, "label")
    lines = _line_numbers(table)
    if not values:
        raise DataError(f"{where}: has no rows.")
    how = "data.labels is not set, so the labels are inferred from the data"
    first: Optional[tuple[int, str]] = None  # (row, kind) of the first label
    names: dict[str, str] = {}  # casefolded name -> its first spelling
    ids: set[int] = set()
    for i, v in enumerate(values):
        kind = _label_kind(v)
        if kind is None:
            what = "no label (empty cell)" if _is_missing(v) or (isinstance(v, str) and not v.strip()) else \
                f"label {v!r}, neither a class name nor an id 0, 1, 2, ..."
            raise DataError(f"{where}: {_row(i, lines)} has {what}; {how}: fix the row or set data.labels")
        if first is None:
            first = (i, kind[0])
        elif kind[0] != first[1]:
            a, b = (("a class name", "an integer id") if kind[0] == "name" else ("an integer id", "a class name"))
            raise DataError(f"{where}: {_row(i, lines)} has label {v!r}, {a}, but {_row(first[0], lines)} has "
                            f"{values[first[0]]!r}, {b}; {how} and must be all class names or all ids: fix the "
                            "row or set data.labels (label ids index that list)")
        if kind[0] == "id":
            ids.add(kind[1])
        else:
            names.setdefault(kind[1].casefold(), kind[1])
    if names:
        return sorted(names.values())
    top = max(ids)
    missing = sorted(set(range(top + 1)) - ids)
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        raise DataError(f"{where}: the integer labels go up to {top}, but no row has label {shown}; {how} as the "
                        f"ids 0..{top}, and every class needs rows: set data.labels to the class names (label ids "
                        "index that list; a label equal to a name maps to it, e.g. data.labels=['1','2','3','4','5'] "
                        "for ratings 1..5)")
    return [str(i) for i in range(top + 1)]


def read_labeled(spec: str, text_column: str = "text", label_column: str = "label",
                 labels: Optional[Sequence[str]] = None, split: Optional[str] = None, allow_pickle: bool = False
                 ) -> tuple[datasets.Dataset, list[str]]:
    """A labeled set as a ``Dataset`` with columns ``text`` (str) and ``label`` (int id), and its
    class names: ``labels``, or when None those :func:`infer_label_names` finds in it."""
    table = load_table(spec, split=split, allow_pickle=allow_pickle)
    where = describe_spec(spec)
    lines = _line_numbers(table)
    texts = _check_texts(_column(table, text_column, where, "text"), where, lines)
    names = [str(n) for n in labels] if labels else infer_label_names(table, label_column, where)
    label_ids = _to_label_ids(_column(table, label_column, where, "label"), names, where, lines)
    if not texts:
        raise DataError(f"{where}: has no rows.")
    return datasets.Dataset.from_dict({"text": texts, "label": label_ids}), names


def load_labeled(spec: str, text_column: str = "text", label_column: str = "label",
                 labels: Optional[Sequence[str]] = None, split: Optional[str] = None, allow_pickle: bool = False
                 ) -> datasets.Dataset:
    """Load a labeled set as a ``Dataset`` with columns ``text`` (str) and ``label`` (int id);
    ``labels``: the class names (None: inferred from the set, see :func:`read_labeled`)."""
    return read_labeled(spec, text_column, label_column, labels, split, allow_pickle)[0]


def load_unlabeled(spec: str, text_column: str = "text", split: Optional[str] = None,
                   allow_pickle: bool = False) -> datasets.Dataset:
    """Load an unlabeled set as a ``Dataset`` with a ``text`` column, and an ``id`` column (strings)
    when the file has its own ``ID``/``id`` column: the submission's IDs (else the row numbers).
    An empty text is kept, to be predicted like any other (a warning names the rows): dropping it
    would shift every later row's ID."""
    table = load_table(spec, split=split, allow_pickle=allow_pickle)
    where = describe_spec(spec)
    lines = _line_numbers(table)
    texts = _check_texts(_column(table, text_column, where, "target text"), where, lines, allow_empty=True)
    if not texts:
        raise DataError(f"{where}: the target set has no rows.")
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        logging.getLogger(__name__).warning(
            "%s: %d target text(s) are empty (%s%s); they are predicted like the others, from no words", where,
            len(empty), ", ".join(_row(i, lines) for i in empty[:3]), ", ..." if len(empty) > 3 else "")
    ids = _target_ids(table, where, lines)
    return datasets.Dataset.from_dict({"text": texts} if ids is None else {"text": texts, "id": ids})
