"""Exact trainable-parameter count from the model *config* alone (meta device, no weights).

The count is PEFT's own (``get_nb_trainable_parameters``), so it equals what training will see:
for the report's recipe, ``trainable params: 916,996 || all params: 125,463,560``.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from transformers.pytorch_utils import Conv1D

from lorafit.config import Config
from lorafit.errors import BudgetExceeded, LorafitError  # BudgetExceeded re-exported
from lorafit.model import build_model, load_base_model


@dataclass
class BudgetReport:
    trainable: int  # of every adapter of the run's model together: what the budget limits
    total: int
    max_trainable: int
    breakdown: dict = field(default_factory=dict)  # lora / biases / classifier head / other (one adapter)
    contributors: list = field(default_factory=list)  # [(module pattern, count)], largest first (one adapter)
    adapters: int = 1  # adapters the run's model averages (train.adapters, selftrain.students, ...)
    per_adapter: int = 0  # trainable parameters of one adapter (PEFT's count); 0: ``trainable``
    views: list = field(default_factory=list)  # [(view label, trainable)]: frozen views' heads (lorafit.views)

    def __post_init__(self):
        self.per_adapter = self.per_adapter or self.trainable

    @property
    def within(self) -> bool:
        return self.trainable <= self.max_trainable

    def times(self, adapters: int) -> "BudgetReport":
        """This one-adapter count for a model of ``adapters`` such adapters on one base (the frozen
        base counted once)."""
        n = self.per_adapter
        return BudgetReport(n * adapters, self.total + (adapters - 1) * n, self.max_trainable, self.breakdown,
                            self.contributors, adapters, n)

    def with_views(self, views: list) -> "BudgetReport":
        """This count plus the heads of frozen views (``[(label, trainable)]``), which the budget counts too."""
        n = sum(c for _, c in views)
        return BudgetReport(self.trainable + n, self.total + n, self.max_trainable, self.breakdown, self.contributors,
                            self.adapters, self.per_adapter, list(views))

    def peft_line(self) -> str:
        """PEFT's line for one adapter."""
        one = self.total - (self.adapters - 1) * self.per_adapter
        return (f"trainable params: {self.per_adapter:,} || all params: {one:,} || "
                f"trainable%: {100 * self.per_adapter / one:.4f}")

    def render(self) -> str:
        lines = [self.peft_line()]
        for k, v in self.breakdown.items():
            lines.append(f"  {k:<16} {v:>12,}")
        if self.adapters > 1:
            lines.append(f"  {f'x {self.adapters} adapters':<16} {self.adapters * self.per_adapter:>12,}  "
                         f"({self.adapters} x {self.per_adapter:,}: the run's model averages {self.adapters} adapters)")
        for label, n in self.views:
            lines.append(f"  {'+ view':<16} {n:>12,}  ({label})")
        if self.views:
            lines.append(f"  {'total':<16} {self.trainable:>12,}")
        lines.append(f"  {'budget':<16} {self.max_trainable:>12,}  "
                     + ("OK" if self.within else f"EXCEEDED by {self.trainable - self.max_trainable:,}"))
        return "\n".join(lines)

    def over_budget_line(self) -> str:
        """What ``lorafit budget`` says when the count is over the budget (it exits 3)."""
        top = ", ".join(f"{m} ({n:,})" for m, n in self.contributors)
        several = (f" ({self.adapters} adapters x {self.per_adapter:,}; fewer train.adapters / selftrain.students "
                   "also fit)" if self.adapters > 1 else "")
        return f"over budget by {self.trainable - self.max_trainable:,}{several}; largest contributors: {top}"

    def to_dict(self) -> dict:
        out = {"trainable": self.trainable, "total": self.total, "max_trainable": self.max_trainable,
               "within_budget": self.within, "breakdown": self.breakdown,
               "largest_contributors": [{"module": m, "params": n} for m, n in self.contributors]}
        if self.adapters > 1:
            out.update(adapters=self.adapters, trainable_per_adapter=self.per_adapter)
        if self.views:
            out["views"] = [{"view": label, "params": n} for label, n in self.views]
        return out


def _category(name: str) -> str:
    if "lora_" in name:
        return "lora matrices"
    if "modules_to_save" in name:
        return "classifier head" if re.search(r"classifier|score|out_proj", name) else "modules_to_save"
    if name.endswith(".bias"):
        return "biases"
    return "other"


def count_parameters(model, max_trainable: int) -> BudgetReport:
    trainable, total = model.get_nb_trainable_parameters()
    breakdown: dict[str, int] = defaultdict(int)
    groups: dict[str, int] = defaultdict(int)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        breakdown[_category(name)] += p.numel()
        pattern = re.sub(r"\.\d+\.", ".*.", name.replace("base_model.model.", "").replace(".default", ""))
        groups[re.sub(r"\.(weight|bias)$", "", pattern)] += p.numel()
    order = ["lora matrices", "biases", "classifier head", "modules_to_save", "other"]
    breakdown = {k: breakdown[k] for k in order if breakdown.get(k)}
    contributors = sorted(groups.items(), key=lambda kv: -kv[1])[:5]
    return BudgetReport(trainable, total, max_trainable, breakdown, contributors)


def count_budget(cfg: Config) -> BudgetReport:
    """Build the LoRA model on the meta device from its config and count parameters: one adapter's,
    times the adapters the run's model averages (:attr:`lorafit.config.Config.predictor_adapters`).
    The head has a row per class: ``data.labels``, or when null those of ``data.source``."""
    report = count_parameters(build_model(cfg, weights=False).model, cfg.budget.max_trainable)
    report = report.times(cfg.predictor_adapters) if cfg.predictor_adapters > 1 else report
    if cfg.views:
        from lorafit.views import view_parameters

        report = report.with_views(view_parameters(cfg))
    return report


def check_budget(cfg: Config) -> BudgetReport:
    """Raise :class:`BudgetExceeded` (before any weight is loaded) when over budget."""
    report = count_budget(cfg)
    if not report.within:
        top = ", ".join(f"{m} ({n:,})" for m, n in report.contributors)
        several = (f" ({report.adapters} adapters x {report.per_adapter:,}: fewer train.adapters / selftrain.students "
                   "also fit)" if report.adapters > 1 else "")
        several += "".join(f"; view {label}: {n:,}" for label, n in report.views)
        raise BudgetExceeded(
            f"trainable parameters {report.trainable:,}{several} exceed budget.max_trainable={report.max_trainable:,} "
            f"by {report.trainable - report.max_trainable:,}. Largest contributors: {top}. "
            "Lower lora.r, drop target modules, set lora.bias=none, or restrict lora.layers_to_transform."
        )
    return report


# ------------------------------------------------------------------ the largest rank that fits (`lorafit budget --fit`)

# target_modules choices per family, recognised by the names of the model's linear layers:
# (label, modules). "attention" adds the attention output projection; the last adds the feed-forward layers.
FIT_CHOICES = [
    ({"query", "key", "value"}, [  # BERT, RoBERTa, MiniLM, ELECTRA, XLM-R
        ("query,value", ["query", "value"]),
        ("query,key,value", ["query", "key", "value"]),
        ("attention (q,k,v,out)", ["query", "key", "value", "attention.output.dense"]),
        ("attention + feed-forward", ["query", "key", "value", "dense"])]),
    ({"q_lin", "k_lin", "v_lin"}, [  # DistilBERT
        ("q_lin,v_lin", ["q_lin", "v_lin"]),
        ("q_lin,k_lin,v_lin", ["q_lin", "k_lin", "v_lin"]),
        ("attention (q,k,v,out)", ["q_lin", "k_lin", "v_lin", "out_lin"]),
        ("attention + feed-forward", ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"])]),
    ({"query_proj", "key_proj", "value_proj"}, [  # DeBERTa-v2/v3
        ("query_proj,value_proj", ["query_proj", "value_proj"]),
        ("query_proj,key_proj,value_proj", ["query_proj", "key_proj", "value_proj"]),
        ("attention (q,k,v,out)", ["query_proj", "key_proj", "value_proj", "attention.output.dense"]),
        ("attention + feed-forward", ["query_proj", "key_proj", "value_proj", "dense"])]),
    ({"q_proj", "k_proj", "v_proj"}, [  # Llama, Mistral, Qwen, OPT, ...
        ("q_proj,v_proj", ["q_proj", "v_proj"]),
        ("q_proj,k_proj,v_proj", ["q_proj", "k_proj", "v_proj"]),
        ("attention (q,k,v,o)", ["q_proj", "k_proj", "v_proj", "o_proj", "out_proj"]),
        ("attention + MLP", ["q_proj", "k_proj", "v_proj", "o_proj", "out_proj", "gate_proj", "up_proj", "down_proj",
                             "fc1", "fc2"])]),
    ({"c_attn"}, [  # GPT-2
        ("c_attn", ["c_attn"]),
        ("c_attn,c_proj", ["c_attn", "c_proj"]),
        ("c_attn,c_proj,c_fc", ["c_attn", "c_proj", "c_fc"])]),
]
_HEAD_NAMES = ("classifier", "score", "pooler", "lm_head")


def linear_layer_names(cfg: Config) -> tuple[set[str], int]:
    """Leaf names of the encoder's linear layers (not the head's), and the model's width, from the
    model config alone (meta device)."""
    base = load_base_model(cfg, weights=False).model
    names = {n.rsplit(".", 1)[-1] for n, m in base.named_modules()
             if isinstance(m, (torch.nn.Linear, Conv1D)) and not any(h in n.split(".") for h in _HEAD_NAMES)}
    c = base.config
    width = getattr(c, "hidden_size", None) or getattr(c, "n_embd", None) or getattr(c, "d_model", None) or 4096
    return names, int(width)


def fit_choices(cfg: Config, names: set[str]) -> list[tuple[str, list[str]]]:
    """Built-in target_modules choices for this model (only modules it has), plus the config's own."""
    choices: list[tuple[str, list[str]]] = []
    for marker, rows in FIT_CHOICES:
        if marker <= names:
            for label, modules in rows:
                kept = [m for m in modules if m.rsplit(".", 1)[-1] in names]
                if kept and kept not in [c for _, c in choices]:
                    choices.append((label, kept))
            break
    else:  # an unknown family: every linear layer name on its own, then all of them
        choices = [(n, [n]) for n in sorted(names)] + ([("all linear", sorted(names))] if len(names) > 1 else [])
    own = list(cfg.lora.target_modules)
    if own not in [c for _, c in choices]:
        choices.append((f"{','.join(own)} (config)", own))
    return choices


def largest_rank(count, limit: int, r_max: int) -> "int | None":
    """The largest r in [1, r_max] with ``count(r) <= limit`` (count grows with r), or None when
    even r=1 does not fit. Starts from the linear estimate (LoRA counts are linear in r), then
    bisects with exact counts, so it needs a handful of counts."""
    if count(1) > limit:
        return None
    slope = count(2) - count(1)
    guess = r_max if slope <= 0 else max(1, min(r_max, 1 + (limit - count(1)) // slope))
    lo, hi = 1, r_max + 1  # count(lo) <= limit < count(hi); hi = r_max + 1 stands for "beyond"
    if count(guess) <= limit:
        lo = guess
        if guess < r_max and count(guess + 1) > limit:
            hi = guess + 1
    else:
        hi = guess
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) <= limit else (lo, mid)
    return lo


def fit_ranks(cfg: Config, biases: tuple[str, ...] = ("none", "all")) -> dict:
    """For each target_modules choice and bias setting: the largest lora.r within
    ``budget.max_trainable`` and its exact trainable count (meta-device counts only; the other
    lora keys, the head and ``modules_to_save`` as in ``cfg``)."""
    if cfg.data.labels is None:  # inferred from data.source once, not per count
        from lorafit.data import resolve_labels

        cfg = resolve_labels(cfg)
    count_budget(cfg)  # the config as it is counts (or fails), and says once where the model config came from
    model_log = logging.getLogger("lorafit.model")
    level = model_log.level
    model_log.setLevel(logging.WARNING)  # the many counts below do not
    try:
        names, width = linear_layer_names(cfg)
        rows = [_fit_row(cfg, label, modules, biases, width) for label, modules in fit_choices(cfg, names)]
    finally:
        model_log.setLevel(level)
    return {"model": cfg.model.name, "budget": cfg.budget.max_trainable, "max_r": width, "biases": list(biases),
            "adapters": cfg.predictor_adapters,
            "rows": rows}


def _fit_row(cfg: Config, label: str, modules: list[str], biases: tuple[str, ...], width: int) -> dict:
    """One row of :func:`fit_ranks`: per bias setting, the largest lora.r of that target_modules choice."""
    row: dict = {"target_modules": label, "modules": modules}
    for bias in biases:
        memo: dict[int, int] = {}

        def count(r: int) -> int:
            if r not in memo:
                lora = cfg.lora.model_copy(update={"r": r, "target_modules": modules, "bias": bias})
                memo[r] = count_budget(cfg.model_copy(update={"lora": lora})).trainable
            return memo[r]

        try:
            r = largest_rank(count, cfg.budget.max_trainable, width)
            row[bias] = {"r": r, "trainable": count(r) if r else None, "at_r1": count(1)}
        except LorafitError as e:  # the model has no such module
            row[bias] = {"r": None, "trainable": None, "error": str(e)[:120]}
    return row


def render_fit(fit: dict) -> str:
    """``fit_ranks`` as a text table."""
    biases = fit["biases"]
    w = max(len("target_modules"), *(len(r["target_modules"]) for r in fit["rows"]))
    head = f"{'target_modules':<{w}}" + "".join(f"  {'bias=' + b + ': max r':>16} {'trainable':>11}" for b in biases)
    lines = [f"largest lora.r within budget.max_trainable={fit['budget']:,} for {fit['model']} "
             f"(r <= {fit['max_r']}; other lora keys, head and modules_to_save as configured"
             + (f"; counts are of all {fit['adapters']} adapters the run's model averages" if fit.get("adapters", 1) > 1
                else "") + ")", head,
             "-" * len(head)]
    for row in fit["rows"]:
        cells = ""
        for b in biases:
            c = row[b]
            if c["r"] is None:
                why = "no such module" if "error" in c else f"r=1: {c['at_r1']:,}"
                cells += f"  {'-':>16} {why:>11}"
            else:
                cells += f"  {c['r']:>16} {c['trainable']:>11,}"
        lines.append(f"{row['target_modules']:<{w}}{cells}")
    return "\n".join(lines)
