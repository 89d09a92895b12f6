"""The experiment config: one YAML file per experiment, overridable as ``key.sub=value``.

:mod:`lorafit.config.schema` holds the sections (pydantic models whose fields carry their bounds
and descriptions; ``docs/config.md`` is generated from them), :mod:`lorafit.config.load` reads
YAML files, ``base:`` chains and overrides and turns validation errors into one line naming the
key. The whole config is validated when it loads, before anything is read or written.

This package imports no torch, transformers or datasets: the CLI rejects a bad config in a
fraction of a second.
"""

from lorafit.config.load import (CONSENT_KEYS, MAX_DEPTH, MAX_NODES, describe_error, flatten, load_config,
                                 merge_overrides, parse_override, save_config, with_labels)
from lorafit.config.schema import (AG_NEWS_LABELS, MINILM_ALIASES, MINILM_HUB_ID, AugmentConfig, BudgetConfig,
                                   CleanConfig, Config, ConsistencyConfig, DataConfig, DistillConfig,
                                   GenerateConfig, LengthConfig, LMAdaptConfig, LoraSection, ModelConfig,
                                   PredictConfig, PrunerConfig, SearchConfig, SelectConfig, SelfTrainConfig,
                                   SynonymConfig, TrainConfig, hub_model_id)
from lorafit.config.types import SEED_MAX
from lorafit.errors import ConfigError

__all__ = [
    "AG_NEWS_LABELS", "CONSENT_KEYS", "MAX_DEPTH", "MAX_NODES", "MINILM_ALIASES", "MINILM_HUB_ID", "SEED_MAX",
    "AugmentConfig", "BudgetConfig", "CleanConfig", "Config", "ConfigError", "ConsistencyConfig", "DataConfig",
    "DistillConfig", "GenerateConfig", "LMAdaptConfig", "LengthConfig", "LoraSection", "ModelConfig",
    "PredictConfig", "PrunerConfig", "SearchConfig", "SelectConfig", "SelfTrainConfig", "SynonymConfig",
    "TrainConfig", "describe_error", "flatten", "hub_model_id", "load_config", "merge_overrides", "parse_override",
    "save_config", "with_labels",
]
