"""Plots, the run report (``report.html``), run comparison and the model card.

A run folder holds everything the report needs (metrics.json, config.yaml, train_log.json, data/,
synthetic/, target_probs.npz, submission.csv); every section that lacks its file or field says so
instead of failing, so older runs and runs without a target set or synthetic data report too.
"""

from __future__ import annotations

import base64
import errno
import io
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from lorafit.config import flatten
from lorafit.io_utils import atomic_write_bytes, atomic_write_text, read_json_or, texts_digest
from lorafit.metrics import distribution
import lorafit.runs as runs
from lorafit.runs import RunFacts, RunMetrics, read_metrics, read_target_probs
from lorafit.report_generator import generator_facts, generator_line, render_generator
from lorafit.report_page import esc, page, pct, render_model_card, render_report, table

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ run facts: timings, environment


class StageTimer:
    """Seconds per pipeline stage: ``lap(name)`` charges the time since the previous lap to ``name``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.start = self._last = time.perf_counter()

    def total(self) -> float:
        """Seconds since the timer started (the CLI starts it before its data stage)."""
        return time.perf_counter() - self.start

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self._last, 2)
        self._last = now


def environment() -> dict:
    """Library versions, device and threads of this process (recorded in metrics.json)."""
    import platform

    import datasets
    import peft
    import torch
    import transformers

    from importlib.metadata import version

    cuda = torch.cuda.is_available()
    return {
        "lorafit": version("lorafit"), "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "datasets": datasets.__version__, "numpy": np.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu", "cuda": torch.version.cuda if cuda else None,
        "gpus": torch.cuda.device_count() if cuda else 0, "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        **cpu_facts(),
    }


def cpu_facts() -> dict:
    """The CPU's model and the instruction sets its bf16/fp32 kernels use: runs on CPUs with other
    kernels (AMX vs AVX-512 bf16, say) sum in another order, so their numbers differ slightly."""
    import torch

    model, flags = platform_cpu(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    return {"cpu": model or None, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_bf16": [f for f in ("amx_bf16", "avx512_bf16") if f in flags]}


def platform_cpu() -> str:
    import platform

    return "" if platform.system() == "Linux" else platform.processor()


# ------------------------------------------------------------------ figures


def _figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _save_fig(fig, path: Path) -> None:
    atomic_write_bytes(path, _figure_png(fig))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(cm: Sequence[Sequence[int]], names: Sequence[str], path: Path, title: str = "") -> None:
    plt = _pyplot()
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black", fontsize=8)
    ax.set_title(title or "confusion matrix (validation)")
    _save_fig(fig, path)


def training_phases(log_history: list[dict]) -> tuple[list[tuple[int, dict]], list[tuple[str, int, int]]]:
    """Put every logged entry on one continuous step axis.

    Each self-training round is a new Trainer whose steps restart at 1; its entries carry
    ``selftrain_round``, and those of an ensemble's adapter i >= 1 (``train.adapters``,
    ``selftrain.students``, trained one after another) ``adapter``. A phase starts where the
    previous one ended. Returns ``[(global step, entry)]`` and the phases ``[(name, first step,
    last step)]`` in order.
    """
    points, phases, index = [], [], {}
    for h in log_history:
        if "step" not in h:
            continue
        key = (int(h.get("selftrain_round", 0)), int(h.get("adapter", 0)))
        if key not in index:
            start = phases[-1][2] if phases else 0
            index[key] = len(phases)
            phases.append([key, start, start])
        ph = phases[index[key]]
        g = ph[1] + int(h["step"])
        ph[2] = max(ph[2], g)
        points.append((g, h))
    named = [(("training" if r == 0 else f"self-training round {r}") + (f", adapter {a}" if a else ""), start, end)
             for (r, a), start, end in phases]
    return points, named


def curves_figure(log_history: list[dict]):
    """Validation accuracy and train/validation loss against one continuous step axis, with the
    training phase and each self-training round marked."""
    plt = _pyplot()
    points, phases = training_phases(log_history)
    series = {k: [(g, h[k]) for g, h in points if k in h]
              for k in ("loss", "eval_loss", "eval_accuracy", "consistency_loss")}
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    if series["eval_accuracy"]:
        a1.plot(*zip(*series["eval_accuracy"]), marker="o", label="validation")
        a1.legend(loc="lower right")
    pad = 14 if len(phases) > 1 else 6
    a1.set_title("accuracy vs step", pad=pad)
    if series["loss"]:
        a2.plot(*zip(*series["loss"]), label="train")
    if series["eval_loss"]:
        a2.plot(*zip(*series["eval_loss"]), marker="o", label="validation")
    if series["consistency_loss"]:  # train.consistency: the unlabeled term, unweighted
        a2.plot(*zip(*series["consistency_loss"]), lw=1, ls=":", label="consistency (target)")
    if series["loss"] or series["eval_loss"]:
        a2.legend(loc="upper right")
    a2.set_title("loss vs step", pad=pad)
    for ax in (a1, a2):
        ax.set_xlabel("step (all phases, one axis)")
        for i, (name, start, end) in enumerate(phases):
            if i % 2:
                ax.axvspan(start, end, color="#f2b134", alpha=0.15, lw=0)
            if i:
                ax.axvline(start, color="#888", lw=0.8, ls="--")
            if len(phases) > 1:  # named just above the plot, under the title
                ax.text((start + end) / 2, 1.01, name.replace("self-training ", "self-train "), ha="center",
                        va="bottom", fontsize=7, color="#555", transform=ax.get_xaxis_transform())
        if points:
            ax.set_xlim(left=0)
        if not points:
            ax.text(0.5, 0.5, "no training log", ha="center", va="center", transform=ax.transAxes, color="#888")
    fig.tight_layout()
    return fig


def plot_curves(log_history: list[dict], path: Path) -> None:
    """Loss and accuracy against step (the report's Figure 4), phases on one step axis."""
    _save_fig(curves_figure(log_history), path)


def lengths_figure(lengths: dict[str, list[int]]):
    """Overlaid histograms (share of texts per bin) of text lengths in words."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    every = np.concatenate([np.asarray(v) for v in lengths.values()])
    hi = max(2, int(np.percentile(every, 99.5)) + 1)
    bins = np.linspace(0, hi, min(40, hi) + 1)
    for name, values in lengths.items():
        v = np.clip(np.asarray(values), 0, hi)
        ax.hist(v, bins=bins, weights=np.full(len(v), 100.0 / len(v)), histtype="step", lw=1.8,
                label=f"{name} (n={len(v):,}, median {int(np.median(v))})")
    ax.set_xlabel("words per text")
    ax.set_ylabel("% of texts")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ reading a run folder


def read_run(run_dir: Path | str) -> dict:
    """The facts of a run folder: ``metrics`` (:class:`RunMetrics`, None when the run has not
    finished), ``config`` (the raw dict, {} when absent), ``cfg`` (the validated Config, or None)
    and ``history`` (the training log, [] when absent)."""
    import yaml

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such run folder", str(run_dir))
    # a damaged metrics.json is refused, never taken for an absent one (the page and the model card
    # would be written again without the run's results)
    metrics = read_metrics(run_dir)
    try:
        config = yaml.safe_load((run_dir / runs.CONFIG).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    if metrics is None and not config:
        raise FileNotFoundError(errno.ENOENT, "not a run folder (neither metrics.json nor config.yaml in it)", str(run_dir))
    cfg = None
    if config:
        from lorafit.config import ConfigError, load_config

        try:
            cfg = load_config(run_dir / runs.CONFIG)
        except ConfigError as e:  # e.g. a run written by an older lorafit with other keys
            log.info("%s/config.yaml does not load with this lorafit (%s); the report shows it as written", run_dir, e)
    return {"dir": run_dir, "metrics": metrics, "config": config, "cfg": cfg,
            "history": read_json_or(run_dir / runs.TRAIN_LOG, [])}


def _labels(run: dict) -> list[str]:
    if run["cfg"] is not None and run["cfg"].data.labels is not None:
        return list(map(str, run["cfg"].data.labels))
    per_class = run["metrics"].val.get("per_class") if run["metrics"] else None
    if per_class:
        return list(per_class)
    return list(map(str, run["config"].get("data", {}).get("labels") or []))


def _target_texts(run: dict) -> tuple[Optional[list[str]], str]:
    """The run's cleaned target texts (from its config), or None and why not."""
    cfg = run["cfg"]
    if cfg is None or not cfg.data.target:
        return None, "the run's config has no data.target"
    try:
        from lorafit.data.io import load_unlabeled
        from lorafit.data.prepare import clean_dataset

        ds = load_unlabeled(cfg.data.target, cfg.data.target_text_column, allow_pickle=False)  # a report never unpickles
        return list(clean_dataset(ds, cfg)["text"]), ""
    except Exception as e:  # any unreadable target only costs the report its target texts
        return None, f"could not read the target set '{cfg.data.target}': {str(e)[:200]}"


def _training_set(run_dir: Path) -> Optional[tuple[list[str], list[int]]]:
    path = run_dir / "data" / "train"
    if not path.is_dir():
        return None
    try:
        import datasets

        ds = datasets.load_from_disk(str(path))
        return list(ds["text"]), list(ds["label"])
    except Exception as e:
        log.info("could not read %s: %s", path, e)
        return None


def _synthetic_samples(run_dir: Path) -> list[dict]:
    path = run_dir / "synthetic" / "samples.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def _target_probs(run_dir: Path, texts: Optional[Sequence[str]]) -> Optional[np.ndarray]:
    """The run's saved target probabilities; None when absent or saved for other texts than ``texts``."""
    path = run_dir / runs.TARGET_PROBS
    if not path.is_file():
        return None
    probs, digest = read_target_probs(path)  # a damaged file is a one-line error naming it
    if texts is not None and digest != texts_digest(texts):
        return None  # computed for another target set
    return probs


def _submission_labels(run_dir: Path, n: int) -> Optional[np.ndarray]:
    import csv

    path = run_dir / runs.SUBMISSION
    if not path.is_file():
        return None
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))[1:]
    if len(rows) != n:
        return None
    return np.array([int(r[1]) for r in rows])


# ------------------------------------------------------------------ the report


def _text_key(text: str) -> str:
    from lorafit.data.clean import clean_text

    return " ".join(clean_text(text).lower().split())


def _spread(idx: np.ndarray, n: int) -> list[int]:
    """Up to ``n`` items of ``idx`` evenly spread over its order (first, middle, last)."""
    if len(idx) <= n:
        return list(idx)
    return [idx[round(i * (len(idx) - 1) / (n - 1))] for i in range(n)] if n > 1 else [idx[0]]


def report_facts(run_dir: Path | str, target_texts: Optional[Sequence[str]] = None, per_class: int = 3) -> dict:
    """Everything ``report.html`` shows, read and computed from the run folder (figures as base64
    PNG). Absent inputs give None plus a note saying why, never an error."""
    from lorafit.data.clean import word_count

    run = read_run(run_dir)
    run_dir, m = run["dir"], run["metrics"]
    labels = _labels(run)
    k = len(labels)
    f: dict = {"name": run["config"].get("name") or run_dir.name, "labels": labels, "metrics": m,
               "config": run["config"], "notes": {}}
    points, f["phases"] = training_phases(run["history"])
    f["curves_png"] = png_b64(curves_figure(run["history"])) if points else None

    if target_texts is None:
        target_texts, f["notes"]["target"] = _target_texts(run)
    else:
        target_texts = list(target_texts)
    train = _training_set(run_dir)
    synth = _synthetic_samples(run_dir)
    synth_keys = {_text_key(r.get("text", "")) for r in synth}
    train_keys = {_text_key(t) for t in train[0]} if train else set()

    lengths = {}
    if train:
        lengths["source (training set)"] = [word_count(t) for t in train[0] if _text_key(t) not in synth_keys]
    if target_texts:
        lengths["target"] = [word_count(t) for t in target_texts]
    if synth:
        lengths["synthetic (generated)"] = [word_count(r.get("text", "")) for r in synth]
    lengths = {name: v for name, v in lengths.items() if v}
    f["lengths"] = {name: {"n": len(v), "median": float(np.median(v)), "mean": float(np.mean(v)),
                           "p95": float(np.percentile(v, 95))} for name, v in lengths.items()}
    f["lengths_png"] = png_b64(lengths_figure(lengths)) if lengths else None

    f["generator"] = generator_facts(run_dir, run["cfg"], m)
    f["generator_html"] = render_generator(f["generator"])
    f["synthetic"] = None
    if synth:
        f["synthetic"] = {name: [{"prompt": r.get("prompt", ""), "text": r.get("text", ""),
                                  "kept": (_text_key(r.get("text", "")) in train_keys) if train else None}
                                 for r in [r for r in synth if r.get("label") == c][:per_class]]
                          for c, name in enumerate(labels)}

    # target predictions: examples, distributions before/after the prior, the EM estimate
    probs = _target_probs(run_dir, target_texts)
    tm = (m.target if m else None) or {}
    f["target_examples"], f["prior"] = None, None
    if probs is not None and probs.shape[1] == k:
        conf, raw = probs.max(1), probs.argmax(1)
        final = _submission_labels(run_dir, len(probs))
        final = raw if final is None else final
        if target_texts is not None:
            rows = []
            for c in range(k):
                idx = np.flatnonzero(final == c)
                for i in _spread(idx[np.argsort(-conf[idx], kind="stable")], per_class):
                    rows.append({"row": int(i), "text": target_texts[i], "label": labels[final[i]],
                                 "raw_label": labels[raw[i]], "confidence": float(conf[i])})
            f["target_examples"] = rows
        train_prior = np.full(k, 1.0 / k)
        if train and len(train[1]):
            counts = np.bincount(np.asarray(train[1], int), minlength=k)
            if counts.min() > 0:
                train_prior = counts / counts.sum()
        run_prior = tm.get("prior") or {}
        if run_prior.get("mode") == "em" and run_prior.get("prior"):
            em, em_source = run_prior["prior"], "the run's own prior (predict.prior: em)"
        else:
            from lorafit.prior import estimate_prior_em

            with warnings.catch_warnings(record=True) as caught:  # slow convergence is reported, not warned
                warnings.simplefilter("always")
                em, _, n_iter = estimate_prior_em(probs, train_prior)
            em = em.tolist()
            em_source = "estimated here from target_probs.npz (the run's prior was not em)"
            if any(issubclass(w.category, RuntimeWarning) for w in caught):
                em_source += f"; EM had not converged after {n_iter} iterations"
        f["prior"] = {"mode": run_prior.get("mode", "none"), "prior": run_prior.get("prior"),
                      "changed": run_prior.get("changed"), "train_prior": train_prior.tolist(),
                      "raw": tm.get("raw_distribution") or distribution(raw, k),
                      "final": tm.get("predicted_distribution") or distribution(final, k),
                      "em": em, "em_source": em_source, "mean_confidence": float(conf.mean())}
    elif tm.get("predicted_distribution"):
        run_prior = tm.get("prior") or {}
        f["prior"] = {"mode": run_prior.get("mode", "none"), "prior": run_prior.get("prior"),
                      "changed": run_prior.get("changed"), "train_prior": run_prior.get("train_prior"),
                      "raw": tm.get("raw_distribution"), "final": tm["predicted_distribution"],
                      "em": run_prior.get("prior") if run_prior.get("mode") == "em" else None,
                      "em_source": "no target_probs.npz for these target texts: EM not estimated",
                      "mean_confidence": tm.get("mean_confidence")}
    if probs is None and target_texts is not None:
        f["notes"].setdefault("target", "no target_probs.npz matching the target texts in the run folder")
    return f


def write_report(run_dir: Path | str, target_texts: Optional[Sequence[str]] = None) -> Path:
    """Write ``<run_dir>/report.html`` (atomically) from the files of the run; return its path.

    ``target_texts``: the run's cleaned target texts when the caller has them (the pipeline), else
    they are read again from the config's ``data.target``.
    """
    path = Path(run_dir) / runs.REPORT
    atomic_write_text(path, render_report(report_facts(run_dir, target_texts)))
    return path


def png_b64(fig) -> str:
    return base64.b64encode(_figure_png(fig)).decode("ascii")


# ------------------------------------------------------------------ comparing runs


def _cell(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, (list, dict)):
        return json.dumps(v, ensure_ascii=False)
    return str(v)


def compare_runs(run_dirs: Sequence[Path | str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Runs side by side: ``(run names, rows)`` with one row per config key whose value differs
    between the runs, then the results (validation accuracy and macro-F1, target distribution,
    trainable parameters, rows, times per stage). A field a run lacks is an empty cell."""
    loaded = [read_run(d) for d in run_dirs]
    names = [r["dir"].name for r in loaded]
    if len(set(names)) < len(names):
        names = [str(r["dir"]) for r in loaded]
    # the resolved config (defaults filled in) where it loads, so a key a newer lorafit added does not
    # show as a difference; the raw YAML otherwise
    flat = [flatten(r["cfg"].to_dict() if r["cfg"] is not None else r["config"]) for r in loaded]
    rows: list[tuple[str, list[str]]] = []
    keys: list[str] = []
    for f in flat:
        keys += [k for k in f if k not in keys]
    for k in keys:
        if k == "name":
            continue
        values = [f.get(k, _ABSENT) for f in flat]
        if any(v != values[0] for v in values[1:]):
            rows.append((k, ["" if v is _ABSENT else _cell(v) for v in values]))

    def metric(fn) -> list[str]:
        """One results row: ``fn`` of each run's :class:`RunMetrics`; a run without the field (or
        without metrics.json) gets an empty cell."""
        out = []
        for r in loaded:
            try:
                v = fn(r["metrics"]) if r["metrics"] is not None else None
            except (KeyError, TypeError, IndexError, ValueError, ZeroDivisionError):
                v = None
            out.append("" if v is None else v)
        return out

    rows.append(("val accuracy", metric(lambda m: pct(m.val_accuracy))))
    rows.append(("val macro-F1", metric(lambda m: pct(m.val_macro_f1))))
    rows.append(("target predicted", metric(lambda m: " / ".join(map(str, m.target["predicted_distribution"])))))
    rows.append(("target prior", metric(lambda m: m.target["prior"]["mode"])))
    rows.append(("trainable params", metric(lambda m: f"{m.budget['trainable']:,}")))
    rows.append(("train rows", metric(lambda m: f"{m.train_rows:,}")))
    stages: list[str] = []
    for r in loaded:
        stages += [s for s in (r["metrics"].stage_seconds if r["metrics"] else {}) if s not in stages]
    stages.sort(key=lambda s: STAGE_ORDER.index(s) if s in STAGE_ORDER else len(STAGE_ORDER))
    for s in stages:
        rows.append((f"time: {s} (s)", metric(lambda m, s=s: f"{m.stage_seconds[s]:.1f}")))
    rows.append(("train time (s)", metric(lambda m: f"{m.train_seconds:.1f}")))
    rows.append(("wall time (s)", metric(lambda m: f"{m.wall_seconds:.1f}")))
    return names, rows


_ABSENT = object()
STAGE_ORDER = ["data", "startup", "model", "augment", "train", "selftrain", "save", "evaluate", "predict"]


def comparison_table(names: list[str], rows: list[tuple[str, list[str]]]):
    """A ``rich`` table of :func:`compare_runs`' output, for the terminal."""
    from rich.table import Table

    t = Table(title="lorafit runs", show_lines=False)
    t.add_column("", style="bold")
    for n in names:
        t.add_column(n, overflow="fold")
    for i, (key, cells) in enumerate(rows):
        t.add_row(key, *cells, end_section=bool(i + 1 < len(rows) and rows[i + 1][0] == "val accuracy"))
    return t


def comparison_records(names: list[str], rows: list[tuple[str, list[str]]]) -> list[dict]:
    """:func:`compare_runs`' output as one record per run (``run`` then each row's field), for JSON."""
    return [{"run": n, **{key: cells[i] for key, cells in rows}} for i, n in enumerate(names)]


def comparison_csv(names: list[str], rows: list[tuple[str, list[str]]]) -> str:
    """:func:`compare_runs`' output as CSV: a header ``field,<run>,<run>...``, then one line per field."""
    import csv
    import io

    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["field", *names])
    for key, cells in rows:
        w.writerow([key, *cells])
    return out.getvalue()


def comparison_html(names: list[str], rows: list[tuple[str, list[str]]]) -> str:
    body = table(["", *map(esc, names)], [[f"<b>{esc(k)}</b>", *map(esc, cells)] for k, cells in rows])
    return page("lorafit runs compared", f"{len(names)} runs: config keys that differ, then results",
                [("compare", "runs side by side", body)])


# ------------------------------------------------------------------ the model card


def model_card(cfg, metrics: Optional[RunFacts] = None) -> str:
    """A Hugging Face model card (README.md with YAML front matter) for a run's adapter: with the
    results when ``metrics`` is the finished run's :class:`RunMetrics`, else with the facts known
    before evaluation (:class:`RunFacts`) or none."""
    m = metrics if metrics is not None else RunFacts()
    return render_model_card(cfg, m, generator=generator_line(m.augment.get("generator")))


def write_model_card(run_dir: Path | str, cfg, metrics: Optional[RunFacts] = None) -> Path:
    """Write ``<run_dir>/model/README.md`` (atomically), replacing PEFT's placeholder card."""
    path = Path(run_dir) / "model" / "README.md"
    atomic_write_text(path, model_card(cfg, metrics))
    return path
