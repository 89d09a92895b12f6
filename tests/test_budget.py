"""Exact trainable-parameter budget from the model config alone (no weights, offline)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoModelForSequenceClassification, RobertaConfig

import lorafit.model
from lorafit.budget import BudgetExceeded, BudgetReport, check_budget, count_budget
from lorafit.config import load_config

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "configs" / "seed.yaml"

# The report's recipe (RoBERTa-base, LoRA r=4 on q/k/v, all biases, SEQ_CLS head)
TRAINABLE = 916_996
TOTAL = 125_463_560
LORA = 221_184          # 12 layers x 3 modules x (768x4 + 4x768)
BIASES = 102_144        # every bias of the encoder (the head's biases count with the head)
HEAD = 593_668          # dense 768x768+768, out_proj 768x4+4
PEFT_LINE = "trainable params: 916,996 || all params: 125,463,560 || trainable%: 0.7309"


@pytest.fixture(autouse=True)
def _no_weights(monkeypatch):
    """Every budget count must work from the config alone: loading weights is an error here."""

    def refuse(*args, **kwargs):
        raise AssertionError("the budget check must not load model weights")

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", refuse)


@pytest.fixture(scope="module")
def seed_report() -> BudgetReport:
    return count_budget(load_config(SEED))


def _seed(*overrides):
    return load_config(SEED, list(overrides))


def test_seed_counts(seed_report):
    assert seed_report.trainable == TRAINABLE
    assert seed_report.total == TOTAL
    assert seed_report.max_trainable == 1_000_000
    assert seed_report.within


def test_seed_breakdown_sums_to_trainable(seed_report):
    assert seed_report.breakdown == {"lora matrices": LORA, "biases": BIASES, "classifier head": HEAD}
    assert sum(seed_report.breakdown.values()) == seed_report.trainable


def test_seed_peft_line(seed_report):
    assert seed_report.peft_line() == PEFT_LINE
    rendered = seed_report.render().splitlines()
    assert rendered[0] == PEFT_LINE
    assert any("budget" in line and "1,000,000" in line and line.rstrip().endswith("OK") for line in rendered)


def test_seed_report_dict(seed_report):
    d = seed_report.to_dict()
    assert d["trainable"] == TRAINABLE and d["total"] == TOTAL and d["within_budget"] is True
    assert d["largest_contributors"][0] == {"module": "classifier.modules_to_save.dense", "params": 768 * 768 + 768}
    counts = [c["params"] for c in d["largest_contributors"]]
    assert counts == sorted(counts, reverse=True)


def test_offline_uses_the_shipped_roberta_config(monkeypatch, caplog):
    """With the Hub unreachable (and no cache), lorafit's shipped copy of roberta-base's config is used."""
    real = AutoConfig.from_pretrained

    def offline(name, *args, **kwargs):
        if str(name) == "roberta-base":
            raise OSError("We couldn't connect to 'https://huggingface.co' (offline)")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(lorafit.model.AutoConfig, "from_pretrained", offline)
    with caplog.at_level(logging.INFO, logger="lorafit.model"):
        report = check_budget(load_config(SEED))
    assert (report.trainable, report.total) == (TRAINABLE, TOTAL)
    assert any("shipped copy" in r.getMessage() for r in caplog.records)


def test_local_folder_with_roberta_base_config(tmp_path):
    folder = tmp_path / "my-roberta"
    RobertaConfig(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
                  layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2).save_pretrained(folder)
    assert (folder / "config.json").is_file() and not list(folder.glob("*.safetensors"))
    report = count_budget(_seed(f"model.name={folder}"))
    assert (report.trainable, report.total) == (TRAINABLE, TOTAL)
    assert report.breakdown == {"lora matrices": LORA, "biases": BIASES, "classifier head": HEAD}
    assert report.peft_line() == PEFT_LINE


def test_config_json_path(tmp_path):
    folder = tmp_path / "cfgonly"
    RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1).save_pretrained(folder)
    report = count_budget(_seed(f"model.name={folder / 'config.json'}"))
    assert (report.trainable, report.total) == (TRAINABLE, TOTAL)


def test_over_budget_raises_naming_count_and_contributors():
    cfg = _seed("lora.r=16")
    with pytest.raises(BudgetExceeded) as e:
        check_budget(cfg)
    msg = str(e.value)
    trainable = 16 * 2 * 768 * 3 * 12 + BIASES + HEAD  # 1,580,548
    assert f"{trainable:,}" in msg
    assert "1,000,000" in msg
    assert f"by {trainable - 1_000_000:,}" in msg
    assert "classifier.modules_to_save.dense" in msg
    assert "attention.self.query.lora_A" in msg
    assert "lora.r" in msg  # says what to change


def test_over_budget_count_without_raising():
    report = count_budget(_seed("lora.r=16"))
    assert report.trainable == 1_580_548 and not report.within
    assert report.breakdown["lora matrices"] == 884_736
    assert "EXCEEDED by 580,548" in report.render()


def test_a_lower_limit_rejects_the_seed_recipe():
    with pytest.raises(BudgetExceeded, match="916,996"):
        check_budget(_seed("budget.max_trainable=900000"))
    assert check_budget(_seed("budget.max_trainable=916996")).trainable == TRAINABLE


def test_rslora_changes_scaling_not_counts(seed_report):
    report = count_budget(_seed("lora.use_rslora=true"))
    assert (report.trainable, report.total) == (seed_report.trainable, seed_report.total)
    assert report.breakdown == seed_report.breakdown


def test_dora_adds_one_magnitude_vector_per_adapted_layer():
    report = count_budget(_seed("lora.use_dora=true"))
    magnitudes = 12 * 3 * 768
    assert report.trainable == TRAINABLE + magnitudes
    assert report.total == TOTAL + magnitudes
    assert report.breakdown["lora matrices"] == LORA + magnitudes


def test_layers_to_transform_restricts_lora():
    report = count_budget(_seed("lora.layers_to_transform=[10,11]"))
    assert report.breakdown["lora matrices"] == LORA * 2 // 12 == 36_864
    assert report.breakdown["biases"] == BIASES and report.breakdown["classifier head"] == HEAD
    assert report.trainable == 36_864 + BIASES + HEAD
    assert report.total == TOTAL - LORA + 36_864


def test_bias_none_drops_the_encoder_biases():
    report = count_budget(_seed("lora.bias=none"))
    assert report.breakdown == {"lora matrices": LORA, "classifier head": HEAD}
    assert report.trainable == LORA + HEAD
    assert report.total == TOTAL


def test_rank_scales_lora_linearly():
    report = count_budget(_seed("lora.r=2", "lora.target_modules=[query,value]"))
    assert report.breakdown["lora matrices"] == 12 * 2 * (768 * 2 + 2 * 768)


def test_unknown_target_module_is_a_clear_error():
    with pytest.raises(lorafit.model.ModelError, match="lora"):
        count_budget(_seed("lora.target_modules=[no_such_module]"))


def test_max_length_beyond_the_position_limit_is_refused_from_the_config():
    """RoBERTa-base has 514 position embeddings, of which 512 hold tokens (positions start after
    the padding index): 512 is accepted, 513 refused before any weight loads, naming the key."""
    assert count_budget(_seed("model.max_length=512")).trainable == TRAINABLE
    with pytest.raises(lorafit.model.ModelError, match=r"'model.max_length': 513 .*512 positions.*<= 512"):
        count_budget(_seed("model.max_length=513"))
