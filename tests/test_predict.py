"""The prediction path: batch planning, model preparation (merge + bf16 weights) and CPU workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lorafit.config import ConfigError, load_config
from lorafit.model import build_model, load_tokenizer
from lorafit.precision import for_inference
from lorafit.inference import cpu_workers, default_max_tokens, padded_tokens, plan_batches, plan_prediction, predict_logits

from conftest import tiny_labeled_rows

TEXTS = [r["text"] for r in tiny_labeled_rows(3)]
# lengths differ a lot, so batches differ in width and the longest ones come first
TEXTS = [t * (1 + i % 4) for i, t in enumerate(TEXTS)]


@pytest.fixture()
def tiny_model(tiny_roberta_dir, tmp_path):
    cfg = load_config(None, [f"model.name={tiny_roberta_dir}", "model.max_length=64", "lora.r=4",
                             "lora.target_modules=[query,value]", "lora.modules_to_save=null",
                             "model.attn_implementation=eager", f"output_dir={tmp_path}",
                             "data.labels=[World,Sports,Business,Sci/Tech]"])
    model = build_model(cfg).model
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a non-zero adapter, so that merging it changes the base weights
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval(), load_tokenizer(cfg)


@pytest.fixture()
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_plan_batches_covers_every_text_once_within_the_token_budget():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=500)
    batches = plan_batches(lengths, batch_size=64, max_tokens=1024, multiple_of=8)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(500))
    for b in batches:
        assert 1 <= len(b) <= 64
        padded = -(-int(lengths[b].max()) // 8) * 8
        assert len(b) == 1 or len(b) * padded <= 1024
        assert lengths[b[0]] == lengths[b].max()  # longest first within the batch
    firsts = [int(lengths[b[0]]) for b in batches]
    assert firsts == sorted(firsts, reverse=True)
    assert padded_tokens(lengths, batches, 8) == sum(len(b) * -(-int(lengths[b].max()) // 8) * 8 for b in batches)
    assert padded_tokens([3, 5, 9], [np.array([2, 1]), np.array([0])], 4) == 2 * 12 + 4


def test_plan_prediction_is_what_predict_logits_runs(two_threads):
    lengths = list(range(1, 200))
    batches, multiple, workers = plan_prediction(lengths, torch.device("cpu"), 64)
    assert multiple == 1 and workers == 2  # two threads: two workers with 1,024-token batches
    expected = plan_batches(lengths, 64, 1024, multiple_of=1)
    assert len(batches) == len(expected) and all(np.array_equal(a, b) for a, b in zip(batches, expected))
    _, _, one = plan_prediction([5], torch.device("cpu"), 64)
    assert one == 1  # never more workers than batches


def test_token_budget_per_batch_depends_on_the_workers(two_threads):
    cpu = torch.device("cpu")
    assert default_max_tokens(cpu, workers=2) == 1024
    assert default_max_tokens(cpu, workers=1) == 2048
    assert default_max_tokens(torch.device("cuda"), workers=1) is None
    assert cpu_workers(cpu) == 2
    assert cpu_workers(cpu, 3) == 3
    assert cpu_workers(torch.device("cuda"), 4) == 1
    torch.set_num_threads(16)
    assert cpu_workers(cpu) == 8


def test_workers_give_the_same_logits_in_input_order(tiny_model, two_threads):
    model, tok = tiny_model
    model, merge_adapters = for_inference(model, "fp32")
    assert not merge_adapters  # one adapter: merged into the base, nothing left to merge per pass
    one = predict_logits(model, tok, TEXTS, max_length=64, precision="fp32", workers=1, max_tokens=128)
    two = predict_logits(model, tok, TEXTS, max_length=64, precision="fp32", workers=2, max_tokens=128)
    assert torch.get_num_threads() == 2  # restored after the workers ran
    np.testing.assert_allclose(one, two, rtol=1e-5, atol=1e-5)
    # each row is the logits of its own text, whatever batch it was in
    single = np.concatenate([predict_logits(model, tok, [t], max_length=64, precision="fp32", workers=1)
                             for t in TEXTS[:5]])
    np.testing.assert_allclose(two[:5], single, rtol=1e-4, atol=1e-4)
    # and several workers give the same numbers every time
    again = predict_logits(model, tok, TEXTS, max_length=64, precision="fp32", workers=2, max_tokens=128)
    assert np.array_equal(two, again)


def test_for_inference_merges_and_stores_linear_weights_in_bf16(tiny_model):
    import copy

    from peft import PeftModel

    model, tok = tiny_model
    unmerged_fp32 = predict_logits(model, tok, TEXTS, max_length=64, precision="fp32", workers=1)
    merged_fp32 = copy.deepcopy(model).merge_and_unload()
    autocast = predict_logits(merged_fp32, tok, TEXTS, max_length=64, precision="bf16", workers=1)
    ready, _ = for_inference(model, "bf16")
    assert not isinstance(ready, PeftModel)
    assert not any("lora_" in n for n, _ in ready.named_parameters())
    dtypes = {type(m).__name__: m.weight.dtype for m in ready.modules() if hasattr(m, "weight")}
    assert dtypes["Linear"] == torch.bfloat16
    assert dtypes["LayerNorm"] == torch.float32 and dtypes["Embedding"] == torch.float32
    # precision="fp32" cannot run bf16 weights: the model's own precision wins
    stored = predict_logits(ready, tok, TEXTS, max_length=64, precision="fp32", workers=1)
    assert stored.dtype == np.float32
    # bf16 weights stored once give what bf16 autocast gives (it rounds the same weights on every call)
    np.testing.assert_allclose(stored, autocast, rtol=0, atol=1e-6)
    # and bf16 stays near fp32
    scale = np.abs(unmerged_fp32).max()
    assert np.abs(stored - unmerged_fp32).max() < 0.1 * scale
    assert (stored.argmax(1) == unmerged_fp32.argmax(1)).mean() >= 0.75


def test_for_inference_fp32_keeps_weights_and_can_keep_the_adapter(tiny_model):
    from peft import PeftModel

    model, tok = tiny_model
    before = predict_logits(model, tok, TEXTS, max_length=64, precision="fp32", workers=1)
    kept, merge_adapters = for_inference(model, "fp32", merge=False)
    assert isinstance(kept, PeftModel) and not merge_adapters
    assert all(p.dtype == torch.float32 for p in kept.parameters())
    merged, _ = for_inference(kept, "fp32")
    after = predict_logits(merged, tok, TEXTS, max_length=64, precision="fp32", workers=1)
    np.testing.assert_allclose(before, after, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bad", ["0", "-1", "two", "true", "1.5"])
def test_predict_workers_must_be_auto_or_a_positive_integer(bad):
    with pytest.raises(ConfigError, match="predict.workers"):
        load_config(None, [f"predict.workers={bad}"])
    assert load_config(None, ["predict.workers=3"]).predict.workers == 3
    assert load_config(None, []).predict.workers == "auto"


def test_a_huge_text_is_cut_before_tokenizing_and_keeps_its_tokens(tiny_model):
    """A text far longer than max_length tokens can use is cut (by characters) before it is
    tokenized: the kept tokens, and so the logits, are those of the whole text."""
    from lorafit.data.clean import CHARS_PER_TOKEN, clip_text

    model, tok = tiny_model
    sentence = "Shares rise as the bank reports higher quarterly profit &amp; more. "
    huge = sentence * 20_000  # 1.4 MB on one line
    clipped = clip_text(huge, 64)
    assert len(clipped) == 64 * CHARS_PER_TOKEN and huge.startswith(clipped)
    assert clip_text(sentence, 64) == sentence
    whole = tok(huge, truncation=True, max_length=64)["input_ids"]
    assert tok(clipped, truncation=True, max_length=64)["input_ids"] == whole and len(whole) == 64
    # predict_logits cuts before tokenizing: the same logits as for a short prefix of the same text
    got = predict_logits(model, tok, [huge, "Cup final tonight"], max_length=64, precision="fp32", workers=1)
    want = predict_logits(model, tok, [sentence * 10, "Cup final tonight"], max_length=64, precision="fp32",
                          workers=1)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
