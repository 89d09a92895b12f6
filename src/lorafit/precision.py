"""The ground floor of numerics: which precision a device runs, autocast, and a trained model made
ready for inference. Model building, training, prediction, LM adaptation and generation all take
their precision from here (and from the config keys ``train.precision`` and ``predict.precision``),
so the same setting means the same thing everywhere.

Imports torch and PEFT only; no other lorafit module.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import torch
from peft import PeftModel

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX512-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("amx_bf16", "avx512_bf16"))


def pick_precision(requested: str = "auto", device: Optional[torch.device] = None) -> str:
    """``auto`` -> bf16 where the device runs it natively (CUDA with bf16, CPUs with AMX/AVX512-BF16),
    fp16 on older GPUs, else fp32. Anything else is returned as it is."""
    if requested != "auto":
        return requested
    if (device is None or device.type == "cuda") and torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def generation_precision(requested: str, device: torch.device) -> str:
    """The precision causal-LM sampling runs at: ``auto`` is :func:`pick_precision`, so bf16 weights
    where the device computes bf16 natively (on an AMX CPU, SmolLM2-135M samples 2.4x faster in
    bf16 than in fp32 with lorafit's sampler) and fp32 elsewhere."""
    return pick_precision(requested, device)


def torch_dtype(precision: str) -> torch.dtype:
    """The weights' dtype for a resolved precision (bf16 | fp16 | fp32)."""
    return _DTYPES[precision]


def inference_precision(cfg) -> str:
    """``predict.precision`` of a config, or ``train.precision`` when it is null (unresolved: may be ``auto``)."""
    return cfg.predict.precision or cfg.train.precision


def autocast(device: torch.device, precision: str):
    """bf16 autocast on any device, fp16 on CUDA, else nothing (``precision`` resolved)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "fp16" and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def for_inference(model, precision: str = "auto", merge: bool = True) -> tuple:
    """The model as prediction wants it, and whether prediction merges each of its adapters for its
    own pass (``merge_adapters`` of :func:`lorafit.inference.predict_logits`): ``(model, merge_adapters)``.

    LoRA is merged into the base weights (``merge``; one matrix product per layer instead of three)
    and, when ``precision`` resolves to bf16, every ``nn.Linear`` weight stored in bf16.

    Under bf16 autocast each linear layer casts its fp32 weight to bf16 on every call; storing it
    so once gives the same numbers (the same rounding) without the copies (~1.2x faster on a
    2-core CPU, see ``bench/``). Do not train the returned model further: it is changed in place.

    A PEFT model holding several adapters (an ensemble, see :mod:`lorafit.predict`) keeps them:
    ``merge`` then makes prediction merge each adapter for its own pass (the returned
    ``merge_adapters`` is ``merge``), and its weights stay fp32 (autocast computes in bf16), as
    merging into bf16 weights and back would round them. Otherwise ``merge_adapters`` is False.
    """
    if isinstance(model, PeftModel) and len(model.peft_config) > 1:
        return model.eval(), merge
    if merge and isinstance(model, PeftModel):
        model = model.merge_and_unload()
    if pick_precision(precision) == "bf16":
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.to(torch.bfloat16)
    return model.eval(), False
