"""Training-data augmentation: the report's recipe for adapting to an unlabeled target domain.

In order (each step on when its config section says so):

1. ``synonyms``: WordNet synonym copies of training rows (:mod:`lorafit.augment.synonyms`);
2. ``lm``: a causal LM (GPT-2) fine-tuned on the unlabeled target texts (:mod:`.lm_adapt`);
3. ``generate``: that LM prompted per class for labeled samples (:mod:`.generate`);
4. ``extra``: more labeled files, e.g. samples generated earlier;
5. ``select``: cleaning, de-duplication and teacher agreement for the rows of 3 and 4 (:mod:`.select`).

The rows of 3 and 4 are the synthetic rows: when something downstream treats them apart
(``augment.label_smoothing``, ``selftrain.synthetic``; see :func:`marks_synthetic`) the training
set gets a ``synthetic`` column (1 for them, 0 for the rest), and a ``weight`` column when the
selection down-weights some of them.

:func:`augment_training_data` runs them for ``lorafit run``; :func:`adapt_lm_stage` and
:func:`generate_stage` back the ``lorafit adapt-lm`` and ``lorafit generate`` commands. Every
step writes its output under the run folder and is skipped or resumed when it is already there.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import datasets
import numpy as np
from scipy.special import softmax

from lorafit.augment.generate import (SOURCE_PROMPTS, fit_length_distribution, generate_samples, load_prompt_bank,
                                     sample_lengths, source_openings)
from lorafit.augment.lm_adapt import adapt_language_model, pack_texts
from lorafit.augment.quality import fit_judge, sample_quality
from lorafit.augment.select import select_samples
from lorafit.augment.synonyms import synonym_augment
from lorafit.errors import DataError, WordNetError
from lorafit.text import synonym_finder
from lorafit.config import CleanConfig, Config, ConfigError
from lorafit.data.io import load_labeled
from lorafit.data.prepare import clean_dataset
from lorafit.io_utils import atomic_write_json, check_ours, lock_folder, mark_ours, read_json_or
from lorafit.runs import require_trained_run
from lorafit.precision import inference_precision
from lorafit.inference import predict_teacher

log = logging.getLogger(__name__)

__all__ = [
    "augment_training_data", "adapt_lm_stage", "generate_stage", "synonym_augment", "adapt_language_model",
    "pack_texts", "load_prompt_bank", "fit_length_distribution", "sample_lengths", "generate_samples",
    "select_samples", "WordNetError",
]


def augmentation_enabled(cfg: Config) -> bool:
    """Whether any augmentation step is on (otherwise the training set is used as it is)."""
    a = cfg.augment
    return bool(a.synonyms.enabled or a.lm.enabled or a.generate.enabled or a.extra)


def marks_synthetic(cfg: Config) -> bool:
    """Whether the augmented training set carries a ``synthetic`` column: only when a later stage
    treats the synthetic rows apart (label smoothing of them, the self-training rounds' rule)."""
    st = cfg.selftrain
    return cfg.augment.label_smoothing > 0 or (st.enabled and st.keep_synthetic and st.synthetic != "keep")


def _row_columns(parts: list[datasets.Dataset], synthetic: list[bool], mark: bool) -> list[datasets.Dataset]:
    """The parts with the same columns: ``weight`` (1 where missing) when any part has one, and
    ``synthetic`` (1 for the synthetic parts, else 0) when ``mark``."""
    weighted = any("weight" in p.column_names for p in parts)
    out = []
    for part, is_synthetic in zip(parts, synthetic):
        if weighted and "weight" not in part.column_names:
            part = part.add_column("weight", [1.0] * len(part), feature=datasets.Value("float64"))
        if mark:
            part = part.add_column("synthetic", [int(is_synthetic)] * len(part), feature=datasets.Value("int64"))
        out.append(part)
    return out


def teacher_probabilities(teacher_dir: str, texts: list[str]) -> np.ndarray:
    """Class probabilities of the ``augment.select.teacher`` on the (raw) synthetic ``texts``."""
    return softmax(predict_teacher(teacher_dir, texts, clean=CleanConfig()), axis=-1)


def lm_output_dir(cfg: Config, run_dir: Path) -> Path:
    """Where the adapted LM lives: ``augment.lm.output`` or ``<run_dir>/lm``."""
    return Path(cfg.augment.lm.output) if cfg.augment.lm.output else Path(run_dir) / "lm"


def adapt_lm_stage(cfg: Config, target_texts: Sequence[str], run_dir: Path) -> Path:
    """Adapt ``augment.lm.model`` to ``target_texts``; return the model folder. A folder that
    already holds a finished model (written atomically, so complete) is reused as it is."""
    out = lm_output_dir(cfg, run_dir)
    if cfg.augment.lm.output:  # a folder of its own: lorafit writes (and replaces model/) only in one it made
        mark_ours(check_ours(out, "augment.lm.output", legacy=lambda p: (p / "train_log.json").is_file()), "lm")
        lock_folder(out, "augment.lm.output")  # one writer at a time, as for a run folder
    if (out / "model" / "config.json").is_file():
        log.info("adapted LM found at %s; skipping LM adaptation (delete it to retrain)", out / "model")
        return out / "model"
    lm = cfg.augment.lm
    return adapt_language_model(lm.model, list(target_texts), out, epochs=lm.epochs, block_size=lm.block_size,
                                batch_size=lm.batch_size, learning_rate=lm.learning_rate, seed=cfg.seed,
                                max_steps=lm.max_steps, precision=cfg.train.precision, method=lm.method,
                                lora_r=lm.lora_r, lora_alpha=lm.lora_alpha, heldout=lm.heldout,
                                text_format=lm.format, instruction=lm.instruction,
                                trust_remote_code=cfg.model.trust_remote_code)


def generation_model(cfg: Config, run_dir: Path) -> str:
    """``augment.generate.model``, or else the adapted LM of this run."""
    if cfg.augment.generate.model:
        return cfg.augment.generate.model
    adapted = lm_output_dir(cfg, run_dir) / "model"
    if (adapted / "config.json").is_file():
        return str(adapted)
    raise ConfigError(
        f"config key 'augment.generate.model' is not set and there is no adapted LM at '{adapted}'. Adapt one "
        "first (`lorafit adapt-lm`, or augment.lm.enabled=true), or set augment.generate.model (e.g. gpt2)."
    )


def prompt_bank(cfg: Config, train_texts: Sequence[str] = (), train_labels: Sequence[int] = ()) -> dict[int, list[str]]:
    """The prompts per class: the YAML bank of ``augment.generate.prompts``, or with ``source`` the
    openings of the labeled training rows (``train_texts``/``train_labels``)."""
    g, names = cfg.augment.generate, [str(label) for label in cfg.data.labels]
    if g.prompts == SOURCE_PROMPTS:
        return source_openings(train_texts, train_labels, names, g.opening_words)
    return load_prompt_bank(g.prompts, names)


def generate_stage(cfg: Config, train_texts: Sequence[str], run_dir: Path, rank: int = 0,
                   world_size: int = 1, target_texts: Sequence[str] = (),
                   train_labels: Sequence[int] = ()) -> Optional[datasets.Dataset]:
    """Generate ``augment.generate.per_class`` samples per class into ``<run_dir>/synthetic``.

    Target lengths follow a skew-normal fitted to ``train_texts`` (``length.mode: fit``) or the
    configured parameters; with ``prompts: source`` the samples open with ``train_texts``' first
    words (``train_labels`` their classes). Returns None for a rank whose peers have not finished
    (see :func:`generate_samples`).
    """
    g = cfg.augment.generate
    bank = prompt_bank(cfg, train_texts, train_labels)
    if g.length.mode in ("fit", "fit_target"):
        texts = list(train_texts) if g.length.mode == "fit" else list(target_texts)
        if not texts:
            raise ConfigError("config key 'augment.generate.length.mode': 'fit_target' needs the target texts; set "
                              "data.target, or use mode: fit")
        a, loc, scale = fit_length_distribution(texts)
        log.info("target lengths: skew-normal a=%.3f loc=%.2f scale=%.2f fitted on %d %s texts", a, loc, scale,
                 len(texts), "training" if g.length.mode == "fit" else "target")
    else:
        a, loc, scale = g.length.a, g.length.loc, g.length.scale
    return generate_samples(
        generation_model(cfg, run_dir), bank, g.per_class, Path(run_dir) / "synthetic",
        a=a, loc=loc, scale=scale, min_words=g.length.min_words, max_words=g.length.max_words,
        top_k=g.top_k, top_p=g.top_p, temperature=g.temperature, repetition_penalty=g.repetition_penalty,
        batch_size=g.batch_size, seed=cfg.seed, rank=rank, world_size=world_size, precision=inference_precision(cfg),
        prompt_format=g.format, keep_prompt=g.keep_prompt, trust_remote_code=cfg.model.trust_remote_code,
        processes=g.processes,
    )


def check_augmentation_ready(cfg: Config, run_dir: Path) -> None:
    """Several processes must not adapt an LM or generate inside one `lorafit run` (they would
    race on the same folders): under torchrun those stages run first, in their own commands."""
    a = cfg.augment
    if a.lm.enabled and not (lm_output_dir(cfg, run_dir) / "model" / "config.json").is_file():
        raise DataError("augment.lm is enabled but the adapted LM is not on disk yet; under several processes run "
                         "`lorafit adapt-lm CONFIG` first (one process), then this command.")
    if a.generate.enabled and not (Path(run_dir) / "synthetic" / "samples.jsonl").is_file():
        raise DataError("augment.generate is enabled but the samples are not on disk yet; run "
                         "`torchrun --nproc_per_node=N -m lorafit.cli generate CONFIG` first, then this command.")


def check_augment_inputs(cfg: Config, has_target: bool) -> None:
    """Check what the enabled augmentation steps will read, before the run folder is made: the
    synonym lexicon (or ``wordnet_dir``), the prompt bank, the ``extra`` files, the teacher, and
    that LM adaptation and the consistency loss (``train.consistency``, ``selftrain.consistency``:
    synonym copies of the target texts) have target texts. A bad one fails here, in a second, not
    after training an LM; the errors name the key and file."""
    a = cfg.augment
    if a.synonyms.enabled:
        synonym_finder(a.synonyms.wordnet_dir)  # cached: the stage reuses it
    if cfg.train.consistency.enabled or (cfg.selftrain.enabled and cfg.selftrain.consistency):
        synonym_finder()  # the consistency loss's copies: the shipped lexicon
    if cfg.train.consistency.enabled and not has_target:
        raise ConfigError("config key 'train.consistency.enabled' needs the unlabeled target texts; set data.target, "
                          "or disable train.consistency.")
    if cfg.selftrain.enabled and cfg.selftrain.consistency and not has_target:
        raise ConfigError("config key 'selftrain.consistency' needs the unlabeled target texts; set data.target, "
                          "or set selftrain.consistency=false.")
    if a.lm.enabled and not has_target:
        raise ConfigError("config key 'augment.lm.enabled' needs the unlabeled target texts; set data.target, "
                          "or disable augment.lm.")
    if a.generate.enabled and a.generate.prompts != SOURCE_PROMPTS:
        load_prompt_bank(a.generate.prompts, [str(label) for label in cfg.data.labels])
    for spec in a.extra:
        load_labeled(spec, labels=cfg.data.labels, allow_pickle=cfg.data.allow_pickle)
    for key, teacher in (("augment.select.teacher", a.select.enabled and a.select.teacher),
                         ("train.distill.teacher", cfg.train.distill.enabled and cfg.train.distill.teacher)):
        # a path (not a Hub id): relative/absolute, or under output_dir where lorafit's runs live
        local = teacher and (teacher.startswith((".", "/", "~")) or Path(teacher).parts[:1] == Path(cfg.output_dir).parts[:1])
        if local and not Path(teacher).expanduser().exists():
            raise ConfigError(f"config key '{key}': teacher '{teacher}' does not exist; point it at a trained run "
                              "folder (runs/<name>) or a classifier model folder")
        if local and (Path(teacher).expanduser() / "model").is_dir():  # a lorafit run: complete, before the folder is made
            require_trained_run(Path(teacher).expanduser())


def _has_text(text: str) -> bool:
    return bool(text.strip())


def generator_summary(cfg: Config, run_dir: Path) -> dict:
    """Name, license and size of the LM that wrote this run's samples, and the held-out target
    perplexity before and after its adaptation (from synthetic/manifest.json and the LM's train_log.json)."""
    adapted = read_json_or(lm_output_dir(cfg, run_dir) / "train_log.json", {}) if not cfg.augment.generate.model else {}
    gen = (adapted.get("generator") or read_json_or(Path(run_dir) / "synthetic" / "manifest.json", {}).get("generator")
           or {})
    return {**{k: gen.get(k) for k in ("name", "model", "base_model", "source", "license", "parameters")},
            **({"adapted": adapted.get("method"), "heldout_perplexity": adapted.get("heldout_perplexity")}
               if adapted else {})}


def measure_samples(cfg: Config, pooled: datasets.Dataset, source: datasets.Dataset,
                    target: Optional[datasets.Dataset], teacher_probs: Optional[np.ndarray] = None) -> dict:
    """Label fidelity, diversity and length fit (:mod:`.quality`) of each kind of synthetic rows
    (``synthetic``: generated by this run; ``extra``: the augment.extra files), before selection."""
    try:
        judge = fit_judge(source["text"][:], source["label"][:], len(cfg.data.labels))
    except ValueError as e:  # scikit-learn: e.g. no word occurs twice in a tiny source set
        log.warning("sample quality not measured: the judge cannot be fitted on the source rows (%s)", e)
        return {}
    target_texts = target["text"][:] if target is not None else []
    kinds = np.asarray(pooled["source"][:])
    texts, labels = pooled["text"][:], np.asarray(pooled["label"][:])
    out = {}
    for kind in ("synthetic", "extra"):
        rows = np.flatnonzero(kinds == kind)
        if len(rows):
            out[kind] = sample_quality(
                [texts[i] for i in rows], labels[rows], judge, target_texts,
                teacher_pred=teacher_probs[rows].argmax(-1) if teacher_probs is not None else None,
                near_duplicate=cfg.augment.select.near_duplicate or 0.8,
                label_names=[str(n) for n in cfg.data.labels])
            log.info("%s samples: judge fidelity %.3f, distinct-2 %.3f, near duplicates %.3f, length KS %s", kind,
                     out[kind].get("judge_fidelity", float("nan")), out[kind].get("distinct_2", float("nan")),
                     out[kind].get("near_duplicate_rate", float("nan")), out[kind].get("length_ks"))
    return out


def augment_training_data(cfg: Config, train: datasets.Dataset, target: Optional[datasets.Dataset],
                          run_dir: Path) -> tuple[datasets.Dataset, dict]:
    """Run the augmentation steps the config enables; return the merged, shuffled training set
    (columns ``text``, ``label``) and a report, also written to ``<run_dir>/augment_report.json``.
    """
    run_dir = Path(run_dir)
    a = cfg.augment
    base = train.select_columns(["text", "label"])
    features = base.features
    train_texts = base["text"][:]  # a list: reading a Column item by item is slow
    rows = {"original": len(base)}
    report: dict = {"rows": rows, "paths": {}}
    parts = [base]

    if a.synonyms.enabled:
        s = a.synonyms
        syn = synonym_augment(base, s.fraction, s.copies, cfg.seed, s.max_samples, s.wordnet_dir)
        parts.append(syn.cast(features))
        rows["synonyms"] = len(syn)

    if a.lm.enabled:
        if target is None or len(target) == 0:
            raise ConfigError("config key 'augment.lm.enabled' needs the unlabeled target texts; set data.target, "
                              "or disable augment.lm.")
        report["paths"]["lm"] = str(adapt_lm_stage(cfg, target["text"][:], run_dir))

    pool = []
    if a.generate.enabled:
        synth = generate_stage(cfg, train_texts, run_dir, target_texts=target["text"][:] if target is not None else (),
                               train_labels=base["label"][:])
        rows["synthetic_generated"] = len(synth)
        report["paths"]["synthetic"] = str(run_dir / "synthetic")
        report["generator"] = generator_summary(cfg, run_dir)
        pool.append(synth.select_columns(["text", "label"]).cast(features)
                    .add_column("source", ["synthetic"] * len(synth)))
    for spec in a.extra:
        extra = load_labeled(spec, labels=cfg.data.labels, allow_pickle=cfg.data.allow_pickle)
        rows["extra_loaded"] = rows.get("extra_loaded", 0) + len(extra)
        pool.append(extra.cast(features).add_column("source", ["extra"] * len(extra)))

    if pool:
        pooled = datasets.concatenate_datasets(pool)
        probs = (teacher_probabilities(a.select.teacher, pooled["text"][:]) if a.select.enabled and a.select.teacher
                 else None)
        report["quality"] = measure_samples(cfg, pooled, base, target, probs)
        if report["quality"].get("synthetic"):
            atomic_write_json(run_dir / "synthetic" / "quality.json", report["quality"]["synthetic"])
        if a.select.enabled:
            pooled, report["selection"] = select_samples(
                pooled, min_words=a.select.min_words, near_duplicate=a.select.near_duplicate,
                reference_texts=train_texts, teacher_probs=probs, teacher_confidence=a.select.teacher_confidence,
                disagree=a.select.disagree, disagree_weight=a.select.disagree_weight)
        else:  # cleaned like every training text (the selection stage cleans on its own)
            # a module-level function and a given fingerprint: datasets hashes no function (inside its
            # bare `except:`, where a Ctrl-C would be swallowed)
            cleaned = clean_dataset(pooled, cfg)
            pooled = cleaned.filter(_has_text, input_columns="text",
                                    new_fingerprint=f"{cleaned._fingerprint}-nonempty")
        sources = pooled["source"][:]
        if a.generate.enabled:
            rows["synthetic"] = sources.count("synthetic")
        if a.extra:
            rows["extra"] = sources.count("extra")
        pooled = pooled.remove_columns("source")
        parts.append(pooled.cast(datasets.Features({**pooled.features, **features})))  # and its weight, if any

    synthetic = [bool(pool) and i == len(parts) - 1 for i in range(len(parts))]
    if marks_synthetic(cfg) or any("weight" in p.column_names for p in parts):
        parts = _row_columns(parts, synthetic, marks_synthetic(cfg))
    merged = datasets.concatenate_datasets(parts).shuffle(seed=cfg.seed).flatten_indices()
    rows["total"] = len(merged)
    atomic_write_json(run_dir / "augment_report.json", report)
    log.info("augmented training set: %s", rows)
    return merged, report
