"""The Python API: ``lorafit.run(config, **overrides)`` and ``lorafit.load(run)``.

>>> import lorafit
>>> result = lorafit.run("configs/quickstart.yaml", name="mine", **{"train.epochs": 1})
>>> result.val_accuracy, result.run_dir
>>> clf = lorafit.load(result.run_dir)
>>> clf.predict(["Stocks fell sharply on Monday"])          # class names
>>> clf.predict_proba(["Stocks fell sharply on Monday"])    # N x K probabilities, columns = clf.labels

Overrides are config keys, given with dots (``**{"train.epochs": 1}``) or with ``__`` for each dot
(``train__epochs=1``); they are checked like command-line overrides.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from lorafit.config import Config, load_config

PathLike = Union[str, Path]


def override_strings(overrides: dict[str, Any]) -> list[str]:
    """``key.sub=value`` strings from keyword overrides: ``__`` stands for a dot; lists, dicts and
    booleans are written as YAML flow values, None as null."""
    out = []
    for key, value in overrides.items():
        key = key.replace("__", ".")
        if value is None:
            text = "null"
        elif isinstance(value, (bool, list, tuple, dict)):
            text = json.dumps(list(value) if isinstance(value, tuple) else value)
        else:
            text = str(value)
        out.append(f"{key}={text}")
    return out


@dataclass
class RunResult:
    """What :func:`run` returns: the run folder, its config and its metrics (metrics.json)."""

    run_dir: Path
    config: Config
    metrics: dict = field(repr=False)
    summary: str = field(default="", repr=False)

    @property
    def val_accuracy(self) -> Optional[float]:
        return self.metrics.get("val_accuracy")

    @property
    def val_macro_f1(self) -> Optional[float]:
        return self.metrics.get("val_macro_f1")

    def load(self) -> "Classifier":
        """The run's trained classifier (see :func:`load`)."""
        return load(self.run_dir)


def run(config: Optional[PathLike] = None, fresh: bool = False, **overrides) -> RunResult:
    """Run every enabled stage of ``config`` (a YAML file; None = the built-in defaults) with
    ``overrides`` applied, as ``lorafit run`` does; ``fresh`` replaces an earlier run in the run
    folder. Raises a :class:`lorafit.errors.LorafitError` for a mistake in the config or data."""
    call = ", ".join([repr(str(config)) if config is not None else "None", *(["fresh=True"] if fresh else []),
                      *(f"{k}={v!r}" for k, v in overrides.items())])
    return run_config(load_config(config, override_strings(overrides)), fresh=fresh, config_path=config,
                      command=f"lorafit.run({call})")


def run_config(cfg: Config, fresh: bool = False, command: str = "",
               config_path: Optional[PathLike] = None) -> RunResult:
    """Run a loaded config (``lorafit run`` and :func:`run`): the config is checked, then the data,
    then the model libraries are imported and the stages run. Every log record also goes to the
    run folder's ``run.log`` (``command``: how the run was started, its first line). metrics.json
    records the provenance: start time, command, lorafit version, ``config_path`` and its git commit."""
    import os

    from lorafit.logs import adopt_library_loggers, run_log
    from lorafit.runs import check_run_dir, provenance

    check_run_dir(cfg, fresh)
    origin = provenance(command, config_path)
    check_not_complete(cfg, fresh)
    main = int(os.environ.get("RANK", "0")) == 0  # one writer of run.log
    if main:  # another process writing this folder: refused before this one touches its run.log
        from lorafit.io_utils import check_unlocked

        check_unlocked(cfg.run_dir, "run folder (output_dir/name)")
    with run_log(cfg.run_dir, command) if main else _nothing():
        # datasets/pandas only once the config is known good; torch and peft only once the data is
        from lorafit.data import prepare_data
        from lorafit.report import StageTimer

        adopt_library_loggers()
        timer = StageTimer()  # seconds per stage, from the data stage on (metrics.json stage_seconds)
        data = prepare_data(cfg)  # bad data fails here, before the model stack (torch, peft) is imported
        cfg = data.config(cfg)  # data.labels inferred from the source when the config gives none
        timer.lap("data")
        from lorafit.pipeline import run as run_pipeline, summary

        adopt_library_loggers()
        metrics = run_pipeline(cfg, data, fresh=fresh, timer=timer, provenance=origin)  # None on the other processes
    return RunResult(run_dir=Path(cfg.run_dir), config=cfg,
                     metrics=metrics.to_dict() if hasattr(metrics, "to_dict") else dict(metrics or {}),
                     summary=summary(cfg, metrics) if metrics else "")


def check_not_complete(cfg: Config, fresh: bool = False) -> None:
    """Refuse to run again into a folder whose run finished (it has metrics.json), unless ``fresh``:
    there is nothing left to do there, and a rerun would only retrain from the last checkpoint."""
    import time

    from lorafit.errors import RunConflictError
    from lorafit.runs import METRICS

    done = Path(cfg.run_dir) / METRICS
    if fresh or not done.is_file():
        return
    try:
        acc = f"validation accuracy {100 * json.loads(done.read_text())['val_accuracy']:.2f}%, "
    except (ValueError, KeyError, TypeError, OSError):
        acc = ""
    raise RunConflictError(f"run already complete ({cfg.run_dir}: {acc}finished "
                           f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(done.stat().st_mtime))}); use a new name "
                           "(--name NAME) or --fresh to replace it")


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


class Classifier:
    """A trained run's model for prediction: ``predict(texts)`` gives class names,
    ``predict_proba(texts)`` the probabilities (columns in the order of :attr:`labels`). Texts are
    cleaned and truncated as at training time; no label prior is applied (``lorafit predict``
    applies the run's ``predict.prior`` to a whole target set)."""

    def __init__(self, run_dir: PathLike):
        from lorafit.logs import known_warnings_silenced
        from lorafit.model import load_trained

        self.run_dir = Path(run_dir)
        with known_warnings_silenced():
            self.model, self.tokenizer, self.config, self.merge_adapters = load_trained(self.run_dir)
        from lorafit.views import load_views

        self.views = load_views(self.run_dir / "model")  # frozen views the run's model averages in
        self.labels: list[str] = list(map(str, self.config.data.labels))

    def __repr__(self) -> str:
        return f"Classifier({str(self.run_dir)!r}, labels={self.labels!r})"

    def logits(self, texts: Union[str, Sequence[str]]) -> np.ndarray:
        from lorafit.inference import predict_with_config
        from lorafit.logs import known_warnings_silenced

        from lorafit.views import with_views

        texts = [texts] if isinstance(texts, str) else list(texts)
        with known_warnings_silenced():
            logits = predict_with_config(self.model, self.tokenizer, self.config, texts,
                                         merge_adapters=self.merge_adapters)
            return with_views(logits, self.views, texts, self.config)

    def predict_proba(self, texts: Union[str, Sequence[str]]) -> np.ndarray:
        from scipy.special import softmax

        return softmax(self.logits(texts), axis=-1)

    def predict(self, texts: Union[str, Sequence[str]]) -> list[str]:
        return [self.labels[i] for i in self.logits(texts).argmax(1)]


def load(run_dir: PathLike) -> Classifier:
    """The trained classifier of a run folder (``runs/<name>``)."""
    return Classifier(run_dir)


def predict_lines(run_dir: PathLike, texts) -> list[str]:
    """Class names for ``texts`` (strings, or lines of a stream such as stdin: line ends dropped), by
    the run's model alone (``lorafit predict RUN --text ...`` and ``--target -``)."""
    from lorafit.runs import require_trained_run

    require_trained_run(run_dir)  # before reading a stream: a wrong folder fails at once
    texts = [t.rstrip("\r\n") for t in texts]
    return load(run_dir).predict(texts) if texts else []
