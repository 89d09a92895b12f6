"""Past one machine: ``lorafit run`` under ``torchrun --nproc_per_node=2`` on CPU (gloo).

The same tiny run is trained twice: in one process with batch 2B, and data-parallel in two
processes with batch B each. Data-parallel training averages the two half-batch gradients, which
is the gradient of the whole batch, so with dropout off and the same sample order
(``train.group_by_length=false``: the length-grouped sampler's mega-batches depend on the
per-device batch size) both runs must take the same steps and end with the same adapter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_overrides
from lorafit.config import merge_overrides

# Two launches of `lorafit run`, one of them two processes: about a minute. Part of `make test`, so
# CI exercises multi-process training.

B = 8  # per-device batch of the data-parallel run


@pytest.fixture(scope="module")
def deterministic_tiny_dir(tiny_roberta_dir, tmp_path_factory) -> Path:
    """The tiny RoBERTa with dropout off (runs are then comparable step by step) and a wider
    initialisation (it learns the tiny news set, see tests/test_pipeline.py)."""
    import torch
    from transformers import AutoTokenizer, RobertaConfig, RobertaForSequenceClassification

    out = tmp_path_factory.mktemp("tiny-roberta-no-dropout")
    cfg = RobertaConfig.from_pretrained(tiny_roberta_dir)
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
    cfg.initializer_range = 0.2
    torch.manual_seed(0)
    RobertaForSequenceClassification(cfg).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_roberta_dir).save_pretrained(out)
    return out


def _env() -> dict:
    # no seeding help: build_model seeds from train.seed, so every process starts from the same weights
    env = dict(os.environ)
    env.update(
        CUDA_VISIBLE_DEVICES="",  # CPU: Trainer/accelerate then pick the gloo backend by themselves
        OMP_NUM_THREADS="1",
        OMP_WAIT_POLICY="PASSIVE",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TORCH_DISTRIBUTED_DEBUG="INFO",  # every rank logs "DDP Initialized with: rank, world_size, backend"
        TORCH_CPP_LOG_LEVEL="INFO",
        TRANSFORMERS_VERBOSITY="info",  # rank 0 logs the per-device and total batch sizes
    )
    return env


def _run(cmd: list[str], cwd: Path, log: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=600)
    log.write_text(proc.stdout)
    assert proc.returncode == 0, f"{' '.join(cmd[:6])} ... failed ({proc.returncode}):\n{proc.stdout[-4000:]}"


def _ddp_init(log: str, rank: int) -> dict:
    """The ``key: value`` lines that follow ``[Rank N]: DDP Initialized with:`` in a rank's log."""
    lines = log.splitlines()
    start = next((i for i, line in enumerate(lines) if f"[Rank {rank}]: DDP Initialized with:" in line), None)
    fields: dict = {}
    if start is not None:
        for line in lines[start + 1:]:
            key, sep, value = line.partition(": ")
            if not sep or " " in key or key.startswith("["):
                break
            fields[key] = value.strip()
    return fields


def _adapter(run_dir: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(run_dir / "model" / "adapter_model.safetensors"))


def _losses(run_dir: Path) -> dict:
    history = json.loads((run_dir / "train_log.json").read_text())
    return {h["step"]: h["loss"] for h in history if "loss" in h}


def _single_and_ddp(model_dir: Path, csvs: dict, tmp_path: Path, single: list[str], ddp: list[str],
                    **extra) -> tuple[Path, dict]:
    """The tiny run trained in one process (overrides ``single``) and under torchrun in two
    (``ddp``); returns the runs' folder and each rank's log of the two-process run."""
    config = tmp_path / "ddp.yaml"
    config.write_text("name: ddp\n")  # built-in defaults: no augmentation, no self-training
    runs = tmp_path / "runs"
    common = tiny_overrides(model_dir, csvs, runs, **{
        "lora.lora_dropout": 0.0, "train.group_by_length": "false", "train.epochs": 3,
        "train.learning_rate": 0.02, "train.warmup_ratio": 0.0, "train.logging_steps": 1, **extra,
    })
    lorafit = [sys.executable, "-m", "lorafit.cli", "run", str(config)]

    _run([*lorafit, *merge_overrides(common, ["name=single", *single])], tmp_path, tmp_path / "single.log")
    logs = tmp_path / "torchrun-logs"
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
          "--log-dir", str(logs), "--redirects", "3", *lorafit[1:],
          *merge_overrides(common, ["name=ddp", *ddp])],
         tmp_path, tmp_path / "ddp.log")
    rank_logs = {int(p.parent.name): p.read_text(errors="replace") for p in logs.glob("*/attempt_0/*/stderr.log")}
    assert sorted(rank_logs) == [0, 1], f"expected logs of ranks 0 and 1 under {logs}"
    return runs, rank_logs


def _assert_same_training(runs: Path) -> None:
    """The single-process and the two-process run took the same 18 steps with the same losses and
    ended with the same adapter."""
    single, ddp = runs / "single", runs / "ddp"
    # the same optimizer steps on the same samples: 96 rows / 16 per step = 6 steps per epoch
    ls, ld = _losses(single), _losses(ddp)
    assert sorted(ls) == sorted(ld) == list(range(1, 19))
    # measured: equal to ~3e-7 (the all-reduce sums in another order than one big batch)
    np.testing.assert_allclose([ld[s] for s in sorted(ld)], [ls[s] for s in sorted(ls)], rtol=0, atol=1e-4)
    # ... and the same adapter at the end
    a, b = _adapter(single), _adapter(ddp)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-4, err_msg=k)


def test_ddp_two_processes_match_one(deterministic_tiny_dir, tiny_csvs, tmp_path):
    runs, rank_logs = _single_and_ddp(deterministic_tiny_dir, tiny_csvs, tmp_path,
                                      [f"train.batch_size={2 * B}"], [f"train.batch_size={B}"])
    # both ranks took part: each logs its own DDP construction, rank 0 the global batch
    for rank, text in rank_logs.items():
        init = _ddp_init(text, rank)
        assert (init.get("rank"), init.get("world_size"), init.get("backend_name")) == (str(rank), "2", "gloo"), \
            f"rank {rank} did not join a 2-process gloo DDP group: {init}"
    assert f"Instantaneous batch size per device = {B}" in rank_logs[0]
    assert f"Total train batch size (w. parallel, distributed & accumulation) = {2 * B}" in rank_logs[0]
    _assert_same_training(runs)
    single, ddp = runs / "single", runs / "ddp"
    ms = json.loads((single / "metrics.json").read_text())
    md = json.loads((ddp / "metrics.json").read_text())
    assert abs(ms["val_accuracy"] - md["val_accuracy"]) <= 1 / 32 + 1e-9  # at most one of 32 rows differs
    assert (ddp / "submission.csv").is_file()


def test_ddp_consistency_matches_one_process(deterministic_tiny_dir, tiny_csvs, tmp_path):
    """train.consistency under DDP: each process takes its own half of the unlabeled batch and puts
    the training rows and the synonym copies through one forward (DDP allows one forward per
    backward), where one process gives the copies a forward of their own. With dropout off both
    take the same steps: the same losses (supervised + consistency) and the same adapter."""
    u = 4  # unlabeled texts per process and step
    consistency = {"train.consistency.enabled": "true", "train.consistency.threshold": 0.0,
                   "train.consistency.weight": 0.5}
    runs, rank_logs = _single_and_ddp(
        deterministic_tiny_dir, tiny_csvs, tmp_path,
        [f"train.batch_size={2 * B}", f"train.consistency.batch_size={2 * u}"],
        [f"train.batch_size={B}", f"train.consistency.batch_size={u}"], **consistency)
    assert all("consistency loss on 16 unlabeled texts" in text for text in rank_logs.values())
    _assert_same_training(runs)
    for run in ("single", "ddp"):
        logged = [h for h in json.loads((runs / run / "train_log.json").read_text()) if "consistency_loss" in h]
        assert len(logged) == 18 and all(h["consistency_mask_rate"] == 1.0 and h["consistency_loss"] > 0 for h in logged)


def test_ddp_several_adapters_match_one_process(deterministic_tiny_dir, tiny_csvs, tmp_path):
    """train.adapters=2 under torchrun: the Trainer wraps the same PEFT model in DDP once per adapter,
    the second time with the first adapter frozen. Both adapters must take the same steps and end
    with the same weights as in one process with twice the batch, and the saved model holds both."""
    runs, _ = _single_and_ddp(deterministic_tiny_dir, tiny_csvs, tmp_path,
                              [f"train.batch_size={2 * B}"], [f"train.batch_size={B}"],
                              **{"train.adapters": 2, "lora.bias": "none"})
    from safetensors.numpy import load_file

    for run in ("single", "ddp"):
        history = json.loads((runs / run / "train_log.json").read_text())
        second = [h["step"] for h in history if h.get("adapter") == 1 and "loss" in h]
        assert second == list(range(1, 19)), f"{run}: adapter-1 logged steps {second}"
    _assert_same_training(runs)  # the first adapter (model/adapter_model.safetensors)
    a, b = (load_file(str(runs / r / "model" / "adapter-1" / "adapter_model.safetensors")) for r in ("single", "ddp"))
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-4, err_msg=k)
    lora_b = [k for k in a if "lora_B" in k]
    assert lora_b and all(np.abs(a[k]).max() > 0 for k in lora_b), "adapter-1 was not trained (LoRA B still zero)"
    first = _adapter(runs / "single")
    assert any(not np.allclose(first[k], a[k]) for k in a if k in first), "adapter-1 is a copy of the first"
    for run in ("single", "ddp"):
        budget = json.loads((runs / run / "metrics.json").read_text())["budget"]
        assert budget["trainable"] == 2 * budget["trainable_per_adapter"] > 0
