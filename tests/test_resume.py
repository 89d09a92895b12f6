"""Crash and resume, and run-to-run determinism, through the command line.

A ``lorafit run`` subprocess is SIGKILLed once its first checkpoint is complete; rerunning the same
command must resume from that checkpoint and end where an uninterrupted run with the same seed ends
(same validation accuracy and predictions, eval losses equal within float noise). Two plain runs
with the same config and seed must give identical predictions. A ``lorafit generate`` killed after
its first shard must, rerun, produce exactly the samples of an uninterrupted run. Only the runs that
get killed need a process of their own; the others invoke the same CLI app in this process.

The session fixture ``tiny_roberta_dir`` initialises its weights with initializer_range 0.02, which
at hidden size 32 makes the <s> features nearly constant across inputs (nothing trained on it gets
past chance, so every run predicts one class and prediction comparisons prove nothing). These tests
re-initialise the same architecture with initializer_range 0.2, which learns the tiny set in a few
steps, so the compared predictions are varied.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import tiny_overrides
from lorafit.config import merge_overrides

LORAFIT = Path(sys.executable).parent / "lorafit"

# Fp32 and no dataloader workers: the determinism the comparisons rely on. 2 epochs x 6 steps; evaluation + checkpoint every 3 steps, so the first
# checkpoint lands mid-epoch (exercises skipping already-seen batches) and an epoch boundary follows.
RUN_OVERRIDES = {
    "train.epochs": 2, "train.eval_steps": 3, "train.logging_steps": 1, "train.learning_rate": 0.02,
    "train.precision": "fp32", "train.dataloader_workers": 0, "train.seed": 7, "train.save_total_limit": 2,
}
CONFIG_YAML = "# written by tests/test_resume.py\nname: resume\npredict:\n  prior: none\n"


def _env() -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


@pytest.fixture(scope="module")
def learnable_roberta_dir(tiny_roberta_dir) -> Path:
    """The shared tiny RoBERTa; conftest initialises it with initializer_range=0.2 so it can learn."""
    return tiny_roberta_dir


@pytest.fixture(scope="module")
def resume_setup(learnable_roberta_dir, tmp_path_factory) -> dict:
    """Config file, CSVs and the command line shared by every run in this module."""
    from conftest import tiny_labeled_rows, write_csv

    root = tmp_path_factory.mktemp("resume")
    csvs = {
        "train": write_csv(root / "train.csv", tiny_labeled_rows(6)),
        "dev": write_csv(root / "dev.csv", tiny_labeled_rows(2)),
        "target": write_csv(root / "target.csv", [{"text": r["text"].upper()} for r in tiny_labeled_rows(1)]),
    }
    config = root / "resume.yaml"
    config.write_text(CONFIG_YAML)
    runs = root / "runs"
    overrides = tiny_overrides(learnable_roberta_dir, csvs, runs, **RUN_OVERRIDES)
    return {"config": config, "overrides": overrides, "runs": runs, "root": root}


def _cmd(setup: dict, name: str) -> list[str]:
    return [str(LORAFIT), "run", str(setup["config"]), *merge_overrides(setup["overrides"], [f"name={name}"])]


def _run(setup: dict, name: str, command: str = "run") -> str:
    """The same command line, run in this process (the ~6 s of imports a subprocess pays are the
    bulk of a tiny run; only the runs that get SIGKILLed need a process of their own)."""
    from typer.testing import CliRunner

    from lorafit.cli import app

    cmd = (_cmd if command == "run" else _gen_cmd)(setup, name)
    res = CliRunner().invoke(app, cmd[1:])
    assert res.exit_code == 0, f"lorafit {command} {name} failed ({res.exit_code}):\n{res.output[-4000:]}"
    return res.output


def _results(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = json.loads((run_dir / "train_log.json").read_text())
    with open(run_dir / "submission.csv", newline="") as f:
        submission = [(int(r["ID"]), int(r["Label"])) for r in csv.DictReader(f)]
    return {
        "val_accuracy": metrics["val_accuracy"],
        "val_predictions": metrics["val"].get("confusion_matrix"),
        "submission": submission,
        "eval_loss": {e["step"]: e["eval_loss"] for e in history if "eval_loss" in e},
        "train_loss": {e["step"]: e["loss"] for e in history if "loss" in e},
        "train_steps": [e["step"] for e in history if "loss" in e],
    }


@pytest.fixture(scope="module")
def reference(resume_setup) -> dict:
    """One uninterrupted run; the others are compared with it."""
    _run(resume_setup, "reference")
    return _results(resume_setup["runs"] / "reference")


def _assert_same_run(got: dict, ref: dict, what: str) -> None:
    assert got["submission"] == ref["submission"], f"{what}: predictions on the target set differ"
    assert got["val_accuracy"] == pytest.approx(ref["val_accuracy"], abs=1e-9), what
    assert got["val_predictions"] == ref["val_predictions"], f"{what}: validation confusion matrices differ"
    # every optimizer step logged exactly once, none lost or repeated by the resume
    assert got["train_steps"] == ref["train_steps"], f"{what}: logged steps differ"
    assert got["eval_loss"].keys() == ref["eval_loss"].keys()
    for step, loss in ref["eval_loss"].items():
        # CPU matmuls are not bit-reproducible run to run (~1e-6 relative); a resume error is far larger
        assert got["eval_loss"][step] == pytest.approx(loss, rel=1e-4, abs=1e-5), f"{what}: eval loss at step {step}"
    for step, loss in ref["train_loss"].items():
        assert got["train_loss"][step] == pytest.approx(loss, rel=1e-4, abs=1e-5), f"{what}: train loss at step {step}"


def test_model_initialisation_is_seeded(resume_setup):
    """LoRA's A matrices (and any fresh head) are drawn from the global torch RNG when the model is
    built; unless that draw is seeded by train.seed, two runs start from different weights."""
    import torch

    from lorafit.config import load_config
    from lorafit.model import build_model

    cfg = load_config(resume_setup["config"], resume_setup["overrides"])
    weights = []
    for state in (1, 2):
        torch.manual_seed(1000 + state)  # whatever ran before in the process
        model = build_model(cfg).model
        weights.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
    assert weights[0].keys() == weights[1].keys()
    differ = [n for n in weights[0] if not torch.equal(weights[0][n], weights[1][n])]
    assert not differ, f"initial trainable weights depend on the RNG state, not on train.seed: {differ[:3]}"


def test_reference_run_learns(reference):
    # guards the comparisons below against being vacuous (one class predicted everywhere)
    assert reference["val_accuracy"] >= 0.4  # chance is 0.25
    assert len({lab for _, lab in reference["submission"]}) >= 2
    assert reference["train_steps"] == list(range(1, 13))


def test_killed_run_resumes_to_the_same_result(resume_setup, reference, caplog):
    run_dir = resume_setup["runs"] / "killed"
    ckpts = run_dir / "checkpoints"
    log = resume_setup["root"] / "killed-first-attempt.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(_cmd(resume_setup, "killed"), stdout=out, stderr=subprocess.STDOUT, env=_env(),
                                cwd=resume_setup["root"])
        try:
            deadline = time.monotonic() + 180
            # trainer_state.json is the last file Trainer writes into a checkpoint: wait for a complete one
            while not list(ckpts.glob("checkpoint-*/trainer_state.json")):
                assert proc.poll() is None, f"run ended (rc {proc.returncode}) before a checkpoint:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "no checkpoint within 180 s"
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "submission.csv").exists()
    first = sorted(p.name for p in ckpts.glob("checkpoint-*"))
    assert first and "checkpoint-12" not in first

    caplog.set_level(logging.INFO, logger="lorafit.train")
    _run(resume_setup, "killed")
    assert any("resuming from" in r.getMessage() and "checkpoint-3" in r.getMessage() for r in caplog.records), \
        "the rerun did not resume from the checkpoint"
    _assert_same_run(_results(run_dir), reference, "killed + resumed run")


def test_same_seed_same_predictions(resume_setup, reference):
    _run(resume_setup, "again")
    _assert_same_run(_results(resume_setup["runs"] / "again"), reference, "second run with the same seed")


def test_resume_skips_an_incomplete_checkpoint(resume_setup, reference):
    """A kill while Trainer writes a checkpoint leaves a folder without trainer_state.json (the file it
    writes last) and possibly a truncated weights file. Resuming must not load it: the rerun starts
    from the last complete checkpoint (here: none) and ends like an uninterrupted run."""
    run_dir = resume_setup["runs"] / "partial"
    src = resume_setup["runs"] / "reference" / "model"
    partial = run_dir / "checkpoints" / "checkpoint-3"
    partial.mkdir(parents=True)
    from lorafit.io_utils import mark_ours

    mark_ours(run_dir, "run")  # the run made its folder (and marked it) before it was killed in training
    (partial / "adapter_config.json").write_bytes((src / "adapter_config.json").read_bytes())
    weights = (src / "adapter_model.safetensors").read_bytes()
    (partial / "adapter_model.safetensors").write_bytes(weights[: len(weights) // 2])  # killed mid-write
    _run(resume_setup, "partial")
    _assert_same_run(_results(run_dir), reference, "rerun next to an incomplete checkpoint")


# ------------------------------------------------------------------ generation: kill and resume

GEN_PER_CLASS = 6
GEN_SHARDS = 4  # 4 classes x 6 samples / batch 6


@pytest.fixture(scope="module")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    """A 2-layer GPT-2 (random weights) with a byte-level BPE tokenizer trained on the news texts."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from conftest import NEWS

    corpus = [t for texts in NEWS.values() for t in texts] * 5
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=256, vocab_size=len(tok),
                     bos_token_id=eos, eos_token_id=eos)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2LMHeadModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def gen_setup(resume_setup, tiny_gpt2_dir) -> dict:
    root = resume_setup["root"]
    bank = root / "bank.yaml"
    bank.write_text("World: ['Talks resume in', 'The minister said']\nSports: ['The striker']\n"
                    "Business: ['Shares rose', 'The bank']\nSci/Tech: ['Researchers found']\n")
    config = root / "generate.yaml"
    config.write_text("name: gen\n")
    # targets of 10-20 words (~40 new tokens): a shard takes long enough to kill the run between shards
    overrides = [*resume_setup["overrides"], f"augment.generate.model={tiny_gpt2_dir}",
                 f"augment.generate.prompts={bank}", f"augment.generate.per_class={GEN_PER_CLASS}",
                 "augment.generate.batch_size=6", "augment.generate.length.mode=given",
                 "augment.generate.length.a=0", "augment.generate.length.loc=15",
                 "augment.generate.length.scale=3", "augment.generate.length.min_words=10",
                 "augment.generate.length.max_words=20"]
    return {"config": config, "overrides": overrides, "root": root, "runs": resume_setup["runs"]}


def _gen_cmd(setup: dict, name: str) -> list[str]:
    return [str(LORAFIT), "generate", str(setup["config"]), *merge_overrides(setup["overrides"], [f"name={name}"])]


def _samples(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "samples.jsonl").read_text(encoding="utf-8").splitlines()]


def test_killed_generation_resumes_without_duplicates_or_losses(gen_setup):
    from lorafit.augment import generate_stage
    from lorafit.config import load_config
    from lorafit.data import prepare_data

    # the uninterrupted reference
    cfg = load_config(gen_setup["config"], merge_overrides(gen_setup["overrides"], ["name=gen-reference"]))
    reference = generate_stage(cfg, prepare_data(cfg).train["text"], cfg.run_dir)
    assert reference is not None and len(reference) == 4 * GEN_PER_CLASS

    out = gen_setup["runs"] / "gen-killed" / "synthetic"
    shards = out / "shards"
    log = gen_setup["root"] / "gen-killed-first-attempt.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(_gen_cmd(gen_setup, "gen-killed"), stdout=f, stderr=subprocess.STDOUT, env=_env(),
                                cwd=gen_setup["root"])
        try:
            deadline = time.monotonic() + 180
            while not list(shards.glob("shard-*.jsonl")):
                assert proc.poll() is None, f"generate ended (rc {proc.returncode}) before a shard:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "no shard within 180 s"
                time.sleep(0.01)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    done = sorted(p.name for p in shards.glob("shard-*.jsonl"))
    assert 1 <= len(done) < GEN_SHARDS, f"the kill came too late to test a resume ({len(done)} shards done)"
    assert not (out / "samples.jsonl").exists()
    before = {name: (shards / name).read_bytes() for name in done}

    output = _run(gen_setup, "gen-killed", command="generate")
    assert f"generated {4 * GEN_PER_CLASS} samples" in output
    # finished shards were kept as they were, not generated again
    assert all((shards / name).read_bytes() == data for name, data in before.items())
    assert len(list(shards.glob("shard-*.jsonl"))) == GEN_SHARDS
    assert sorted(n for n in os.listdir(shards) if not n.startswith(".")) == [
        f"shard-{j:05d}.jsonl" for j in range(GEN_SHARDS)]

    rows = _samples(out)
    ref_rows = _samples(cfg.run_dir / "synthetic")
    assert len(rows) == len(ref_rows) == 4 * GEN_PER_CLASS
    assert rows == ref_rows  # same texts, labels, prompts and seeds, in the same order
    assert [r["text"] for r in rows] == reference["text"]
    shard_index = [json.loads(line)["index"] for name in sorted(os.listdir(shards)) if name.endswith(".jsonl")
                   for line in (shards / name).read_text().splitlines()]
    assert sorted(shard_index) == list(range(4 * GEN_PER_CLASS))  # every planned sample exactly once
