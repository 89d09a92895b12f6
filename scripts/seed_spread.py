"""Mean and spread over seeds of finished runs, for the README's recipe comparisons.

Each group is ``NAME=RUN,RUN,...`` (run folders under ``--runs``, one per seed). A run gives its
dev accuracy (metrics.json ``val_accuracy``), its proxy accuracy without and with the uniform prior
(``proxy-none.json`` / ``proxy-uniform.json``, written by ``lorafit evaluate RUN PROXY -o ...``)
and on the corroborated proxy of ``scripts/proxy_split.py``, plain (``corr-none.json``: ``lorafit
evaluate RUN CORROBORATED -o ...``) and with the prior fitted on the run's target set
(``corr-target.json``: ``lorafit evaluate RUN CORROBORATED --prior uniform --prior-fit target -o
...``). Prints one markdown row per group: mean +- sample standard deviation, and the per-seed
values. ``RUN:teacher`` takes the numbers of the run's first teacher instead, and
``RUN:student`` those of its last round's model (a teacher/student run logs both in metrics.json
``selftrain``); a run whose model is that last round's (not an ensemble) and that has no proxy
files also takes its proxy accuracy from there. Run from the repo root:

    .venv/bin/python scripts/seed_spread.py "teacher=e1:teacher,s1:teacher" "new=e2,s1,s2" "old=c42,c1,c2"
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from lorafit.runs import METRICS, read_metrics


def read_run(spec: str, runs: Path) -> dict:
    """The numbers of one run (``RUN`` or ``RUN:teacher``); a missing proxy is None, a missing
    metrics.json an error."""
    name, _, part = spec.partition(":")
    m = read_metrics(runs / name)
    if m is None:
        raise SystemExit(f"{runs / name / METRICS}: not found (is the run finished?)")
    rounds = m.selftrain
    if part:
        if part not in ("teacher", "student") or not rounds:
            raise SystemExit(f"{spec}: only RUN:teacher and RUN:student are known, for a run with self-training rounds")
        if part == "teacher":
            r = rounds[0]
            return {"dev": r.teacher_val_accuracy, "proxy": r.teacher_proxy_accuracy,
                    "proxy_prior": r.teacher_proxy_accuracy_prior, "corroborated": None, "corroborated_prior": None}
        r = rounds[-1]
        return {"dev": r.val_accuracy, "proxy": r.proxy_accuracy, "proxy_prior": r.proxy_accuracy_prior,
                "corroborated": None, "corroborated_prior": None}
    out = {"dev": m.val_accuracy}
    ensemble = (m.ensemble or {}).get("adapters", 1) > 1
    last = rounds[-1] if rounds and not ensemble else None
    for key, file, logged in (("proxy", "proxy-none.json", "proxy_accuracy"),
                              ("proxy_prior", "proxy-uniform.json", "proxy_accuracy_prior"),
                              ("corroborated", "corr-none.json", None), ("corroborated_prior", "corr-target.json", None)):
        f = runs / name / file
        out[key] = (json.loads(f.read_text())["accuracy"] if f.is_file()
                    else getattr(last, logged) if last is not None and logged else None)
    return out


def spread(values: list) -> str:
    """``mean ± sd (a / b / c)`` in percent; ``n/a`` when a value is missing."""
    if not values or any(v is None for v in values):
        return "n/a"
    pct = [100 * v for v in values]
    sd = statistics.stdev(pct) if len(pct) > 1 else 0.0
    return f"{statistics.mean(pct):.2f} ± {sd:.2f} ({' / '.join(f'{v:.2f}' for v in pct)})"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("groups", nargs="+", help="NAME=RUN,RUN,...")
    ap.add_argument("--runs", default="runs", help="the folder holding the run folders")
    a = ap.parse_args(argv)
    print("| recipe | runs | dev acc % | proxy acc % | proxy + prior % | corroborated proxy % "
          "| corroborated proxy + target prior % |")
    print("|---|---|---|---|---|---|---|")
    for group in a.groups:
        name, sep, names = group.partition("=")
        if not sep or not names:
            raise SystemExit(f"{group!r}: expected NAME=RUN,RUN,...")
        rows = [read_run(r, Path(a.runs)) for r in names.split(",")]
        print(f"| {name} | {names.replace(',', ', ')} | {spread([r['dev'] for r in rows])} | "
              f"{spread([r['proxy'] for r in rows])} | {spread([r['proxy_prior'] for r in rows])} | "
              f"{spread([r['corroborated'] for r in rows])} | {spread([r['corroborated_prior'] for r in rows])} |")


if __name__ == "__main__":
    main(sys.argv[1:])
