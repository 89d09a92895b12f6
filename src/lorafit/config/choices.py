"""Optimizer and scheduler names, as the installed transformers defines them.

``train.optim`` and ``train.lr_scheduler`` are checked against transformers' own enums
(``transformers.training_args.OptimizerNames``, ``transformers.trainer_utils.SchedulerType``), so a
release that adds or drops a name needs no change here. Importing transformers takes seconds, so
when it is not loaded yet the names are read from its installed source files instead (an AST walk
of the two classes, ~20 ms): a bad config still fails in the first second.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from functools import lru_cache
from pathlib import Path
from typing import Optional

from lorafit.config.types import invalid


def _source_file(module: str) -> Optional[Path]:
    """The installed source file of ``module``, found without importing it: ``find_spec`` of a
    submodule imports its parent package (``transformers``: seconds), so only the top-level
    package is looked up and the submodule's file is found in its folder."""
    top, _, rest = module.partition(".")
    spec = importlib.util.find_spec(top)
    if spec is None:
        return None
    if not rest:
        return Path(spec.origin) if spec.origin else None
    for folder in spec.submodule_search_locations or ():
        path = Path(folder, *rest.split(".")).with_suffix(".py")
        if path.is_file():
            return path
    return None


def _enum_values_from_source(module: str, cls: str) -> tuple[str, ...]:
    origin = _source_file(module)
    if origin is None:
        return ()
    tree = ast.parse(origin.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            return tuple(s.value.value for s in node.body if isinstance(s, ast.Assign)
                         and isinstance(s.value, ast.Constant) and isinstance(s.value.value, str))
    return ()


@lru_cache(maxsize=None)
def enum_values(module: str, cls: str) -> tuple[str, ...]:
    """The values of the string enum ``module.cls`` of the installed package."""
    loaded = sys.modules.get(module)
    if loaded is not None and hasattr(loaded, cls):
        return tuple(m.value for m in getattr(loaded, cls))
    return _enum_values_from_source(module, cls)


def optimizer_names() -> tuple[str, ...]:
    return enum_values("transformers.training_args", "OptimizerNames")


def scheduler_names() -> tuple[str, ...]:
    return enum_values("transformers.trainer_utils", "SchedulerType")


def _one_of(value: str, names: tuple[str, ...], what: str) -> str:
    if not names or value in names:  # names unreadable: the Trainer checks them itself
        return value
    import difflib  # only on an error

    close = sorted((n for n in names if n.startswith(value)), key=len)[:1] or difflib.get_close_matches(value, names, 1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise invalid(f"must be one of {len(names)} {what} of the installed transformers ({', '.join(names)}), got "
                  f"{value!r}{hint}")


def check_optimizer(value: str) -> str:
    return _one_of(value, optimizer_names(), "optimizer names")


def check_scheduler(value: str) -> str:
    return _one_of(value, scheduler_names(), "scheduler names")
