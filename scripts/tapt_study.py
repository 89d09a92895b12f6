"""Does task-adaptive pretraining through the adapter help? A paired trial-scale measurement.

Step ``mlm``: masked-language modelling (15% of the tokens, Hugging Face's
``DataCollatorForLanguageModeling``) on the unlabeled target texts plus the labeled source texts
(cleaned, as the run cleans them), with LoRA of the config's ``lora`` section on the encoder and a
masked-LM head that trains beside it and is dropped afterwards (MiniLM-L6 as installed has no
masked-LM head: its transform starts from scratch, its decoder is the frozen word embeddings). The
LoRA matrices are saved to ``OUT/lora-STEPS.pt``.

Step ``fit``: ``lorafit run CONFIG`` with the classification adapter's LoRA matrices initialised
from that file (the head starts as usual), and step ``plain`` the same without; both print the
run's validation accuracy and its accuracy on ``--dev``.

    python scripts/tapt_study.py mlm configs/cpu-agnews-search.yaml --steps 400
    python scripts/tapt_study.py fit configs/cpu-agnews-search.yaml --steps 400   # and: plain
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import lorafit
from lorafit.config import load_config


def texts_for_mlm(cfg, target: str, dev: str) -> list[str]:
    """The cleaned target texts and every cleaned source row (none held out: the texts are unlabeled here)."""
    from lorafit.data import prepare_data

    data = prepare_data(cfg.model_copy(update={"data": cfg.data.model_copy(update={"target": target,
                                                                                   "validation": dev})}))
    return list(data.target["text"]) + list(data.train["text"])


def mlm(cfg, steps: int, lr: float, out: Path, target: str, dev: str) -> None:
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import (AutoModelForMaskedLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer,
                              TrainingArguments, set_seed)
    import datasets

    from lorafit.model import resolve_model

    set_seed(cfg.seed)
    name = resolve_model(cfg.model.name)
    tok = AutoTokenizer.from_pretrained(name)
    model = AutoModelForMaskedLM.from_pretrained(name)
    head = "cls.predictions.transform" if hasattr(model, "cls") else "lm_head.dense"
    model = get_peft_model(model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.lora_alpha,
                                             lora_dropout=cfg.lora.lora_dropout,
                                             target_modules=list(cfg.lora.target_modules), modules_to_save=[head]))
    texts = texts_for_mlm(cfg, target, dev)
    ds = datasets.Dataset.from_dict({"text": texts}).shuffle(seed=cfg.seed)
    ds = ds.map(lambda b: tok(b["text"], truncation=True, max_length=cfg.model.max_length), batched=True,
                remove_columns=["text"])
    args = TrainingArguments(str(out / "mlm-checkpoints"), per_device_train_batch_size=cfg.train.batch_size,
                             max_steps=steps, learning_rate=lr, warmup_steps=0.06, weight_decay=0.01,
                             logging_steps=min(40, steps), save_strategy="no", report_to=[], bf16=True,
                             use_cpu=not torch.cuda.is_available(), train_sampling_strategy="group_by_length",
                             seed=cfg.seed, disable_tqdm=True)
    t0 = time.time()
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      data_collator=DataCollatorForLanguageModeling(tok, mlm_probability=0.15))
    trainer.train()
    # the encoder's LoRA matrices only: the head (and any LoRA inside it) is dropped
    keep = {k: v for k, v in get_peft_model_state_dict(model).items() if "lora_" in k and head.split(".")[0] + "." not in k}
    out.mkdir(parents=True, exist_ok=True)
    torch.save(keep, out / f"lora-{steps}.pt")
    losses = [round(float(h["loss"]), 3) for h in trainer.state.log_history if "loss" in h] or [None]
    print(f"mlm: {len(texts)} texts, {steps} steps, {time.time() - t0:.0f} s; loss {losses[0]} -> {losses[-1]}; "
          f"{len(keep)} LoRA tensors -> {out / f'lora-{steps}.pt'}")


def fit(config: str, overrides: dict, init: Path | None, name: str, dev: str) -> None:
    import lorafit.pipeline as pipeline

    build = pipeline.build_model

    def build_from(cfg, weights=True):
        built = build(cfg, weights)
        if init is not None:
            sd = {k.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight"): v
                  for k, v in torch.load(init).items()}
            result = built.model.load_state_dict(sd, strict=False)
            assert not result.unexpected_keys, result.unexpected_keys[:3]
        return built

    pipeline.build_model = build_from
    res = lorafit.run(config, name=name, **overrides)
    from lorafit.predict import score_run_on_file

    dev_acc = score_run_on_file(res.run_dir, dev).accuracy
    print(f"{name}: validation {100 * res.val_accuracy:.2f}%, dev {100 * dev_acc:.2f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=["mlm", "fit", "plain"])
    ap.add_argument("config")
    ap.add_argument("--steps", type=int, default=400, help="masked-LM training steps")
    ap.add_argument("--lr", type=float, default=1e-3, help="masked-LM learning rate")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides of the fit")
    ap.add_argument("--target", default="../shared/data/target/test_unlabelled.csv")
    ap.add_argument("--dev", default="../shared/data/agnews/dev.csv")
    ap.add_argument("--out", type=Path, default=Path("runs/_tapt"))
    a = ap.parse_args()
    cfg = load_config(a.config)
    if a.step == "mlm":
        mlm(cfg, a.steps, a.lr, a.out, a.target, a.dev)
    else:
        import yaml

        init = a.out / f"lora-{a.steps}.pt" if a.step == "fit" else None
        sets = {k: yaml.safe_load(v) for k, v in (x.split("=", 1) for x in a.set)}
        fit(a.config, {"output_dir": str(a.out / "runs"), **sets}, init, f"tapt-{a.step}-{a.steps}", a.dev)


if __name__ == "__main__":
    main()
