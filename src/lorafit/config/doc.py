"""Write the config reference (``docs/config.md``) from the schema's field descriptions.

    python -m lorafit.config.doc > docs/config.md

``tests/test_config_doc.py`` fails when the file is stale.
"""

from __future__ import annotations

import sys
import typing
from typing import Annotated, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from lorafit.config.schema import Config

HEADER = """# Configuration reference

One YAML file per experiment; every key below can also be given on the command line as
`key.sub=value` (e.g. `lorafit run configs/quickstart.yaml train.epochs=3`). A file may start from
another with `base: other.yaml` and state only its differences. Unknown keys, wrong types and
values out of range are refused when the config loads, in one line naming the key.

This page is generated from the schema (`src/lorafit/config/schema.py`):
`python -m lorafit.config.doc > docs/config.md`.
"""


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        return _type_name(args[0])
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is Union:
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin in (list, tuple):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    return {int: "int", float: "float", str: "string", bool: "bool"}.get(tp, getattr(tp, "__name__", str(tp)))


def _fmt(x) -> str:
    return f"{x:g}" if isinstance(x, float) else f"{x:,}" if isinstance(x, int) and abs(x) >= 10_000 else str(x)


def _range(field) -> str:
    parts = []
    for m in field.metadata:
        for cls, attr, sign in ((at.Gt, "gt", ">"), (at.Ge, "ge", ">="), (at.Lt, "lt", "<"), (at.Le, "le", "<=")):
            if isinstance(m, cls):
                parts.append(f"{sign} {_fmt(getattr(m, attr))}")
    return ", ".join(parts)


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return ""
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return ""
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value) \
        if isinstance(value, str) else str(value)
    return f"`{text}`"


def _section(cls: type[BaseModel], prefix: str, out: list[str]) -> None:
    doc = " ".join((cls.__doc__ or "").split())
    out += [f"## `{prefix}`" if prefix else "## Top level", "", doc, "",
            "| key | type | default | range | meaning |", "|---|---|---|---|---|"]
    subsections = []
    for name, field in cls.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            subsections.append((name, field.annotation))
            continue
        item = _list_item(field.annotation)
        if item is not None:  # a list of sections (views): its items' keys under NAME[i]
            subsections.append((f"{name}[i]", item))
        if field.exclude:
            continue
        desc = (field.description or "").replace("|", "\\|")
        out.append(f"| `{prefix + '.' if prefix else ''}{name}` | {_type_name(field.annotation)} | {_default(field)} "
                   f"| {_range(field)} | {desc} |")
    out.append("")
    for name, sub in subsections:
        _section(sub, f"{prefix}.{name}" if prefix else name, out)


def _list_item(tp) -> "type[BaseModel] | None":
    """The section type of a ``list[Section]`` annotation, else None."""
    args = get_args(tp)
    if get_origin(tp) is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0]
    return None


def render() -> str:
    """The whole reference as Markdown."""
    out = [HEADER]
    _section(Config, "", out)
    return "\n".join(out).rstrip() + "\n"


def undescribed(cls: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Config keys without a description (none should be)."""
    missing = []
    for name, field in cls.model_fields.items():
        key = f"{prefix}{name}"
        if not field.description:
            missing.append(key)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            missing += undescribed(field.annotation, key + ".")
        elif _list_item(field.annotation) is not None:
            missing += undescribed(_list_item(field.annotation), key + "[i].")
    return missing


if __name__ == "__main__":
    sys.stdout.write(render())
