"""Value types of the config: strict, with the conversions YAML and the command line need.

Values are strict (no ``"3"`` for an int, no ``true`` for a number) with three conversions: a whole
float for an int (``epochs: 3.0``), a string for a float (YAML 1.1 reads ``2e-5`` as a string) and a
number for a string (``name=2024``). Floats must be finite.
"""

from __future__ import annotations

import math
import os
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Strict
from pydantic_core import PydanticCustomError

SEED_MAX = 2**32 - 1  # numpy's seeds are 32-bit
NAME_MAX = 255  # bytes in one folder name on Linux, macOS and Windows file systems

# sanity caps: far above any real value, low enough that libraries and counters do not overflow
COUNT_CAP = 2**31 - 1  # rows, samples, steps, words
BATCH_CAP = 1_000_000  # texts per batch
RANK_CAP = 65_536  # LoRA rank, adapters' hidden sizes are far below
EPOCHS_CAP = 10_000.0


def invalid(message: str, field: str = "") -> PydanticCustomError:
    """A validation error whose message is ours; ``field``: the sub-key of the model at fault."""
    return PydanticCustomError("lorafit", "{message}", {"message": message, "field": field})


def cap(n) -> dict:
    """``Field(**cap(n))``: an upper bound that is a sanity limit (its message names only that side)."""
    return {"le": n, "json_schema_extra": {"sanity_cap": n}}


# ---------------------------------------------------------------- value types


def _int_like(v):
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _float_like(v):
    if isinstance(v, int) and not isinstance(v, bool):
        v = float(v) if abs(v) < 2**1023 else math.inf
    elif isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return v
    if isinstance(v, float) and not math.isfinite(v):
        raise invalid(f"must be a finite number, got {v!r}")
    return v


def str_like(v):
    return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def _non_empty(v: str) -> str:
    if not v.strip():
        raise invalid("must not be empty")
    return v


def run_name(v: str) -> str:
    """``name`` is one folder under ``output_dir``: not empty, no separator, not '.' or '..', short."""
    seps = [s for s in (os.sep, os.altsep, "/") if s]
    if not v.strip() or v in (".", "..") or any(s in v for s in seps) or "\0" in v:
        raise invalid(f"must be a single folder name under output_dir (no '/', not empty, '.' or '..'), got {v!r}")
    if len(v.encode("utf-8", "surrogatepass")) > NAME_MAX:
        raise invalid(f"must be a folder name of at most {NAME_MAX} bytes (the file system's limit), got "
                      f"{len(v.encode('utf-8', 'surrogatepass'))} bytes ({v[:20]}...)")
    return v


Int = Annotated[int, Strict(), BeforeValidator(_int_like)]
Float = Annotated[float, Strict(), BeforeValidator(_float_like)]
Str = Annotated[str, Strict(), BeforeValidator(str_like)]
NonEmpty = Annotated[str, Strict(), BeforeValidator(str_like), AfterValidator(_non_empty)]
Bool = Annotated[bool, Strict()]
Precision = Literal["auto", "bf16", "fp16", "fp32"]


def prior_spec(v):
    """none|uniform|em (any case), K proportions as a list or as ``"0.2,0.3,0.5"`` (kept as given, not
    normalised). The values are checked by :func:`lorafit.prior.parse_prior`, the one prior parser;
    the count of classes against ``data.labels`` by the config."""
    from lorafit.prior import parse_prior

    if isinstance(v, str) and v.strip().lower() in ("none", "uniform", "em"):
        return v.strip().lower()
    values = v.split(",") if isinstance(v, str) and "," in v else v
    if not isinstance(values, (list, tuple)) or not values:
        raise invalid(f"must be none, uniform, em or a list of class proportions, got {v!r}")
    out = []
    for x in values:  # number-like strings ("2e-1") are numbers, as everywhere in a config
        try:
            x = _float_like(x.strip() if isinstance(x, str) else x)
        except PydanticCustomError:
            x = None
        if not isinstance(x, float):
            raise invalid(f"proportions must be finite numbers >= 0, got {v!r}")
        out.append(x)
    try:
        parse_prior(out, len(out))
    except ValueError as e:
        raise invalid(str(e)) from None
    return out


def workers_spec(v):
    v = _int_like(v)
    if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1024):
        return v
    raise invalid(f"must be 'auto' or an integer >= 1 (at most 1024), got {v!r}")
