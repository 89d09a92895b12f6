"""Configs a user (or an attacker) can write that must fail fast as one line naming the key: values far
beyond any real setting, YAML that expands or nests without end, and a rerun into a finished run
folder with another config."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lorafit.cli import app
from lorafit.config import ConfigError, load_config, save_config
from lorafit.errors import RunConflictError
from lorafit.io_utils import mark_ours
from lorafit.runs import check_run_dir

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "configs" / "quickstart.yaml"

BILLION_LAUGHS = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def _one_line_exit_2(args: list[str], *needles: str) -> str:
    start = time.perf_counter()
    result = CliRunner().invoke(app, [str(a) for a in args])
    took = time.perf_counter() - start
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in result.output, err
    for n in needles:
        assert n in err, err
    assert took < 5, f"took {took:.1f} s"  # < 1 s on a quiet machine; generous for a loaded test runner
    return err


@pytest.mark.parametrize("override,key,says", [
    ("lora.r=1000000000000000000000", "lora.r", "must be <= 65536 (a sanity limit), got 1000000000000000000000"),
    ("train.batch_size=1000000000000000000000", "train.batch_size", "must be <= 1000000 (a sanity limit)"),
    ("train.epochs=1e30", "train.epochs", "must be <= 10000 (a sanity limit), got 1e+30"),
    ("train.epochs=1e400", "train.epochs", "must be a finite number"),
    ("lora.r=0", "lora.r", "must be >= 1, got 0"),  # below a capped range: only the lower bound is named
    ("name=" + "n" * 300, "name", "at most 255 bytes"),
])
def test_values_beyond_any_real_setting_are_refused_at_load(override, key, says):
    with pytest.raises(ConfigError) as e:
        load_config(QUICK, [override])
    msg = str(e.value)
    assert msg.startswith(f"config key '{key}': ") and says in msg and "\n" not in msg, msg
    assert load_config(QUICK, ["lora.r=65536", "train.epochs=10000", "name=" + "n" * 255])  # the limits themselves


@pytest.mark.parametrize("command", ["budget", "run"])
def test_the_cli_refuses_huge_values_in_one_line(command, tmp_path):
    _one_line_exit_2([command, QUICK, "lora.r=1000000000000000000000", f"output_dir={tmp_path}"], "'lora.r'")
    assert not any(tmp_path.iterdir())  # nothing written


def test_billion_laughs_is_refused_fast(tmp_path):
    p = tmp_path / "laughs.yaml"
    p.write_text(BILLION_LAUGHS)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"laughs.yaml': its YAML aliases expand to more than 100,000 values"):
        load_config(p)
    assert time.perf_counter() - start < 1
    for command in ("budget", "run"):
        _one_line_exit_2([command, p], "aliases expand")


def test_small_aliases_still_work(tmp_path):
    p = tmp_path / "alias.yaml"
    p.write_text("name: alias\nlora:\n  target_modules: &m [query, value]\naugment:\n  extra: []\n"
                 "search:\n  space:\n    lora.target_modules: {choices: {qv: *m}}\n")
    assert load_config(p).search.space["lora.target_modules"]["choices"]["qv"] == ["query", "value"]


def test_deep_nesting_is_refused_in_one_line(tmp_path):
    p = tmp_path / "deep.yaml"
    p.write_text("name: deep\nsearch:\n  space: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match=r"deep.yaml' nests more than 64 levels deep \(line 3\)"):
        load_config(p)
    block = "".join("  " * i + f"k{i}:\n" for i in range(5000)) + "  " * 5000 + "v: 1\n"
    p.write_text("name: deep\n" + block)
    _one_line_exit_2(["budget", p], "nests more than 64 levels")
    with pytest.raises(ConfigError, match=r"override 'search.space=\.\.\.' nests more than 64 levels"):
        load_config(None, ["search.space=" + "[" * 5000 + "]" * 5000])


# ------------------------------------------------------------------ a rerun into a run folder


def _finished_run(tmp_path: Path):
    cfg = load_config(QUICK, [f"output_dir={tmp_path}"])
    mark_ours(cfg.run_dir, "run")
    save_config(cfg, cfg.run_dir / "config.yaml")
    (cfg.run_dir / "metrics.json").write_text("{}")
    return cfg


def test_a_rerun_with_another_config_is_refused_naming_the_keys(tmp_path):
    cfg = _finished_run(tmp_path)
    assert check_run_dir(cfg) == cfg.run_dir  # the same config continues
    # what changes only how a run executes may differ
    assert check_run_dir(load_config(QUICK, [f"output_dir={tmp_path}", "predict.workers=1", "train.resume=false"]))
    with pytest.raises(RunConflictError, match=r"holds a finished run with another config \(seed 42 -> 7\); run it with its own "
                                               r"config to continue it, pass --fresh to replace it"):
        check_run_dir(load_config(QUICK, [f"output_dir={tmp_path}", "seed=7"]))
    epochs = float(cfg.train.epochs)  # the shipped quickstart's value, whatever it is
    with pytest.raises(RunConflictError, match=rf"data.val_fraction 0.2 -> 0.3, train.epochs {epochs} -> 50.0\)"):
        check_run_dir(load_config(QUICK, [f"output_dir={tmp_path}", "train.epochs=50", "data.val_fraction=0.3"]))
    assert check_run_dir(load_config(QUICK, [f"output_dir={tmp_path}", "seed=7"]), fresh=True) == cfg.run_dir
    # an interrupted run (no metrics.json) continues from its checkpoint, e.g. with a step limit
    (cfg.run_dir / "metrics.json").unlink()
    assert check_run_dir(load_config(QUICK, [f"output_dir={tmp_path}", "train.max_steps=6"])) == cfg.run_dir
    with pytest.raises(RunConflictError, match=r"another adapter shape \(lora.r 8 -> 4\)"):
        check_run_dir(load_config(QUICK, [f"output_dir={tmp_path}", "lora.r=4"]))


def test_the_cli_refuses_the_rerun_before_touching_the_folder(tmp_path):
    cfg = _finished_run(tmp_path)
    before = (cfg.run_dir / "config.yaml").read_bytes()
    _one_line_exit_2(["run", QUICK, f"output_dir={tmp_path}", "seed=7"], "seed 42 -> 7", "--fresh")
    assert (cfg.run_dir / "config.yaml").read_bytes() == before


def test_a_length_filter_that_keeps_no_row_names_the_keys(tmp_path):
    _one_line_exit_2(["run", QUICK, "clean.max_words=3", f"output_dir={tmp_path}"],
                     "no row of data.source", "clean.max_words (3)", "widen that range")
