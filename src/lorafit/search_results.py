"""The results of a search: the leaderboard (rows, CSV, a rich table) and the plot of the objective
against trainable parameters with the Pareto front marked."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from lorafit.io_utils import atomic_write_bytes, atomic_write_text
from lorafit.search_space import Dimension


def is_infeasible(t) -> bool:
    """A trial pruned before training because it was over budget."""
    return t.state == TrialState.PRUNED and "infeasible" in t.user_attrs


STATE_NAMES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
               TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}


def leaderboard(study: optuna.Study, dims: list[Dimension]) -> list[dict]:
    """One row per trial: the best first (completed by objective, then pruned by their last
    validation accuracy, then infeasible, failed, running)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        ua = t.user_attrs
        state = "infeasible" if is_infeasible(t) else STATE_NAMES.get(t.state, str(t.state))
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        note = ua.get("infeasible") or ua.get("error") or ""
        if state == "pruned" and t.intermediate_values:
            note = f"pruned at step {max(t.intermediate_values)}"
        if "retry_of" in ua:
            note = (note + "; " if note else "") + f"retry of trial {ua['retry_of']}"
        seconds = ua.get("seconds")
        if seconds is None and t.datetime_start and t.datetime_complete and state not in ("infeasible",):
            seconds = round((t.datetime_complete - t.datetime_start).total_seconds(), 1)
        # Optuna gives a pruned trial its last intermediate value; only a completed trial has an objective
        row = {"trial": t.number, "state": state, "objective": t.value if t.state == TrialState.COMPLETE else None,
               "val_accuracy": ua.get("val_accuracy", last), "trainable": ua.get("trainable"), "seconds": seconds}
        row.update({d.key: t.params.get(d.key) for d in dims})
        row.update({"folder": ua.get("folder") if state not in ("infeasible", "waiting") else None, "note": note})
        rows.append(row)
    order = {"complete": 0, "pruned": 1, "infeasible": 2, "failed": 3, "running": 4, "waiting": 5}

    def key(r):
        score = r["objective"] if r["state"] == "complete" else r["val_accuracy"]
        return order.get(r["state"], 9), -(score if score is not None else -math.inf), r["trial"]

    return sorted(rows, key=key)


def pareto_front(points: list[tuple[int, float, Any]]) -> list[tuple[int, float, Any]]:
    """Points ``(trainable, objective, tag)`` that no other point beats on both (fewer or equal
    parameters and a higher or equal objective, one strictly), by increasing trainable count."""
    front, best = [], -math.inf
    for p in sorted(points, key=lambda p: (p[0], -p[1])):
        if p[1] > best:
            front.append(p)
            best = p[1]
    return front


def write_csv(rows: list[dict], path: Path) -> None:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def plot_search(rows: list[dict], budget: int, path: Path, title: str = "") -> None:
    """Objective against trainable parameters: completed trials, the Pareto front, pruned trials
    at their last validation accuracy, infeasible ones on the x axis, and the budget line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    done = [(r["trainable"], r["objective"], r["trial"]) for r in rows if r["state"] == "complete"]
    pruned = [(r["trainable"], r["val_accuracy"], r["trial"]) for r in rows
              if r["state"] == "pruned" and r["val_accuracy"] is not None]
    infeasible = [r["trainable"] for r in rows if r["state"] == "infeasible" and r["trainable"]]
    ys = [y for _, y, _ in done + pruned]
    low = min(ys) - 0.02 if ys else 0.0
    if pruned:
        ax.scatter([x for x, _, _ in pruned], [y for _, y, _ in pruned], marker="x", color="0.55",
                   label="pruned (last val. accuracy)", zorder=2)
        for x, y, n in pruned:
            ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7, color="0.45")
    if infeasible:
        ax.scatter(infeasible, [low] * len(infeasible), marker="|", s=200, color="tab:red",
                   label="over budget (not trained)", zorder=2)
    if done:
        ax.scatter([x for x, _, _ in done], [y for _, y, _ in done], color="tab:blue", label="completed", zorder=3)
        for x, y, n in done:
            ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        front = pareto_front(done)
        ax.step([x for x, _, _ in front], [y for _, y, _ in front], where="post", color="tab:orange", zorder=1)
        ax.scatter([x for x, _, _ in front], [y for _, y, _ in front], marker="*", s=160, color="tab:orange",
                   label="Pareto front", zorder=4)
    ax.axvline(budget, color="tab:red", linestyle="--", linewidth=1, label=f"budget {budget:,}")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("objective")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1e3:,.0f}k"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title, fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _cell(v) -> str:
    return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def render_leaderboard(result: dict, console=None) -> None:
    """Print the leaderboard as a rich table, then where the files are."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:  # a log file: do not squeeze the table into 80 columns
            console = Console(width=max(console.width, 200))
    pareto = set(result["pareto"])
    table = Table(title=f"lorafit search leaderboard ({result['dir']})", title_justify="left")
    for col, just in [("trial", "right"), ("state", "left"), ("objective", "right"), ("val acc", "right"),
                      ("trainable", "right"), ("time s", "right")]:
        table.add_column(col, justify=just)
    for k in result["keys"]:
        table.add_column(k)
    table.add_column("note")

    def pct(v):
        return "" if v is None else f"{100 * v:.2f}%"

    for r in result["rows"]:
        star = " *" if r["state"] == "complete" and r["trial"] in pareto else ""
        table.add_row(str(r["trial"]) + star, r["state"], pct(r["objective"]), pct(r["val_accuracy"]),
                      "" if r["trainable"] is None else f"{r['trainable']:,}",
                      "" if r["seconds"] is None else f"{r['seconds']:.0f}",
                      *[_cell(r[k]) for k in result["keys"]], r["note"])
    console.print(table)
    console.print("* on the Pareto front (no other trial has both fewer trainable parameters and a higher objective)")
    d = result["dir"]
    best_file = f", {result['best_config']}" if result["best_config"] else ""
    console.print(f"files: {d}/leaderboard.csv, {d}/search.png{best_file}")
    if result["best"]:
        b = result["best"]
        console.print(f"best: trial {b['trial']}, objective {pct(b['objective'])}, {b['trainable']:,} trainable; "
                      f"run it with: lorafit run {result['best_config']}")
