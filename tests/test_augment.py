"""Tests for lorafit.augment: synonyms, LM adaptation, generation, selection and the whole stage.

A tiny randomly initialised GPT-2 with a byte-level BPE tokenizer trained here on a few sentences
stands in for GPT-2; nothing is downloaded. Synonym tests use the WordNet lexicon shipped with
lorafit; the full-WordNet reader (``wordnet_dir``) and the lexicon build script are tested on a tiny
WordNet dict folder written here, so no test needs (or skips without) a system WordNet.
"""

from __future__ import annotations

import gzip
import json
import random
import runpy
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from scipy import stats

import lorafit.augment
from lorafit.augment import augment_training_data, check_augment_inputs, generate_stage
from lorafit.augment.generate import (
    fit_length_distribution,
    generate_samples,
    load_prompt_bank,
    sample_lengths,
    shard_path,
)
from lorafit.augment.lm_adapt import adapt_language_model, pack_texts
from lorafit.augment.select import SHINGLE, _key, _window_hashes, jaccard, near_duplicates, select_samples
from lorafit import text as synonyms_module
from lorafit.augment.synonyms import synonym_augment
from lorafit.text import (
    LEXICON,
    LEXNAMES,
    STOPWORDS,
    SynonymFinder,
    WordNetError,
    _debian_folder,
    find_wordnet,
    load_lexicon,
    load_wordnet,
    replace_synonyms,
    synonym_finder,
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


@pytest.fixture
def no_system_wordnet(tmp_path, monkeypatch):
    """Every WordNet outside lorafit hidden: Debian's folder, NLTK's data path, NLTK_DATA, lorafit's cache."""
    import nltk

    monkeypatch.setattr(synonyms_module, "DEBIAN_WORDNET", tmp_path / "no-debian-wordnet")
    monkeypatch.setattr(nltk.data, "path", [])
    monkeypatch.delenv("NLTK_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(WordNetError, match="not installed"):
        find_wordnet()


# A tiny WordNet 3.0 dict folder: (pos, lexicographer file number, lemmas). Lemma rules exercised:
# a word in two synsets (car), one in two parts of speech (share), a capitalised name (Monday), a
# hyphenated word whose other spelling differs only in case (X-ray / X_ray), multiword lemmas
# (underscores), a synset of one lemma (entity), and an exception-list form (bought -> buy).
TINY_SYNSETS = [
    ("n", 6, ["car", "auto", "automobile", "machine", "motorcar"]),
    ("n", 6, ["car", "railcar", "railway_car", "railroad_car"]),
    ("n", 21, ["share", "portion", "part", "percentage"]),
    ("n", 28, ["Monday", "Mon"]),
    ("n", 19, ["X-ray", "X_ray", "roentgen_ray"]),
    ("n", 3, ["entity"]),
    ("n", 6, ["car_pool", "carpool"]),
    ("v", 40, ["buy", "purchase"]),
    ("v", 40, ["share", "divvy_up", "portion_out"]),
    ("a", 0, ["happy", "glad"]),
    ("r", 2, ["quickly", "rapidly", "speedily"]),
]
TINY_LEXICON = {
    "auto": ("automobile", "car", "machine", "motorcar"),
    "automobile": ("auto", "car", "machine", "motorcar"),
    "buy": ("purchase",),
    "car": ("auto", "automobile", "machine", "motorcar", "railcar", "railroad car", "railway car"),
    "carpool": ("car pool",),
    "glad": ("happy",),
    "happy": ("glad",),
    "machine": ("auto", "automobile", "car", "motorcar"),
    "mon": ("Monday",),
    "monday": ("Mon",),
    "motorcar": ("auto", "automobile", "car", "machine"),
    "part": ("percentage", "portion", "share"),
    "percentage": ("part", "portion", "share"),
    "portion": ("part", "percentage", "share"),
    "purchase": ("buy",),
    "quickly": ("rapidly", "speedily"),
    "railcar": ("car", "railroad car", "railway car"),
    "rapidly": ("quickly", "speedily"),
    "share": ("divvy up", "part", "percentage", "portion", "portion out"),
    "speedily": ("quickly", "rapidly"),
    "x-ray": ("X ray", "roentgen ray"),
}


def write_tiny_wordnet(folder: Path, lexnames: bool = True) -> Path:
    """Write TINY_SYNSETS as a WordNet 3.0 dict folder (data.* with true byte offsets, index.*,
    *.exc, and ``lexnames`` unless Debian's layout is wanted)."""
    folder.mkdir(parents=True)
    files = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
    header = "  1 WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.\n"
    index: dict[str, dict[str, list[int]]] = {pos: {} for pos in files}
    for pos, name in files.items():
        data, offset = [header], len(header.encode())
        for i, (p, lexnum, lemmas) in enumerate(TINY_SYNSETS):
            if p != pos:
                continue
            words = " ".join(f"{w} 0" for w in lemmas)
            line = f"{offset:08d} {lexnum:02d} {pos} {len(lemmas):02x} {words} 000 | tiny synset {i}  \n"
            data.append(line)
            for w in lemmas:
                index[pos].setdefault(w.lower(), []).append(offset)
            offset += len(line.encode())
        (folder / f"data.{name}").write_text("".join(data))
        lines = [f"{w} {pos} {len(offs)} 0 {len(offs)} 0 {' '.join(f'{o:08d}' for o in offs)}  \n"
                 for w, offs in sorted(index[pos].items())]
        (folder / f"index.{name}").write_text("".join(lines))
        (folder / f"{name}.exc").write_text("bought buy\n" if pos == "v" else "")
    if lexnames:
        (folder / "lexnames").write_text("".join(f"{i:02d}\t{n}\t{c}\n" for i, (n, c) in enumerate(LEXNAMES)))
    return folder


@pytest.fixture
def tiny_wordnet(tmp_path, monkeypatch) -> Path:
    import nltk

    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))  # load_wordnet registers the folder
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return write_tiny_wordnet(tmp_path / "wordnet")


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


# synonyms of the shipped lexicon, read off WordNet 3.0 (Debian's wordnet-base 1:3.0-37 through NLTK)
KNOWN_SYNONYMS = {
    "car": ("auto", "automobile", "cable car", "elevator car", "gondola", "machine", "motorcar", "railcar",
            "railroad car", "railway car"),
    "Car": ("auto", "automobile", "cable car", "elevator car", "gondola", "machine", "motorcar", "railcar",
            "railroad car", "railway car"),
    "happy": ("felicitous", "glad", "well-chosen"),
    "buy": ("bargain", "bribe", "corrupt", "grease one's palms", "purchase", "steal"),
    "quickly": ("apace", "chop-chop", "cursorily", "promptly", "quick", "rapidly", "speedily"),
    "Monday": ("Mon",),
    "e-mail": ("electronic mail", "email", "netmail"),
    "well-known": ("long-familiar",),
    "x-ray": ("X ray", "X-radiation", "X-ray photograph", "X-ray picture", "roentgen ray", "roentgenogram"),
    "shares": (),  # inflected: WordNet reaches share.n.01 through morphology only
    "stocks": (),
    "bought": (),
    "the": (),
}


@pytest.mark.parametrize("word", list(KNOWN_SYNONYMS))
def test_shipped_lexicon_has_wordnet_synonyms(word):
    assert synonym_finder()(word) == KNOWN_SYNONYMS[word]


def test_shipped_lexicon_file_and_license():
    assert LEXICON.is_file() and LEXICON.stat().st_size < 5 * 2**20
    assert "Princeton University" in (LEXICON.parent / "LICENSE").read_text()
    table = load_lexicon()
    assert load_lexicon() is table  # read once
    assert 50_000 < len(table) < 100_000
    assert all(k == k.lower() and v and k not in {x.lower() for x in v} and list(v) == sorted(v)
               for k, v in table.items())


def test_synonyms_without_any_system_wordnet(no_system_wordnet, monkeypatch):
    # NLTK itself is not needed on the default path
    for name in [m for m in sys.modules if m == "nltk" or m.startswith("nltk.")]:
        monkeypatch.setitem(sys.modules, name, None)
    ds = datasets.Dataset.from_dict({"text": ["The happy driver sold his old car quickly."], "label": [3]})
    aug = synonym_augment(ds, fraction=1.0, copies=2, seed=0)
    assert len(aug) == 2 and aug["label"] == [3, 3] and all(t != ds["text"][0] for t in aug["text"])


def test_lexnames_table_and_debian_folder(tmp_path):
    assert len(LEXNAMES) == 45 and LEXNAMES[3] == ("noun.Tops", 1) and LEXNAMES[44] == ("adj.ppl", 3)
    source = write_tiny_wordnet(tmp_path / "debian", lexnames=False)  # Debian's layout
    folder = _debian_folder(source, tmp_path / "cache")
    lines = (folder / "lexnames").read_text().splitlines()
    assert lines[0] == "00\tadj.all\t3" and lines[29] == "29\tverb.body\t2" and len(lines) == 45
    assert (folder / "data.noun").read_bytes() == (source / "data.noun").read_bytes()
    assert not (folder / "data.noun").is_symlink()
    assert _debian_folder(source, tmp_path / "cache") == folder  # built once


def test_wordnet_dir_reads_a_full_wordnet_with_nltk(tiny_wordnet, tmp_path):
    wn = load_wordnet(str(tiny_wordnet))
    assert wn.synset("car.n.01").lexname() == "noun.artifact" and wn.get_version() == "3.0"
    finder = SynonymFinder(wn)
    for word, expected in TINY_LEXICON.items():
        assert finder(word) == expected
    assert finder("Car") == TINY_LEXICON["car"]
    assert finder("shares") == finder("bought") == finder("entity") == ()
    ds = datasets.Dataset.from_dict({"text": ["He will buy a car quickly."], "label": [1]})
    out = synonym_augment(ds, fraction=1.0, copies=1, seed=0, wordnet_dir=str(tiny_wordnet))
    text = out["text"][0]  # every content word with a synonym replaced
    assert len(out) == 1 and text.startswith("He will purchase a ") and text.endswith(".")
    car, quickly = text[len("He will purchase a "):-1].rsplit(" ", 1)
    assert car in TINY_LEXICON["car"] and quickly in TINY_LEXICON["quickly"]
    # Debian's layout (no lexnames) is wrapped in lorafit's cache, with the same synonyms
    debian = write_tiny_wordnet(tmp_path / "debian", lexnames=False)
    assert SynonymFinder(load_wordnet(str(debian)))("car") == TINY_LEXICON["car"]
    assert (tmp_path / "cache" / "lorafit" / "nltk_data" / "corpora" / "wordnet" / "lexnames").is_file()


@pytest.mark.research
def test_build_script_writes_the_lexicon_deterministically(tiny_wordnet, tmp_path, capsys):
    script = runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "build_wordnet_lexicon.py"))
    out = tmp_path / "lexicon" / "synonyms.tsv.gz"
    assert script["main"]([str(tiny_wordnet), "-o", str(out)]) == 0
    assert "21 words" in capsys.readouterr().out
    assert load_lexicon(str(out)) == TINY_LEXICON
    first = out.read_bytes()
    assert gzip.decompress(first).decode().startswith("# lorafit synonyms from WordNet 3.0")
    assert script["main"]([str(tiny_wordnet), "-o", str(out)]) == 0
    assert out.read_bytes() == first  # byte-identical rebuild
    assert [p.name for p in out.parent.iterdir()] == ["synonyms.tsv.gz"]  # no temporaries left
    assert script["main"]([str(tmp_path / "nowhere"), "-o", str(out)]) == 1
    assert "nowhere" in capsys.readouterr().err


def test_wordnet_errors_name_the_path(tmp_path, monkeypatch):
    missing = tmp_path / "missing"
    with pytest.raises(WordNetError, match=f"wordnet_dir '{missing}' has no WordNet database"):
        synonym_augment(datasets.Dataset.from_dict({"text": ["a car"], "label": [0]}), 0.5, 1, 0,
                        wordnet_dir=str(missing))
    broken = write_tiny_wordnet(tmp_path / "broken")
    (broken / "index.noun").write_text("car n two 0 2 0 00000001\n")
    import nltk

    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))
    with pytest.raises(WordNetError, match="could not read WordNet from .*broken"):
        load_wordnet(str(broken))
    good = b"# lorafit synonyms from WordNet 3.0\ncar\tauto\n"
    cases = {
        "not-gzip.gz": good,
        "truncated.gz": gzip.compress(good)[:-12],
        "wrong-header.gz": gzip.compress(b"car\tauto\n"),
        "no-synonyms.gz": gzip.compress(b"# lorafit synonyms\ncar\n"),
        "empty-synonym.gz": gzip.compress(b"# lorafit synonyms\ncar\tauto\t\n"),
        "cut.gz": gzip.compress(good[:-1]),
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(WordNetError, match="corrupt") as e:
            load_lexicon(str(tmp_path / name))
        assert str(tmp_path / name) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(WordNetError, match="missing"):
        load_lexicon(str(tmp_path / "gone.gz"))
    (tmp_path / "ok.gz").write_bytes(gzip.compress(good))
    assert load_lexicon(str(tmp_path / "ok.gz")) == {"car": ("auto",)}
    # the default lexicon damaged: the synonym stage says which file
    monkeypatch.setattr(synonyms_module, "LEXICON", tmp_path / "cut.gz")
    load_lexicon.cache_clear()
    try:
        with pytest.raises(WordNetError, match="synonym lexicon '.*cut.gz' is corrupt"):
            synonym_augment(datasets.Dataset.from_dict({"text": ["a car"], "label": [0]}), 0.5, 1, 0)
    finally:
        load_lexicon.cache_clear()


def test_synonym_augment_changes_words_keeps_labels_deterministic():
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


def shingle_hashes(text: str, k: int = SHINGLE) -> np.ndarray:
    """The brute force's shingles: sorted distinct hashes of one text's character k-grams (the whole
    text when shorter), hashed as near_duplicates hashes every text in one pass."""
    c = np.frombuffer(_key(text).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    return np.unique(_window_hashes(c, min(k, len(c))))


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


def test_augment_training_data_runs_every_step(tiny_lm, tmp_path, no_system_wordnet, monkeypatch):
    labels = ["World", "Sports"]
    (tmp_path / "bank.yaml").write_text("World: ['Leaders said']\nSports: ['The team']\n")
    extra = tmp_path / "extra.csv"
    extra.write_text("text,label\nA completely new text about world leaders meeting today,World\n"
                     "Short one,Sports\n")
    cfg = Config(
        data=DataConfig(labels=labels),
        train=TrainConfig(seed=5, precision="fp32"),
        augment=AugmentConfig(
            synonyms=SynonymConfig(enabled=True, fraction=0.3),  # the shipped lexicon: no system WordNet
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

    monkeypatch.setattr(lorafit.augment, "teacher_probabilities", teacher)  # the selection's teacher
    merged, rep = augment_training_data(cfg, train, target, tmp_path / "run")
    rows = rep["rows"]
    assert merged.column_names == ["text", "label"]
    assert rows["original"] == 6 and rows["synthetic_generated"] == 6 and rows["extra_loaded"] == 2
    assert calls == [("teacher-run", 8)] and rep["selection"]["input"] == 8
    assert rows["synthetic"] + rows["extra"] == rep["selection"]["kept"]
    assert rows["synonyms"] >= 5  # the texts without a replaceable word give no copy
    assert rows["total"] == len(merged) == 6 + rows["synonyms"] + rep["selection"]["kept"]
    assert set(CORPUS[:6]) <= set(merged["text"]) and merged["text"][:6] != CORPUS[:6]  # shuffled
    assert (tmp_path / "run" / "lm" / "model" / "config.json").is_file()
    assert json.loads((tmp_path / "run" / "augment_report.json").read_text())["rows"] == rows
    stamp = (tmp_path / "run" / "lm" / "train_log.json").stat().st_mtime_ns
    again = generate_stage(cfg, train["text"], tmp_path / "run")  # reuses the adapted LM and the shards
    assert again["text"] == datasets.Dataset.from_json(str(tmp_path / "run" / "synthetic" / "samples.jsonl"))["text"]
    merged2, _ = augment_training_data(cfg, train, target, tmp_path / "run")
    assert (tmp_path / "run" / "lm" / "train_log.json").stat().st_mtime_ns == stamp
    assert merged2["text"] == merged["text"]



def test_source_openings_bank_from_the_labeled_rows():
    from lorafit.augment.generate import source_openings

    texts = ["Oil prices rose again on Monday in London", "Oil prices rose again on Tuesday", "The striker scored twice",
             "Too short", "The striker scored twice in the cup final on Sunday"]
    bank = source_openings(texts, [0, 0, 1, 1, 1], ["Business", "Sports"], words=3)
    assert bank == {0: ["Oil prices rose"], 1: ["The striker scored"]}  # distinct; rows under 5 words unused
    with pytest.raises(DataError, match=r"class\(es\) \['Business'\].*opening_words"):
        source_openings(texts, [0, 0, 1, 1, 1], ["Business", "Sports"], words=7)


def test_generate_stage_opens_samples_with_source_rows(tiny_lm, tmp_path):
    cfg = Config(data=DataConfig(labels=["World", "Sports"]), train=TrainConfig(seed=5, precision="fp32"),
                 augment=AugmentConfig(generate=GenerateConfig(
                     enabled=True, model=str(tiny_lm), prompts="source", opening_words=3, keep_prompt=True,
                     per_class=4, batch_size=4, length=LengthConfig(mode="given", a=0.0, loc=8, scale=1, max_words=12))))
    texts, labels = CORPUS[:6], [1, 0, 0, 0, 1, 0]
    check_augment_inputs(cfg, has_target=False)  # no bank file to read
    ds = generate_stage(cfg, texts, tmp_path / "run", train_labels=labels)
    openings = {(" ".join(t.split()[:3]), y) for t, y in zip(texts, labels) if len(t.split()) >= 5}
    assert len(ds) == 8 and sorted(set(ds["label"])) == [0, 1]
    for row in ds:
        assert (row["prompt"], row["label"]) in openings and row["text"].startswith(row["prompt"])
