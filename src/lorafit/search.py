"""Budget-aware hyperparameter search on Optuna (``lorafit search CONFIG --trials N``).

The space is the config's ``search.space`` (checked by :mod:`lorafit.search_space`). Each trial:

1. samples the space and builds the trial's config (the base config plus ``key=value`` overrides);
2. counts its trainable parameters from the config alone, on the meta device
   (:func:`lorafit.budget.count_budget`, the count ``lorafit budget`` prints). A trial over
   ``budget.max_trainable`` is pruned at once with the user attribute ``infeasible``: no weight is
   loaded, no folder written, and it does not count towards ``--trials``;
3. otherwise trains as a normal run folder ``<output_dir>/<name>/trial-<n>/`` (``pipeline.run``),
   reporting the validation accuracy of every evaluation to Optuna, whose pruner (median by
   default) stops poor trials early;
4. returns the objective (validation accuracy, accuracy on a labeled file, or a weighted sum).

Every trial records its exact trainable count, time and folder as user attributes.

Storage: an SQLite file ``<output_dir>/<name>/search.db`` by default (transactions: a kill never
leaves it half-written), or any database URL (``--storage postgresql://...``) for processes on
several machines. ``--workers K`` runs K processes on this machine on one study. A rerun of the
same command resumes: a trial whose process died (same host, pid gone; or, from any host, no
heartbeat for 3 minutes) is marked failed and re-queued once with the same parameters, continuing
from its folder's last checkpoint.

Results (``<output_dir>/<name>/``): ``leaderboard.csv``, ``search.png`` (objective against
trainable parameters, Pareto front marked) and ``best.yaml``, the best trial's config, which
``lorafit run best.yaml`` takes as is.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Optional

import optuna
import yaml
from optuna.trial import TrialState
from transformers import TrainerCallback

from lorafit.config import Config, ConfigError, SearchConfig, load_config, merge_overrides
from lorafit.search_results import is_infeasible, leaderboard, pareto_front, plot_search, render_leaderboard, write_csv
from lorafit.search_space import check_space, dimensions, load_search_config, objective_terms, override
from lorafit.io_utils import atomic_write_text, pid_alive

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 60  # a trial without a heartbeat for GRACE_SECONDS is stale (its process died)
GRACE_SECONDS = 180
_PRIMITIVE = (type(None), bool, int, float, str)


# ------------------------------------------------------------------ pruning


class PruningCallback(TrainerCallback):
    """Reports the validation accuracy of each evaluation to the trial and stops the run when the
    pruner says so (``optuna.TrialPruned`` propagates out of ``Trainer.train``)."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        acc = (metrics or {}).get("eval_accuracy")
        if acc is None:
            return
        self.trial.report(float(acc), step=state.global_step)
        # the last evaluation ends training anyway: the trial then completes (and counts for the median)
        if state.global_step < state.max_steps and self.trial.should_prune():
            raise optuna.TrialPruned(f"validation accuracy {acc:.4f} at step {state.global_step}")


def make_pruner(cfg: SearchConfig) -> optuna.pruners.BasePruner:
    p = cfg.pruner
    if p.type == "median":
        return optuna.pruners.MedianPruner(p.n_startup_trials, p.n_warmup_steps, p.interval_steps)
    if p.type == "percentile":
        return optuna.pruners.PercentilePruner(p.percentile, p.n_startup_trials, p.n_warmup_steps, p.interval_steps)
    if p.type == "threshold":
        return optuna.pruners.ThresholdPruner(lower=p.lower, n_warmup_steps=p.n_warmup_steps,
                                              interval_steps=p.interval_steps)
    if p.type == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource,
                                                      reduction_factor=p.reduction_factor)
    if p.type == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource,
                                              max_resource=p.max_resource or "auto",
                                              reduction_factor=p.reduction_factor)
    return optuna.pruners.NopPruner()


def make_sampler(cfg: Config, trials: int, offset: int) -> optuna.samplers.BaseSampler:
    # Workers and resumed runs get their own seed: the same seed would repeat the same proposals.
    seed = (cfg.search.seed if cfg.search.seed is not None else cfg.seed) + offset
    if cfg.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    startup = cfg.search.startup_trials
    if startup is None:
        startup = min(10, max(2, trials // 3))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=True)


# ------------------------------------------------------------------ storage and study


def default_storage(study_dir: Path) -> str:
    return f"sqlite:///{(study_dir / 'search.db').resolve()}"


# what a database says when another process created the same tables or version row a moment earlier
_CREATION_RACE = ("already exists", "unique constraint", "duplicate key", "database is locked")


def open_storage(url: str, retries: int, attempts: int = 10) -> optuna.storages.RDBStorage:
    """Optuna's storage at ``url``, its tables created when new. Processes started together on a
    fresh database race to create the same tables and version row (``table studies already
    exists``, ``IntegrityError``); the losers try again, after a short random wait, and then find
    the tables made (at most ``attempts`` tries)."""
    import random

    import sqlalchemy.exc

    kwargs = {}
    if url.startswith("sqlite"):  # several local workers share the file: wait for a writer's lock
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    for attempt in range(1, attempts + 1):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                    heartbeat_stale_trial_callback=partial(requeue, retries=retries), **kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as e:
            if attempt == attempts or not any(m in str(e).lower() for m in _CREATION_RACE):
                raise
            log.debug("storage %s: created by another process meanwhile (%s); trying again", url,
                      str(e).splitlines()[0][:120])
            time.sleep(random.uniform(0.05, 0.3) * attempt)
    raise AssertionError("unreachable")


def requeue(study: optuna.Study, trial, retries: int) -> None:
    """Queue a trial whose process died again with the same parameters and run folder (it resumes
    from that folder's last checkpoint), at most ``retries`` times per original trial."""
    attempt = int(trial.user_attrs.get("attempt", 1))
    if attempt > retries:
        log.warning("trial %d failed (its process died) and was retried %d time(s) already; not again",
                    trial.number, attempt - 1)
        return
    log.info("trial %d: its process died; queued again with the same parameters", trial.number)
    study.enqueue_trial(dict(trial.params), user_attrs={
        "folder": trial.user_attrs.get("folder", f"trial-{trial.number}"), "attempt": attempt + 1,
        "retry_of": trial.number})


def reap_dead_trials(study: optuna.Study, retries: int) -> list[int]:
    """Mark RUNNING trials whose process on this host is gone as failed (and re-queue them) at
    once, without waiting for the heartbeat's grace period. Returns their numbers."""
    host, storage, reaped = socket.gethostname(), study._storage, []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") != host or pid is None or pid_alive(pid):
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "error", f"process {pid} died while it ran the trial")
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker reaped it first
            continue
        reaped.append(t.number)
        requeue(study, storage.get_trial(t._trial_id), retries)
    return reaped


def progress(study: optuna.Study) -> tuple[int, int]:
    """(trained trials: completed or pruned by the pruner, trials running now)."""
    trials = study.get_trials(deepcopy=False)
    trained = sum(t.state == TrialState.COMPLETE or (t.state == TrialState.PRUNED and not is_infeasible(t))
                  for t in trials)
    return trained, sum(t.state == TrialState.RUNNING for t in trials)


# ------------------------------------------------------------------ one trial


class Searcher:
    """One worker: runs trials of the study until ``trials`` have trained (or are running)."""

    def __init__(self, config: Optional[Path], overrides: list[str], cfg: Config, study: optuna.Study,
                 study_dir: Path, trials: int):
        self.config, self.overrides, self.cfg = config, overrides, cfg
        self.study, self.study_dir, self.trials = study, study_dir, trials
        self.dims = dimensions(cfg)
        self._data: dict[str, Any] = {}
        self._files: dict[str, Any] = {}
        self._lock = None
        self.last_trial: Optional[int] = None

    def trial_config(self, values: dict, folder: str, name: Optional[str] = None,
                     output_dir: Optional[str] = None) -> Config:
        extra = [override(k, v) for k, v in values.items()]
        own = [*extra, f"output_dir={output_dir or self.study_dir}", f"name={name or folder}"]
        return load_config(self.config, merge_overrides(self.overrides, own))  # the trial's keys win

    def prepared(self, cfg: Config):
        """The data stage once per worker for every trial that shares its data settings."""
        from lorafit.data import prepare_data

        key = json.dumps([cfg.data.model_dump(), cfg.clean.model_dump(), cfg.seed, cfg.model.max_length],
                         sort_keys=True)  # texts are clipped by max_length
        if key not in self._data:
            self._data = {key: prepare_data(cfg)}  # keep one: a search rarely varies the data
        return self._data[key]

    def objective(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        self.last_trial = trial.number
        if self._lock is not None and self._lock.is_locked:  # the trial exists now: other workers may count it
            self._lock.release(force=True)
        values = {d.key: d.suggest(trial) for d in self.dims}
        folder = trial.user_attrs.get("folder") or f"trial-{trial.number}"
        trial.set_user_attr("folder", folder)
        try:
            cfg = self.trial_config(values, folder)
        except ConfigError as e:
            trial.set_user_attr("infeasible", f"invalid config: {e}")
            raise optuna.TrialPruned(str(e)) from None
        from lorafit.budget import count_budget
        from lorafit.errors import LorafitError

        try:
            budget = count_budget(cfg)  # meta device: no weights, about 0.1 s
        except LorafitError as e:
            trial.set_user_attr("infeasible", f"model does not take this config: {e}")
            raise optuna.TrialPruned(str(e)) from None
        trial.set_user_attr("trainable", budget.trainable)
        trial.set_user_attr("total", budget.total)
        if not budget.within:
            over = budget.trainable - budget.max_trainable
            trial.set_user_attr("infeasible", f"over budget by {over:,}")
            log.info("trial %d: %s trainable parameters, over budget by %s: not trained",
                     trial.number, f"{budget.trainable:,}", f"{over:,}")
            raise optuna.TrialPruned("over budget")
        return self._train(trial, cfg, values)

    def _train(self, trial: optuna.Trial, cfg: Config, values: dict) -> float:
        import torch

        from lorafit.errors import Interrupted
        from lorafit.pipeline import run as run_pipeline

        log.info("trial %d: %s (%s trainable) -> %s", trial.number,
                 ", ".join(f"{k}={v}" for k, v in trial.params.items()), f"{trial.user_attrs['trainable']:,}",
                 cfg.run_dir)
        t0 = time.time()
        try:
            metrics = run_pipeline(cfg, prepared=self.prepared(cfg), callbacks=[PruningCallback(trial)])
        except optuna.TrialPruned:
            trial.set_user_attr("seconds", round(time.time() - t0, 1))
            raise
        except torch.OutOfMemoryError:
            trial.set_user_attr("infeasible", "out of memory")
            raise optuna.TrialPruned("out of memory") from None
        except Interrupted:  # SIGINT/SIGTERM: a checkpoint was saved; a rerun continues this trial there
            requeue(self.study, trial, retries=self.cfg.search.retries + 1)
            raise
        trial.set_user_attr("seconds", round(time.time() - t0, 1))
        trial.set_user_attr("val_accuracy", metrics.val_accuracy)
        trial.set_user_attr("val_macro_f1", metrics.val_macro_f1)
        value = 0.0
        for term, weight in objective_terms(cfg.search.objective):
            if term.startswith("file:"):
                score = self.file_accuracy(cfg, term[5:])
                trial.set_user_attr(term, score)
            else:
                score = getattr(metrics, term)  # val_accuracy | val_macro_f1 (search_space.SEARCH_OBJECTIVES)
            value += weight * score
        return value

    def file_accuracy(self, cfg: Config, path: str) -> float:
        """Accuracy of the trial's saved model on a labeled file (as ``lorafit evaluate``; the file is read once)."""
        from lorafit.predict import score_run_on_file

        scored = score_run_on_file(cfg.run_dir, self._files.get(path, path), allow_pickle=cfg.data.allow_pickle)
        self._files[path] = scored.dataset
        return scored.accuracy

    def work(self) -> int:
        """Run trials until the study has ``trials`` trained ones; returns how many this worker ran."""
        from filelock import FileLock

        self._lock = FileLock(str(self.study_dir / ".search.lock"))
        ran, infeasible_in_a_row = 0, 0
        while True:
            self._lock.acquire()  # count and start a trial as one step among this machine's workers
            try:
                reap_dead_trials(self.study, self.cfg.search.retries)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(self.study)  # other hosts' dead trials (heartbeat)
                trained, running = progress(self.study)
                if trained + running >= self.trials:
                    return ran
                self.last_trial = None
                self.study.optimize(self.objective, n_trials=1, gc_after_trial=True)
            finally:
                if self._lock.is_locked:
                    self._lock.release(force=True)
            ran += 1
            t = self.study.trials[self.last_trial] if self.last_trial is not None else None
            infeasible_in_a_row = infeasible_in_a_row + 1 if t is not None and is_infeasible(t) else 0
            if infeasible_in_a_row >= self.cfg.search.max_infeasible:
                log.warning("%d proposals in a row were over budget or invalid; stopping. Narrow search.space "
                            "(`lorafit budget CONFIG --fit` lists the largest rank per target_modules choice).",
                            infeasible_in_a_row)
                return ran


# ------------------------------------------------------------------ the whole search


def run_search(config: Optional[Path], overrides: list[str], trials: Optional[int] = None,
               storage: Optional[str] = None, workers: int = 1, worker_index: int = 0) -> dict:
    """Run (or resume) the study of ``config``; with ``workers`` > 1, ``workers - 1`` more processes
    of ``lorafit search`` join it. Worker processes (``worker_index`` > 0) only run trials; the
    first one writes the results and returns them (see :func:`write_results`)."""
    cfg = load_search_config(config, overrides)
    check_space(config, overrides, cfg)
    if cfg.data.labels is None:  # inferred from the data once: every trial, worker and best.yaml gets them
        from lorafit.data import resolve_labels

        overrides = [*overrides, f"data.labels={json.dumps(resolve_labels(cfg).data.labels)}"]
        cfg = load_search_config(config, overrides)
    n_trials = cfg.search.trials if trials is None else trials
    if n_trials < 0:
        raise ConfigError(f"--trials must be >= 0, got {n_trials}")
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    study_dir = cfg.run_dir
    study_dir.mkdir(parents=True, exist_ok=True)
    url = storage or default_storage(study_dir)
    store = open_storage(url, cfg.search.retries)
    study = _load_or_create(store, cfg, study_dir, n_trials, worker_index)
    if worker_index == 0:
        _enqueue_once(study, cfg)
    children = []
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        import torch

        torch.set_num_threads(threads)
        children = [_spawn(config, overrides, n_trials, url, i, threads, study_dir) for i in range(1, workers)]
    searcher = Searcher(config, overrides, cfg, study, study_dir, n_trials)
    try:
        searcher.work()
    finally:
        failed = [(i, p.wait()) for i, p in children]
    for i, rc in failed:
        if rc != 0:
            log.warning("worker %d exited with code %d; see %s", i, rc, study_dir / f"worker-{i}.log")
    if worker_index:
        return {}
    return write_results(study, cfg, config, overrides, study_dir)


def _load_or_create(store, cfg: Config, study_dir: Path, n_trials: int, worker_index: int) -> optuna.Study:
    name = cfg.name
    exists = name in {s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)}
    if not exists and worker_index == 0 and any(study_dir.glob("trial-*")):
        raise ConfigError(f"'{study_dir}' holds trial folders of an earlier search, but the storage has no study "
                          f"'{name}'; remove those folders or choose another name=")
    offset = 1000 * worker_index
    if exists:
        offset += len(optuna.load_study(study_name=name, storage=store).trials)
    study = optuna.create_study(storage=store, study_name=name, direction="maximize", load_if_exists=True,
                                sampler=make_sampler(cfg, n_trials, offset), pruner=make_pruner(cfg.search))
    space = json.dumps(cfg.search.space, sort_keys=True, default=str)
    saved = study.user_attrs.get("space")
    if saved is None and worker_index == 0:
        study.set_user_attr("space", space)
        study.set_user_attr("objective", json.dumps(cfg.search.objective, default=str))
        with warnings.catch_warnings():  # optuna marks metric names experimental
            warnings.simplefilter("ignore")
            # optuna-dashboard shows this name instead of "Objective 0"
            study.set_metric_names([cfg.search.objective if isinstance(cfg.search.objective, str) else "objective"])
    elif saved is not None and saved != space:
        log.warning("search.space differs from the one this study started with; earlier trials were sampled "
                    "from the old space")
    if exists:
        trained, running = progress(study)
        log.info("resuming study '%s': %d of %d trials trained, %d running", name, trained, n_trials, running)
    return study


def _enqueue_once(study: optuna.Study, cfg: Config) -> None:
    if not cfg.search.enqueue or study.user_attrs.get("enqueued"):
        return
    dims = {d.key: d for d in dimensions(cfg)}
    for point in cfg.search.enqueue:
        study.enqueue_trial({k: dims[k].param(v) for k, v in point.items()}, skip_if_exists=True)
    study.set_user_attr("enqueued", True)


def _spawn(config, overrides, n_trials, url, index, threads, study_dir):
    cmd = [sys.executable, "-m", "lorafit.cli", "search"]
    if config is not None:
        cmd.append(str(config))
    cmd += [*overrides, "--trials", str(n_trials), "--storage", url, "--worker-index", str(index)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    logf = open(study_dir / f"worker-{index}.log", "ab")
    log.info("started worker %d (log: %s)", index, logf.name)
    return index, subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT)


# ------------------------------------------------------------------ results


def write_best_config(study: optuna.Study, searcher: Searcher, cfg: Config, path: Path) -> Optional[Config]:
    """The best completed trial's config as a plain run config (``lorafit run PATH``), or None."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not done:
        return None
    best = max(done, key=lambda t: (t.value, -t.user_attrs.get("trainable", 0)))
    dims = {d.key: d for d in searcher.dims}
    values = {}
    for k, label in best.params.items():
        d = dims.get(k)
        if d is None:  # a key no longer in the space
            continue
        choices = d.choices
        values[k] = next(v for lab, v in choices if lab == label) if choices is not None else label
    best_cfg = searcher.trial_config(values, folder="", name=f"{cfg.name}-best", output_dir=cfg.output_dir)
    best_cfg = best_cfg.model_copy(update={"search": SearchConfig()})
    plain = best_cfg.to_dict()
    plain.pop("search", None)  # a plain run config (its search section would be the defaults)
    header = (f"# Best trial ({best.number}) of `lorafit search` study '{cfg.name}': objective {best.value:.4f}, "
              f"{best.user_attrs.get('trainable', 0):,} trainable parameters.\n# Run it: lorafit run {path}\n")
    atomic_write_text(path, header + yaml.safe_dump(plain, sort_keys=False))
    return best_cfg


def write_results(study: optuna.Study, cfg: Config, config: Optional[Path], overrides: list[str],
                  study_dir: Path) -> dict:
    """leaderboard.csv, search.png and best.yaml in ``study_dir``; returns what they hold."""
    searcher = Searcher(config, overrides, cfg, study, study_dir, 0)
    rows = leaderboard(study, searcher.dims)
    write_csv(rows, study_dir / "leaderboard.csv")
    plot_search(rows, cfg.budget.max_trainable, study_dir / "search.png",
                title=f"lorafit search '{cfg.name}' ({cfg.model.name})")
    best = write_best_config(study, searcher, cfg, study_dir / "best.yaml")
    done = [r for r in rows if r["state"] == "complete"]
    front = pareto_front([(r["trainable"], r["objective"], r["trial"]) for r in done])
    return {"rows": rows, "best": done[0] if done else None, "pareto": [t for _, _, t in front],
            "best_config": str(study_dir / "best.yaml") if best else None, "dir": str(study_dir),
            "keys": [d.key for d in searcher.dims]}
