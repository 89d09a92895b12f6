"""Loading a config: YAML files (with ``base:``), ``key.sub=value`` overrides, validation, and
one-line errors that name the key and where its value came from (the file, its ``base:``, or an
override).

A config file may start from another with ``base: other.yaml`` (a path relative to the file): its
sections are merged key by key, so the file states only its differences. A key given twice (in
one YAML mapping, or in two overrides) is an error, as is an empty file. A YAML document is
checked before it is built: more than :data:`MAX_DEPTH` levels of nesting, or aliases that expand
to more than :data:`MAX_NODES` values (a "billion laughs" file), are refused in milliseconds.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

import annotated_types as at
import yaml
from pydantic import BaseModel, ValidationError

from lorafit.config.schema import Config
from lorafit.errors import ConfigError
from lorafit.io_utils import atomic_write_text

log = logging.getLogger(__name__)

MAX_DEPTH = 64  # a config has a handful of levels; PyYAML's composer recurses once per level
MAX_NODES = 100_000  # values in a document once its aliases are expanded


# ---------------------------------------------------------------- errors: one line naming the key


def _close_matches(word: str, options: list, n: int = 1) -> list:
    import difflib  # only on an error: 10 ms off every start

    return difflib.get_close_matches(word, options, n=n)


def _fmt(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _range_text(field, ctx: dict, got) -> str:
    """``must be in (0, 1), got 1.5`` from the field's bounds (all of them, so the message gives the
    whole range); a sanity cap is named only when it is the bound that failed."""
    lo = hi = None
    lo_open = hi_open = False
    for m in (field.metadata if field is not None else []):
        if isinstance(m, at.Gt):
            lo, lo_open = m.gt, True
        elif isinstance(m, at.Ge):
            lo = m.ge
        elif isinstance(m, at.Lt):
            hi, hi_open = m.lt, True
        elif isinstance(m, at.Le):
            hi = m.le
    if field is None:  # a list item: its own bound only
        lo, lo_open = (ctx["gt"], True) if "gt" in ctx else (ctx.get("ge"), False)
        hi, hi_open = (ctx["lt"], True) if "lt" in ctx else (ctx.get("le"), False)
    sanity = (field.json_schema_extra or {}).get("sanity_cap") if field is not None else None
    if sanity is not None and hi == sanity:
        if "le" in ctx:
            return f"must be <= {_fmt(hi)} (a sanity limit), got {_fmt(got)}"
        hi = None
    if lo is not None and hi is not None:
        text = f"in {'(' if lo_open else '['}{_fmt(lo)}, {_fmt(hi)}{')' if hi_open else ']'}"
    elif lo is not None:
        text = f"{'>' if lo_open else '>='} {_fmt(lo)}"
    else:
        text = f"{'<' if hi_open else '<='} {_fmt(hi)}"
    return f"must be {text}, got {_fmt(got)}"


_EXPECTED = {
    "int_type": "an integer", "int_from_float": "an integer", "int_parsing": "an integer",
    "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
    "bool_parsing": "true or false", "string_type": "a string", "list_type": "a list",
    "dict_type": "a mapping", "model_type": "a mapping of sub-keys", "model_attributes_type": "a mapping of sub-keys",
}
_BOUNDS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def describe_error(err: dict, value=None, field=None) -> str:
    """One pydantic error as a phrase: ``expected an integer, got 'abc'``, ``must be > 0, got 0``."""
    kind, ctx = err["type"], err.get("ctx") or {}
    got = err.get("input", value)
    if kind in ("lorafit", "lorafit_full"):
        return ctx["message"]
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {got!r}"
    if kind in _BOUNDS:
        return _range_text(field, ctx, got)
    if kind == "literal_error":
        options = [o.strip(" '") for o in ctx.get("expected", "").replace(" or ", ", ").split(",")]
        close = sorted((o for o in options if o.startswith(str(got))), key=len)[:1] or \
            _close_matches(str(got), options, n=1)
        hint = f"; did you mean '{close[0]}'?" if close and len(options) > 6 else ""
        shown = "|".join(options) if len(options) <= 6 else f"one of {len(options)} names ({', '.join(options)})"
        return f"must be {shown}, got {got!r}{hint}"
    if kind == "too_short":
        return f"must list at least {ctx.get('min_length', 1)} value(s), got {got!r}"
    return f"{err['msg']}, got {got!r}"


def _is_section(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _error_key(err: dict):
    """The dotted config key of a pydantic error location (``lora.target_modules[0]``), the section
    class that holds it and the field (None inside a list)."""
    key, cls, field = "", Config, None
    for part in err["loc"]:
        if isinstance(part, int):
            key += f"[{part}]"
            field = None
        elif cls is not None and part in cls.model_fields:
            key = f"{key}.{part}" if key else part
            field = cls.model_fields[part]
            cls = field.annotation if _is_section(field.annotation) else None
        elif err["type"] == "extra_forbidden" and part == err["loc"][-1]:
            return (f"{key}.{part}" if key else part), cls, None
        # anything else names a member of a union (pydantic's own tags): not part of the key
    sub = (err.get("ctx") or {}).get("field")
    if sub:
        key = sub if "." in sub else (f"{key}.{sub}" if key else sub)
    return key, cls, field


def translate(e: ValidationError, origin: "Origins") -> ConfigError:
    """The first error of a failed validation as one line naming the key and its origin."""
    err = e.errors(include_url=False)[0]
    key, cls, field = _error_key(err)
    where = origin.of(key)
    if err["type"] == "extra_forbidden":
        valid = ", ".join(sorted(cls.model_fields)) if cls is not None else ""
        close = _close_matches(key.rsplit(".", 1)[-1], list(cls.model_fields) if cls else [], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return ConfigError(f"unknown config key '{key}'{hint}; valid keys here: {valid}{where}")
    if err["type"] == "lorafit_full":
        return ConfigError(f"{err['ctx']['message']}{where}")
    return ConfigError(f"config key '{key}': {describe_error(err, field=field)}{where}")


# ---------------------------------------------------------------- loading: files, base:, overrides


class Origins:
    """Where each key's value came from, for error messages: a file (and through which ``base:``)
    or an override."""

    def __init__(self):
        self.by_key: dict[str, str] = {}

    def record(self, d: dict, source: str, prefix: str = "") -> None:
        for k, v in d.items():
            key = f"{prefix}{k}"
            self.forget(key)
            if isinstance(v, dict) and v:
                self.record(v, source, key + ".")
            else:
                self.by_key[key] = source

    def forget(self, key: str) -> None:
        for k in [k for k in self.by_key if k == key or k.startswith(key + ".")]:
            del self.by_key[k]

    def of(self, key: str) -> str:
        """`` (in FILE)`` / `` (from the override 'k=v')`` for ``key`` (or the nearest key above or
        below it), or '' for a default."""
        bare = key.split("[", 1)[0]
        probe = bare
        while probe:
            if probe in self.by_key:
                return self.by_key[probe]
            probe = probe.rpartition(".")[0]
        below = sorted(k for k in self.by_key if k.startswith(bare + "."))
        return self.by_key[below[0]] if below else ""


def check_yaml_size(text: str, what: str) -> None:
    """Refuse a YAML document nested more than :data:`MAX_DEPTH` levels or whose aliases expand to
    more than :data:`MAX_NODES` values, from its parse events (no recursion, no expansion)."""
    anchors: dict[str, int] = {}
    stack: list[list] = [[0, None]]  # per open collection: values in it so far, its anchor
    for ev in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            stack.append([1, ev.anchor])
            if len(stack) - 1 > MAX_DEPTH:
                raise ConfigError(f"{what} nests more than {MAX_DEPTH} levels deep (line {ev.start_mark.line + 1}); "
                                  "a config has a few levels of sections")
            continue
        if isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            n, anchor = stack.pop()
        elif isinstance(ev, yaml.ScalarEvent):
            n, anchor = 1, ev.anchor
        elif isinstance(ev, yaml.AliasEvent):
            n, anchor = anchors.get(ev.anchor, 1), None
        else:
            continue
        if anchor:
            anchors[anchor] = n
        stack[-1][0] += n
        if stack[-1][0] > MAX_NODES:
            line = getattr(ev.start_mark, "line", -1) + 1
            raise ConfigError(f"{what}: its YAML aliases expand to more than {MAX_NODES:,} values (line {line}); "
                              "write the values out instead of nesting aliases")


def _mapping_duplicates(node, path: str, file: Path) -> None:
    """A key given twice in one YAML mapping is an error (YAML loaders keep the last one silently)."""
    if isinstance(node, yaml.MappingNode):
        seen: dict = {}
        for key_node, value_node in node.value:
            k = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            full = f"{path}.{k}" if path else str(k)
            if k is not None and k != "<<":
                if k in seen:
                    raise ConfigError(f"config file '{file}': key '{full}' is given twice (lines {seen[k]} and "
                                      f"{key_node.start_mark.line + 1}); keep one")
                seen[k] = key_node.start_mark.line + 1
            _mapping_duplicates(value_node, full, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _mapping_duplicates(item, f"{path}[{i}]", file)


def _read_yaml(p: Path) -> dict:
    if not p.is_file():
        raise ConfigError(f"config file '{p}' does not exist; pass the path of a YAML file such as "
                          "configs/quickstart.yaml")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file '{p}' is not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        check_yaml_size(text, f"config file '{p}'")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            _mapping_duplicates(node, "", p)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{p}' is not valid YAML: {e}") from None
    if raw is None or raw == {}:
        raise ConfigError(f"config file '{p}' is empty; give at least a name and the sections that differ from "
                          "the defaults (see configs/quickstart.yaml), or base: another config")
    if not isinstance(raw, dict):
        raise ConfigError(f"config file '{p}' must contain a mapping of sections at the top level")
    return raw


def _merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _load_file(p: Path, origin: Origins, chain: tuple = ()) -> dict:
    """The file's mapping with its ``base:`` chain merged under it."""
    raw = _read_yaml(p)
    base = raw.pop("base", None)
    note = f" (in {p})" if not chain else f" (in {p}, the base of {chain[0]})"
    if base is None:
        origin.record(raw, note)
        return raw
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"config key 'base': must be the path of another config file, got {base!r} (in {p})")
    base_path = (p.parent / base) if not Path(base).is_absolute() else Path(base)
    if base_path.resolve() in [c.resolve() for c in (*chain, p)]:
        raise ConfigError(f"config key 'base': '{base}' leads back to '{p}' (a loop of base: files)")
    if not base_path.is_file():
        raise ConfigError(f"config key 'base': file '{base_path}' does not exist (in {p}); the path is relative "
                          "to the config file's folder")
    merged = _load_file(base_path, origin, (*chain, p) if chain else (p,))
    origin.record(raw, note)
    return _merge(merged, raw)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value``; the value is read as YAML (``3``, ``2e-5``, ``[a,b]``, ``null``)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    if key.count(".") > MAX_DEPTH:
        raise ConfigError(f"override '{text[:80]}...': the key has more than {MAX_DEPTH} levels")
    try:
        check_yaml_size(raw, f"override '{key}=...'")
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _set_path(d: dict, path: list[str], value, full: str) -> None:
    node = d
    for i, part in enumerate(path[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        elif not isinstance(nxt, dict):
            raise ConfigError(f"override '{full}': '{'.'.join(path[: i + 1])}' is not a section")
        node = nxt
    node[path[-1]] = value


def merge_overrides(first: list[str], then: list[str]) -> list[str]:
    """Overrides layered by a program (``lorafit search``: the user's, then a trial's): a key of
    ``then`` replaces the same key in ``first``. (Within one list a key given twice is an error.)"""
    keys = {o.split("=", 1)[0].strip() for o in then}
    return [o for o in first if o.split("=", 1)[0].strip() not in keys] + list(then)


def load_config(path: Optional[os.PathLike | str] = None, overrides: tuple[str, ...] | list[str] = ()) -> Config:
    """Load a YAML config (with its ``base:`` chain), apply ``key.sub=value`` overrides, validate
    everything, return a :class:`Config`. Without ``path``: the defaults plus the overrides."""
    origin = Origins()
    raw: dict = _load_file(Path(path), origin) if path is not None else {}
    _drop_consent(raw, path)
    given: dict[str, str] = {}
    for o in overrides:
        keys, value = parse_override(o)
        key = ".".join(keys)
        clash = next((k for k in given if k == key or k.startswith(key + ".") or key.startswith(k + ".")), None)
        if clash is not None:
            raise ConfigError(f"override '{o}': '{key}' is already set by the override '{given[clash]}'; "
                              "give each key once")
        given[key] = o
        _set_path(raw, keys, value, o)
        origin.forget(key)
        origin.by_key[key] = f" (from the override '{o}')"
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise translate(e, origin) from None


def with_labels(cfg: Config, labels: list[str], where: str) -> Config:
    """``cfg`` with ``data.labels`` set to ``labels``, which were inferred from ``where`` (e.g.
    ``data.source 'train.csv'``), validated again (at least two classes, ``predict.prior``'s length).
    A config that gives its labels is returned as it is."""
    if cfg.data.labels is not None:
        return cfg
    raw = cfg.model_dump()
    raw["data"]["labels"] = [str(n) for n in labels]
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{translate(e, Origins())} (data.labels is not set: inferred from {where} as "
                          f"{raw['data']['labels']}); set data.labels") from None


# Keys that let a file run code (a pickle's payload, a model's own Python). Consent must come from
# the command itself: a config file, perhaps a run folder someone else wrote, never turns them on.
CONSENT_KEYS = {"data.allow_pickle": "--allow-pickle", "model.trust_remote_code": "--trust-remote-code"}


def _drop_consent(raw: dict, path) -> None:
    for key, flag in CONSENT_KEYS.items():
        section, name = key.split(".")
        if isinstance(raw.get(section), dict) and raw[section].get(name) not in (None, False):
            raw[section][name] = False
            log.warning("%s: '%s' is not read from a config file (a file must not turn on code execution); "
                        "pass %s or %s=true on the command line", path, key, flag, key)


def flatten(d: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and empty mappings stay values)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def save_config(cfg: Config, path: Path) -> None:
    """Write the resolved config as YAML (atomically): every key, no ``base:``."""
    d = cfg.to_dict()
    for key in CONSENT_KEYS:  # consent is per command: a saved run never grants it to a later one
        section, name = key.split(".")
        d[section][name] = False
    atomic_write_text(path, yaml.safe_dump(d, sort_keys=False))
