"""How fast `lorafit run` rejects bad input: wall and CPU seconds from start to exit for each kind of
mistake a user makes first (a missing or invalid config, a missing or malformed data file).

    python bench/fail_fast.py [--repeats 3]

Each case runs the installed `lorafit` console script in a fresh process (as a user would) and
must exit with status 2 and a one-line `error:`; the table gives the median over the repeats. The
config and data are checked before datasets/pandas (config) and before torch/transformers/peft
(data) are imported, which is what keeps these cases short. Not a test: wall times depend on the
machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = "configs/quickstart.yaml"


def cases(tmp: Path) -> list[tuple[str, list[str]]]:
    bad_rows = tmp / "bad_label.csv"
    bad_rows.write_text("text,label\n" + "".join(f"row {i},{i % 4}\n" for i in range(2000)) + "row x,Politics\n")
    bad_yaml = tmp / "broken.yaml"
    bad_yaml.write_text("train: {epochs: 3\n")
    return [
        ("missing config file", ["run", str(tmp / "nope.yaml")]),
        ("config not valid YAML", ["run", str(bad_yaml)]),
        ("unknown config key", ["run", QUICKSTART, "train.epochz=3"]),
        ("value out of range", ["run", QUICKSTART, "lora.lora_dropout=1.5"]),
        ("missing data file", ["run", QUICKSTART, f"data.source={tmp / 'missing.csv'}"]),
        ("bad label in row 2,001", ["run", QUICKSTART, f"data.source={bad_rows}"]),
    ]


def measure(args: list[str], env: dict) -> tuple[float, float, int, str]:
    """(wall seconds, CPU seconds, exit status, last stderr line) of one `lorafit` process."""
    exe = Path(sys.executable).with_name("lorafit")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([str(exe), *args], cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    err = proc.stderr.strip()
    return wall, cpu, proc.returncode, err.splitlines()[-1] if err else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as d:
        rows = []
        for name, args in cases(Path(d)):
            walls, cpus, codes, msg = [], [], set(), ""
            for _ in range(a.repeats):
                wall, cpu, code, msg = measure(args, env)
                walls.append(wall)
                cpus.append(cpu)
                codes.add(code)
            rows.append((name, statistics.median(walls), statistics.median(cpus), sorted(codes), msg))
    print(f"{'case':<26} {'wall s':>7} {'cpu s':>7}  exit  message")
    for name, wall, cpu, codes, msg in rows:
        print(f"{name:<26} {wall:7.2f} {cpu:7.2f}  {','.join(map(str, codes)):>4}  {msg[:110]}")
    if any(codes != [2] for *_, codes, _ in rows):
        sys.exit("some case did not exit with status 2")


if __name__ == "__main__":
    main()
