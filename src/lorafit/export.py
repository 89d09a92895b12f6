"""A trained run outside lorafit: a merged transformers model (``lorafit export``), its ONNX graph,
the model card's metadata (``huggingface_hub.ModelCardData``) and the upload to the Hugging Face
Hub (``lorafit push``). Part of the report stage (the run's card and files)."""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from lorafit.config import MINILM_ALIASES, Config, hub_model_id, load_config
from lorafit.errors import LorafitError, ModelError, OutputError
from lorafit.io_utils import MARK, atomic_path, check_ours, mark_ours
from lorafit.runs import MODEL, require_trained_run
from lorafit.views import VIEW_FILE, VIEWS_DIR

log = logging.getLogger(__name__)

EXPORT_FOLDER = "export folder (--merged)"
# the licence and language of the bundled MiniLM's Hub model (its model card)
_KNOWN_BASES = {"sentence-transformers/all-MiniLM-L6-v2": {"license": "apache-2.0", "language": "en"}}


def _base_card_facts(cfg: Config) -> dict:
    """The base model's licence and language, from its model card when it is on this machine (the
    bundled MiniLM, a local folder); {} when unknown (a Hub id read offline)."""
    hub = hub_model_id(str(cfg.model.name))
    if hub in _KNOWN_BASES:
        return dict(_KNOWN_BASES[hub])
    readme = Path(str(cfg.model.name)) / "README.md"
    if cfg.model.name not in MINILM_ALIASES and readme.is_file():
        from huggingface_hub import ModelCard

        try:
            data = ModelCard.load(readme).data.to_dict()
        except Exception:  # noqa: BLE001  (a card without front matter: nothing known)
            return {}
        return {k: data[k] for k in ("license", "language") if data.get(k)}
    return {}


def _hub_dataset(spec: Optional[str]) -> Optional[str]:
    """A Hub dataset id for the card's ``datasets`` (never a local path, which means nothing elsewhere)."""
    if not spec or spec.startswith(("pkg://", ".", "/", "~")) or Path(spec.split(":")[0]).exists():
        return None
    return spec.split(":")[0]


def card_data(cfg: Config, metrics: Optional[dict] = None, library_name: str = "peft"):
    """The model card's metadata as ``huggingface_hub.ModelCardData``: base model (its Hub id),
    licence and language (from the base model's card when known), datasets (Hub ids only),
    validation metrics as eval results, and the trainable-parameter budget."""
    from huggingface_hub import EvalResult, ModelCardData

    m = metrics or {}
    datasets = [d for d in (_hub_dataset(cfg.data.source), _hub_dataset(cfg.data.validation)) if d]
    results = None
    if "val_accuracy" in m:
        where = cfg.data.validation or cfg.data.source
        common = dict(task_type="text-classification", task_name="Text Classification",
                      dataset_type=_hub_dataset(where) or "local", dataset_name=f"{Path(str(where)).name} (validation"
                      + ("" if cfg.data.validation else f": {cfg.data.val_fraction:g} of the source") + ")",
                      dataset_split="validation")
        results = [EvalResult(metric_type="accuracy", metric_value=round(m["val_accuracy"], 4),
                              metric_name="validation accuracy", **common),
                   EvalResult(metric_type="f1", metric_value=round(m["val_macro_f1"], 4),
                              metric_name="validation macro-F1", **common)]
    b = m.get("budget") or {}
    budget = {"max_trainable": b.get("max_trainable", cfg.budget.max_trainable)}
    if b:
        budget.update(trainable=b.get("trainable"), total=b.get("total"))
    base = _base_card_facts(cfg)
    return ModelCardData(
        base_model=hub_model_id(str(cfg.model.name)), library_name=library_name, pipeline_tag="text-classification",
        license=base.get("license"), language=base.get("language"), datasets=datasets or None,
        tags=["lorafit", "lora", "peft", "text-classification"], metrics=["accuracy", "f1"],
        model_name=str(cfg.name), eval_results=results, trainable_parameter_budget=budget)


def _read_metrics(run_dir: Path) -> dict:
    path = run_dir / "metrics.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}


def _card(cfg: Config, run_dir: Path, library_name: str, lead: str) -> str:
    """README.md: the metadata of :func:`card_data`, ``lead``, then the body of the run's card."""
    body = ""
    adapter_card = run_dir / "model" / "README.md"
    if adapter_card.is_file():
        text = adapter_card.read_text()
        body = text.split("---\n", 2)[2] if text.startswith("---\n") and text.count("---\n") >= 2 else text
    data = card_data(cfg, _read_metrics(run_dir), library_name)
    return f"---\n{data.to_yaml()}\n---\n\n{lead}\n{body}"


@dataclass
class Exported:
    folder: Path
    onnx: Optional[Path] = None
    onnx_max_abs_diff: Optional[float] = None


def export_merged(run_dir: Path | str, out_dir: Path | str, onnx: bool = False) -> Exported:
    """Write a plain transformers model of a run to ``out_dir``: the LoRA weights merged into the base
    (fp32), the tokenizer (truncating at the run's ``model.max_length``), the class names in its
    config (``id2label``), and a model card, so that ``pipeline("text-classification", model=out_dir)``
    gives class names with no arguments. ``onnx``: also ``model.onnx``, checked against the torch
    logits with onnxruntime (needs the ``onnx`` and ``onnxruntime`` packages)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    require_trained_run(run_dir)
    if any((run_dir / MODEL / VIEWS_DIR).glob(f"*/{VIEW_FILE}")):
        raise ModelError(f"{run_dir}: its model averages frozen views (model/views) with the adapter, which no "
                         "single merged model reproduces; export needs a run without views")
    check_ours(out_dir, EXPORT_FOLDER)
    if out_dir.resolve() == run_dir.resolve() or run_dir.resolve() in out_dir.resolve().parents:
        raise OutputError(f"{EXPORT_FOLDER} '{out_dir}' is inside the run folder; choose a folder outside it")
    if onnx:
        _check_onnx_libraries()
    from lorafit.model import adapter_names, load_peft

    model, tok, cfg = load_peft(run_dir)
    if len(adapter_names(model)) > 1:
        raise ModelError(f"{run_dir}: its model averages {len(adapter_names(model))} adapters (an ensemble), which "
                         "no single merged model reproduces; export needs a run with one adapter")
    merged = model.merge_and_unload().float().eval()
    merged.config._name_or_path = hub_model_id(str(cfg.model.name))
    tok.model_max_length = cfg.model.max_length
    result = Exported(out_dir)
    with atomic_path(out_dir) as tmp:
        merged.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / "README.md").write_text(_card(cfg, run_dir, "transformers", (
            f"A merged model exported by lorafit from run `{cfg.name}`: the LoRA adapter's weights added into "
            f"`{hub_model_id(str(cfg.model.name))}`; load it with "
            "`transformers.pipeline(\"text-classification\", model=\"path/to/this/folder\")`.\n")))
        if onnx:
            result.onnx = tmp / "model.onnx"
            result.onnx_max_abs_diff = _export_onnx(merged, tok, result.onnx, cfg.model.max_length)
        mark_ours(tmp, "export")
    if result.onnx is not None:
        result.onnx = out_dir / "model.onnx"
    return result


def _check_onnx_libraries() -> None:
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise LorafitError(f"--onnx needs the package(s) {', '.join(missing)}, which are not installed: "
                           "pip install onnx onnxruntime (or pip install 'lorafit[onnx]')")


def _export_onnx(model, tok, path: Path, max_length: int) -> float:
    """``model.onnx`` (inputs input_ids and attention_mask, dynamic batch and length; output logits),
    traced by torch's TorchScript exporter (the dynamo one needs onnxscript) and verified with
    onnxruntime against the torch logits on a batch of another size and length than the traced one,
    padded; returns the largest absolute difference (an error above 1e-3)."""
    import warnings

    import numpy as np
    import onnxruntime
    import torch

    def batch(texts):
        return tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")

    traced = batch(["A short text.", "A somewhat longer text about markets, sport and science news."])
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer notes: nothing to act on
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (traced["input_ids"], traced["attention_mask"]), str(path),
                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_axes={n: {0: "batch", 1: "length"} for n in ("input_ids", "attention_mask")},
                          opset_version=17, dynamo=False)
    check = batch(["Stocks.", "Rain delays the final match of the season.",
                   "The probe sent back its first images of the moon's surface after a long journey."])
    with torch.no_grad():
        ref = model(input_ids=check["input_ids"], attention_mask=check["attention_mask"]).logits.numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {k: check[k].numpy() for k in ("input_ids", "attention_mask")})[0]
    diff = float(np.abs(got - ref).max())
    if diff > 1e-3:
        raise ModelError(f"{path}: the ONNX graph's logits differ from torch's by {diff:.2g}; not exported")
    return diff


# ------------------------------------------------------------------ lorafit push


_NOT_UPLOADED = {MARK, ".lorafit.lock"}


def upload_files(folder: Path) -> list[tuple[str, int]]:
    """(path in the repository, bytes) of each file ``push`` uploads from ``folder``: everything
    but lorafit's own bookkeeping (its mark and lock) and temporary files."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and p.name not in _NOT_UPLOADED and not any(part.startswith(".") for part in rel.parts):
            out.append((rel.as_posix(), p.stat().st_size))
    return out


@dataclass
class PushPlan:
    repo_id: str
    private: bool
    merged: bool
    files: list  # (path in repo, bytes)
    url: Optional[str] = None


def push(run_dir: Path | str, repo_id: str, private: bool = False, merged: bool = False,
         dry_run: bool = False) -> PushPlan:
    """Upload a run's model to the Hub repository ``repo_id`` (created when missing) with
    ``huggingface_hub``: the adapter folder (adapter, tokenizer, labels.json, model card), or with
    ``merged`` the merged model of :func:`export_merged`. ``dry_run`` lists what would be uploaded
    and contacts nothing."""
    run_dir = Path(run_dir)
    adapter = require_trained_run(run_dir)
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise LorafitError(f"repository id '{repo_id}' must be of the form user/name (or organisation/name)")
    with tempfile.TemporaryDirectory(prefix="lorafit-push-") as tmp:
        folder = adapter
        if merged:
            folder = export_merged(run_dir, Path(tmp) / "merged").folder
        else:
            cfg = load_config(run_dir / "config.yaml")
            card = Path(tmp) / "README.md"  # the run's card with ModelCardData metadata; the run folder is not changed
            card.write_text(_card(cfg, run_dir, "peft", ""))
        files = upload_files(folder)
        if not merged:
            files = [f for f in files if f[0] != "README.md"] + [("README.md", card.stat().st_size)]
            files.sort()
        plan = PushPlan(repo_id, private, merged, files)
        if dry_run:
            return plan
        from huggingface_hub import HfApi

        api = HfApi()
        plan.url = str(api.create_repo(repo_id, private=private, exist_ok=True))
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), allow_patterns=[f for f, _ in files
                                                                                   if f != "README.md" or merged],
                          commit_message=f"lorafit: upload run {run_dir.name}")
        if not merged:
            api.upload_file(path_or_fileobj=str(card), path_in_repo="README.md", repo_id=repo_id,
                            commit_message="lorafit: model card")
    return plan
