"""Exact trainable-parameter count from the model *config* alone (meta device, no weights).

The count is PEFT's own (``get_nb_trainable_parameters``), so it equals what training will see:
for the report's recipe, ``trainable params: 916,996 || all params: 125,463,560``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

from lorafit.config import Config
from lorafit.model import build_model


class BudgetExceeded(RuntimeError):
    """Trainable parameters exceed ``budget.max_trainable``."""


@dataclass
class BudgetReport:
    trainable: int
    total: int
    max_trainable: int
    breakdown: dict = field(default_factory=dict)  # lora / biases / classifier head / other
    contributors: list = field(default_factory=list)  # [(module pattern, count)], largest first

    @property
    def within(self) -> bool:
        return self.trainable <= self.max_trainable

    def peft_line(self) -> str:
        return (f"trainable params: {self.trainable:,} || all params: {self.total:,} || "
                f"trainable%: {100 * self.trainable / self.total:.4f}")

    def render(self) -> str:
        lines = [self.peft_line()]
        for k, v in self.breakdown.items():
            lines.append(f"  {k:<16} {v:>12,}")
        lines.append(f"  {'budget':<16} {self.max_trainable:>12,}  "
                     + ("OK" if self.within else f"EXCEEDED by {self.trainable - self.max_trainable:,}"))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"trainable": self.trainable, "total": self.total, "max_trainable": self.max_trainable,
                "within_budget": self.within, "breakdown": self.breakdown,
                "largest_contributors": [{"module": m, "params": n} for m, n in self.contributors]}


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
    """Build the LoRA model on the meta device from its config and count parameters."""
    return count_parameters(build_model(cfg, weights=False), cfg.budget.max_trainable)


def check_budget(cfg: Config) -> BudgetReport:
    """Raise :class:`BudgetExceeded` (before any weight is loaded) when over budget."""
    report = count_budget(cfg)
    if not report.within:
        top = ", ".join(f"{m} ({n:,})" for m, n in report.contributors)
        raise BudgetExceeded(
            f"trainable parameters {report.trainable:,} exceed budget.max_trainable={report.max_trainable:,} "
            f"by {report.trainable - report.max_trainable:,}. Largest contributors: {top}. "
            "Lower lora.r, drop target modules, set lora.bias=none, or restrict lora.layers_to_transform."
        )
    return report
