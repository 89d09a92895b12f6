"""The measurements of ``bench/run.py``. Each task function runs in its own child process, once
with ``style="ref"`` (the report's notebook, reproduced here) and once with ``style="lorafit"``
(lorafit's own code paths, called unchanged), and returns a dict of raw numbers.

What is timed, identically for both sides:
- training (classifier and LM): from ``on_train_begin`` to the end of the last optimizer step
  (tokenization, model loading and the final save are outside the window and reported apart);
- prediction and generation: from the raw texts/plan to the outputs (tokenization included).

Tokens are counted inside ``Trainer.training_step`` from the batches the model actually got:
``real`` = non-pad tokens (attention mask), ``computed`` = the padded tensor size. For causal-LM
training ``real`` counts the tokens with a loss (``labels != -100``).
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from pathlib import Path

# ----------------------------------------------------------------------------- shared helpers


def _setup(s: dict):
    import torch

    torch.set_num_threads(s["threads"])
    if s["device"] == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda, but torch sees no CUDA device")
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
    return torch


def _rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _memory(s: dict, baseline_mb: float) -> dict:
    import torch

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    out = {"peak_rss_mb": round(peak, 1), "baseline_rss_mb": round(baseline_mb, 1),
           "peak_rss_over_baseline_mb": round(peak - baseline_mb, 1)}
    if s["device"] == "cuda":
        out["peak_cuda_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        out["peak_cuda_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    return out


def _sync(s: dict):
    if s["device"] == "cuda":
        import torch

        torch.cuda.synchronize()


def _read_texts(path: Path, n: int | None, seed: int, with_labels: bool):
    import pandas as pd

    df = pd.read_csv(path)
    if n is not None and n < len(df):
        df = df.sample(n=n, random_state=seed)
    texts = df["text"].astype(str).tolist()
    return (texts, df["label"].astype(int).tolist()) if with_labels else texts


def _train_rows(s: dict):
    """The whole training set (texts, labels) and the positions of the ``n_train`` bench rows."""
    import pandas as pd

    df = pd.read_csv(Path(s["data_dir"]) / "agnews" / "train.csv")
    rows = df.reset_index(drop=True).sample(n=min(s["n_train"], len(df)), random_state=s["seed"]).index.tolist()
    return (df["text"].astype(str).tolist(), df["label"].astype(int).tolist()), rows


def _classifier_cfg(s: dict, style: str):
    from lorafit.config import load_config

    ov = [f"model.name={s['model']}", f"model.max_length={s['max_length']}", f"train.batch_size={s['batch_size']}",
          f"train.epochs={s['train_epochs']}", f"seed={s['seed']}", "train.logging_steps=1000",
          f"output_dir={s['tmp']}", f"name={style.split('+')[0]}-classifier"]
    if style == "ref":
        ov.append("model.attn_implementation=null")  # the library default, as the notebook had
    elif "+" in style:  # --ablate: lorafit with one override ("lorafit+train.precision=fp32")
        ov.append(style.split("+", 1)[1])
    return load_config(s["config"], ov)


class _Instrument:
    """Counts tokens per optimizer step (patched ``Trainer.training_step``) and times the training
    loop (a callback added by the patched ``Trainer.train``). Patches live in this child only."""

    def __init__(self, s: dict, lm: bool):
        import transformers
        from transformers import TrainerCallback

        self.s, self.lm = s, lm
        self.steps, self.samples, self.real, self.computed = 0, 0, 0, 0
        self.t0 = self.t_end = None
        inst = self

        class Timer(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                _sync(inst.s)
                inst.t0, inst.c0 = time.perf_counter(), time.process_time()

            def on_step_end(self, args, state, control, **kw):
                _sync(inst.s)
                inst.t_end, inst.c_end = time.perf_counter(), time.process_time()

        orig_train = transformers.Trainer.train
        orig_step = transformers.Trainer.training_step

        def train(trainer, *a, **k):
            trainer.add_callback(Timer())
            return orig_train(trainer, *a, **k)

        def training_step(trainer, model, inputs, *a, **k):
            ids = inputs["input_ids"]
            inst.samples += int(ids.shape[0])
            inst.computed += int(ids.numel())
            if inst.lm:
                inst.real += int((inputs["labels"] != -100).sum())
            elif "attention_mask" in inputs:
                inst.real += int(inputs["attention_mask"].sum())
            else:
                inst.real += int(ids.numel())
            inst.steps += 1
            return orig_step(trainer, model, inputs, *a, **k)

        transformers.Trainer.train = train
        transformers.Trainer.training_step = training_step

    def result(self) -> dict:
        secs, cpu = self.t_end - self.t0, self.c_end - self.c0
        return {"steps": self.steps, "samples": self.samples, "real_tokens": self.real,
                "computed_tokens": self.computed, "padding_fraction": round(1 - self.real / max(self.computed, 1), 4),
                "train_loop_s": round(secs, 3), "cpu_s": round(cpu, 3), "samples_per_s": self.samples / secs,
                "real_tokens_per_s": self.real / secs, "computed_tokens_per_s": self.computed / secs,
                "samples_per_cpu_s": self.samples / cpu, "real_tokens_per_cpu_s": self.real / cpu}


def _val_accuracy(s: dict, model, tokenizer) -> float:
    """The same evaluation for both sides (fp32, dynamic padding), so accuracy reflects training."""
    import numpy as np

    from lorafit.inference import predict_logits

    texts, labels = _read_texts(Path(s["data_dir"]) / "agnews" / "dev.csv", s["n_val"], s["seed"], True)
    logits = predict_logits(model, tokenizer, texts, batch_size=64, max_length=s["max_length"], precision="fp32")
    return float((logits.argmax(1) == np.asarray(labels)).mean())


# ----------------------------------------------------------------------------- 1. classifier training


def train(s: dict, style: str) -> dict:
    _setup(s)
    import datasets
    from transformers import set_seed

    from lorafit.model import build_model, load_tokenizer
    from lorafit.train import resolve_optim

    baseline = _rss_now_mb()
    full, rows = _train_rows(s)
    ds = datasets.Dataset.from_dict({"text": [full[0][i] for i in rows], "label": [full[1][i] for i in rows]})
    cfg = _classifier_cfg(s, style)
    tokenizer = load_tokenizer(cfg)
    set_seed(s["seed"])
    model = build_model(cfg).model
    inst = _Instrument(s, lm=False)
    t_all = time.perf_counter()
    out_dir = Path(s["tmp"]) / f"{style}-classifier"
    if style == "ref":
        from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

        t = cfg.train
        t_tok = time.perf_counter()
        # The notebook tokenized the whole training set with padding=True inside a batched map, which pads each
        # 1,000-row chunk to its longest text; the bench rows are then taken from that tokenized set.
        full_ds = datasets.Dataset.from_dict({"text": full[0], "label": full[1]})
        tok_ds = full_ds.map(lambda b: tokenizer(b["text"], truncation=True, padding=True, max_length=s["max_length"]),
                             batched=True, remove_columns=["text"], load_from_cache_file=False).select(rows)
        tok_ds = tok_ds.rename_column("label", "labels")
        tokenize_s = time.perf_counter() - t_tok
        args = TrainingArguments(
            output_dir=str(out_dir), num_train_epochs=float(s["train_epochs"]),
            per_device_train_batch_size=t.batch_size,
            learning_rate=t.learning_rate, weight_decay=t.weight_decay, warmup_steps=t.warmup_ratio,
            lr_scheduler_type=t.lr_scheduler, seed=t.seed, gradient_checkpointing=True,
            optim="adamw_torch",  # the Trainer default when the report was written (transformers < 4.55)
            save_strategy="no", logging_steps=1000, report_to="none", use_cpu=s["device"] == "cpu",
        )
        trainer = Trainer(model=model, args=args, train_dataset=tok_ds,
                          data_collator=DataCollatorWithPadding(tokenizer))
        trainer.train()
        precision, optim = "fp32", getattr(args.optim, "value", args.optim)
    else:
        from lorafit.precision import pick_precision
        from lorafit.train import train_model

        train_model(cfg, model, tokenizer, ds, None, out_dir, resume=False)
        tokenize_s = None  # inside train_model; see total_s
        precision = pick_precision(cfg.train.precision)
        optim = resolve_optim(cfg.train.optim, s["device"])  # what train_model passes to TrainingArguments
    total = time.perf_counter() - t_all
    res = inst.result()
    res.update(total_s=round(total, 3), tokenize_s=None if tokenize_s is None else round(tokenize_s, 3),
               precision=precision, optim=str(optim),
               attn_implementation=getattr(model.config, "_attn_implementation", None),
               gradient_checkpointing=style == "ref" or cfg.train.gradient_checkpointing,
               group_by_length=style != "ref" and cfg.train.group_by_length)
    res.update(_memory(s, baseline))  # peak of the training phase (evaluation below is not larger)
    t_eval = time.perf_counter()
    res["val_accuracy"] = _val_accuracy(s, model, tokenizer)
    res["val_eval_s"] = round(time.perf_counter() - t_eval, 3)
    res["n_val"] = s["n_val"]
    return res


# ----------------------------------------------------------------------------- 2. prediction


def predict(s: dict, style: str) -> dict:
    torch = _setup(s)
    import numpy as np
    from transformers import set_seed

    from lorafit.model import build_model, load_tokenizer
    from lorafit.precision import inference_precision, pick_precision

    baseline = _rss_now_mb()
    texts = _read_texts(Path(s["data_dir"]) / "target" / "test_unlabelled.csv", s["n_predict"], s["seed"], False)
    cfg = _classifier_cfg(s, style)
    tokenizer = load_tokenizer(cfg)
    set_seed(s["seed"])
    model = build_model(cfg).model
    # a trained-looking adapter (LoRA B is zero at init, which would make merging a no-op)
    g = torch.Generator().manual_seed(s["seed"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    device = torch.device(s["device"])
    merge_s = None
    if style == "ref":
        # Every text costs the reference the same (all are padded to max_length), so it is timed on the first
        # n_predict_ref texts of the same sample; lorafit's cost depends on the lengths, so it gets them all.
        texts = texts[:s["n_predict_ref"]]
        model.to(device).eval()

        def run(batch_texts):
            enc = tokenizer(batch_texts, truncation=True, padding="max_length", max_length=s["max_length"],
                            return_tensors="pt")
            outs = []
            with torch.no_grad():
                for i in range(0, len(batch_texts), 8):
                    batch = {k: v[i:i + 8].to(device) for k, v in enc.items()}
                    outs.append(model(**batch).logits.float().cpu())
            return torch.cat(outs).numpy()

        enc = tokenizer(texts, truncation=True, padding="max_length", max_length=s["max_length"])
        real = sum(map(sum, enc["attention_mask"]))
        computed = sum(map(len, enc["input_ids"]))
        precision, batch_size, merged, workers = "fp32", 8, False, 1
    else:
        from lorafit.precision import for_inference
        from lorafit.inference import padded_tokens, plan_prediction, predict_logits

        t_m = time.perf_counter()
        model, merge_adapters = for_inference(model.to(device), inference_precision(cfg),
                                              merge=cfg.predict.merge_lora)
        merge_s = round(time.perf_counter() - t_m, 3)

        def run(batch_texts):
            return predict_logits(model, tokenizer, batch_texts, batch_size=cfg.predict.batch_size,
                                  max_length=s["max_length"], precision=inference_precision(cfg),
                                  workers=cfg.predict.workers, merge_adapters=merge_adapters)

        lens = [len(x) for x in tokenizer(texts, truncation=True, max_length=s["max_length"])["input_ids"]]
        batches, mult, workers = plan_prediction(lens, device, cfg.predict.batch_size, workers=cfg.predict.workers)
        real, computed = sum(lens), padded_tokens(lens, batches, mult)
        precision, batch_size, merged = pick_precision(inference_precision(cfg)), cfg.predict.batch_size, cfg.predict.merge_lora
    run(texts[:16])  # warm-up (one-time kernel set-up), not timed, the same for both sides
    _sync(s)
    t0, c0 = time.perf_counter(), time.process_time()
    logits = run(texts)
    _sync(s)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    np.save(Path(s["result_dir"]) / f"predict-{style}-logits.npy", np.asarray(logits, dtype=np.float32))
    res = {"texts": len(texts), "predict_s": round(secs, 3), "cpu_s": round(cpu, 3), "texts_per_s": len(texts) / secs,
           "texts_per_cpu_s": len(texts) / cpu,
           "real_tokens": real, "computed_tokens": computed, "real_tokens_per_s": real / secs,
           "warmup_texts": 16, "batch_size": batch_size, "precision": precision, "merged": merged, "merge_s": merge_s,
           "workers": workers,
           "attn_implementation": getattr(model.config, "_attn_implementation", None)}
    res.update(_memory(s, baseline))
    return res


# ----------------------------------------------------------------------------- 3. LM adaptation


def make_tiny_lm(s: dict, _style: str = "") -> dict:
    """A small random GPT-2 with a byte-level BPE tokenizer trained on the target texts (no network)."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    out = Path(s["tmp"]) / "tiny-gpt2"
    texts = _read_texts(Path(s["data_dir"]) / "target" / "test_unlabelled.csv", None, s["seed"], False)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=8192, min_frequency=2, special_tokens=["<|endoftext|>"])
    tok = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                            unk_token="<|endoftext|>", model_max_length=512)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=512, n_embd=256, n_layer=4, n_head=4,
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(s["seed"])
    model = GPT2LMHeadModel(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"path": str(out), "vocab_size": len(tok), "params": sum(p.numel() for p in model.parameters()),
            "n_embd": 256, "n_layer": 4, "n_head": 4, "n_positions": 512}


def lm_adapt(s: dict, style: str) -> dict:
    _setup(s)
    baseline = _rss_now_mb()
    texts = _read_texts(Path(s["data_dir"]) / "target" / "test_unlabelled.csv", s["n_lm"], s["seed"], False)
    texts = [t for t in texts if t.strip()]
    inst = _Instrument(s, lm=True)
    out_dir = Path(s["tmp"]) / f"{style}-lm"
    t_all = time.perf_counter()
    if style == "ref":
        import datasets
        from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments, set_seed

        from lorafit.augment.lm_adapt import load_causal_lm

        set_seed(s["seed"])
        tokenizer, model = load_causal_lm(s["lm"])
        t_tok = time.perf_counter()
        ds = datasets.Dataset.from_dict({"text": texts}).map(
            lambda b: tokenizer(b["text"], truncation=True, padding="max_length", max_length=s["lm_max_length"]),
            batched=True, remove_columns=["text"], load_from_cache_file=False)
        tokenize_s = time.perf_counter() - t_tok
        args = TrainingArguments(output_dir=str(out_dir), num_train_epochs=float(s["lm_epochs"]),
                                 per_device_train_batch_size=s["lm_batch_size"], learning_rate=5e-5, seed=s["seed"],
                                 optim="adamw_torch", save_strategy="no", logging_steps=1000, report_to="none",
                                 use_cpu=s["device"] == "cpu")
        Trainer(model=model, args=args, train_dataset=ds,
                data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False)).train()
        precision, extra = "fp32", {"max_length": s["lm_max_length"]}
    else:
        from lorafit.augment.lm_adapt import adapt_language_model
        from lorafit.precision import pick_precision

        tokenize_s = None
        adapt_language_model(s["lm"], texts, out_dir, epochs=s["lm_epochs"], block_size=s["lm_block_size"],
                             batch_size=s["lm_batch_size"], seed=s["seed"], precision="auto")
        log = json.loads((out_dir / "train_log.json").read_text())
        precision = pick_precision("auto")
        extra = {"block_size": log["block_size"], "blocks": log["blocks"], "tokens_dropped": log["tokens_dropped"]}
    total = time.perf_counter() - t_all
    res = inst.result()
    res.update(texts=len(texts), total_s=round(total, 3), precision=precision, batch_size=s["lm_batch_size"],
               tokenize_s=None if tokenize_s is None else round(tokenize_s, 3), **extra)
    res.update(_memory(s, baseline))
    return res


# ----------------------------------------------------------------------------- 4. generation


def _plan(s: dict):
    from lorafit.augment.generate import build_plan, fit_length_distribution, load_prompt_bank
    from lorafit.config import AG_NEWS_LABELS

    bank = load_prompt_bank(s["prompts"], AG_NEWS_LABELS)
    train_texts = _read_texts(Path(s["data_dir"]) / "agnews" / "train.csv", 2000, s["seed"], False)
    a, loc, scale = fit_length_distribution(train_texts)
    length = {"a": a, "loc": loc, "scale": scale, "min_words": 1, "max_words": 128}
    return bank, length, build_plan(bank, s["gen_per_class"], seed=s["seed"], **length)


def generate(s: dict, style: str) -> dict:
    torch = _setup(s)
    baseline = _rss_now_mb()
    bank, length, plan = _plan(s)
    sampling = dict(top_k=50, top_p=0.95, temperature=1.0, repetition_penalty=1.3)
    if style == "ref":
        from transformers import pipeline

        from lorafit.augment.lm_adapt import load_causal_lm

        t0, c0 = time.perf_counter(), time.process_time()  # from the model folder to the samples, as for lorafit below
        tokenizer, model = load_causal_lm(s["lm"])
        tokenizer.padding_side = "left"
        gen = pipeline("text-generation", model=model, tokenizer=tokenizer,
                       device=0 if s["device"] == "cuda" else -1)
        torch.manual_seed(s["seed"])
        texts = []
        for i in range(0, len(plan), 50):
            chunk = plan[i:i + 50]
            # one length for the whole batch: enough tokens for its longest target (lorafit's rule)
            max_new = math.ceil(1.5 * max(p["target_words"] for p in chunk)) + 8
            outs = gen([p["prompt"] for p in chunk], batch_size=50, max_new_tokens=max_new, do_sample=True,
                       return_full_text=False, pad_token_id=tokenizer.pad_token_id, **sampling)
            for p, o in zip(chunk, outs):
                texts.append(" ".join(o[0]["generated_text"].split()[:p["target_words"]]))
        _sync(s)
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        batch_size = 50
    else:
        from lorafit.augment.generate import generate_samples

        t0, c0 = time.perf_counter(), time.process_time()
        ds = generate_samples(s["lm"], bank, s["gen_per_class"], Path(s["tmp"]) / "lorafit-gen", seed=s["seed"],
                              batch_size=s["gen_batch_size"], **length, **sampling)
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0  # includes loading the LM and writing the shards
        texts = ds["text"]
        batch_size = s["gen_batch_size"]
    words = [len(t.split()) for t in texts]
    res = {"samples": len(texts), "generate_s": round(secs, 3), "cpu_s": round(cpu, 3),
           "samples_per_s": len(texts) / secs, "samples_per_cpu_s": len(texts) / cpu,
           "output_words_mean": sum(words) / max(len(words), 1),
           "target_words_mean": sum(p["target_words"] for p in plan) / len(plan), "batch_size": batch_size}
    res.update(_memory(s, baseline))
    return res


# ----------------------------------------------------------------------------- token budgets at full scale


def token_budget(s: dict, _style: str = "") -> dict:
    """Tokens each side computes per sample on the *whole* data sets, by each side's batching rules.

    The timed runs use small subsets, where lorafit's length grouping is weak (transformers'
    ``LengthGroupedSampler`` sorts mega-batches of ``min(N // (4 * batch), 50) * batch`` rows) and
    the reference's chunk padding is as on the whole set. This shows the padding of a real run.
    """
    import math as _m

    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    from lorafit.model import load_tokenizer

    out = {}
    cfg = _classifier_cfg(s, "lorafit")
    tok = load_tokenizer(cfg)
    from lorafit.config import load_config

    bs, ml = load_config(s["config"]).train.batch_size, s["max_length"]  # the config's batch, as in a real run
    (texts, _), _ = _train_rows(s)
    lens = [len(x) for x in tok(texts, truncation=True, max_length=ml)["input_ids"]]
    n = len(lens)
    chunk_max = [max(lens[i - i % 1000: i - i % 1000 + 1000]) for i in range(n)]
    g = torch.Generator().manual_seed(s["seed"])
    perm = torch.randperm(n, generator=g).tolist()
    ref = sum(len(b) * max(chunk_max[i] for i in b) for b in (perm[j:j + bs] for j in range(0, n, bs)))
    order = get_length_grouped_indices(lens, bs, generator=torch.Generator().manual_seed(s["seed"]))
    ceil8 = lambda x: 8 * _m.ceil(x / 8)  # noqa: E731 - lorafit's collator pads to a multiple of 8
    lf = sum(len(b) * ceil8(max(lens[i] for i in b)) for b in (order[j:j + bs] for j in range(0, n, bs)))
    out["train"] = {"rows": n, "batch_size": bs, "real_tokens_per_sample": sum(lens) / n,
                    "reference_tokens_per_sample": ref / n,
                    "lorafit_tokens_per_sample": lf / n, "reference_over_lorafit": ref / lf}
    target = _read_texts(Path(s["data_dir"]) / "target" / "test_unlabelled.csv", None, s["seed"], False)
    tl = [len(x) for x in tok(target, truncation=True, max_length=ml)["input_ids"]]
    from lorafit.inference import padded_tokens, plan_prediction

    torch.set_num_threads(s["threads"])
    batches, mult, _ = plan_prediction(tl, torch.device(s["device"]), cfg.predict.batch_size,
                                       workers=cfg.predict.workers)
    lf = padded_tokens(tl, batches, mult)
    out["predict"] = {"rows": len(tl), "real_tokens_per_sample": sum(tl) / len(tl), "reference_tokens_per_sample": ml,
                      "lorafit_tokens_per_sample": lf / len(tl), "reference_over_lorafit": ml * len(tl) / lf}
    if {"lm_adapt", "generate"} & set(s["tasks"]):
        from transformers import AutoTokenizer

        from lorafit.augment.causal_lm import resolve_causal_lm

        src = resolve_causal_lm(s["lm"])  # a Hub id, a folder, a .gguf file or package:NAME
        ltok = AutoTokenizer.from_pretrained(src.path, **({"gguf_file": src.gguf_file} if src.gguf_file else {}))
        ll = [len(x) for x in ltok(target, add_special_tokens=False)["input_ids"]]
        lm_ml = s["lm_max_length"]
        real = sum(min(x, lm_ml) for x in ll)
        packed = sum(x + 1 for x in ll)  # each text + EOS, cut into blocks: no padding
        out["lm_adapt"] = {"rows": len(ll), "real_tokens_per_sample": real / len(ll),
                           "reference_tokens_per_sample": lm_ml, "lorafit_tokens_per_sample": packed / len(ll),
                           "reference_over_lorafit": lm_ml * len(ll) / packed}
    return out


TASKS = {"token_budget": token_budget, "train": train, "predict": predict, "lm_adapt": lm_adapt, "generate": generate,
         "make_tiny_lm": make_tiny_lm}


def child(task: str, style: str, s: dict, result_file: str) -> None:
    """Entry point of a child process: run one measurement, write its JSON result."""
    import logging
    import sys
    import traceback
    import warnings

    # the child's own prints (Trainer logs, warnings) go to a log file next to its result
    log = open(result_file[:-5] + ".log", "w")
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    os.environ["TQDM_DISABLE"] = "1"
    try:
        res = {"ok": True, **TASKS[task](s, style)}
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        res = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    Path(result_file).write_text(json.dumps(res))
