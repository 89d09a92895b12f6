#!/usr/bin/env python
"""The seed recipe's GPU check: true-size models, offline, measured stage by stage, in one command.

    python bench/gpu_check.py --out OUT                      # on a CUDA machine: ~5-7 min on one H200
    python bench/gpu_check.py --out OUT --device cpu --size tiny   # the same path on a CPU, in ~2 minutes

What it does, in order (each step recorded even when an earlier one failed):

1. checks the Python packages lorafit needs and the device;
2. data: ``--data-dir`` (the shared ``agnews/train.csv``, ``agnews/dev.csv``,
   ``target/test_unlabelled.csv``), or else lorafit's bundled sample data repeated to the real sizes
   (12,000 training rows, 8,000 target texts);
3. builds the rehearsal Hub cache (``scripts/rehearsal_hub.py``: ``roberta-base`` and ``gpt2``
   with their true architectures and random weights) and loads both back offline;
4. a short true-size run of ``configs/seed.yaml`` (``lorafit run`` under ``bench/stage_profile.py``:
   every stage timed, peak host and GPU memory per stage): LM adaptation, generation, selection,
   training, evaluation, prediction with the EM prior;
5. ``bench/run.py --model roberta-base --lm gpt2 --device cuda --config configs/seed.yaml``: lorafit
   against the report's notebook style, side by side;
6. a projection of the full seed recipe's wall time (2 LM epochs on 8,000 texts, 12,000 generated
   samples, 11 epochs over 132,000 rows, 8,000 predictions) from the throughputs measured in 4.

Results land in ``OUT``: ``gpu_check.json`` (everything), ``summary.txt`` (for people),
``seed_stages.json``, ``bench.json`` and the two logs (their last 400 KB). The weights are random:
the check measures time and memory, never accuracy. ``--size tiny`` (with ``--device cpu``) runs the
same path with 2-layer models under the same ids and a few samples, so a lent GPU's minutes go to
measuring, not debugging (``tests/test_rehearsal.py`` runs it).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE = REPO / "src" / "lorafit" / "data" / "sample"
LOG_TAIL = 400_000

# The full seed recipe (configs/seed.yaml with the report's data), for the projection.
FULL_RECIPE = {
    "source_rows": 120_000,      # Hub ag_news train
    "val_rows": 1_200,           # val_fraction 0.01
    "lm_texts": 8_000,           # the target set
    "lm_epochs": 2, "lm_batch": 8, "block_size": 512,
    "generated": 12_000,         # 3,000 per class
    "train_rows": 132_000, "train_epochs": 11, "train_batch": 64,
    "predict_rows": 8_000,
}

# Per --size: the short seed run's overrides and bench/run.py's sizes.
SIZES = {
    "full": {
        "seed": ["train.max_steps=300", "train.logging_steps=50", "augment.lm.max_steps=40",
                 "augment.generate.per_class=64"],
        "bench": ["--n-train", "1024", "--n-val", "500", "--n-predict", "4000", "--n-predict-ref", "256",
                  "--n-lm", "320", "--gen-per-class", "32", "--batch-size", "64"],
        "rows": {"train": 12_000, "dev": 1_200, "target": 8_000},
        "scale": "true",
    },
    "tiny": {
        "seed": ["train.max_steps=2", "train.batch_size=4", "train.eval_batch_size=8", "train.logging_steps=1",
                 "augment.lm.max_steps=1", "augment.lm.batch_size=1", "augment.generate.per_class=1",
                 "augment.generate.batch_size=4", "augment.generate.length.max_words=12"],
        "bench": ["--n-train", "8", "--n-val", "8", "--n-predict", "16", "--n-predict-ref", "4", "--n-lm", "8",
                  "--gen-per-class", "1", "--batch-size", "4", "--lm-batch-size", "2", "--lm-block-size", "64",
                  "--gen-batch-size", "4"],
        "rows": None,  # the sample data as it is
        "scale": "tiny",
    },
}
NEEDED = ["torch", "transformers", "peft", "datasets", "accelerate", "tokenizers", "safetensors", "typer", "yaml",
          "scipy", "pandas", "pyarrow", "matplotlib", "tqdm", "rich", "numpy"]


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tail(path: Path, n: int = LOG_TAIL) -> None:
    """Keep only the last ``n`` bytes of a log (what comes back from a device machine is limited)."""
    if path.is_file() and path.stat().st_size > n:
        data = path.read_bytes()[-n:]
        path.write_bytes(b"[... cut ...]\n" + data)


# ----------------------------------------------------------------------------- 1. environment


def environment(device: str) -> dict:
    env = {"python": platform.python_version(), "executable": sys.executable, "platform": platform.platform(),
           "cpus": len(os.sched_getaffinity(0)), "packages": {}, "missing": []}
    from importlib.metadata import PackageNotFoundError, version

    for mod in NEEDED:
        dist = {"yaml": "PyYAML"}.get(mod, mod)
        try:
            importlib.import_module(mod)
            try:
                env["packages"][dist] = version(dist)
            except PackageNotFoundError:
                env["packages"][dist] = "?"
        except Exception as e:  # noqa: BLE001 - reported, not raised
            env["missing"].append(f"{mod} ({type(e).__name__}: {str(e)[:120]})")
    try:
        import torch

        env["torch_cuda"] = torch.version.cuda
        env["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            env["gpu"] = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "count":
                          torch.cuda.device_count(), "bf16": torch.cuda.is_bf16_supported(),
                          "capability": f"{p.major}.{p.minor}"}
    except Exception as e:  # noqa: BLE001
        env["torch_error"] = str(e)[:300]
    if device == "cuda" and not env.get("cuda_available"):
        env["problem"] = "--device cuda, but torch sees no CUDA device"
    return env


# ----------------------------------------------------------------------------- 2. data


def _read(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding="utf-8") as f:
        r = csv.DictReader(f)
        return list(r.fieldnames or []), list(r)


def _write(path: Path, fields: list[str], rows: list[dict], n: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for i in range(n if n is not None else len(rows)):
            w.writerow(rows[i % len(rows)])


def prepare_data(data_dir: str | None, work: Path, size: str) -> dict:
    """The check's data folder (agnews/train.csv, agnews/dev.csv, target/test_unlabelled.csv)."""
    if data_dir and data_dir != "sample":
        d = Path(data_dir)
        need = [d / "agnews" / "train.csv", d / "agnews" / "dev.csv", d / "target" / "test_unlabelled.csv"]
        missing = [str(p) for p in need if not p.is_file()]
        if missing:
            raise SystemExit(f"--data-dir {data_dir}: missing {missing}")
        return {"dir": str(d.resolve()), "source": "given", "corpus": str(d.resolve())}
    out = work / "data"
    rows = SIZES[size]["rows"]
    fields, train = _read(SAMPLE / "train.csv")
    tfields, target = _read(SAMPLE / "target.csv")
    dev, train_part = train[-96:], train[:-96]
    _write(out / "agnews" / "train.csv", fields, train_part, rows and rows["train"])
    _write(out / "agnews" / "dev.csv", fields, dev, rows and rows["dev"])
    _write(out / "target" / "test_unlabelled.csv", tfields, target, rows and rows["target"])
    return {"dir": str(out), "source": "lorafit's bundled sample data" + (", repeated to the real sizes" if rows else ""),
            "corpus": "sample"}


# ----------------------------------------------------------------------------- 3-5. steps


def run_logged(cmd: list[str], env: dict, log: Path, timeout: float) -> dict:
    t = time.time()
    with open(log, "w") as f:
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    _tail(log)
    return {"command": " ".join(cmd[1:]), "exit_code": code, "seconds": round(time.time() - t, 1), "log": log.name}


def seed_overrides(data: dict, work: Path, size: str) -> list[str]:
    d = Path(data["dir"])
    return [f"name=seed-check-{size}", f"output_dir={work / 'runs'}",
            f"data.source={d / 'agnews' / 'train.csv'}", f"data.target={d / 'target' / 'test_unlabelled.csv'}",
            "augment.select.enabled=true", "predict.prior=em", *SIZES[size]["seed"]]


# ----------------------------------------------------------------------------- 6. projection


def _stage(stages: list[dict], name: str, last: bool = True) -> dict | None:
    found = [r for r in stages if r["stage"] == name and "error" not in r]
    return (found[-1] if last else found[0]) if found else None


def project(profile: dict, full: dict = FULL_RECIPE) -> dict:
    """Wall time of the full seed recipe from the short run's throughputs, stage by stage.

    Each stage: what was measured, how much of it the full recipe does, the projected seconds.
    Fixed costs (model loads, merge, save) are taken as measured; data preparation scales with
    rows; LM adaptation with optimizer steps (blocks of ``block_size`` packed target tokens);
    generation with samples (time inside the shards, plus the LM load once); training with
    steps (evaluation apart, per epoch); prediction with rows."""
    st = profile.get("stages", [])
    rows, total = [], 0.0

    def add(stage, measured, amount, seconds, note=""):
        nonlocal total
        if seconds is None:
            rows.append({"stage": stage, "measured": measured, "full_recipe": amount, "projected_s": None,
                         "note": note or "not measured"})
            return
        total += seconds
        rows.append({"stage": stage, "measured": measured, "full_recipe": amount, "projected_s": round(seconds, 1),
                     "note": note})

    data = _stage(st, "data")
    if data:
        src = data.get("stats", {}).get("source_rows") or 1
        add("data", f"{src:,} rows in {data['seconds']:.1f} s", f"{full['source_rows']:,} rows",
            data["seconds"] * full["source_rows"] / src)
    fixed = sum(r["seconds"] for r in st if r["stage"] in ("budget", "load_tokenizer", "load_model", "save", "merge")
                and "error" not in r)
    add("load/save", "budget, tokenizer, model load, adapter save, merge", "the same", fixed)

    lm = _stage(st, "lm_adapt")
    if lm and lm.get("global_step") and lm.get("texts"):
        tokens_per_text = lm["tokens"] / lm["texts"]
        blocks = int(tokens_per_text * full["lm_texts"]) // full["block_size"]
        steps = math.ceil(blocks / full["lm_batch"]) * full["lm_epochs"]
        per_step = lm["wall_time_s"] / lm["global_step"]
        add("lm_adapt", f"{lm['global_step']} steps of {lm['batch_size']}x{lm['block_size']} tokens, "
            f"{per_step:.3f} s/step", f"{steps:,} steps ({full['lm_epochs']} epochs, {blocks:,} blocks)",
            steps * per_step * (full["lm_batch"] / lm["batch_size"]) + (lm["seconds"] - lm["wall_time_s"]),
            f"{tokens_per_text:.1f} tokens/text with the rehearsal tokenizer")
    else:
        add("lm_adapt", "-", "-", None)

    gen = _stage(st, "generate")
    shards = profile.get("substages", {}).get("generate_shards")
    if gen and gen.get("samples_generated") and shards:
        per_sample = shards["seconds"] / gen["samples_generated"]
        add("generate", f"{gen['samples_generated']} samples in {shards['calls']} shards of {gen['batch_size']}, "
            f"{1 / per_sample:.2f} samples/s", f"{full['generated']:,} samples",
            per_sample * full["generated"] + (gen["seconds"] - shards["seconds"]),
            "per-sample time inside the shards, plus loading the LM once")
    else:
        add("generate", "-", "-", None)

    sel = _stage(st, "select")
    if sel and sel.get("rows_in"):
        add("select", f"{sel['rows_in']} rows in {sel['seconds']:.2f} s", f"{full['generated']:,} rows",
            sel["seconds"] * full["generated"] / sel["rows_in"], "near-duplicate search grows faster than linearly")

    tr = _stage(st, "train", last=False)
    if tr and tr.get("global_step") and tr.get("train_runtime"):
        evals = profile.get("train_eval_runtime", 0.0)
        per_step = (tr["train_runtime"] - evals) / tr["global_step"]
        steps = math.ceil(full["train_rows"] / full["train_batch"]) * full["train_epochs"]
        scale = full["train_batch"] / tr["batch_size"]
        tokenize = max(tr["seconds"] - tr["train_runtime"], 0) * full["train_rows"] / max(tr["rows"], 1)
        add("train", f"{tr['global_step']} steps of {tr['batch_size']}, {per_step:.3f} s/step"
            + (f" (+{evals:.1f} s evaluation)" if evals else ""),
            f"{steps:,} steps ({full['train_epochs']} epochs of {full['train_rows']:,} rows)",
            steps * per_step * scale + tokenize, "plus tokenizing 132,000 rows once"
            + ("" if scale == 1 else f"; steps scaled x{scale:g} from batch {tr['batch_size']}"))
    else:
        add("train", "-", "-", None)
    ev = _stage(st, "evaluate")
    if ev and ev.get("rows"):
        per_row = ev["seconds"] / ev["rows"]
        add("evaluate", f"{ev['rows']} rows in {ev['seconds']:.2f} s",
            f"{full['val_rows']:,} rows x {full['train_epochs'] + 1} (each epoch and the end)",
            per_row * full["val_rows"] * (full["train_epochs"] + 1))
    pr = _stage(st, "predict")
    if pr and pr.get("rows"):
        add("predict", f"{pr['rows']:,} rows in {pr['seconds']:.1f} s", f"{full['predict_rows']:,} rows",
            pr["seconds"] * full["predict_rows"] / pr["rows"])
    return {"stages": rows, "total_s": round(total, 1), "total_h": round(total / 3600, 2),
            "assumptions": {**full, "note": "throughputs of the short run; the rehearsal's random weights make "
                            "generation lengths follow the sampled targets (a pretrained GPT-2 may stop early at "
                            "EOS: generation could be faster)"}}


def eval_runtime(run_dir: Path) -> float:
    """Seconds the Trainer spent evaluating inside the main training stage (from train_log.json)."""
    log = run_dir / "train_log.json"
    if not log.is_file():
        return 0.0
    hist = json.loads(log.read_text())
    hist = hist.get("log_history", hist) if isinstance(hist, dict) else hist
    return round(sum(h.get("eval_runtime", 0.0) for h in hist if "selftrain_round" not in h), 2)


# ----------------------------------------------------------------------------- summary


def render_projection(p: dict) -> str:
    lines = [f"{'stage':<10}{'projected':>11}  {'full recipe':<52}measured"]
    for r in p["stages"]:
        s = "-" if r["projected_s"] is None else f"{r['projected_s']:,.0f} s"
        lines.append(f"{r['stage']:<10}{s:>11}  {r['full_recipe']:<52}{r['measured']}")
    lines.append(f"{'total':<10}{p['total_s']:>9,.0f} s  = {p['total_h']:.2f} h")
    return "\n".join(lines)


def render_bench(b: dict) -> str:
    lines = []
    for task, t in b.get("summary", {}).items():
        unit = t.get("unit")
        key = {"samples/s": "samples_per_s", "texts/s": "texts_per_s", "real tokens/s": "real_tokens_per_s"}.get(unit)
        m = t.get(key, {}) if key else {}
        mem = t.get("peak_cuda_allocated_mb") or t.get("peak_rss_mb") or {}
        kind = "CUDA" if t.get("peak_cuda_allocated_mb") else "RSS"
        f = lambda x, fmt=",.1f": "-" if x is None else format(x, fmt)  # noqa: E731 - a failed side has no number
        lines.append(f"{task:<9} reference {f(m.get('reference')):>10}  lorafit {f(m.get('lorafit')):>10} {unit:<14} "
                     f"ratio {f(t.get('speedup'), '.2f'):>6}x  peak {kind} MiB ref {f(mem.get('reference'), ',.0f')} "
                     f"/ lorafit {f(mem.get('lorafit'), ',.0f')}")
    return "\n".join(lines)


def summary_text(res: dict) -> str:
    env = res.get("environment", {})
    gpu = env.get("gpu", {})
    out = [f"lorafit GPU check ({res['settings']['size']} size, device {res['settings']['device']}), "
           f"{res.get('wall_s', 0):.0f} s in all",
           f"machine: {gpu.get('name', 'no GPU')} {gpu.get('memory_gib', '')} GiB, {env.get('cpus')} CPUs; torch "
           f"{env.get('packages', {}).get('torch')}, transformers {env.get('packages', {}).get('transformers')}, "
           f"peft {env.get('packages', {}).get('peft')}",
           "weights are random (rehearsal cache): times and memory only, no accuracy", ""]
    if env.get("missing"):
        out.append("MISSING PACKAGES: " + "; ".join(env["missing"]))
    for name, step in res.get("steps", {}).items():
        status = "ok" if step.get("ok") else f"FAILED ({step.get('error', step.get('exit_code'))})"
        out.append(f"{name:<10} {status:<10} {step.get('seconds', 0):>7.1f} s")
    if res.get("seed_stages"):
        sys.path.insert(0, str(BENCH))
        try:
            from stage_profile import render
        finally:
            sys.path.remove(str(BENCH))
        prof = res["seed_stages"]
        out += ["", f"short seed run, per stage ({prof.get('wall_s')} s):", render(prof.get("stages", []))]
        b = [r for r in prof.get("stages", []) if r["stage"] in ("budget", "load_model")]
        out += [f"parameters ({r.get('counted_on')}): {r.get('trainable', 0):,} trainable of {r.get('total', 0):,}"
                for r in b]
    if res.get("projection"):
        out += ["", "projected full seed recipe (2 LM epochs on 8,000 texts, 12,000 samples, 11 epochs over 132,000 "
                    "rows, 8,000 predictions):", render_projection(res["projection"])]
    if res.get("bench"):
        out += ["", "bench/run.py (lorafit vs the report's notebook style):", render_bench(res["bench"])]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="results folder (e.g. $OUT on a device machine)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--size", choices=tuple(SIZES), default=None,
                   help="full: the GPU sizes (default with --device cuda); tiny: 2-layer models, a few samples "
                        "(default with --device cpu)")
    p.add_argument("--data-dir", default=None, help="folder with agnews/train.csv, agnews/dev.csv and "
                   "target/test_unlabelled.csv; 'sample' for lorafit's bundled sample data (default: ../shared/data "
                   "if present, else the sample data)")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (cache, runs); default a temporary one, "
                   "removed at the end")
    p.add_argument("--steps", default="seed,bench", help="comma-separated subset of seed,bench (the cache is always built)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop starting new steps after this many seconds (default 450 for full, none for tiny)")
    a = p.parse_args(argv)
    size = a.size or ("full" if a.device == "cuda" else "tiny")
    budget = a.budget_s if a.budget_s is not None else (450.0 if size == "full" else 1e9)
    steps_wanted = {s.strip() for s in a.steps.split(",") if s.strip()}
    t0 = time.time()
    a.out.mkdir(parents=True, exist_ok=True)
    work = a.work or Path(tempfile.mkdtemp(prefix="lorafit-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    data_dir = a.data_dir or (str(SHARED_DATA) if (SHARED_DATA / "agnews" / "dev.csv").is_file() else "sample")
    res: dict = {"settings": {"device": a.device, "size": size, "data_dir": data_dir, "budget_s": budget},
                 "steps": {}}

    def save():
        res["wall_s"] = round(time.time() - t0, 1)
        (a.out / "gpu_check.json").write_text(json.dumps(res, indent=2, default=str))
        (a.out / "summary.txt").write_text(summary_text(res))

    def step(name, fn):
        if time.time() - t0 > budget:
            res["steps"][name] = {"ok": False, "error": f"skipped: past --budget-s {budget:.0f}"}
            return None
        t = time.time()
        print(f"[{time.time() - t0:6.1f}s] {name} ...", flush=True)
        try:
            out = fn()
            res["steps"][name] = {"ok": True, "seconds": round(time.time() - t, 1)}
            return out
        except Exception as e:  # noqa: BLE001 - recorded; later steps still run
            res["steps"][name] = {"ok": False, "seconds": round(time.time() - t, 1), "error": f"{type(e).__name__}: {e}"[:2000]}
            print(f"  {name} FAILED: {e}", flush=True)
            return None
        finally:
            save()

    try:
        res["environment"] = environment(a.device)
        if res["environment"]["missing"] or res["environment"].get("problem"):
            print("environment problem: " + "; ".join(res["environment"]["missing"]
                                                     + [res["environment"].get("problem", "")]), flush=True)
        save()
        data = step("data", lambda: prepare_data(data_dir, work, size))
        res["data"] = data
        hub = _load_module("rehearsal_hub", REPO / "scripts" / "rehearsal_hub.py")
        hf_home = work / "hf"

        def cache():
            rep = hub.build_cache(hf_home, data_dir=(data or {}).get("corpus"), scale=SIZES[size]["scale"])
            rep["verified"] = hub.verify(hf_home, scale=SIZES[size]["scale"])
            return rep

        res["cache"] = step("cache", cache)
        env = hub.offline_env(hf_home)
        env.update(PYTHONUNBUFFERED="1", TQDM_MININTERVAL="5")
        if a.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""

        if "seed" in steps_wanted and data and res["cache"]:
            def seed():
                prof = a.out / "seed_stages.json"
                cmd = [sys.executable, str(BENCH / "stage_profile.py"), "--json", str(prof), "run",
                       str(REPO / "configs" / "seed.yaml"), *seed_overrides(data, work, size)]
                r = run_logged(cmd, env, a.out / "seed.log", max(60.0, budget - (time.time() - t0) + 60))
                res["seed_run"] = r
                if prof.is_file():
                    res["seed_stages"] = json.loads(prof.read_text())
                    run_dir = work / "runs" / f"seed-check-{size}"
                    res["seed_stages"]["train_eval_runtime"] = eval_runtime(run_dir)
                    metrics = run_dir / "metrics.json"
                    if metrics.is_file():
                        m = json.loads(metrics.read_text())
                        res["seed_metrics"] = {k: m.get(k) for k in ("budget", "data", "train_rows", "augment",
                                                                     "stage_seconds", "wall_seconds", "target")}
                    res["projection"] = project(res["seed_stages"])
                if r["exit_code"] != 0:
                    raise RuntimeError(f"lorafit run exited {r['exit_code']}; see seed.log")
            step("seed", seed)

        if "bench" in steps_wanted and data and res["cache"]:
            def bench():
                out = a.out / "bench.json"
                cmd = [sys.executable, str(BENCH / "run.py"), "--model", "roberta-base", "--lm", "gpt2",
                       "--device", a.device, "--config", str(REPO / "configs" / "seed.yaml"),
                       "--data-dir", data["dir"], "--out", str(out), *SIZES[size]["bench"]]
                r = run_logged(cmd, env, a.out / "bench.log", max(60.0, budget - (time.time() - t0) + 60))
                res["bench_run"] = r
                if out.is_file():
                    b = json.loads(out.read_text())
                    res["bench"] = {k: b.get(k) for k in ("summary", "train_speedup", "predict_speedup",
                                                          "lm_adapt_speedup", "generate_speedup", "wall_s")}
                if r["exit_code"] != 0:
                    raise RuntimeError(f"bench/run.py exited {r['exit_code']}; see bench.log")
            step("bench", bench)
    finally:
        save()
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(summary_text(res), flush=True)
    failed = [n for n, s in res["steps"].items() if not s.get("ok")]
    print(f"results in {a.out}" + (f"; FAILED: {failed}" if failed else ""), flush=True)
    return 1 if failed or res["environment"].get("missing") else 0


if __name__ == "__main__":
    sys.exit(main())
