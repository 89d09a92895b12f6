"""Which weights should a run's frozen views get? A grid over the weights, judged over several runs.

For each trained run that has views (``model/views``): the adapters' probabilities alone and each
saved view's probabilities on the dev set and on any labeled target proxies (``--proxy``), then
every weighting on a grid (each view 0 to 0.45, the views' sum at most 0.8, the adapters the
rest) is scored on every run. Prints the current weights' row and the best rows by the mean dev
accuracy over the runs, with the proxies beside them (plain argmax, and with ``--prior uniform``
the submission's uniform prior fitted on the run's target texts and carried to the proxy, as
``lorafit evaluate --prior uniform --prior-fit target`` does). Choose on dev; read the proxies as
a check that was not used to choose.

    .venv/bin/python scripts/view_weights.py runs/A runs/B runs/C \\
        --proxy judge=runs/_data/target_judge_proxy.csv --proxy corr=runs/_data/synthetic_proxy_corroborated.csv

The probabilities are cached in ``RUN/view_weights_probs.npz`` (delete it to recompute).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from scipy.special import softmax

GRID = (0.0, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45)


def run_probs(run: Path, sets: dict[str, str], with_target: bool) -> dict[str, np.ndarray]:
    """``{set}_adapters``, ``{set}_view{i}`` and ``{set}_labels`` for each labeled set (and the target set's
    probabilities without labels when ``with_target``)."""
    cache = run / "view_weights_probs.npz"
    have = dict(np.load(cache, allow_pickle=False)) if cache.is_file() else {}
    wanted = {**sets, **({"target": None} if with_target else {})}
    if all(f"{name}_adapters" in have for name in wanted):
        return have
    from lorafit.config import load_config
    from lorafit.data.io import load_labeled, load_unlabeled
    from lorafit.inference import predict_with_config
    from lorafit.model import load_trained
    from lorafit.views import load_views, view_probabilities

    cfg = load_config(run / "config.yaml")
    model, tok, cfg, merge = load_trained(run)
    views = load_views(run / "model")
    if not views:
        raise SystemExit(f"{run}: the run has no views (model/views)")
    for name, spec in wanted.items():
        if f"{name}_adapters" in have:
            continue
        if spec is None:
            texts = list(load_unlabeled(cfg.data.target, cfg.data.target_text_column)["text"])
        else:
            ds = load_labeled(spec, cfg.data.text_column, cfg.data.label_column, cfg.data.labels)
            texts, have[f"{name}_labels"] = list(ds["text"]), np.asarray(ds["label"])
        have[f"{name}_adapters"] = softmax(predict_with_config(model, tok, cfg, texts, merge_adapters=merge), axis=1)
        for i, p in enumerate(view_probabilities(views, texts, cfg)):
            have[f"{name}_view{i}"] = p
    have["weights"] = np.array([v.weight for v in views])
    np.savez(cache, **have)
    return have


def mixture(got: dict, name: str, weights) -> np.ndarray:
    p = (1.0 - sum(weights)) * got[f"{name}_adapters"]
    for i, w in enumerate(weights):
        p = p + w * got[f"{name}_view{i}"]
    return p


def scores(got: dict, weights, proxies, prior: bool) -> dict[str, float]:
    from lorafit.prior import carry_adjustment

    out = {"dev": 100 * float((mixture(got, "dev", weights).argmax(1) == got["dev_labels"]).mean())}
    for name in proxies:
        p, y = mixture(got, name, weights), got[f"{name}_labels"]
        out[name] = 100 * float((p.argmax(1) == y).mean())
        if prior:
            adjusted, _ = carry_adjustment(p, mixture(got, "target", weights), "uniform")
            out[f"{name}+prior"] = 100 * float((adjusted.argmax(1) == y).mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--dev", default="../shared/data/agnews/dev.csv")
    ap.add_argument("--proxy", action="append", default=[], help="NAME=FILE, a labeled proxy of the target set")
    ap.add_argument("--prior", choices=["none", "uniform"], default="none",
                    help="uniform: also score the proxies with the submission's uniform prior (predicts the target set)")
    ap.add_argument("--top", type=int, default=10)
    a = ap.parse_args()
    proxies = dict(p.split("=", 1) for p in a.proxy)
    got = [run_probs(r, {"dev": a.dev, **proxies}, a.prior == "uniform") for r in a.runs]
    n = len(got[0]["weights"])
    if any(len(g["weights"]) != n for g in got):
        raise SystemExit("the runs have different numbers of views")
    rows = []
    for w in itertools.product(GRID, repeat=n):
        if sum(w) <= 0.8 + 1e-9:
            per_run = [scores(g, w, proxies, a.prior == "uniform") for g in got]
            mean = {k: float(np.mean([s[k] for s in per_run])) for k in per_run[0]}
            rows.append((mean["dev"], w, mean, [s["dev"] for s in per_run]))
    rows.sort(key=lambda r: -r[0])
    current = tuple(float(x) for x in got[0]["weights"])
    cols = list(rows[0][2])
    print("weights (views; adapters get the rest) | " + " | ".join(f"{c} (mean)" for c in cols) + " | dev per run")
    for label, row in [("current", next(r for r in rows if np.allclose(r[1], current)))] + \
            [(f"#{i + 1}", r) for i, r in enumerate(rows[:a.top])] + \
            [("no views", next(r for r in rows if not any(r[1])))]:
        _, w, mean, per = row
        print(f"{label:>8} {list(w)} | " + " | ".join(f"{mean[c]:.2f}" for c in cols)
              + " | " + " / ".join(f"{x:.2f}" for x in per))


if __name__ == "__main__":
    main()
