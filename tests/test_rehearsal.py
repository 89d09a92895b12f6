"""The report's recipe (``configs/seed.yaml``) at true size, offline.

``scripts/rehearsal_hub.py`` writes ``roberta-base`` and ``gpt2`` with their real architectures
(random weights, 50k-entry BPE tokenizers) into a Hub cache in a temporary ``HF_HOME``; then
``lorafit run configs/seed.yaml`` runs every stage on them (budget, LM adaptation, generation,
selection, training, evaluation, prediction with the EM prior) with small step and sample counts,
each stage timed with its peak memory (printed, and written to ``stages.json`` in the test's
temporary folder; ``pytest -s tests/test_rehearsal.py`` shows the table). The GPU check
(``bench/gpu_check.py``) runs its whole path here on CPU with tiny models.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "src" / "lorafit" / "data" / "sample"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(path.parent))
    return mod


@pytest.fixture(scope="module")
def hub():
    return _load("rehearsal_hub", REPO / "scripts" / "rehearsal_hub.py")


@pytest.fixture(scope="module")
def gpu_check():
    return _load("gpu_check", REPO / "bench" / "gpu_check.py")


# ------------------------------------------------------------------ the cache's parts (fast)


TEXTS = ["Oil prices climb after the cartel agrees to cut output.",
         "Striker scores twice as the home side wins the cup final.",
         "Space agency launches a probe to study the moons of Jupiter."] * 5


def test_tokenizer_true_sizes_special_ids_and_fillers(hub):
    """A small corpus cannot train 50k merges: the vocabulary is padded with filler words that no
    text encodes to, the special tokens keep their Hub ids, and the fillers decode as words that
    lorafit's cleaning keeps (a random LM samples them)."""
    from lorafit.data.clean import clean_text

    tok, vocab, merges, n_fill = hub.train_tokenizer(TEXTS, 50265, hub.ROBERTA_SPECIALS, "roberta-base")
    assert tok.get_vocab_size() == len(vocab) == 50265 and n_fill > 40000
    assert [tok.token_to_id(t) for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")] == [0, 1, 2, 3, 50264]
    enc = tok.encode(TEXTS[0])
    assert enc.ids[0] == 0 and enc.ids[-1] == 2 and max(enc.ids[1:-1]) < len(vocab) - n_fill - 1
    assert tok.decode(enc.ids) == TEXTS[0]
    fillers = list(range(len(vocab) - n_fill - 1, len(vocab) - 1))
    text = tok.decode([fillers[0], fillers[1], fillers[-1]])
    assert len(text.split()) == 3 and clean_text(text) == text.strip()

    gtok, gvocab, _, _ = hub.train_tokenizer(TEXTS, 50257, hub.GPT2_SPECIALS, "gpt2")
    assert gtok.get_vocab_size() == 50257 and gtok.token_to_id("<|endoftext|>") == 50256
    assert gtok.encode(TEXTS[1]).ids == gtok.encode(TEXTS[1], add_special_tokens=False).ids  # no BOS/EOS added
    assert hub.model_config("gpt2")["n_positions"] == 1024 and hub.model_config("gpt2", "tiny")["vocab_size"] == 50257


def test_config_is_the_shipped_roberta_base_config(hub):
    """The rehearsal's roberta-base config.json and the copy lorafit's offline budget check ships agree."""
    shipped = json.loads((REPO / "src" / "lorafit" / "model_configs" / "roberta-base.json").read_text())
    assert hub.ROBERTA_CONFIG == shipped


def test_snapshot_layout_resolves_like_the_hub(hub, tmp_path):
    from huggingface_hub import try_to_load_from_cache

    rev = "0123456789abcdef0123456789abcdef01234567"
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"\0" * 64)
    snap = hub.write_snapshot(tmp_path / "hub", "gpt2", rev, {"config.json": b'{"a": 1}', "model.safetensors": weights},
                              {"note": "test"})
    assert (tmp_path / "hub" / "models--gpt2" / "refs" / "main").read_text() == rev
    assert (snap / "config.json").is_symlink() and not weights.exists()
    found = try_to_load_from_cache("gpt2", "config.json", cache_dir=tmp_path / "hub")
    assert found and json.loads(Path(found).read_text()) == {"a": 1}
    assert hub.snapshot_complete(tmp_path / "hub", "gpt2", rev)


def test_generation_fits_the_lm_positions(hub, tmp_path):
    """GPT-2 has 1,024 positions; a target length whose tokens do not fit after the prompt used to
    fail inside ``generate`` (an index error; on CUDA a device-side assert). Now the new tokens
    are capped to what fits."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    from lorafit.augment.generate import generate_samples

    tok, _, _, _ = hub.train_tokenizer(TEXTS, 400, hub.GPT2_SPECIALS, "gpt2")
    fast = GPT2TokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                             unk_token="<|endoftext|>")
    cfg = GPT2Config(vocab_size=400, n_positions=32, n_embd=16, n_layer=1, n_head=2, bos_token_id=399, eos_token_id=399)
    GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "lm")
    fast.save_pretrained(tmp_path / "lm")
    ds = generate_samples(str(tmp_path / "lm"), {0: ["Oil prices"], 1: ["The striker"]}, 2, tmp_path / "out",
                          a=0.0, loc=60.0, scale=1.0, min_words=1, max_words=100, batch_size=4, seed=0)
    assert len(ds) == 4 and all(t >= 59 for t in ds["target_words"])  # 1.5 * 60 + 8 tokens would not fit in 32


def test_projection_arithmetic(gpu_check):
    """The full recipe's time from a short run's throughputs: steps x seconds per step, etc."""
    profile = {
        "stages": [
            {"stage": "data", "seconds": 1.0, "stats": {"source_rows": 12000}},
            {"stage": "load_model", "seconds": 2.0},
            {"stage": "lm_adapt", "seconds": 12.0, "wall_time_s": 10.0, "global_step": 10, "batch_size": 8,
             "block_size": 512, "texts": 8000, "tokens": 512_000},
            {"stage": "generate", "seconds": 11.0, "samples_generated": 100, "batch_size": 32},
            {"stage": "train", "seconds": 25.0, "train_runtime": 20.0, "global_step": 100, "batch_size": 64,
             "rows": 13200},
            {"stage": "evaluate", "seconds": 1.2, "rows": 120},
            {"stage": "predict", "seconds": 4.0, "rows": 8000},
        ],
        "substages": {"generate_shards": {"calls": 4, "seconds": 10.0}},
        "train_eval_runtime": 0.0,
    }
    p = gpu_check.project(profile)
    by = {r["stage"]: r["projected_s"] for r in p["stages"]}
    assert by["data"] == 10.0 and by["load/save"] == 2.0
    assert by["lm_adapt"] == pytest.approx(math.ceil(1000 / 8) * 2 * 1.0 + 2.0)  # 1,000 blocks, 2 epochs, 1 s/step
    assert by["generate"] == pytest.approx(12000 * 0.1 + 1.0)
    assert by["train"] == pytest.approx(math.ceil(132000 / 64) * 11 * 0.2 + 5.0 * 10)
    assert by["evaluate"] == pytest.approx(0.01 * 1200 * 12) and by["predict"] == 4.0
    assert p["total_s"] == pytest.approx(sum(by.values()), abs=0.5)


# ------------------------------------------------------------------ the seed recipe at true size


def _target_with_a_long_text(path: Path) -> Path:
    """The bundled target texts plus one longer than 512 tokens, so prediction runs a full-length
    (512-token) RoBERTa batch and LM adaptation packs it."""
    with open(SAMPLE / "target.csv", newline="", encoding="utf-8") as f:
        rows = [r["text"] for r in csv.DictReader(f)]
    rows.append(" ".join(rows[:40]))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text"])
        w.writerows([r] for r in rows)
    return path


SEED_OVERRIDES = [
    "train.max_steps=2", "train.batch_size=4", "train.eval_batch_size=8", "train.logging_steps=1",
    "augment.lm.max_steps=1", "augment.lm.batch_size=1",          # block_size stays the seed's 512
    "augment.generate.per_class=1", "augment.generate.batch_size=4", "augment.generate.length.max_words=8",
    "augment.select.enabled=true", "predict.prior=em",            # model.max_length stays the seed's 512
]


def test_seed_recipe_at_true_size(hub, tmp_path):
    t0 = time.time()
    hf_home = tmp_path / "hf"
    build = subprocess.run([sys.executable, str(REPO / "scripts" / "rehearsal_hub.py"), "--hf-home", str(hf_home),
                            "--json", str(tmp_path / "cache.json")], capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-4000:]
    cache = json.loads((tmp_path / "cache.json").read_text())
    assert cache["verified"]["roberta-base"]["parameters"] == 124_645_632
    assert cache["verified"]["gpt2"]["parameters"] == 124_439_808
    cache_s = time.time() - t0

    target = _target_with_a_long_text(tmp_path / "target.csv")
    stages_file = tmp_path / "stages.json"
    cmd = [sys.executable, str(REPO / "bench" / "stage_profile.py"), "--json", str(stages_file),
           "run", "configs/seed.yaml", "name=rehearsal", f"output_dir={tmp_path / 'runs'}",
           "data.source=pkg://sample/train.csv", f"data.target={target}", *SEED_OVERRIDES]
    env = hub.offline_env(hf_home)
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    prof = json.loads(stages_file.read_text())
    stages = {r["stage"]: r for r in prof["stages"]}
    run_dir = tmp_path / "runs" / "rehearsal"
    metrics = json.loads((run_dir / "metrics.json").read_text())

    # budget: counted from the config on the meta device, and on the loaded model
    assert (metrics["budget"]["trainable"], metrics["budget"]["total"]) == (916_996, 125_463_560)
    assert (stages["budget"]["trainable"], stages["budget"]["total"]) == (916_996, 125_463_560)
    assert (stages["load_model"]["trainable"], stages["load_model"]["total"]) == (916_996, 125_463_560)
    assert stages["load_model"]["counted_on"].startswith("loaded") and stages["load_model"]["weights"] is True
    assert stages["load_tokenizer"]["vocab"] == 50265
    # LM adaptation: GPT-2 on the target texts in the seed's 512-token blocks
    lm = stages["lm_adapt"]
    assert (lm["model"], lm["block_size"], lm["global_step"], lm["tokens_trained"]) == ("gpt2", 512, 1, 512)
    # generation, then selection of what it wrote
    assert stages["generate"]["samples"] == 4 and (run_dir / "synthetic" / "samples.jsonl").is_file()
    assert stages["select"]["rows_in"] == 4
    # training, evaluation, prediction with the prior
    assert stages["train"]["global_step"] == 2 and stages["train"]["batch_size"] == 4
    assert stages["evaluate"]["rows"] == metrics["data"]["val_rows"] > 0
    n_target = sum(1 for _ in open(target, encoding="utf-8")) - 1
    assert stages["predict"]["rows"] == n_target and stages["predict"]["prior"] == "em"
    with open(run_dir / "submission.csv", encoding="utf-8") as f:
        assert sum(1 for _ in f) == n_target + 1
    for r in prof["stages"]:
        assert r["seconds"] >= 0 and r["peak_rss_mb"] > 0, r

    # the trained run reloaded by the predict command (Hub id + adapter), a prior applied afresh
    t1 = time.time()
    pred = subprocess.run([sys.executable, "-m", "lorafit.cli", "predict", str(run_dir), "--prior", "uniform",
                           "--no-reuse-probs", "-o", str(tmp_path / "uniform.csv")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert pred.returncode == 0, pred.stdout[-2000:] + pred.stderr[-4000:]
    assert f"({n_target:,} rows" in pred.stdout and "prior uniform" in pred.stdout, pred.stdout
    with open(tmp_path / "uniform.csv", encoding="utf-8") as f:
        labels = [int(r["Label"]) for r in csv.DictReader(f)]
    assert len(labels) == n_target and min(labels.count(k) for k in range(4)) > 0  # the prior spreads the classes
    predict_cmd_s = time.time() - t1

    record = {"cache_build_s": round(cache_s, 1), "run_wall_s": prof["wall_s"], "predict_command_s": round(predict_cmd_s, 1),
              "peak_rss_mb": prof["peak_rss_mb"],
              "peak_rss_method": prof["peak_rss_method"], "test_wall_s": round(time.time() - t0, 1),
              "stages": [{k: r.get(k) for k in ("stage", "seconds", "peak_rss_mb")} for r in prof["stages"]]}
    (tmp_path / "rehearsal_timing.json").write_text(json.dumps(record, indent=2))
    if os.environ.get("LORAFIT_REHEARSAL_KEEP"):  # a folder to copy the stage record to (for the README's numbers)
        Path(os.environ["LORAFIT_REHEARSAL_KEEP"]).mkdir(parents=True, exist_ok=True)
        for f in (stages_file, tmp_path / "rehearsal_timing.json", tmp_path / "cache.json"):
            (Path(os.environ["LORAFIT_REHEARSAL_KEEP"]) / f.name).write_text(f.read_text())
    shutil.rmtree(hf_home, ignore_errors=True)  # ~1 GB of random weights; pytest keeps its last temp folders
    sp = _load("stage_profile", REPO / "bench" / "stage_profile.py")
    print(f"\nseed recipe at true size on this machine: cache {cache_s:.0f} s, run {prof['wall_s']:.0f} s, "
          f"`lorafit predict --prior uniform` {predict_cmd_s:.0f} s, "
          f"peak RSS {prof['peak_rss_mb']:,.0f} MiB ({prof['peak_rss_method']}); {tmp_path / 'rehearsal_timing.json'}")
    print(sp.render(prof["stages"]))


# ------------------------------------------------------------------ the GPU check's path, on CPU


def test_gpu_check_runs_end_to_end_on_cpu(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--out", str(out), "--device", "cpu",
                           "--size", "tiny", "--data-dir", "sample", "--work", str(tmp_path / "work")],
                          cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    res = json.loads((out / "gpu_check.json").read_text())
    assert all(s["ok"] for s in res["steps"].values()) and set(res["steps"]) == {"data", "cache", "seed", "bench"}
    for name in ("summary.txt", "seed_stages.json", "bench.json", "seed.log", "bench.log"):
        assert (out / name).is_file(), name
    assert len(list(out.iterdir())) <= 8  # what a device machine sends back: at most 8 files
    proj = {r["stage"]: r["projected_s"] for r in res["projection"]["stages"]}
    assert all(proj[s] is not None and proj[s] >= 0 for s in ("lm_adapt", "generate", "train", "predict"))
    stages = {r["stage"]: r for r in res["seed_stages"]["stages"]}
    assert stages["budget"]["trainable"] == stages["load_model"]["trainable"] > 0
    b = res["bench"]["summary"]
    assert set(b) == {"train", "predict", "lm_adapt", "generate"} and all(t.get("speedup") for t in b.values())
    summary = (out / "summary.txt").read_text()
    assert "projected full seed recipe" in summary and "FAILED" not in summary
