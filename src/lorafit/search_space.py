"""The search space of ``lorafit search``: its dimensions, checked once when a search starts.

``search.space`` maps config keys to what to try: ``{choices: [v1, v2]}`` (values of that key),
``{choices: {name: value}}`` (named choices, e.g. lists of target modules), or a range ``{low: L,
high: H}`` for an int or float key (the key's type decides which), with optional ``log: true``
and ``step``. Every choice and both ends of every range are checked against the key's type and
bounds, and then as a whole config (a value can break a cross-field rule); ``search.objective``
and ``search.enqueue`` are checked too. ``lorafit run`` ignores the section.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from pathlib import Path
from typing import Annotated, Any, Optional, Union

import optuna
from pydantic import BaseModel, TypeAdapter, ValidationError

from lorafit.config import Config, ConfigError, describe_error, load_config, merge_overrides
from lorafit.config.types import Bool, Float, Int

SEARCH_OBJECTIVES = ("val_accuracy", "val_macro_f1")  # and file:PATH (accuracy on a labeled file)
_PRIMITIVE = (type(None), bool, int, float, str)


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}': {msg}")


def objective_terms(objective) -> list[tuple[str, float]]:
    """``search.objective`` as ``[(term, weight)]``; a :class:`ConfigError` names a bad term."""
    items = [(objective, 1.0)] if isinstance(objective, str) else (
        list(objective.items()) if isinstance(objective, dict) else None)
    _check(bool(items), "search.objective", "must be val_accuracy, val_macro_f1, file:PATH or a mapping {term: weight}")
    terms = []
    for term, weight in items:
        _check(isinstance(term, str) and (term in SEARCH_OBJECTIVES or (term.startswith("file:") and len(term) > 5)),
               "search.objective", f"unknown term {term!r}; use val_accuracy, val_macro_f1 or file:PATH")
        _check(isinstance(weight, (int, float)) and not isinstance(weight, bool) and math.isfinite(weight),
               f"search.objective.{term}", f"weight must be a number, got {weight!r}")
        terms.append((term, float(weight)))
    _check(any(w != 0 for _, w in terms), "search.objective", "needs a non-zero weight")
    return terms


def _plain(tp):
    """The annotation without pydantic's ``Annotated`` metadata (also inside Optional)."""
    if typing.get_origin(tp) is Annotated:
        return _plain(typing.get_args(tp)[0])
    if typing.get_origin(tp) is Union:
        return Union[tuple(_plain(a) for a in typing.get_args(tp))]
    return tp


def _is_section(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def config_field_type(key: str):
    """The type of the config field ``key`` (``lora.r`` -> int, ``lora.layers_to_transform`` ->
    Optional[list[int]]); a :class:`ConfigError` when ``key`` names no field or a whole section."""
    cls, parts, tp = Config, key.split("."), None
    for i, part in enumerate(parts):
        fields = cls.model_fields
        if part not in fields:
            raise ConfigError(f"config key 'search.space.{key}': '{'.'.join(parts[:i + 1])}' is not a config key; "
                              f"valid keys here: {', '.join(sorted(fields))}")
        tp = fields[part].annotation
        if i < len(parts) - 1:
            if not _is_section(tp):
                raise ConfigError(f"config key 'search.space.{key}': '{'.'.join(parts[:i + 1])}' has no sub-keys")
            cls = tp
    if _is_section(tp) or key.startswith("search.") or key in ("name", "output_dir"):
        raise ConfigError(f"config key 'search.space.{key}': a search dimension must be a single setting "
                          "(e.g. lora.r), not a section, the search itself, name or output_dir")
    return _plain(tp)


def _field(key: str):
    cls, parts = Config, key.split(".")
    for part in parts[:-1]:
        cls = cls.model_fields[part].annotation
    return cls.model_fields[parts[-1]]


def _check_value(value, key: str, where: str):
    """Check ``value`` against the type and bounds of config field ``key``; returns it as the config holds it."""
    info = _field(key)
    try:
        tp = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        return TypeAdapter(tp).validate_python(value)
    except ValidationError as e:
        raise ConfigError(f"config key '{where}': {describe_error(e.errors()[0], value, info)}") from None


def _convert(value, tp, where: str):
    try:
        return TypeAdapter(tp).validate_python(value)
    except ValidationError as e:
        raise ConfigError(f"config key '{where}': {describe_error(e.errors()[0], value)}") from None


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def search_dimension(key: str, spec) -> dict:
    """One ``search.space`` entry, checked and normalised (range ends as the key's type)."""
    where = f"search.space.{key}"
    tp = config_field_type(key)
    _check(isinstance(spec, dict), where, "must be {choices: [...]} or a range {low: L, high: H[, log: true, step: S]}")
    unknown = sorted(set(spec) - {"choices", "low", "high", "log", "step"})
    _check(not unknown, f"{where}.{unknown[0] if unknown else ''}", "unknown; use choices, or low/high/log/step")
    if "choices" in spec:
        _check(not set(spec) & {"low", "high", "log", "step"}, where, "takes either choices or low/high, not both")
        choices = spec["choices"]
        _check(isinstance(choices, (list, dict)) and len(choices) > 0, f"{where}.choices",
               "must be a non-empty list of values or a mapping {name: value}")
        for v in (choices.values() if isinstance(choices, dict) else choices):
            try:
                _check_value(v, key, key)
            except ConfigError as e:
                raise ConfigError(f"config key '{where}': the value {v!r} makes an invalid config: {e}") from None
        return spec
    _check("low" in spec and "high" in spec, where, "needs choices, or both low and high")
    base = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    num = base[0] if len(base) == 1 and base[0] in (int, float) else None
    _check(num is not None, where, f"a range needs an int or float key; {key} is {_type_name(tp)} (use choices)")
    number = Int if num is int else Float
    low = _convert(spec["low"], number, f"{where}.low")
    high = _convert(spec["high"], number, f"{where}.high")
    _check(low < high, where, f"low must be < high, got {low} and {high}")
    log_scale = _convert(spec.get("log", False), Bool, f"{where}.log")
    _check(not log_scale or low > 0, f"{where}.low", "must be > 0 on a log scale")
    if spec.get("step") is not None:
        step = _convert(spec["step"], number, f"{where}.step")
        _check(step > 0 and not log_scale, f"{where}.step", "must be > 0, and not combined with log: true")
        return {"low": low, "high": high, "step": step}
    return {"low": low, "high": high, "log": log_scale}


def validated(cfg: Config) -> Config:
    """``cfg`` with its search section checked (space, enqueue, objective) and the space normalised;
    a :class:`ConfigError` names the first key at fault."""
    s = cfg.search
    objective_terms(s.objective)
    specs = {key: search_dimension(key, spec) for key, spec in s.space.items()}
    for i, point in enumerate(s.enqueue):
        where = f"search.enqueue[{i}]"
        _check(isinstance(point, dict), where, "must map search.space keys to values")
        for key, value in point.items():
            _check(key in specs, f"{where}.{key}", f"is not a key of search.space ({', '.join(specs) or 'empty'})")
            spec = specs[key]
            if "choices" in spec:
                _check(value in spec["choices"], f"{where}.{key}",
                       f"must be one of search.space.{key}.choices, got {value!r}")
            else:
                _check(isinstance(value, (int, float)) and not isinstance(value, bool)
                       and spec["low"] <= value <= spec["high"], f"{where}.{key}",
                       f"must be a number in [{spec['low']}, {spec['high']}], got {value!r}")
    return cfg.model_copy(update={"search": s.model_copy(update={"space": specs})})


@dataclasses.dataclass
class Dimension:
    """One ``search.space`` entry. Choices that are not plain values (lists such as target
    modules) are given to Optuna by a label (their name, or ``query,value`` for a list)."""

    key: str
    spec: dict

    @property
    def choices(self) -> Optional[list[tuple[Any, Any]]]:
        """``[(optuna label, config value)]`` for a choice dimension, else None."""
        c = self.spec.get("choices")
        if c is None:
            return None
        if isinstance(c, dict):
            return [(str(k), v) for k, v in c.items()]
        if all(isinstance(v, _PRIMITIVE) for v in c):
            return [(v, v) for v in c]
        labels = [_label(v) for v in c]
        if len(set(labels)) < len(labels):
            labels = [json.dumps(v) for v in c]
        return list(zip(labels, c))

    def suggest(self, trial: optuna.Trial) -> Any:
        """Sample this dimension in ``trial``; returns the config value."""
        choices = self.choices
        if choices is not None:
            label = trial.suggest_categorical(self.key, [lab for lab, _ in choices])
            return next(v for lab, v in choices if lab == label)
        s = self.spec
        if self.is_int:
            return trial.suggest_int(self.key, int(s["low"]), int(s["high"]), step=int(s.get("step") or 1),
                                     log=bool(s.get("log")))
        return trial.suggest_float(self.key, float(s["low"]), float(s["high"]), step=s.get("step"),
                                   log=bool(s.get("log")))

    @property
    def is_int(self) -> bool:
        tp = config_field_type(self.key)
        return ([a for a in typing.get_args(tp) if a is not type(None)] or [tp])[0] is int

    def param(self, value: Any) -> Any:
        """The Optuna parameter for a ``search.enqueue`` value (a name for named choices)."""
        choices = self.choices
        if choices is None:
            return value
        if isinstance(self.spec["choices"], dict):
            return str(value)
        return next(lab for lab, v in choices if v == value)

    def values(self) -> list:
        """Values worth checking before the search: every choice, or both ends of a range."""
        choices = self.choices
        return [v for _, v in choices] if choices is not None else [self.spec["low"], self.spec["high"]]


def _label(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v)) if v else "[]"
    return str(v)


def dimensions(cfg: Config) -> list[Dimension]:
    return [Dimension(k, spec) for k, spec in cfg.search.space.items()]


def override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"  # JSON is YAML: lists, null and numbers read back as they were


def check_space(config: Optional[Path], overrides: list[str], cfg: Config) -> list[Dimension]:
    """Fail in the first second when a choice or a range end makes the config invalid (e.g. ``lora.r: 0``)
    or the space is empty; returns the dimensions."""
    dims = dimensions(cfg)
    if not dims:
        raise ConfigError("config key 'search.space' is empty; declare what to search, e.g. "
                          "search: {space: {lora.r: {low: 2, high: 32, log: true}}}")
    for d in dims:
        for v in d.values():
            try:
                load_config(config, merge_overrides(overrides, [override(d.key, v)]))
            except ConfigError as e:
                raise ConfigError(f"config key 'search.space.{d.key}': the value {v!r} makes an invalid config: {e}") \
                    from None
    for term, _ in objective_terms(cfg.search.objective):
        if term.startswith("file:") and not Path(term[5:]).exists():
            raise ConfigError(f"config key 'search.objective': file '{term[5:]}' does not exist")
    return dims


def load_search_config(config: Optional[Path], overrides: list[str]) -> Config:
    """The study's config with its search section checked and normalised (see :func:`validated`)."""
    return validated(load_config(config, overrides))
