"""The run folder ``<output_dir>/<name>/``: the names of the files a run writes, the typed records
of its results (:class:`RunMetrics` in ``metrics.json``, one :class:`RoundRecord` per
self-training round), and whether a folder can hold a new run.

A folder that holds a run (its ``config.yaml``) with another adapter shape is never continued. A
*finished* run (its ``metrics.json``) is continued only with the same config: a changed seed,
data, training or any other key that shapes the results would mix two runs (a new
train/validation split beside the old model). Such a rerun is refused with the differing keys
named; ``--fresh`` replaces the old run. Only keys that change how a run is executed, not what it
computes (:data:`FREE_KEYS`), may differ. An unfinished run (interrupted) may continue from its
last checkpoint with other settings, e.g. ``train.max_steps``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from lorafit.config import Config, ConfigError, flatten, load_config
from lorafit.errors import ModelError, OutputError, RunConflictError, RunStateError
from lorafit.io_utils import MARK, check_ours, check_writable, is_ours, mark_ours

# what a run folder holds (written by the pipeline, read by report, compare, search, scripts)
CONFIG = "config.yaml"
METRICS = "metrics.json"
TRAIN_LOG = "train_log.json"
SUMMARY = "summary.md"
REPORT = "report.html"
SUBMISSION = "submission.csv"
TARGET_PROBS = "target_probs.npz"
MODEL = "model"
CHECKPOINTS = "checkpoints"
DATA = "data"
SYNTHETIC = "synthetic"
LM = "lm"
SELFTRAIN = "selftrain"  # selftrain/round-N: each self-training round's checkpoints
CONFUSION_PLOT = "confusion_matrix.png"
CURVES_PLOT = "curves.png"
AUGMENT_REPORT = "augment_report.json"

# Keys that fix the shape of the saved adapter and head: a run folder trained with other values
# cannot be resumed (its checkpoints would not load) and must not be mixed with a new run.
ADAPTER_SHAPE_KEYS = ("model.name", "data.labels", "lora.")
# Keys that change how a run executes, not what it computes: a rerun may change them.
FREE_KEYS = ("name", "output_dir", "train.resume", "train.dataloader_workers", "train.report_to", "predict.workers",
             "predict.batch_size", "data.allow_pickle", "model.trust_remote_code", "search.")


def config_changes(old: Config, new: Config) -> dict[str, tuple]:
    """Keys whose values differ between two configs: ``{key: (old, new)}``."""
    a, b = flatten(old.to_dict()), flatten(new.to_dict())
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _shape_value(key: str, value):
    """A key's value as it shapes the adapter. PEFT adds the classification head (``classifier``,
    ``score``) to ``modules_to_save`` itself; earlier versions of lorafit let it do so in the config's own
    list, so older runs saved ``[classifier, score, classifier, score]`` for ``[classifier]``."""
    if key == "lora.modules_to_save":
        return sorted(set(value or ()) | {"classifier", "score"})
    return value


def _free(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in FREE_KEYS)


def _listed(changes: dict) -> str:
    shown = [f"{k} {o!r} -> {n!r}" for k, (o, n) in list(changes.items())[:6]]
    more = f" and {len(changes) - 6} more" if len(changes) > 6 else ""
    return ", ".join(shown) + more


def check_run_dir(cfg: Config, fresh: bool = False) -> Path:
    """Check, before anything is read or written, that ``cfg.run_dir`` can hold this run.

    The folder must be creatable and writable, and hold no files lorafit did not write. When it
    already holds a run (``config.yaml``) of another adapter shape, or a finished run whose config
    differs in a key other than :data:`FREE_KEYS`, the run is refused with the differing keys
    named, unless ``fresh`` (the old run will be replaced). Otherwise the run continues from the
    folder's last complete checkpoint.
    """
    run_dir = cfg.run_dir
    check_writable(run_dir, "run folder (output_dir/name)", folder=True)
    check_ours(run_dir, "run folder (output_dir/name)", legacy=is_legacy_run)  # never the user's own folder
    saved = run_dir / CONFIG
    if fresh or not saved.is_file():
        return run_dir
    try:
        old = load_config(saved)
    except ConfigError as e:
        raise RunConflictError(f"run folder '{run_dir}' holds a config this version cannot read ({e}); "
                               "pass --fresh to replace that run, or choose another name=") from None
    changes = {k: v for k, v in config_changes(old, cfg).items() if not _free(k)}
    if cfg.data.labels is None:  # to be inferred from the data: checked again once they are (lorafit.pipeline.run)
        changes.pop("data.labels", None)
    shape = {k: (o, n) for k, (o, n) in changes.items()
             if k.startswith(ADAPTER_SHAPE_KEYS) and _shape_value(k, o) != _shape_value(k, n)}
    if shape:
        raise RunConflictError(f"run folder '{run_dir}' holds a run with another adapter shape ({_listed(shape)}); "
                               "pass --fresh to replace that run (its model and checkpoints are deleted), "
                               "or choose another name=")
    changes = {k: (o, n) for k, (o, n) in changes.items() if not k.startswith(ADAPTER_SHAPE_KEYS)}
    if changes and (run_dir / METRICS).is_file():
        raise RunConflictError(f"run folder '{run_dir}' holds a finished run with another config ({_listed(changes)}); "
                               "run it with its own config to continue it, pass --fresh to replace it, or choose "
                               "another name=")
    return run_dir


def claim_run_dir(cfg: Config) -> Path:
    """The run folder for a command that writes into it alone (``adapt-lm``, ``generate``):
    refused when it holds the user's own files, else created with lorafit's mark."""
    check_writable(cfg.run_dir, "run folder (output_dir/name)", folder=True)
    return mark_ours(check_ours(cfg.run_dir, "run folder (output_dir/name)", legacy=is_legacy_run), "run")


def is_legacy_run(folder: Path) -> bool:
    """A run folder written by a lorafit that did not mark its folders: its ``config.yaml`` is a
    lorafit config and it holds the files only a run writes."""
    if (folder / LM / "train_log.json").is_file() or (folder / SYNTHETIC / "plan.json").is_file():
        return True  # `lorafit adapt-lm` / `lorafit generate` alone
    if not ((folder / CONFIG).is_file() and any((folder / f).exists() for f in (MODEL, CHECKPOINTS, METRICS, DATA))):
        return False
    try:
        load_config(folder / CONFIG)
    except ConfigError:
        return False
    return True


# ------------------------------------------------------------------ the run's results (metrics.json)

# metrics.json's schema_version: 1 is the first versioned shape; a file without the key (written before
# it existed, same shape) reads as 0
SCHEMA_VERSION = 1


class _Record(BaseModel):
    """A record of a run folder: its top-level fields typed, anything else kept as written (so a
    newer or older lorafit's extra keys survive a read)."""

    model_config = ConfigDict(extra="allow")

    def to_dict(self) -> dict:
        """The record as it is written: the keys its producer set, in JSON-ready types."""
        return self.model_dump(exclude_unset=True)


class RoundRecord(_Record):
    """One self-training round (``metrics.json`` ``selftrain[i]``)."""

    round: int
    mode: str = "continue"  # continue | student
    teacher: Optional[str] = None  # who labeled the round: first teacher | previous round | students + first teacher
    confident_per_class: list[int] = []  # target rows at or above selftrain.threshold, per predicted class
    cap: Optional[int] = None  # pseudo-labels kept per class at most
    kept_per_class: list[int] = []
    kept: int = 0
    gold_rows: Optional[int] = None
    train_rows: Optional[int] = None  # gold + pseudo-labeled rows the round trained on
    target_distribution_before: Optional[list[int]] = None  # the teacher's target predictions per class
    target_distribution_after: Optional[list[int]] = None  # the round's model's
    target_changed: Optional[int] = None
    val_accuracy: Optional[float] = None
    val_accuracy_per_adapter: Optional[list[float]] = None  # an ensemble's adapters (continue mode)
    val_accuracy_per_student: Optional[list[float]] = None  # ... or students (student mode)
    proxy_accuracy: Optional[float] = None  # on selftrain.proxy: plain argmax
    proxy_accuracy_prior: Optional[float] = None  # with predict.prior fitted on the proxy
    proxy_accuracy_target_prior: Optional[float] = None  # with the prior fitted on the target set
    teacher_val_accuracy: Optional[float] = None  # round 1: the starting model's scores (teacher_proxy_..., too)
    teacher_proxy_accuracy: Optional[float] = None
    teacher_proxy_accuracy_prior: Optional[float] = None
    selection_prior: Optional[dict[str, Any]] = None  # selftrain.select_after_prior: mode, labels changed
    synthetic: Optional[dict[str, Any]] = None  # selftrain.synthetic: the synthetic gold rows judged
    students: Optional[list[dict[str, Any]]] = None  # each student's seed (and averaged steps)
    adapters: Optional[list[dict[str, Any]]] = None


class RunFacts(_Record):
    """What a run knows before evaluation (the model card's first version): the budget, the data,
    the rows trained on and the augmentation's report."""

    schema_version: int = SCHEMA_VERSION
    budget: dict[str, Any] = {}  # lorafit.budget.Budget.to_dict()
    data: dict[str, Any] = {}  # lorafit.data.PreparedData.stats
    train_rows: Optional[int] = None  # after augmentation
    augment: dict[str, Any] = {}  # lorafit.augment's report (rows, selection, quality, generator)

    def to_dict(self) -> dict:
        return {"schema_version": self.schema_version, **super().to_dict()}


class RunMetrics(RunFacts):
    """A finished run's results: ``metrics.json``, written by the pipeline and read by the summary,
    the report page, the model card, ``compare``, ``search`` and the research scripts."""

    val_accuracy: float
    val_macro_f1: float
    val: dict[str, Any] = {}  # lorafit.metrics.classification_metrics on the validation set
    selftrain: list[RoundRecord] = []
    train_seconds: Optional[float] = None
    ensemble: Optional[dict[str, Any]] = None  # several adapters averaged: each one's validation accuracy
    checkpoint_average: Optional[dict[str, Any]] = None  # train.average_checkpoints: the steps averaged
    views: Optional[dict[str, Any]] = None  # frozen views averaged in: each one's and the adapters' validation accuracy
    restored: Optional[dict[str, Any]] = None  # the evaluation load_best_model_at_end restored (metrics.restored_evaluation)
    provenance: Optional[dict[str, Any]] = None  # start time, command line, lorafit version, config file and its git commit
    target: Optional[dict[str, Any]] = None  # lorafit.predict's facts of the target set's prediction
    stage_seconds: dict[str, float] = {}
    environment: dict[str, Any] = {}
    wall_seconds: Optional[float] = None


def write_metrics(run_dir: Path | str, metrics: RunMetrics) -> Path:
    """Write ``<run_dir>/metrics.json`` (atomically); returns its path."""
    from lorafit.io_utils import atomic_write_json

    path = Path(run_dir) / METRICS
    atomic_write_json(path, metrics.to_dict())
    return path


def read_metrics(run_dir: Path | str) -> Optional[RunMetrics]:
    """A run's ``metrics.json`` as :class:`RunMetrics`, or None when the run has none (not
    finished). A file without ``schema_version`` (written before it existed) reads as version 0; a
    damaged one, or one that is not a run's results (no ``val_accuracy``), is a
    :class:`RunStateError` naming it: a damaged file is never taken for an absent one."""
    path = Path(run_dir) / METRICS
    redo = (f"restore it, or delete it and run `lorafit run {Path(run_dir) / CONFIG}` to write it again "
            "(training resumes from its last checkpoint)")
    raw = read_json_file(path, "results", redo)
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise RunStateError(f"{path}: damaged, the run's results are not a JSON object; {redo}")
    try:
        return RunMetrics.model_validate({"schema_version": 0, **raw})
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise RunStateError(f"{path}: not a run's results ({where}: {first['msg']}); {redo}") from None


# ------------------------------------------------------------------ reading a run's saved files


def read_target_probs(path: Path | str) -> tuple:
    """A run's saved target probabilities (float64, rows x classes) and the digest of the texts they
    were computed for. A missing file, or one that is damaged (truncated, garbage, not written by
    lorafit), is a :class:`RunStateError` naming it and how to write it again."""
    import numpy as np

    path = Path(path)
    redo = f"`lorafit predict {path.parent}` writes the run's target probabilities"
    if not path.is_file():
        raise RunStateError(f"{path}: not found; {redo}")
    try:
        with np.load(path, allow_pickle=False) as z:
            probs, digest = np.asarray(z["probs"], dtype=np.float64), str(z["digest"])
    except Exception as e:  # noqa: BLE001  (BadZipFile, EOFError, KeyError, a pickle refused, ...: all one case)
        raise RunStateError(f"{path}: damaged, not a target_probs file lorafit wrote ({type(e).__name__}); "
                            f"delete it, then {redo} again") from None
    if probs.ndim != 2 or probs.shape[1] < 2 or not np.isfinite(probs).all():
        raise RunStateError(f"{path}: damaged, not a target_probs file lorafit wrote (probabilities of shape "
                            f"{probs.shape}); delete it, then {redo} again")
    return probs, digest


def read_json_file(path: Path | str, what: str, redo: str):
    """The JSON in ``path``, or None when there is no such file. A file that does not parse
    (truncated, edited) is a :class:`RunStateError` naming it and ``redo`` (how to write it again):
    a damaged file is never taken for an absent one."""
    import json

    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise RunStateError(f"{path}: damaged, the run's {what} cannot be read (not valid JSON: {str(e)[:80]}); {redo}") from None


# ------------------------------------------------------------------ a command's own output files (-o, --html)

# a run folder's record of itself: no command's -o may replace one of these
RUN_FILES = (CONFIG, METRICS, TRAIN_LOG, SUMMARY, REPORT, TARGET_PROBS, MODEL, CHECKPOINTS, DATA, SYNTHETIC, LM, MARK)


def _first_bytes(path: Path, n: int = 4096) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(n).decode("utf-8", "replace").lstrip("\ufeff")
    except OSError:
        return ""


def _json_keys(path: Path) -> set:
    import json

    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    return set(obj) if isinstance(obj, dict) else set()


# how an earlier output of each kind is recognised from its content: a file that is not one is not
# lorafit's, and is never replaced
OUTPUT_KINDS = {
    "submission": ("an ID,Label submission", lambda p: _first_bytes(p, 64).splitlines()[:1] == ["ID,Label"]),
    "metrics": ("lorafit evaluate metrics", lambda p: {"accuracy", "macro_f1"} <= _json_keys(p)),
    "agreement": ("lorafit agreement estimates", lambda p: {"runs", "target"} <= _json_keys(p)),
    "html": ("a lorafit page", lambda p: "<title>lorafit" in _first_bytes(p)),
}


def check_output_file(path: Path | str, what: str, kind: str) -> Path:
    """Refuse, before any work, an output file (a command's ``-o``) that lorafit may not write: one
    of a run folder's own files (``RUN/config.yaml``, ``metrics.json``, ... or anything inside its
    sub-folders), or an existing file that is not an earlier lorafit output of this ``kind`` (see
    :data:`OUTPUT_KINDS`): the user's own file, which lorafit never overwrites. Then the path must be
    writable (:func:`check_writable`). Returns the path."""
    p = Path(path)
    check_writable(p, what)
    parent = p.absolute().parent
    for up, folder in enumerate([parent, *parent.parents]):
        if is_ours(folder) or (folder / CONFIG).is_file() and is_legacy_run(folder):
            if up > 0 or p.name in RUN_FILES:
                own = f"inside {p.relative_to(folder).parts[0]}/" if up else f"the run's own {p.name}"
                raise OutputError(f"{what} '{p}' is {own} of run folder '{folder}'; lorafit never replaces a run's "
                                  "record with another output: choose another path (e.g. a new file name there)")
            break
        if up >= 3:
            break
    description, looks_ours = OUTPUT_KINDS[kind]
    if p.is_file() and not looks_ours(p):
        raise OutputError(f"{what} '{p}' exists and is not a file lorafit wrote (not {description}); lorafit never "
                          "overwrites it: choose another path, or move that file away yourself")
    return p


def run_folder_options(name: Optional[str], output_dir: Optional[str]) -> list[str]:
    """The overrides of the command-line options ``--name`` and ``--output-dir`` (none when not
    given). An empty one is a :class:`ConfigError`: it used to be ignored silently, so the run went
    into the config's own folder."""
    out = []
    for option, key, value in (("--name", "name", name), ("--output-dir", "output_dir", output_dir)):
        if value is None:
            continue
        if not str(value).strip():
            raise ConfigError(f"{option} is empty; give the run's {'folder name' if key == 'name' else 'parent folder'}, "
                              f"or leave {option} out to use the config's {key}")
        out.append(f"{key}={value}")
    return out


def require_trained_run(run_dir: Path | str) -> Path:
    """The adapter folder of a trained run, or a :class:`ModelError` saying how to make one (or what
    is missing); reads no weights and imports no model library, so a wrong path fails in a second."""
    adapter = Path(run_dir) / "model"
    if not (adapter / "adapter_config.json").is_file() or not (Path(run_dir) / "config.yaml").is_file():
        raise ModelError(f"{run_dir}: no trained model in it (expected config.yaml and {adapter}/adapter_config.json); "
                         "train it first with `lorafit run`.")
    for folder in [adapter, *sorted(p for p in adapter.iterdir() if (p / "adapter_config.json").is_file())]:
        if not any((folder / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
            raise ModelError(f"{folder / 'adapter_model.safetensors'}: missing, so the run's trained model is incomplete; "
                             f"restore it, or run `lorafit run {Path(run_dir) / 'config.yaml'}` to save it again from "
                             "the last checkpoint (--fresh trains anew)")
    return adapter


def provenance(command: str = "", config_path: Optional[os.PathLike | str] = None) -> dict:
    """Where a run came from (metrics.json ``provenance``): its start time, the command line, the
    lorafit version, the config file, and the git commit (and whether the file has uncommitted
    changes) when that file lives in a git repository."""
    import subprocess
    import time

    from lorafit import __version__

    out: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "lorafit_version": __version__}
    if command:
        out["command"] = command
    if config_path is not None:
        path = Path(config_path).resolve()
        out["config"] = str(path)

        def git(*args: str) -> Optional[str]:
            try:
                r = subprocess.run(["git", "-C", str(path.parent), *args], capture_output=True, text=True, timeout=5)
            except (OSError, subprocess.SubprocessError):
                return None
            return r.stdout.strip() if r.returncode == 0 else None

        commit = git("rev-parse", "HEAD")
        if commit:
            out["git_commit"] = commit
            out["git_dirty"] = bool(git("status", "--porcelain", "--", str(path)))
    return out
