"""Where do run-to-run differences in dev accuracy come from? (issue 11, item 6)

Trains the same short CPU-scale run (MiniLM-L6 + LoRA, ``configs/cpu-agnews.yaml`` on 3,200 rows of
the shared AG News subset, 100 steps, full 3,600-row dev set, no target) in several variants, each
in its own ``lorafit run`` process, and prints dev accuracy and a digest of the trained adapter:

- the reference twice (same command, seed, threads, precision): is a run bit-for-bit repeatable?
- 1 thread instead of 2, fp32 instead of bf16 autocast: other floating-point summation orders, the
  kind another machine (another CPU, another oneDNN kernel) brings;
- other seeds: the spread a user must expect anyway.

Run from the repo root (about 15 minutes on 2 cores; ``--quick``: 4 of the 6 variants):

    .venv/bin/python scripts/repro_check.py [--out runs/repro] [--steps 100]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = [  # name, overrides, environment
    ("reference", [], {}),
    ("reference again", [], {}),
    ("1 thread", [], {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}),
    ("fp32", ["train.precision=fp32"], {}),
    ("seed 1", ["seed=1"], {}),
    ("seed 2", ["seed=2"], {}),
]


def digest(model_dir: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(model_dir.glob("**/adapter_model.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/repro")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rows", type=int, default=3200)
    ap.add_argument("--quick", action="store_true", help="only the reference twice, 1 thread and seed 1")
    a = ap.parse_args()
    variants = [v for v in VARIANTS if not a.quick or v[0] in ("reference", "reference again", "1 thread", "seed 1")]
    lorafit = str(Path(sys.executable).with_name("lorafit"))
    rows = []
    for i, (label, overrides, env) in enumerate(variants):
        name = f"repro-{i}"
        cmd = [lorafit, "run", "configs/cpu-agnews.yaml", f"name={name}", f"output_dir={a.out}", "data.target=null",
               f"data.max_train_samples={a.rows}", f"train.max_steps={a.steps}", *overrides, "--fresh"]
        start, cpu0 = time.time(), os.times()
        subprocess.run(cmd, check=True, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cpu1 = os.times()
        m = json.loads((Path(a.out) / name / "metrics.json").read_text())
        rows.append({"variant": label, "overrides": " ".join(overrides + [f"{k}={v}" for k, v in env.items()]),
                     "dev_accuracy": m["val_accuracy"], "adapter": digest(Path(a.out) / name / "model"),
                     "threads": m["environment"]["torch_threads"], "cpu": m["environment"].get("cpu"),
                     "wall_s": round(time.time() - start, 1),
                     "cpu_s": round(cpu1.children_user - cpu0.children_user + cpu1.children_system - cpu0.children_system, 1)})
        r = rows[-1]
        print(f"{label:16s} dev {100 * r['dev_accuracy']:.2f}%  adapter {r['adapter']}  threads {r['threads']}  "
              f"{r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} s CPU", flush=True)
    ref = rows[0]
    print("\nsame adapter bytes as the reference:", ", ".join(f"{r['variant']}: {r['adapter'] == ref['adapter']}" for r in rows[1:]))
    (Path(a.out) / "repro.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
