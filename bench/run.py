#!/usr/bin/env python
"""Side-by-side speed and memory of lorafit against the report's notebook style ("reference"),
in one run, on the same data, model and hardware.

    python bench/run.py --quick                      # CPU, under 2 minutes on 2 cores
    python bench/run.py                              # moderate sizes, 5-8 minutes on 2 cores
    python bench/run.py --model roberta-base --lm gpt2 --device cuda

Four measurements, each side in its own child process (fair peak memory, no shared caches),
reference and lorafit back to back (alternating which goes first on each repeat), with the same
number of torch threads:

1. train:    LoRA classifier training, samples/s and real (non-pad) tokens/s, plus the validation
             accuracy both reach after the same steps;
2. predict:  prediction texts/s (reference: pad to max_length, batch 8, unmerged, fp32);
3. lm_adapt: causal-LM adaptation, real tokens/s (reference: every text padded to 512);
4. generate: synthetic samples/s (reference: text-generation pipeline, batches of 50).

Ratios are lorafit / reference. Results go to bench/results.json (written atomically).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lorafit.io_utils import atomic_write_json

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
TASK_NAMES = ("train", "predict", "lm_adapt", "generate")
TARGETS = {"train_speedup": 8.0, "predict_speedup": 20.0, "lm_adapt_speedup": 5.0}
# sizes: (quick, full)
SIZES = {
    "n_train": (32, 256),
    "n_val": (128, 500),
    "n_predict": (800, 2000),
    "n_predict_ref": (32, 96),
    "n_lm": (48, 160),
    "gen_per_class": (13, 50),
    "batch_size": (16, 32),
}
SIZE_HELP = {
    "batch_size": " (classifier training batch, both sides)",
    "n_predict": " (target texts lorafit predicts)",
    "n_predict_ref": " (the first of those texts the reference predicts: it pads every text to max_length, so its "
                     "time per text does not depend on the text)",
}
# --ablate: lorafit with one of its fast paths switched off (a config override), per task
ABLATIONS = {
    "train": ["train.group_by_length=false", "train.gradient_checkpointing=true", "train.precision=fp32",
              "train.optim=adamw_torch", "model.attn_implementation=eager"],
    "predict": ["predict.workers=1", "predict.merge_lora=false", "predict.precision=fp32",
                "model.attn_implementation=eager"],
}
# the headline number of each task: (result key, unit)
HEADLINE = {"train": ("samples_per_s", "samples/s"), "predict": ("texts_per_s", "texts/s"),
            "lm_adapt": ("real_tokens_per_s", "real tokens/s"), "generate": ("samples_per_s", "samples/s")}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes: under 2 minutes on 2 CPU cores")
    p.add_argument("--model", default="minilm",
                   help="classifier encoder (lorafit model.name): minilm, roberta-base, a folder")
    p.add_argument("--lm", default="tiny",
                   help="causal LM: 'tiny' (a random 4-layer GPT-2 made here, CPU), gpt2, or a folder")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--tasks", default=",".join(TASK_NAMES), help=f"comma-separated subset of {','.join(TASK_NAMES)}")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"),
                   help="folder with agnews/train.csv, agnews/dev.csv, target/test_unlabelled.csv "
                        "(default ../shared/data)")
    p.add_argument("--config", default=str(REPO / "configs" / "cpu-agnews.yaml"),
                   help="lorafit config: LoRA and training settings")
    p.add_argument("--prompts", default=str(REPO / "configs" / "prompts" / "agnews.yaml"),
                   help="prompt bank for generation")
    for k, (q, f) in SIZES.items():
        p.add_argument("--" + k.replace("_", "-"), type=int, default=None,
                       help=f"default {q} with --quick, else {f}" + SIZE_HELP.get(k, ""))
    p.add_argument("--max-length", type=int, default=512, help="classifier max tokens per text (both sides)")
    p.add_argument("--train-epochs", type=float, default=1.0,
                   help="epochs over --n-train (so every sample is seen equally)")
    p.add_argument("--lm-epochs", type=float, default=1.0)
    p.add_argument("--lm-batch-size", type=int, default=8, help="LM training batch (both sides)")
    p.add_argument("--lm-block-size", type=int, default=256, help="lorafit's packing block size")
    p.add_argument("--lm-max-length", type=int, default=512, help="the reference pads every text to this")
    p.add_argument("--gen-batch-size", type=int, default=32, help="lorafit generation batch (the reference uses 50)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads in every child")
    p.add_argument("--omp-wait-policy", default="passive", choices=("passive", "active", "unset"),
                   help="OMP_WAIT_POLICY of the children: passive keeps idle OpenMP threads from spinning, which "
                        "matters a lot when other work shares the CPU (both sides get the same)")
    p.add_argument("--ablate", action="store_true",
                   help="also run lorafit with each of its fast paths off, one at a time (train, predict): "
                        + "; ".join(f"{t}: {', '.join(v)}" for t, v in ABLATIONS.items()))
    p.add_argument("--repeats", type=int, default=1, help="measure each side this many times (median reported)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--timeout", type=float, default=3600, help="seconds allowed per child process")
    p.add_argument("--out", default=str(BENCH / "results.json"))
    p.add_argument("--keep-tmp", action="store_true", help="keep the scratch folder (models, checkpoints, logits)")
    a = p.parse_args(argv)
    for k, (q, f) in SIZES.items():
        if getattr(a, k) is None:
            setattr(a, k, q if a.quick else f)
    a.tasks = [t.strip() for t in a.tasks.split(",") if t.strip()]
    bad = [t for t in a.tasks if t not in TASK_NAMES]
    if bad:
        p.error(f"--tasks: unknown {bad}; choose from {','.join(TASK_NAMES)}")
    if not (Path(a.data_dir) / "agnews" / "train.csv").is_file():
        p.error(f"--data-dir {a.data_dir}: no agnews/train.csv there; point it at the shared data folder")
    return a


# ----------------------------------------------------------------------------- child processes


def _context():
    """A fork server that imports torch/transformers/lorafit once; every measurement is a fresh
    child forked from it (its own process and peak RSS, without paying ~7 s of imports each)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["tasks", "torch", "transformers", "transformers.trainer", "peft", "datasets",
                                "pandas", "lorafit.model", "lorafit.train", "lorafit.predict",
                                "lorafit.augment.lm_adapt", "lorafit.augment.generate"])
    return ctx


def run_child(ctx, task: str, style: str, settings: dict, timeout: float) -> dict:
    import tasks

    fd, result_file = tempfile.mkstemp(prefix=f"{task}-{style}-", suffix=".json", dir=settings["result_dir"])
    os.close(fd)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = ctx.Process(target=tasks.child, args=(task, style, settings, result_file), name=f"{task}-{style}")
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
        res = {"ok": False, "error": f"timed out after {timeout:.0f} s"}
    else:
        try:
            res = json.loads(Path(result_file).read_text() or "{}") or {"ok": False}
        except json.JSONDecodeError:
            res = {"ok": False}
        if not res.get("ok") and "error" not in res:
            res["error"] = f"child exited with code {proc.exitcode}"
    if not res.get("ok"):
        log = Path(result_file[:-5] + ".log")
        res["log_tail"] = log.read_text(errors="replace")[-3000:] if log.is_file() else ""
    res["child_wall_s"] = round(time.perf_counter() - t0, 2)
    res["loadavg_1min_before"] = round(load_before, 2)
    return res


# ----------------------------------------------------------------------------- summary


def _median(runs: list[dict], key: str):
    vals = [r[key] for r in runs if r.get("ok") and r.get(key) is not None]
    return statistics.median(vals) if vals else None


def _ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def summarize(runs: dict, settings: dict) -> dict:
    out: dict = {}
    for task, (key, unit) in HEADLINE.items():
        if task not in runs:
            continue
        ref, lf = runs[task]["ref"], runs[task]["lorafit"]
        t = out.setdefault(task, {"unit": unit})
        for k in ("samples_per_s", "real_tokens_per_s", "texts_per_s", "computed_tokens_per_s", "samples_per_cpu_s",
                  "real_tokens_per_cpu_s", "texts_per_cpu_s"):
            if task == "lm_adapt" and k.startswith("samples"):
                continue  # lorafit's "samples" are packed blocks: not comparable
            r, l = _median(ref, k), _median(lf, k)
            if r is not None or l is not None:
                t[k] = {"reference": r, "lorafit": l, "ratio": _ratio(l, r)}
        t["speedup"] = t.get(key, {}).get("ratio")
        t["peak_rss_mb"] = {"reference": _max(ref, "peak_rss_mb"), "lorafit": _max(lf, "peak_rss_mb")}
        t["peak_rss_over_baseline_mb"] = {"reference": _max(ref, "peak_rss_over_baseline_mb"),
                                          "lorafit": _max(lf, "peak_rss_over_baseline_mb")}
        if settings["device"] == "cuda":
            t["peak_cuda_allocated_mb"] = {"reference": _max(ref, "peak_cuda_allocated_mb"),
                                           "lorafit": _max(lf, "peak_cuda_allocated_mb")}
        if task == "train":
            t["val_accuracy"] = {"reference": [r.get("val_accuracy") for r in ref if r.get("ok")],
                                 "lorafit": [r.get("val_accuracy") for r in lf if r.get("ok")]}
    return out


def summarize_ablation(runs: dict, ablation_runs: dict) -> dict:
    """Per task and override: the headline throughput with that fast path off, and how much faster
    lorafit's defaults are (``default_over_variant`` > 1: the fast path pays)."""
    out: dict = {}
    for task, variants in ablation_runs.items():
        key, unit = HEADLINE[task]
        default = _median(runs.get(task, {}).get("lorafit", []), key)
        t = out.setdefault(task, {"unit": unit, "lorafit_default": default, "variants": {}})
        for override, rs in variants.items():
            v = _median(rs, key)
            t["variants"][override] = {key: v, "default_over_variant": _ratio(default, v),
                                       "peak_rss_mb": _max(rs, "peak_rss_mb")}
            if task == "train":
                t["variants"][override]["val_accuracy"] = [r.get("val_accuracy") for r in rs if r.get("ok")]
    return out


def print_ablation(ablation: dict) -> None:
    print("\nlorafit with one fast path off (default / variant > 1: the fast path pays):")
    for task, t in ablation.items():
        print(f"  {task:<8} defaults {_fmt(t['lorafit_default'])} {t['unit']}")
        for override, v in t["variants"].items():
            key = HEADLINE[task][0]
            r = v["default_over_variant"]
            print(f"  {'':<8} {override:<36} {_fmt(v[key]):>9} {t['unit']}  " + ("-" if r is None else f"{r:.2f}x"))


def _max(rs, key):
    vals = [r[key] for r in rs if r.get("ok") and r.get(key) is not None]
    return max(vals) if vals else None


def predict_agreement(result_dir: Path) -> dict | None:
    import numpy as np

    a, b = result_dir / "predict-ref-logits.npy", result_dir / "predict-lorafit-logits.npy"
    if not (a.is_file() and b.is_file()):
        return None
    ref, lf = np.load(a), np.load(b)
    lf = lf[:len(ref)]  # the reference predicts the first texts of lorafit's sample
    return {"texts": len(ref), "argmax_agreement": float((ref.argmax(1) == lf.argmax(1)).mean()),
            "max_abs_logit_diff": float(np.abs(ref - lf).max()),
            "note": "reference fp32 unmerged padded vs lorafit merged (bf16 where native) on the same texts and "
                    "adapter (random LoRA B, untrained head: logits are close together, so near-ties can flip)"}


def environment(settings: dict) -> dict:
    flags = ""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = next((l.split(":", 1)[1].strip() for l in cpuinfo.splitlines() if l.startswith("model name")), None)
        flags = next((l for l in cpuinfo.splitlines() if l.startswith("flags")), "")
    except OSError:
        model = None
    env = {"python": platform.python_version(), "platform": platform.platform(), "cpu": model,
           "cpu_bf16": [f for f in ("avx512_bf16", "amx_bf16") if f in flags.split()],
           "cpus_available": len(os.sched_getaffinity(0))}
    try:
        from importlib.metadata import version

        for pkg in ("torch", "transformers", "peft", "datasets", "accelerate"):
            env[pkg] = version(pkg)
    except Exception:  # noqa: BLE001
        pass
    try:
        env["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                           text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    return env


def portable(obj, replacements: dict):
    """The results with machine paths replaced (repo-relative paths, <tmp> for scratch), so a
    results file can be shared or committed."""
    if isinstance(obj, dict):
        return {k: portable(v, replacements) for k, v in obj.items()}
    if isinstance(obj, list):
        return [portable(v, replacements) for v in obj]
    if isinstance(obj, str):
        for old, new in replacements.items():
            obj = obj.replace(old, new)
    return obj


def _fmt(x, nd=1):
    if x is None:
        return "-"
    return f"{x:,.{nd}f}" if abs(x) < 1e6 else f"{x:,.0f}"


def print_table(summary: dict, results: dict) -> None:
    rows = [("task", "metric", "reference", "lorafit", "lorafit/ref", "target")]
    for task, t in summary.items():
        for k, label in (("samples_per_s", "samples/s"), ("texts_per_s", "texts/s"),
                         ("real_tokens_per_s", "real tokens/s"), ("samples_per_cpu_s", "samples/CPU-s"),
                         ("texts_per_cpu_s", "texts/CPU-s"), ("real_tokens_per_cpu_s", "real tokens/CPU-s")):
            if k in t:
                m = t[k]
                tgt = TARGETS.get(f"{task}_speedup") if k == HEADLINE[task][0] else None
                rows.append((task, label, _fmt(m["reference"]), _fmt(m["lorafit"]),
                             "-" if m["ratio"] is None else f"{m['ratio']:.2f}x", f">= {tgt:g}x" if tgt else ""))
        mem = t["peak_rss_mb"]
        both = mem["reference"] and mem["lorafit"]
        rows.append((task, "peak RSS MiB", _fmt(mem["reference"], 0), _fmt(mem["lorafit"], 0),
                     f"{mem['lorafit'] / mem['reference']:.2f}x" if both else "-", ""))
        if "peak_cuda_allocated_mb" in t:
            g = t["peak_cuda_allocated_mb"]
            rows.append((task, "peak CUDA MiB", _fmt(g["reference"], 0), _fmt(g["lorafit"], 0), "", ""))
        if "val_accuracy" in t:
            va = t["val_accuracy"]
            rows.append((task, f"val accuracy (n={results['settings']['n_val']})",
                         ", ".join(f"{v:.3f}" for v in va["reference"] if v is not None),
                         ", ".join(f"{v:.3f}" for v in va["lorafit"] if v is not None), "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for j, r in enumerate(rows):
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        if j == 0:
            print("  ".join("-" * w for w in widths))


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    a = parse_args(argv)
    t_start = time.perf_counter()
    # children inherit this environment from the fork server, started below
    if a.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ.update(OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads), TOKENIZERS_PARALLELISM="false",
                      TQDM_DISABLE="1", TRANSFORMERS_VERBOSITY="error", DATASETS_VERBOSITY="error",
                      HF_DATASETS_DISABLE_PROGRESS_BARS="1", PYTHONWARNINGS="ignore")
    # local models (minilm, the tiny LM) need no network; a Hub id must already be in the cache
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.omp_wait_policy != "unset":
        os.environ["OMP_WAIT_POLICY"] = a.omp_wait_policy.upper()
    sys.path.insert(0, str(BENCH))
    scratch = Path(tempfile.mkdtemp(prefix="lorafit-bench-"))
    settings = {k: v for k, v in vars(a).items() if k not in ("out", "keep_tmp", "timeout")}
    settings.update(data_dir=str(Path(a.data_dir).resolve()), result_dir=str(scratch), tmp=str(scratch))
    load = os.getloadavg()[0]
    if load > 0.5 * len(os.sched_getaffinity(0)):
        print(f"note: load average {load:.1f} on {len(os.sched_getaffinity(0))} CPUs: other work shares the machine, "
              "so timings are noisy (each side is measured back to back; --repeats 3 for steadier ratios)")
    ctx = _context()
    runs: dict = {}
    extra: dict = {}
    try:
        if {"lm_adapt", "generate"} & set(a.tasks) and a.lm == "tiny":
            print("making the tiny GPT-2 (random weights, BPE tokenizer trained on the target texts) ...", flush=True)
            tiny = run_child(ctx, "make_tiny_lm", "", settings, a.timeout)
            if not tiny.get("ok"):
                print(tiny.get("traceback", tiny.get("error")), file=sys.stderr)
                return 1
            settings["lm"] = tiny["path"]
            extra["tiny_lm"] = {k: v for k, v in tiny.items() if k not in ("ok", "path")}
        print("counting the tokens each side computes on the whole data sets ...", flush=True)
        budget = run_child(ctx, "token_budget", "", settings, a.timeout)
        if budget.get("ok"):
            extra["token_budget"] = {k: v for k, v in budget.items() if k != "ok"}
        else:
            print(f"token budget FAILED: {budget.get('error')}", file=sys.stderr)
        for rep in range(a.repeats):
            for task in a.tasks:
                order = ("ref", "lorafit") if rep % 2 == 0 else ("lorafit", "ref")
                for style in order:
                    s = dict(settings, tmp=str(scratch / f"{task}-{style}-{rep}"))
                    Path(s["tmp"]).mkdir(parents=True, exist_ok=True)
                    print(f"[{time.perf_counter() - t_start:6.1f}s] {task:<8} {style:<8} "
                          f"(repeat {rep + 1}/{a.repeats}) ...", end=" ", flush=True)
                    res = run_child(ctx, task, style, s, a.timeout)
                    runs.setdefault(task, {"ref": [], "lorafit": []})[style].append(res)
                    key, unit = HEADLINE[task]
                    if res.get("ok"):
                        print(f"{res[key]:,.1f} {unit} in {res['child_wall_s']:.1f}s", flush=True)
                    else:
                        print(f"FAILED: {res.get('error')}", flush=True)
                        print(res.get("traceback", "") + res.get("log_tail", ""), file=sys.stderr)
        ablation_runs: dict = {}
        if a.ablate:
            for rep in range(a.repeats):
                for task in (t for t in a.tasks if t in ABLATIONS):
                    for override in ABLATIONS[task]:
                        style = "lorafit+" + override
                        s = dict(settings, tmp=str(scratch / f"{task}-ablate-{len(ablation_runs.get(task, {}))}-{rep}"))
                        Path(s["tmp"]).mkdir(parents=True, exist_ok=True)
                        print(f"[{time.perf_counter() - t_start:6.1f}s] {task:<8} lorafit with {override} "
                              f"(repeat {rep + 1}/{a.repeats}) ...", end=" ", flush=True)
                        res = run_child(ctx, task, style, s, a.timeout)
                        ablation_runs.setdefault(task, {}).setdefault(override, []).append(res)
                        key, unit = HEADLINE[task]
                        if res.get("ok"):
                            print(f"{res[key]:,.1f} {unit} in {res['child_wall_s']:.1f}s", flush=True)
                        else:
                            print(f"FAILED: {res.get('error')}", flush=True)
                            print(res.get("traceback", "") + res.get("log_tail", ""), file=sys.stderr)
            extra["ablation"] = summarize_ablation(runs, ablation_runs)
            extra["ablation_runs"] = ablation_runs
        summary = summarize(runs, settings)
        if "predict" in runs:
            summary.setdefault("predict", {})["agreement"] = predict_agreement(scratch)
        wall = time.perf_counter() - t_start
        results = {
            **{f"{t}_speedup": summary.get(t, {}).get("speedup") for t in TASK_NAMES},
            "train_real_tokens_speedup": summary.get("train", {}).get("real_tokens_per_s", {}).get("ratio"),
            "targets": TARGETS,
            "summary": summary,
            "settings": {k: v for k, v in settings.items() if k not in ("result_dir", "tmp")},
            "environment": environment(settings),
            **extra,
            "runs": runs,
            "wall_s": round(wall, 1),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "notes": [
                "ratios are lorafit / reference of the medians over repeats; timings are wall clock on a possibly "
                "shared machine (see loadavg_1min_before of each run)",
                "peak_rss_mb includes the imported libraries (baseline_rss_mb, the same for both sides)",
            ],
        }
        atomic_write_json(Path(a.out), portable(results, {str(scratch): "<tmp>", str(REPO) + "/": "",
                                                           str(Path(a.data_dir).resolve()): os.path.relpath(Path(a.data_dir).resolve(), REPO)}))
        print()
        print_table(summary, results)
        tb = extra.get("token_budget")
        if tb:
            print("\ntokens computed per sample on the whole data sets (each side's batching; real = non-pad):")
            for task, d in tb.items():
                if isinstance(d, dict) and "rows" in d:
                    print(f"  {task:<9} {d['rows']:>6,} rows: real {d['real_tokens_per_sample']:6.1f}  reference "
                          f"{d['reference_tokens_per_sample']:6.1f}  lorafit {d['lorafit_tokens_per_sample']:6.1f}  "
                          f"-> {d['reference_over_lorafit']:.2f}x fewer")
        ag = summary.get("predict", {}).get("agreement")
        if ag:
            print(f"\nprediction agreement (reference vs lorafit, {ag['texts']} texts): "
                  f"{100 * ag['argmax_agreement']:.1f}% same labels, "
                  f"max |logit diff| {ag['max_abs_logit_diff']:.3f}")
        if extra.get("ablation"):
            print_ablation(extra["ablation"])
        failed = [f"{t}/{s}" for t, d in runs.items() for s, rs in d.items() for r in rs if not r.get("ok")]
        failed += [f"{t}/lorafit+{o}" for t, d in ablation_runs.items() for o, rs in d.items() for r in rs
                   if not r.get("ok")]
        print(f"\nwall time {wall:.0f} s; results in {a.out}" + (f"; FAILED: {failed}" if failed else ""))
        return 1 if failed else 0
    finally:
        if a.keep_tmp:
            print(f"scratch kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
