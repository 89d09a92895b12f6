#!/usr/bin/env python
"""Run one lorafit command in this process and record, per stage of the recipe, wall time and peak memory.

    python bench/stage_profile.py --json stages.json run configs/seed.yaml train.max_steps=20 ...

Everything after the options is the ``lorafit`` command line, run by lorafit's own CLI
(``lorafit.cli.main``) unchanged. The stages are timed by wrapping the functions the recipe calls,
under the names it calls them by (``lorafit.train.train_model``, ``lorafit.augment.generate_stage``,
...), so the code path is the one ``lorafit run`` takes.

Per stage: wall seconds; the peak resident set (VmHWM, reset at the start of each stage through
``/proc/self/clear_refs`` where the kernel allows it, else the highest of 20 ms samples); on CUDA,
torch's peak allocated and reserved memory (reset per stage); and what the stage did (rows, steps,
tokens, samples/s, and for the budget the parameter counts on the meta device and on the loaded
model). The JSON is rewritten after every stage and at the end, also when the command fails
(``exit_code`` says so; null when the process was killed before it ended).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import resource
import sys
import threading
import time
from pathlib import Path

# (module, function, stage): the recipe's calls, in the order `lorafit run` makes them
STAGES = [
    ("lorafit.data", "prepare_data", "data"),  # the CLI runs it before the pipeline; the pipeline's own name below
    ("lorafit.pipeline", "prepare_data", "data"),
    ("lorafit.pipeline", "check_budget", "budget"),
    ("lorafit.pipeline", "load_tokenizer", "load_tokenizer"),
    ("lorafit.pipeline", "build_model", "load_model"),
    ("lorafit.augment", "adapt_lm_stage", "lm_adapt"),
    ("lorafit.augment", "generate_stage", "generate"),
    ("lorafit.augment", "select_samples", "select"),
    ("lorafit.train", "train_model", "train"),  # called by train_adapters (self-training rounds too)
    ("lorafit.pipeline", "self_train", "selftrain"),
    ("lorafit.pipeline", "save_trained", "save"),
    ("lorafit.pipeline", "for_inference", "merge"),
    ("lorafit.pipeline", "evaluate", "evaluate"),
    ("lorafit.pipeline", "predict_and_submit", "predict"),
]
# summed, not listed call by call: (module, function, name)
AGGREGATES = [
    ("lorafit.augment.generate", "_generate_shard", "generate_shards"),  # generation without loading the LM
]
MB = 2 ** 20


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _Sampler:
    """RSS sampled every 20 ms, for kernels without a resettable VmHWM."""

    def __init__(self):
        self.peak_kb = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.wait(0.02):
            rss = _status_kb("VmRSS") or 0
            self.peak_kb = max(self.peak_kb, rss)

    def reset(self):
        self.peak_kb = _status_kb("VmRSS") or 0


class StageRecorder:
    def __init__(self):
        self.records: list[dict] = []
        self.depth = 0
        self.hwm_resettable = _reset_hwm() and _status_kb("VmHWM") is not None
        self.sampler = None if self.hwm_resettable else _Sampler()
        self.t0 = time.time()
        self.on_record = None  # called after each stage (main() rewrites the JSON: a killed run keeps what it did)

    # ---- memory
    def _cuda(self):
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            return torch
        return None

    def _start_memory(self):
        if self.hwm_resettable:
            _reset_hwm()
        else:
            self.sampler.reset()
        torch = self._cuda()
        if torch is not None:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def _end_memory(self) -> dict:
        out = {}
        torch = self._cuda()
        if torch is not None:
            torch.cuda.synchronize()
            out["peak_cuda_allocated_mb"] = round(torch.cuda.max_memory_allocated() / MB, 1)
            out["peak_cuda_reserved_mb"] = round(torch.cuda.max_memory_reserved() / MB, 1)
        peak_kb = _status_kb("VmHWM") if self.hwm_resettable else max(self.sampler.peak_kb, _status_kb("VmRSS") or 0)
        out["peak_rss_mb"] = round((peak_kb or 0) / 1024, 1)
        out["rss_end_mb"] = round((_status_kb("VmRSS") or 0) / 1024, 1)
        return out

    # ---- wrapping
    def wrap(self, fn, stage: str):
        rec = self

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            outer = rec.depth == 0
            if outer:  # a stage inside another shares its peak (an upper bound for the inner one)
                rec._start_memory()
            rec.depth += 1
            t = time.perf_counter()
            entry = {"stage": stage, "started_s": round(time.time() - rec.t0, 2)}
            try:
                result = fn(*args, **kwargs)
            except BaseException as e:
                entry["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                raise
            finally:
                rec.depth -= 1
                torch = rec._cuda()
                if torch is not None:
                    torch.cuda.synchronize()
                entry["seconds"] = round(time.perf_counter() - t, 3)
                entry.update(rec._end_memory())
                rec.records.append(entry)
            try:
                entry.update(describe(stage, args, kwargs, result))
            except Exception as e:  # noqa: BLE001 - a description must never break the run
                entry["describe_error"] = f"{type(e).__name__}: {e}"
            if rec.on_record is not None:
                rec.on_record()
            return result

        return wrapper

    def wrap_aggregate(self, fn, name: str):
        rec = self

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                torch = rec._cuda()
                if torch is not None:
                    torch.cuda.synchronize()
                agg = rec.aggregates.setdefault(name, {"calls": 0, "seconds": 0.0})
                agg["calls"] += 1
                agg["seconds"] = round(agg["seconds"] + time.perf_counter() - t, 3)

        return wrapper

    def install(self) -> list[str]:
        """Wrap the recipe's functions; returns the names not found (the recipe changed)."""
        self.aggregates: dict[str, dict] = {}
        missing = []
        for entries, wrap in ((STAGES, self.wrap), (AGGREGATES, self.wrap_aggregate)):
            for module, name, stage in entries:
                mod = importlib.import_module(module)
                fn = getattr(mod, name, None)
                if fn is None:
                    missing.append(f"{module}.{name}")
                    continue
                if not getattr(fn, "_stage_profiled", False):  # one function can sit under two names
                    fn = wrap(fn, stage)
                    fn._stage_profiled = True
                setattr(mod, name, fn)
        return missing


def _arg(args, kwargs, i: int, name: str):
    return kwargs[name] if name in kwargs else (args[i] if len(args) > i else None)


def describe(stage: str, args, kwargs, result) -> dict:
    """What a stage did, from its arguments, its result and the files it wrote."""
    if stage == "budget":
        return {"trainable": result.trainable, "total": result.total, "counted_on": "meta device (config only)"}
    if stage == "data":
        return {"stats": result.stats}
    if stage == "load_tokenizer":
        return {"tokenizer": type(result).__name__, "vocab": len(result),
                "model_max_length": getattr(result, "model_max_length", None)}
    if stage == "load_model":
        model = result.model  # build_model returns the PEFT model with the names of its new weights
        trainable, total = model.get_nb_trainable_parameters()
        p = next(model.parameters())
        return {"trainable": int(trainable), "total": int(total), "counted_on": "loaded model (real weights)",
                "device": str(p.device), "dtype": str(p.dtype).replace("torch.", ""),
                "weights": _arg(args, kwargs, 1, "weights")}
    if stage == "lm_adapt":
        log_file = Path(result).parent / "train_log.json"
        out = {"texts": len(_arg(args, kwargs, 1, "target_texts") or [])}
        if log_file.is_file():
            log = json.loads(log_file.read_text())
            out.update({k: log.get(k) for k in ("model", "tokens", "blocks", "block_size", "tokens_dropped", "batch_size",
                                                "global_step", "tokens_trained", "precision", "wall_time_s",
                                                "train_loss")})
            if log.get("wall_time_s") and log.get("global_step"):
                out["seconds_per_step"] = round(log["wall_time_s"] / log["global_step"], 4)
                out["tokens_per_s"] = round(log["tokens_trained"] / log["wall_time_s"], 1)
        return out
    if stage == "generate":
        run_dir = Path(_arg(args, kwargs, 2, "run_dir"))
        out = {"samples": None if result is None else len(result)}
        manifest = run_dir / "synthetic" / "manifest.json"
        if manifest.is_file():
            m = json.loads(manifest.read_text())
            out.update(shards=m.get("shards"), empty=m.get("empty"), batch_size=m["settings"].get("batch_size"),
                       target_words=m.get("target_words"), output_words=m.get("output_words"), **m.get("this_call", {}))
        return out
    if stage == "select":
        kept, report = result
        return {"rows_in": len(args[0]) if args else None, "rows_kept": len(kept),
                "report": {k: v for k, v in report.items() if not isinstance(v, (list, dict))}}
    if stage == "train":
        trainer = result
        train_ds = _arg(args, kwargs, 3, "train_ds")
        logs = [h for h in trainer.state.log_history if "train_runtime" in h]
        out = {"rows": len(train_ds), "global_step": trainer.state.global_step,
               "batch_size": trainer.args.per_device_train_batch_size, "precision":
               "bf16" if trainer.args.bf16 else "fp16" if trainer.args.fp16 else "fp32",
               "optim": str(getattr(trainer.args.optim, "value", trainer.args.optim)),
               "evaluations": sum("eval_loss" in h for h in trainer.state.log_history)}
        if logs:
            out.update({k: logs[-1].get(k) for k in ("train_runtime", "train_samples_per_second",
                                                      "train_steps_per_second", "train_loss")})
        return out
    if stage == "evaluate":
        ds = _arg(args, kwargs, 3, "ds")
        return {"rows": len(ds), "accuracy": result.get("accuracy")}
    if stage == "predict":
        info = result["prior"]
        return {"rows": result["rows"], "prior": info.get("mode"), "changed_by_prior": info.get("changed"),
                "logits_reused": kwargs.get("logits") is not None}
    return {}


def render(records: list[dict]) -> str:
    """A fixed-width table of the stages."""
    cuda = any("peak_cuda_allocated_mb" in r for r in records)
    head = f"{'stage':<15}{'seconds':>9}{'peak RSS MiB':>14}" + (f"{'peak CUDA MiB':>15}" if cuda else "") + "  what"
    lines = [head, "-" * len(head)]
    for r in records:
        what = {
            "budget": lambda: f"{r.get('trainable', 0):,} / {r.get('total', 0):,} (meta)",
            "load_model": lambda: f"{r.get('trainable', 0):,} / {r.get('total', 0):,} (loaded, {r.get('dtype')})",
            "lm_adapt": lambda: f"{r.get('global_step')} steps, {r.get('tokens_trained'):,} tokens, "
                                f"block {r.get('block_size')}, {r.get('tokens_per_s')} tok/s",
            "generate": lambda: f"{r.get('samples')} samples in {r.get('shards')} shards of {r.get('batch_size')}, "
                                f"{r.get('samples_per_s')} samples/s",
            "select": lambda: f"{r.get('rows_kept')} of {r.get('rows_in')} kept",
            "train": lambda: f"{r.get('global_step')} steps of {r.get('batch_size')}, "
                             f"{r.get('train_samples_per_second')} samples/s, {r.get('precision')}",
            "evaluate": lambda: f"{r.get('rows')} rows",
            "predict": lambda: f"{r.get('rows')} rows, prior {r.get('prior')}",
        }.get(r["stage"], lambda: "")
        try:
            text = what()
        except Exception:  # noqa: BLE001
            text = ""
        if "error" in r:
            text = "FAILED: " + r["error"]
        lines.append(f"{r['stage']:<15}{r['seconds']:>9.1f}{r['peak_rss_mb']:>14,.0f}"
                     + (f"{r.get('peak_cuda_allocated_mb', 0):>15,.0f}" if cuda else "") + "  " + text)
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                usage="stage_profile.py --json FILE LORAFIT_COMMAND [ARGS ...]")
    p.add_argument("--json", type=Path, required=True, help="where to write the per-stage record")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the lorafit command line, e.g. run configs/seed.yaml")
    a = p.parse_args(argv)
    if not a.command:
        p.error("give the lorafit command to run, e.g. run configs/seed.yaml")
    rec = StageRecorder()
    missing = rec.install()
    if missing:
        print(f"stage_profile: not found (not timed): {', '.join(missing)}", file=sys.stderr)
    import lorafit.cli

    t0 = time.perf_counter()
    code = None  # null in the JSON while the command runs

    def write():
        peak = max([r["peak_rss_mb"] for r in rec.records] + [(_status_kb("VmHWM") or 0) / 1024])
        out = {"command": a.command, "exit_code": code, "wall_s": round(time.perf_counter() - t0, 2),
               "peak_rss_mb": round(peak, 1),
               "peak_rss_method": "VmHWM reset per stage" if rec.hwm_resettable else "20 ms RSS samples",
               "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               "stages": rec.records, "substages": rec.aggregates, "not_found": missing}
        a.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.json.with_name(f".{a.json.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(out, indent=2, default=str))
        os.replace(tmp, a.json)

    rec.on_record = write
    argv_before = sys.argv
    sys.argv = ["lorafit", *a.command]
    try:
        lorafit.cli.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        code = 1
        raise
    finally:
        sys.argv = argv_before
        wall = time.perf_counter() - t0
        write()
        print("\nstages of `lorafit " + " ".join(a.command[:2]) + f"` ({wall:.1f} s, exit {code}):", flush=True)
        print(render(rec.records), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
