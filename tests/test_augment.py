"""Tests for lorafit.augment: synonyms, LM adaptation, generation, selection and the whole stage.

A tiny randomly initialised GPT-2 with a byte-level BPE tokenizer trained here on a few sentences
stands in for GPT-2; nothing is downloaded. Synonym tests need WordNet (Debian's wordnet-base or
NLTK's data) and are skipped without it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from scipy import stats

from lorafit.augment import augment_training_data, generate_stage
from lorafit.augment.generate import (
    fit_length_distribution,
    generate_samples,
    load_prompt_bank,
    sample_lengths,
    shard_path,
)
from lorafit.augment.lm_adapt import adapt_language_model, pack_texts
from lorafit.augment.select import jaccard, near_duplicates, select_samples, shingle_hashes
from lorafit.augment.synonyms import (
    LEXNAMES,
    STOPWORDS,
    WordNetError,
    _debian_folder,
    DEBIAN_WORDNET,
    load_wordnet,
    replace_synonyms,
    synonym_augment,
)
from lorafit.config import (
    AugmentConfig,
    Config,
    DataConfig,
    GenerateConfig,
    LengthConfig,
    LMAdaptConfig,
    SelectConfig,
    SynonymConfig,
    TrainConfig,
)
from lorafit.data.io import DataError

CORPUS = [
    "The team won the final match of the season on Sunday.",
    "Stocks fell sharply as oil prices rose to a record high.",
    "Scientists released a new study on climate and ocean currents.",
    "The government announced new taxes on imported steel.",
    "The striker scored twice in the second half of the game.",
    "Shares of the software company jumped after strong earnings.",
    "A new telescope found water on a distant planet.",
    "Leaders met in Geneva to discuss the peace agreement.",
    "The coach praised his players after a hard fought victory.",
    "The central bank kept interest rates unchanged this quarter.",
]


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    """A 2-layer GPT-2 (random weights) and a byte-level BPE tokenizer, saved like a Hub model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(CORPUS * 5, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=128, vocab_size=len(tok),
                     bos_token_id=eos, eos_token_id=eos)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def wordnet(tmp_path_factory):
    """The WordNet reader, with lorafit's cache in a temporary folder; skips without WordNet."""
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    try:
        yield load_wordnet()
    except WordNetError as e:
        pytest.skip(f"no WordNet here: {e}")
    finally:
        mp.undo()


def _gen_kwargs(**over):
    kw = dict(a=0.0, loc=6.0, scale=2.0, min_words=2, max_words=10, top_k=50, top_p=0.95, temperature=1.0,
              repetition_penalty=1.3, batch_size=4, seed=7)
    kw.update(over)
    return kw


BANK = {0: ["Sports news:", "The game"], 1: ["Markets today"]}


# ------------------------------------------------------------------ synonyms


def test_replace_synonyms_skips_stopwords_numbers_short_and_acronyms():
    table = {"the": ("thy",), "big": ("large",), "market": ("marketplace",), "ab": ("xy",), "usa": ("us",),
             "rallied": ("rebounded",), "monday": ("mon",)}
    finder = lambda w: table.get(w.lower(), ())  # noqa: E731
    text = "Big market rallied on Monday, the USA said; ab 42 and 3.5% of it. Market big."
    out = replace_synonyms(text, 1.0, random.Random(0), finder)
    # all content words with a synonym are replaced, capitalisation of the first letter kept;
    # a capitalised word inside a sentence is a name ("Monday") and stays
    assert out == "Large marketplace rebounded on Monday, the USA said; ab 42 and 3.5% of it. Marketplace large."
    # fraction 0.2 of 5 content words -> exactly one replacement
    one = replace_synonyms(text, 0.2, random.Random(1), finder)
    changed = [a for a, b in zip(text.split(), one.split()) if a != b]
    assert len(changed) == 1 and len(one.split()) == len(text.split())
    assert "the" in STOPWORDS


def test_lexnames_table_and_debian_folder(tmp_path):
    assert len(LEXNAMES) == 45 and LEXNAMES[3] == ("noun.Tops", 1) and LEXNAMES[44] == ("adj.ppl", 3)
    if not (DEBIAN_WORDNET / "data.noun").is_file():
        pytest.skip("Debian's wordnet-base is not installed")
    folder = _debian_folder(DEBIAN_WORDNET, tmp_path)
    lines = (folder / "lexnames").read_text().splitlines()
    assert lines[0] == "00\tadj.all\t3" and lines[29] == "29\tverb.body\t2" and len(lines) == 45
    assert (folder / "data.noun").stat().st_size == (DEBIAN_WORDNET / "data.noun").stat().st_size
    assert not (folder / "data.noun").is_symlink()


def test_synonym_augment_changes_words_keeps_labels_deterministic(wordnet):
    assert wordnet.synset("dog.n.01").lexname() == "noun.animal"  # lexnames file is right
    ds = datasets.Dataset.from_dict({
        "text": ["The big company reported 42 new offices in Europe on Monday.",
                 "The quick brown fox jumps over the lazy dog.",
                 "it is 2004 , and the of 3.5 %"],
        "label": [2, 1, 0]})
    aug = synonym_augment(ds, fraction=0.5, copies=2, seed=3)
    again = synonym_augment(ds, fraction=0.5, copies=2, seed=3)
    assert aug["text"] == again["text"] and aug["label"] == again["label"]
    # the row of stopwords and numbers only cannot change: its copies are skipped
    assert 0 not in aug["label"]
    assert 1 <= aug["label"].count(2) <= 2 and 1 <= aug["label"].count(1) <= 2
    by_label = {2: ds["text"][0], 1: ds["text"][1]}
    for text, label in zip(aug["text"], aug["label"]):
        original = by_label[label]
        assert text != original
        words = text.split()
        for kept in ("The", "42", "in", "on", "over", "the", "Europe", "Monday"):  # stopwords, numbers, names
            if kept in original.split():
                assert kept in words
    other = synonym_augment(ds, fraction=0.5, copies=2, seed=4)
    assert other["text"] != aug["text"]
    sub = synonym_augment(ds, fraction=0.5, copies=1, seed=3, max_samples=1)
    assert len(sub) <= 1


# ------------------------------------------------------------------ LM adaptation


def test_pack_texts_blocks_and_counts(tiny_lm):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    ds, st = pack_texts(tok, CORPUS, block_size=16)
    lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in CORPUS]
    assert st["texts"] == 10 and st["tokens"] == sum(lengths)
    assert st["blocks"] == sum(lengths) // 16 and st["tokens_dropped"] == sum(lengths) % 16
    assert all(len(b) == 16 for b in ds["input_ids"]) and st["tokens_in_blocks"] == 16 * len(ds)
    first = tok(CORPUS[0], add_special_tokens=False)["input_ids"]
    stream = [t for b in ds["input_ids"] for t in b]
    assert stream[: len(first) + 1] == first + [tok.eos_token_id]  # EOS after each text, texts packed
    one, st1 = pack_texts(tok, ["Hi."], block_size=64)  # less than one block: one short block
    assert len(one) == 1 and st1["tokens_dropped"] == 0 and len(one[0]["input_ids"]) == st1["tokens"]


def test_adapt_language_model_trains_saves_and_resumes(tiny_lm, tmp_path):
    from transformers import AutoModelForCausalLM

    texts = CORPUS * 4  # ~440 tokens: > 12 blocks of 16
    # first run: 2 steps, keeping its checkpoint as a killed run would leave it
    adapt_language_model(str(tiny_lm), texts, tmp_path, block_size=16, batch_size=4, max_steps=2,
                         save_steps=2, precision="fp32", seed=1, keep_checkpoints=True)
    (tmp_path / "model").rename(tmp_path / "model-first")
    assert (tmp_path / "checkpoints" / "checkpoint-2").is_dir()
    out = adapt_language_model(str(tiny_lm), texts, tmp_path, block_size=16, batch_size=4, max_steps=4,
                               save_steps=2, precision="fp32", seed=1)
    assert out == tmp_path / "model" and not (tmp_path / "checkpoints").exists()
    log = json.loads((tmp_path / "train_log.json").read_text())
    assert log["resumed_from"].endswith("checkpoint-2") and log["global_step"] == 4
    assert log["tokens_trained"] == 4 * 4 * 16 and log["block_size"] == 16
    assert log["blocks"] == log["tokens"] // 16 and log["wall_time_s"] > 0
    assert any("loss" in h for h in log["log_history"])
    adapted = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_lm)
    assert not torch.equal(adapted.transformer.wte.weight, base.transformer.wte.weight)
    with pytest.raises(DataError, match="no non-empty texts"):
        adapt_language_model(str(tiny_lm), ["", "  "], tmp_path / "empty")


# ------------------------------------------------------------------ prompt bank and lengths


def test_load_prompt_bank_and_errors(tmp_path):
    labels = ["World", "Sports"]
    f = tmp_path / "bank.yaml"
    f.write_text("sports: ['The match']\nWORLD: ['Leaders met', 'In Geneva']\n")
    assert load_prompt_bank(f, labels) == {0: ["Leaders met", "In Geneva"], 1: ["The match"]}
    cases = {
        "World: [a]\nSports: [b]\nWeather: [c]\n": r"unknown label 'Weather'.*\['World', 'Sports'\]",
        "World: [a]\n": r"no prompts for label\(s\) \['Sports'\]",
        "World: []\nSports: [b]\n": "label 'World' has no prompts",
        "World: [a, 3]\nSports: [b]\n": "label 'World', prompt 1 is 3 \\(int\\)",
        "- a\n- b\n": "must map each class name",
    }
    for text, pattern in cases.items():
        f.write_text(text)
        with pytest.raises(DataError, match=pattern) as e:
            load_prompt_bank(f, labels)
        assert str(f) in str(e.value)
    with pytest.raises(DataError, match="does not exist"):
        load_prompt_bank(tmp_path / "missing.yaml", labels)


def test_length_fit_recovers_parameters_and_sampling_clips():
    rng = np.random.default_rng(0)
    words = stats.skewnorm.rvs(4.0, loc=20, scale=15, size=4000, random_state=rng)
    texts = [" ".join(["w"] * max(1, int(round(n)))) for n in words]
    a, loc, scale = fit_length_distribution(texts)
    assert abs(loc - 20) < 2.0 and abs(scale - 15) < 2.0 and abs(a - 4.0) < 1.5
    n = sample_lengths(5000, a, loc, scale, 25, 40, np.random.default_rng(1))
    assert n.dtype.kind == "i" and n.min() == 25 and n.max() == 40
    assert np.array_equal(n, sample_lengths(5000, a, loc, scale, 25, 40, np.random.default_rng(1)))
    with pytest.raises(DataError, match="cannot fit"):
        fit_length_distribution(["a b", "c d", "e f"])


# ------------------------------------------------------------------ generation


@pytest.fixture(scope="module")
def generated(tiny_lm, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    ds = generate_samples(str(tiny_lm), BANK, 5, out, **_gen_kwargs())
    return out, ds


def test_generate_samples_end_to_end(generated, tiny_lm):
    out, ds = generated
    assert len(ds) == 10 and ds["label"].count(0) == 5 and ds["label"].count(1) == 5
    assert set(ds.column_names) >= {"text", "label", "prompt", "seed"}
    assert sum(bool(t) for t in ds["text"]) > 0
    for row in ds:
        assert row["prompt"] in BANK[row["label"]]
        assert not row["text"].startswith(row["prompt"])  # only the new tokens are decoded
        assert 2 <= row["target_words"] <= 10 and len(row["text"].split()) <= row["target_words"]
    assert len(list((out / "shards").glob("shard-*.jsonl"))) == 3  # ceil(10 / 4)
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert [json.loads(x)["text"] for x in lines] == ds["text"]
    m = json.loads((out / "manifest.json").read_text())
    assert m["samples"] == 10 and m["per_class"] == {"0": 5, "1": 5} and m["shards"] == 3
    assert m["settings"]["sampling"]["top_k"] == 50 and m["settings"]["sampling"]["repetition_penalty"] == 1.3
    assert m["settings"]["seed"] == 7 and m["settings"]["model"] == str(tiny_lm)
    assert m["target_words"]["min"] >= 2 and m["target_words"]["max"] <= 10
    assert m["output_words"]["max"] <= m["target_words"]["max"]
    # a batch holds similar lengths: shards are in target-length order
    shard_targets = [[json.loads(x)["target_words"] for x in shard_path(out, j).read_text().splitlines()]
                     for j in range(3)]
    assert max(shard_targets[0]) <= min(shard_targets[1]) and max(shard_targets[1]) <= min(shard_targets[2])


def test_generate_resume_regenerates_the_same_shard(generated, tiny_lm):
    out, ds = generated
    deleted = shard_path(out, 1).read_bytes()
    shard_path(out, 1).unlink()
    again = generate_samples(str(tiny_lm), BANK, 5, out, **_gen_kwargs())
    assert shard_path(out, 1).read_bytes() == deleted
    assert len(again) == 10 and again["text"] == ds["text"] and again["seed"] == ds["seed"]
    with pytest.raises(DataError, match="changed: sampling"):
        generate_samples(str(tiny_lm), BANK, 5, out, **_gen_kwargs(top_k=10))


def test_generate_rank_split_matches_single_process(generated, tiny_lm, tmp_path):
    _, single = generated
    assert generate_samples(str(tiny_lm), BANK, 5, tmp_path, rank=0, world_size=2, **_gen_kwargs()) is None
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["shard-00000.jsonl", "shard-00002.jsonl"]
    both = generate_samples(str(tiny_lm), BANK, 5, tmp_path, rank=1, world_size=2, **_gen_kwargs())
    assert both is not None and both.to_dict() == single.to_dict()


# ------------------------------------------------------------------ selection


def test_select_samples_rules_and_counts():
    long_a = "Oil prices climbed to a new record high on Tuesday amid supply worries in the Gulf region."
    texts = [
        long_a,                                        # kept
        "Too short text",                               # short (3 words < 5)
        "  ",                                           # short (empty)
        "oil prices climbed to a new RECORD high on Tuesday amid supply worries in the   Gulf region.",  # exact dup
        long_a.replace("Tuesday", "Tuesdays"),          # near duplicate of row 0
        "The home team beat the visitors three to one in a thrilling final.",   # duplicate of reference
        "Astronomers spotted a comet passing close to the planet Jupiter last night.",  # teacher disagrees
        "Astronomers said the comet will be visible again in about seventy years.",     # teacher unsure: kept
        "New &quot;quantum&quot; chips promise much faster computers for science labs.",  # kept, cleaned
    ]
    labels = [1, 0, 0, 1, 1, 0, 2, 2, 2]
    ds = datasets.Dataset.from_dict({"text": texts, "label": labels, "source": list("abcdefghi")})
    probs = np.full((9, 3), 1 / 3)
    probs[6] = [0.95, 0.03, 0.02]  # confident and wrong -> removed
    probs[7] = [0.6, 0.1, 0.3]     # wrong but not confident -> kept
    ref = ["The home team beat the visitors three to one in a thrilling final."]
    out, rep = select_samples(ds, min_words=5, near_duplicate=0.8, reference_texts=ref, teacher_probs=probs,
                              teacher_confidence=0.9)
    assert rep["removed"] == {"short": 2, "duplicate_of_reference": 1, "exact_duplicate": 1, "near_duplicate": 1,
                              "teacher_disagrees": 1}
    assert out["source"] == ["a", "h", "i"] and rep["kept"] == 3 and rep["input"] == 9
    assert rep["kept_per_class"] == {1: 1, 2: 2}
    assert out["text"][2] == 'New "quantum" chips promise much faster computers for science labs.'
    out2, rep2 = select_samples(ds, near_duplicate=None)
    assert rep2["removed"]["near_duplicate"] == 0 and rep2["removed"]["teacher_disagrees"] == 0 and len(out2) == 6
    with pytest.raises(ValueError, match="shape"):
        select_samples(ds, teacher_probs=np.ones((3, 2)))


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.95])
def test_near_duplicates_equals_brute_force(threshold):
    rng = random.Random(threshold)
    vocab = ["oil", "price", "team", "won", "stock", "rate", "bank", "cup", "the", "a"]
    base = [" ".join(rng.choice(vocab) for _ in range(rng.randint(3, 12))) for _ in range(40)]
    texts = []
    for t in base:  # near copies: one word swapped, one appended
        texts += [t, t.replace(t.split()[0], rng.choice(vocab), 1), t + " " + rng.choice(vocab)]
    rng.shuffle(texts)
    sets = [shingle_hashes(t) for t in texts]
    kept, expected = [], []
    for i, s in enumerate(sets):
        if any(jaccard(s, sets[j]) >= threshold for j in kept):
            expected.append(i)
        else:
            kept.append(i)
    got = near_duplicates(texts, threshold)
    assert got == expected and 0 < len(got) < len(texts)


# ------------------------------------------------------------------ the whole stage


def test_augment_training_data_runs_every_step(tiny_lm, tmp_path, wordnet_or_none):
    labels = ["World", "Sports"]
    (tmp_path / "bank.yaml").write_text("World: ['Leaders said']\nSports: ['The team']\n")
    extra = tmp_path / "extra.csv"
    extra.write_text("text,label\nA completely new text about world leaders meeting today,World\n"
                     "Short one,Sports\n")
    cfg = Config(
        data=DataConfig(labels=labels),
        train=TrainConfig(seed=5, precision="fp32"),
        augment=AugmentConfig(
            synonyms=SynonymConfig(enabled=wordnet_or_none, fraction=0.3),
            lm=LMAdaptConfig(enabled=True, model=str(tiny_lm), block_size=16, batch_size=4, max_steps=2),
            generate=GenerateConfig(enabled=True, prompts=str(tmp_path / "bank.yaml"), per_class=3, batch_size=4,
                                    length=LengthConfig(mode="given", a=0.0, loc=8, scale=1, max_words=12)),
            select=SelectConfig(enabled=True, min_words=1, teacher="teacher-run"),
            extra=[str(extra)],
        ),
    )
    train = datasets.Dataset.from_dict({"text": CORPUS[:6], "label": [1, 0, 0, 0, 1, 0], "id": list(range(6))})
    target = datasets.Dataset.from_dict({"text": CORPUS * 3})
    calls = []

    def teacher(teacher_dir, texts):
        calls.append((teacher_dir, len(texts)))
        return np.tile([0.5, 0.5], (len(texts), 1))

    merged, rep = augment_training_data(cfg, train, target, tmp_path / "run", teacher_predict=teacher)
    rows = rep["rows"]
    assert merged.column_names == ["text", "label"]
    assert rows["original"] == 6 and rows["synthetic_generated"] == 6 and rows["extra_loaded"] == 2
    assert calls == [("teacher-run", 8)] and rep["selection"]["input"] == 8
    assert rows["synthetic"] + rows["extra"] == rep["selection"]["kept"]
    assert rows["total"] == len(merged) == 6 + rows.get("synonyms", 0) + rep["selection"]["kept"]
    assert set(CORPUS[:6]) <= set(merged["text"]) and merged["text"][:6] != CORPUS[:6]  # shuffled
    assert (tmp_path / "run" / "lm" / "model" / "config.json").is_file()
    assert json.loads((tmp_path / "run" / "augment_report.json").read_text())["rows"] == rows
    stamp = (tmp_path / "run" / "lm" / "train_log.json").stat().st_mtime_ns
    again = generate_stage(cfg, train["text"], tmp_path / "run")  # reuses the adapted LM and the shards
    assert again["text"] == datasets.Dataset.from_json(str(tmp_path / "run" / "synthetic" / "samples.jsonl"))["text"]
    merged2, _ = augment_training_data(cfg, train, target, tmp_path / "run", teacher_predict=teacher)
    assert (tmp_path / "run" / "lm" / "train_log.json").stat().st_mtime_ns == stamp
    assert merged2["text"] == merged["text"]


@pytest.fixture
def wordnet_or_none(request) -> bool:
    try:
        request.getfixturevalue("wordnet")
        return True
    except pytest.skip.Exception:
        return False
