"""Which label prior should a run's submission get, and does temperature scaling change the answer?

For each trained run: the model's probabilities on the dev set, on the labeled target proxies and
(from the run's saved ``target_probs.npz``) on the unlabeled target set. A temperature ``T`` is
fitted on dev by negative log-likelihood (temperature scaling, Guo et al. 2017); then each prior
adjustment is fitted on the *target* probabilities and carried to the proxies by its per-class
factors, exactly as a submission gets it (``lorafit evaluate --prior-fit target``):
``none``, ``uniform``, ``em`` (Saerens et al. EM) on the raw probabilities, and ``em`` on the
temperature-scaled ones (what the label-shift literature recommends: EM on calibrated
posteriors). Prints one table row per run and adjustment, and the estimated target priors.

    .venv/bin/python scripts/calibration_study.py runs/A runs/B ... \
        --proxy judge=runs/_data/target_judge_proxy.csv --proxy corr=runs/_data/synthetic_proxy_corroborated.csv

The probabilities are cached in ``RUN/calibration_probs.npz`` (delete it to recompute).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import datasets
import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

import lorafit
from lorafit.data.io import load_labeled
from lorafit.predict import label_prior, read_target_probs
from lorafit.prior import adjust_predictions, reweight


def fit_temperature(logp: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 that minimises the NLL of softmax(logp / T) on labeled rows."""
    def nll(log_t: float) -> float:
        z = log_softmax(logp / np.exp(log_t), axis=1)
        return float(-z[np.arange(len(labels)), labels].mean())
    return float(np.exp(minimize_scalar(nll, bounds=(-3, 3), method="bounded").x))


def scaled(probs: np.ndarray, t: float) -> np.ndarray:
    return np.exp(log_softmax(np.log(np.maximum(probs, 1e-12)) / t, axis=1))


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    out = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            out += m.mean() * abs((pred[m] == labels[m]).mean() - conf[m].mean())
    return float(out)


def run_probs(run: Path, sets: dict[str, str]) -> dict[str, np.ndarray]:
    cache = run / "calibration_probs.npz"
    have = dict(np.load(cache)) if cache.is_file() else {}
    clf = None
    for name, spec in sets.items():
        if f"{name}_probs" in have:
            continue
        clf = clf or lorafit.load(run)
        ds = load_labeled(spec, clf.config.data.text_column, clf.config.data.label_column, clf.config.data.labels)
        have[f"{name}_probs"] = clf.predict_proba(list(ds["text"]))
        have[f"{name}_labels"] = np.asarray(ds["label"])
    np.savez(cache, **have)
    return have


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--dev", default="../shared/data/agnews/dev.csv")
    ap.add_argument("--proxy", action="append", default=[], help="NAME=FILE, a labeled proxy of the target set")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    a = ap.parse_args()
    proxies = dict(p.split("=", 1) for p in a.proxy)
    rows = []
    for run in a.runs:
        got = run_probs(run, {"dev": a.dev, **proxies})
        dev_p, dev_y = got["dev_probs"], got["dev_labels"]
        t = fit_temperature(np.log(np.maximum(dev_p, 1e-12)), dev_y)
        target, _ = read_target_probs(run / "target_probs.npz")
        k = target.shape[1]
        train_prior = label_prior(datasets.load_from_disk(str(run / "data" / "train"))["label"], k)
        print(f"{run}: T = {t:.3f}; dev ECE {ece(dev_p, dev_y):.4f} -> {ece(scaled(dev_p, t), dev_y):.4f}; "
              f"train prior {np.round(train_prior, 3).tolist()}")
        for label, mode, temp in (("none", "none", 1.0), ("uniform", "uniform", 1.0), ("em", "em", 1.0),
                                  ("em after T", "em", t), ("uniform after T", "uniform", t)):
            # fitted once on the target probabilities, carried to each proxy (lorafit.prior.carry_adjustment)
            _, info = adjust_predictions(scaled(target, temp), mode, train_prior=train_prior)
            row = {"run": str(run), "adjustment": label, "T": round(t, 4),
                   "prior": None if info["prior"] is None else [round(x, 4) for x in info["prior"]]}
            for name in proxies:
                adj = reweight(scaled(got[f"{name}_probs"], temp), info["class_weights"])
                row[name] = round(100 * float((adj.argmax(1) == got[f"{name}_labels"]).mean()), 2)
            rows.append(row)
            print("  " + json.dumps(row))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
