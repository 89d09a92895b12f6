"""The ``lorafit`` command line: one command per stage, plus ``run`` for a whole config.

The CLI only parses arguments and calls the library; lorafit's own errors (``LorafitError``: a
config, data, model or output the user can fix) are printed as one line naming the file/row/key,
with a non-zero exit code and no traceback. Any other exception is a bug: its traceback is shown
and the exit code is 1.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from pathlib import Path
from typing import List, Optional

# Idle OpenMP threads sleep instead of spinning: on a shared or busy CPU a spinning thread pool
# made training steps ~10x slower (bench/README.md). Set OMP_WAIT_POLICY=ACTIVE to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer  # noqa: E402

from lorafit.config import Config, load_config
from lorafit.runs import check_output_file, run_folder_options

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Fit text classifiers under a trainable-parameter budget and adapt them to an unlabeled target set.")


def _plain_type_labels() -> None:
    """Help shows click's plain metavars (TEXT, PATH, INTEGER) instead of typer's annotation labels
    (<str>, <list[str]>, <bool>); a flag shows none."""
    from typer import core

    names = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "path": "PATH", "Path": "PATH", "file": "FILE"}

    def label(original):
        def display(self, ctx):
            if getattr(self, "is_flag", False):
                return None
            text = original(self, ctx)
            if not text:
                return text
            inner = text[1:-1] if text.startswith("<") and text.endswith(">") else None
            if inner is None:
                return text
            many = inner.startswith("list[")
            inner = inner[5:-1] if many else inner
            return names.get(inner, inner.upper()) + ("..." if many and isinstance(self, core.TyperArgument) else "")
        return display

    for cls in (core.TyperOption, core.TyperArgument):
        if not getattr(cls.display_type_rich, "lorafit", False):
            cls.display_type_rich = label(cls.display_type_rich)
            cls.display_type_rich.lorafit = True


_plain_type_labels()


def _print_version(value: bool) -> None:
    if value:
        from lorafit import __version__

        typer.echo(f"lorafit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", "-V", callback=_print_version, is_eager=True,
                                       help="print lorafit's version and exit")):
    """Fit text classifiers under a trainable-parameter budget and adapt them to an unlabeled target set."""

EXIT_INPUT = 2
EXIT_BUDGET = 3
EXIT_INTERRUPTED = 130


def _fail(msg: str, code: int = EXIT_INPUT) -> None:
    line = " ".join(part.strip() for part in str(msg).splitlines() if part.strip())  # one line, always
    typer.secho(f"error: {line}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _os_error_message(e: OSError) -> str:
    where = f"'{e.filename}'" if e.filename else "a file"
    return f"cannot use {where}: {e.strerror or e}"


# -q/-v, the same on every command: @guarded adds them to each
QUIET_OPTION = typer.Option(False, "-q", "--quiet", help="log warnings and errors only (a run's run.log still gets "
                                                         "everything)")
VERBOSE_OPTION = typer.Option(False, "-v", "--verbose", help="log debug lines too")
LOG_OPTIONS = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=option)
               for name, option in (("quiet", QUIET_OPTION), ("verbose", VERBOSE_OPTION))]


def guarded(command):
    """A command's body, run with logging set up from the ``-q/--quiet`` and ``-v/--verbose``
    options this decorator gives every command (stderr: INFO lines, -q warnings and errors only, -v
    debug lines too; progress bars on a terminal only); a command that declares ``quiet`` or
    ``verbose`` itself gets their values too. Every error a user can cause (a :class:`LorafitError`,
    or a file they named that cannot be read or written) becomes one line on stderr and an exit
    code (2 input, 3 over budget, 130 interrupted), with no traceback. Anything else is a bug and
    keeps its traceback (exit 1). Nothing heavy is imported here, so a bad config fails before torch
    loads."""
    signature = inspect.signature(command, eval_str=True)
    own = set(signature.parameters)

    @functools.wraps(command)  # typer reads the command's parameters through the wrapper's __signature__
    def run_guarded(*args, **kwargs):
        from lorafit.errors import LorafitError
        from lorafit.io_utils import as_disk_full, offline_if_hub_unreachable
        from lorafit.logs import setup_logging

        quiet, verbose = (kwargs[k] if k in own else kwargs.pop(k, False) for k in ("quiet", "verbose"))
        if quiet and verbose:
            _fail("-q/--quiet and -v/--verbose: choose one")
        setup_logging(-1 if quiet else 1 if verbose else 0)
        _log_command()
        offline_if_hub_unreachable()  # an unreachable Hub: fail (or use the cache) at once, not after ~23 s per file
        try:
            return command(*args, **kwargs)
        except LorafitError as e:
            _fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted: every file written so far is complete (files are written atomically); run the same "
                  "command again to continue from the saved stages and checkpoints", EXIT_INTERRUPTED)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
            _fail(_os_error_message(e))
        except Exception as e:  # a full disk inside Trainer/safetensors/torch writers has no errno
            full = as_disk_full(e)
            if full is None:
                raise
            _fail(str(full))

    params = signature.parameters
    run_guarded.__signature__ = signature.replace(  # -q, -v last, in this order
        parameters=[*(p for p in params.values() if p.name not in ("quiet", "verbose")),
                    *(params.get(p.name, p).replace(kind=p.kind) for p in LOG_OPTIONS)])
    return run_guarded


def _log_command() -> None:
    import logging
    import platform

    from lorafit import __version__

    logging.getLogger("lorafit.cli").debug("lorafit %s (Python %s): %s", __version__, platform.python_version(),
                                           " ".join(["lorafit", *sys.argv[1:]]))


def _is_stdout(path: Optional[Path]) -> bool:
    """``-o -``: the output goes to stdout (and the command's own message to stderr)."""
    return path is not None and str(path) == "-"


def _check_output(path: Optional[Path], what: str, kind: str) -> None:
    if path is not None and not _is_stdout(path):  # before any work: a path we may not write fails in a second
        check_output_file(path, what, kind)


def _write_json(path: Optional[Path], obj) -> None:
    if _is_stdout(path):
        import json

        typer.echo(json.dumps(obj, indent=2, default=str))
    elif path is not None:
        from lorafit.io_utils import atomic_write_json

        atomic_write_json(path, obj)


def _overrides(overrides: Optional[List[str]], name: Optional[str] = None, output_dir: Optional[str] = None,
               allow_pickle: bool = False, trust_remote_code: bool = False) -> list[str]:
    """The config overrides of the arguments and of the options that stand for config keys."""
    extra = list(overrides or [])
    if trust_remote_code:
        extra.append("model.trust_remote_code=true")
    extra += run_folder_options(name, output_dir)
    if allow_pickle:
        extra.append("data.allow_pickle=true")
    return extra


def _load(config: Path, overrides: Optional[List[str]], name: Optional[str] = None, output_dir: Optional[str] = None,
          allow_pickle: bool = False, trust_remote_code: bool = False) -> Config:
    return load_config(config, _overrides(overrides, name, output_dir, allow_pickle, trust_remote_code))


CONFIG_ARG = typer.Argument(..., help="experiment YAML, e.g. configs/quickstart.yaml")
OVERRIDES_ARG = typer.Argument(None, help="overrides as key.sub=value, e.g. train.epochs=3")
PICKLE_HELP = "allow loading .pkl data (pickles can run code: trusted sources only)"


@app.command()
@guarded
def run(config: Path = CONFIG_ARG, overrides: Optional[List[str]] = OVERRIDES_ARG,
        name: Optional[str] = typer.Option(None, help="run name (folder under output_dir)"),
        output_dir: Optional[str] = typer.Option(None, help="parent folder of runs (default runs/)"),
        allow_pickle: bool = typer.Option(False, "--allow-pickle", help="allow loading .pkl data (pickles can run code: trusted sources only)"),
        trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="run the Python code a model folder or Hub repo ships (trusted sources only)"),
        fresh: bool = typer.Option(False, "--fresh", help="replace a previous run in the run folder instead of continuing it")):
    """Run every enabled stage of CONFIG into runs/<name>/ and print a summary (stdout: the summary
    alone; log lines go to stderr and to RUN/run.log)."""
    cfg = _load(config, overrides, name, output_dir, allow_pickle, trust_remote_code)
    from lorafit.api import run_config

    result = run_config(cfg, fresh=fresh, command=" ".join(["lorafit", *sys.argv[1:]]), config_path=config)
    if result.summary:  # empty on the non-zero ranks of a multi-process run
        typer.echo(result.summary, nl=False)


@app.command()
@guarded
def budget(config: Path = CONFIG_ARG, overrides: Optional[List[str]] = OVERRIDES_ARG,
           fit: bool = typer.Option(False, "--fit", help="list the largest lora.r per target_modules choice "
                                                         "(with and without biases) that fits the budget")):
    """Count trainable parameters from the model config alone (no weights); exit 3 when over budget."""
    cfg = _load(config, overrides)  # a bad config fails before torch loads
    from lorafit.budget import count_budget, fit_ranks, render_fit

    if fit:
        typer.echo(render_fit(fit_ranks(cfg)))
        return
    report = count_budget(cfg)
    typer.echo(report.render())
    if not report.within:
        _fail(report.over_budget_line(), EXIT_BUDGET)


@app.command()
@guarded
def search(config: Path = CONFIG_ARG, overrides: Optional[List[str]] = OVERRIDES_ARG,
           trials: Optional[int] = typer.Option(None, help="trials to train in all (default search.trials); "
                                                           "over-budget proposals are rejected untrained and not counted"),
           storage: Optional[str] = typer.Option(None, help="database URL shared by processes on several machines, e.g. "
                                                            "postgresql://user:pass@host/db (default: sqlite file "
                                                            "<output_dir>/<name>/search.db)"),
           workers: int = typer.Option(1, help="processes on this machine working on the study"),
           name: Optional[str] = typer.Option(None, help="study name and folder under output_dir"),
           output_dir: Optional[str] = typer.Option(None, help="parent folder of runs (default runs/)"),
           allow_pickle: bool = typer.Option(False, "--allow-pickle", help=PICKLE_HELP),
           worker_index: int = typer.Option(0, hidden=True)):
    """Budget-aware hyperparameter search over the config's search.space (Optuna; resumable)."""
    extra = _overrides(overrides, name, output_dir, allow_pickle)
    from lorafit.search_space import check_space

    check_space(config, extra, load_config(config, extra))  # a bad config or space fails before torch loads
    from lorafit.search import render_leaderboard, run_search

    result = run_search(config, extra, trials=trials, storage=storage, workers=workers, worker_index=worker_index)
    if result:
        render_leaderboard(result)


@app.command()
@guarded
def predict(run_dir: Path = typer.Argument(..., help="a trained run folder, e.g. runs/quickstart"),
            target: Optional[str] = typer.Option(None, help="target set (default: the run config's data.target); "
                                                 "- reads texts from stdin, one per line, and prints their class names"),
            text: Optional[List[str]] = typer.Option(None, "--text", help="a text to classify (repeatable): prints its "
                                                     "class name; the model alone, no prior"),
            output: Optional[Path] = typer.Option(None, "-o", "--output", help="submission path (default RUN_DIR/submission.csv; - for stdout)"),
            prior: Optional[str] = typer.Option(None, help="none | uniform | em | comma-separated proportions"),
            text_column: Optional[str] = typer.Option(None, help="text column of the target set"),
            reuse_probs: bool = typer.Option(True, help="reuse the run's saved target probabilities when the texts match"),
            allow_pickle: bool = typer.Option(False, "--allow-pickle", help=PICKLE_HELP)):
    """Write a Kaggle submission (ID,Label) for a target set with a trained run."""
    if text or target == "-":  # single texts or a pipe: class names on stdout, one per line
        from lorafit.api import predict_lines

        for label in predict_lines(run_dir, text or sys.stdin):
            typer.echo(label)
        return
    _check_output(output, "submission file (-o)", "submission")
    import tempfile

    from lorafit.predict import predict_run

    with tempfile.TemporaryDirectory(prefix="lorafit-") as tmp:  # -o -: the submission goes to stdout
        out = Path(tmp) / "submission.csv" if _is_stdout(output) else output or Path(run_dir) / "submission.csv"
        t, labels = predict_run(run_dir, out, target=target, prior=prior, text_column=text_column,
                                reuse_probs=reuse_probs, allow_pickle=allow_pickle)
        if _is_stdout(output):
            sys.stdout.write(out.read_text())
            out = "the submission to stdout"
    info = t["prior"]
    typer.echo(f"wrote {out} ({t['rows']:,} rows; predicted per class {dict(zip(labels, t['predicted_distribution']))}"
               + (f"; prior {info['mode']} {[round(x, 3) for x in info['prior']]}, {info['changed']} changed"
                  if info.get("mode") not in (None, "none") else "")
               + ")", err=_is_stdout(output))


@app.command()
@guarded
def evaluate(run_dir: Path = typer.Argument(..., help="a trained run folder"),
             data: str = typer.Argument(..., help="a labeled set (csv/jsonl/parquet/folder/Hub id)"),
             output: Optional[Path] = typer.Option(None, "-o", "--output", help="write the metrics as JSON here (- for stdout)"),
             text_column: Optional[str] = typer.Option(None, help="text column of the set (default: the run's data.text_column)"),
             label_column: Optional[str] = typer.Option(None, help="label column of the set (default: the run's data.label_column)"),
             prior: Optional[str] = typer.Option(None, help="apply a prior first: none | uniform | em | proportions"),
             prior_fit: str = typer.Option("data", "--prior-fit", help="where the prior's adjustment is fitted: data "
                                           "(this labeled set) | target (the run's saved target probabilities; "
                                           "its per-class factors then re-weight this set, as at submission)"),
             allow_pickle: bool = typer.Option(False, "--allow-pickle", help=PICKLE_HELP)):
    """Accuracy, macro-F1 and per-class metrics of a trained run on any labeled set."""
    # every path, key and value is checked before the model libraries load (a mistake fails in a second)
    if prior_fit not in ("data", "target"):
        _fail(f"--prior-fit must be data or target, not {prior_fit!r}")
    _check_output(output, "metrics file (-o)", "metrics")  # before the evaluation
    from lorafit.predict import score_run_on_file

    scored = score_run_on_file(run_dir, data, text_column=text_column, label_column=label_column, prior=prior,
                               prior_fit=prior_fit, allow_pickle=allow_pickle, progress=True)
    m = scored.metrics
    _write_json(output, m)
    typer.echo(f"{data}: accuracy {100 * m['accuracy']:.2f}%  macro-F1 {100 * m['macro_f1']:.2f}%  "
               f"({len(scored.dataset):,} rows)", err=_is_stdout(output))


@app.command()
@guarded
def agreement(run_dirs: List[Path] = typer.Argument(..., help="run folders of one recipe trained with other seeds (2 or more)"),
              data: Optional[str] = typer.Option(None, "--data", help="also a labeled set (e.g. the dev set), predicted by "
                                                 "each run, to check the estimate where labels exist"),
              prior: Optional[str] = typer.Option(None, help="apply a prior to the probabilities first: none | uniform | em | proportions"),
              output: Optional[Path] = typer.Option(None, "-o", "--output", help="write the estimates as JSON here (- for stdout)"),
              allow_pickle: bool = typer.Option(False, "--allow-pickle", help=PICKLE_HELP),
              verbose: bool = VERBOSE_OPTION):  # -v also draws progress bars for --data
    """Estimate a recipe's accuracy on the unlabeled target set from how often runs of other seeds
    disagree there (1 - mean pairwise disagreement; Jiang et al. 2022). The runs' saved target
    probabilities are used (no model run); --data measures the same estimate's gap on a labeled set."""
    if len(run_dirs) < 2:
        _fail("agreement needs 2 or more run folders: the same recipe trained with other seeds")
    _check_output(output, "agreement file (-o)", "agreement")
    from lorafit.predict import data_agreement, target_agreement  # no model library yet: a wrong path fails in a second

    result = target_agreement(run_dirs, prior)
    t, err = result["target"], _is_stdout(output)
    typer.echo(f"target ({t['rows']:,} texts, {len(run_dirs)} runs): mean pairwise disagreement "
               f"{100 * t['mean_disagreement']:.2f}% -> estimated accuracy {100 * t['estimated_accuracy']:.2f}%", err=err)
    if data is not None:
        d = result["data"] = data_agreement(run_dirs, data, prior, allow_pickle=allow_pickle, progress=verbose)
        result["target_estimate_minus_gap"] = t["estimated_accuracy"] - d["gap"]
        typer.echo(f"{data} ({d['rows']:,} rows): accuracy " + " / ".join(f"{100 * a:.2f}%" for a in d["accuracy"])
                   + f" (mean {100 * d['mean_accuracy']:.2f}%); disagreement {100 * d['mean_disagreement']:.2f}% "
                   f"-> estimate {100 * d['estimated_accuracy']:.2f}% (gap {100 * d['gap']:+.2f} points)", err=err)
        typer.echo(f"target estimate minus that gap: {100 * result['target_estimate_minus_gap']:.2f}%", err=err)
    _write_json(output, result)


@app.command("adapt-lm")
@guarded
def adapt_lm(config: Path = CONFIG_ARG, overrides: Optional[List[str]] = OVERRIDES_ARG):
    """Fine-tune the causal LM (augment.lm.model) on the config's unlabeled target texts."""
    from lorafit.io_utils import lock_folder
    from lorafit.runs import claim_run_dir

    cfg = _load(config, overrides)  # config, then data, then the model libraries: mistakes fail fast
    if not cfg.data.target:
        _fail("config has no data.target: the LM is adapted to the unlabeled target texts")
    lock_folder(claim_run_dir(cfg), "run folder (output_dir/name)")  # one writer at a time
    from lorafit.data import prepare_data

    data = prepare_data(cfg)
    from lorafit.augment import adapt_lm_stage

    typer.echo(f"adapted LM saved to {adapt_lm_stage(cfg, data.target['text'], cfg.run_dir)}")


@app.command()
@guarded
def generate(config: Path = CONFIG_ARG, overrides: Optional[List[str]] = OVERRIDES_ARG):
    """Generate labeled samples per class from the prompt bank (resumable; splits across processes)."""
    from lorafit.io_utils import lock_folder
    from lorafit.runs import claim_run_dir

    cfg = _load(config, overrides)  # config, then data, then the model libraries: mistakes fail fast
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    # one writer at a time; the processes of one job each hold the lock of their rank
    lock_folder(claim_run_dir(cfg), "run folder (output_dir/name)", rank=rank)
    from lorafit.data import prepare_data

    data = prepare_data(cfg)
    cfg = data.config(cfg)  # the prompt bank is keyed by class name: data.labels, or those of the data
    from lorafit.augment import generate_stage

    ds = generate_stage(cfg, data.train["text"], cfg.run_dir, rank=rank, world_size=world,
                        target_texts=data.target["text"] if data.target is not None else (),
                        train_labels=data.train["label"])
    if ds is None:  # this process finished its shards; another one assembles the set
        typer.echo(f"rank {rank}/{world}: shards done; the last process to finish writes samples.jsonl")
    else:
        typer.echo(f"generated {len(ds):,} samples into {cfg.run_dir / 'synthetic'}")


@app.command()
@guarded
def report(run_dir: Path = typer.Argument(..., help="a run folder, e.g. runs/quickstart"),
           card: bool = typer.Option(True, "--card/--no-card", help="also (re)write the adapter's model card model/README.md")):
    """Write RUN_DIR/report.html: one self-contained page with the results, data, curves and samples of a run."""
    from lorafit.report import read_run, write_model_card, write_report

    typer.echo(f"wrote {write_report(run_dir)}")
    run = read_run(run_dir)
    if card and run["cfg"] is not None and (Path(run_dir) / "model" / "adapter_config.json").is_file():
        typer.echo(f"wrote {write_model_card(run_dir, run['cfg'], run['metrics'])}")


@app.command()
@guarded
def compare(run_dirs: List[Path] = typer.Argument(..., help="run folders, e.g. runs/quickstart runs/r4"),
            html: Optional[Path] = typer.Option(None, "--html", help="also write the table as a self-contained HTML page"),
            as_json: bool = typer.Option(False, "--json", help="print the comparison as JSON (one record per run)"),
            as_csv: bool = typer.Option(False, "--csv", help="print the comparison as CSV (a line per field, a column per run)")):
    """Runs side by side: the config keys that differ, validation accuracy and macro-F1, target
    distribution, times per stage (a field a run lacks is left blank)."""
    import json

    from rich.console import Console

    from lorafit.io_utils import atomic_write_text
    from lorafit.report import compare_runs, comparison_csv, comparison_html, comparison_records, comparison_table

    if as_json and as_csv:
        _fail("--json and --csv: choose one")
    if html is not None:
        check_output_file(html, "comparison page (--html)", "html")
    names, rows = compare_runs(run_dirs)
    if as_json:
        typer.echo(json.dumps(comparison_records(names, rows), indent=2))
    elif as_csv:
        typer.echo(comparison_csv(names, rows), nl=False)
    else:  # piped: as wide as the table needs (a terminal's width otherwise)
        Console(width=None if sys.stdout.isatty() else 100_000).print(comparison_table(names, rows))
    if html is not None:
        atomic_write_text(html, comparison_html(names, rows))
        typer.echo(f"wrote {html}")


@app.command()
@guarded
def export(run_dir: Path = typer.Argument(..., help="a trained run folder"),
           merged: Path = typer.Option(..., "--merged", help="folder to write the merged model to (made by lorafit)"),
           onnx: bool = typer.Option(False, "--onnx", help="also write model.onnx, checked against the torch logits "
                                                           "(needs the onnx and onnxruntime packages)")):
    """Write a plain transformers model: LoRA merged into the base, tokenizer, class names and a model card;
    transformers.pipeline("text-classification", model=DIR) loads it with no arguments."""
    from lorafit.export import export_merged

    result = export_merged(run_dir, merged, onnx=onnx)
    typer.echo(f"wrote {result.folder}" + (f" and {result.onnx} (max |logit difference| vs torch "
                                           f"{result.onnx_max_abs_diff:.1e})" if result.onnx else ""))


@app.command()
@guarded
def push(run_dir: Path = typer.Argument(..., help="a trained run folder"),
         repo_id: str = typer.Argument(..., help="Hub repository, user/name (created when missing)"),
         private: bool = typer.Option(False, "--private", help="create the repository as private"),
         merged: bool = typer.Option(False, "--merged", help="upload the merged model (see export) instead of the adapter"),
         dry_run: bool = typer.Option(False, "--dry-run", help="list the files that would be uploaded; contact nothing")):
    """Upload a run's adapter (or merged model) and its model card to the Hugging Face Hub."""
    from lorafit.export import push as push_run

    plan = push_run(run_dir, repo_id, private=private, merged=merged, dry_run=dry_run)
    verb = "would upload" if dry_run else "uploaded"
    typer.echo(f"{verb} {len(plan.files)} files to {plan.repo_id}" + (" (private)" if private else "")
               + (f": {plan.url}" if plan.url else ""))
    for name, size in plan.files:
        typer.echo(f"  {name}  {size:,} bytes")


def _terminate(signum, frame):
    raise KeyboardInterrupt  # SIGTERM ends a run like Ctrl-C: one line, exit 130 (training saves a checkpoint first)


def main() -> None:  # console-script entry point
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    app()


if __name__ == "__main__":
    sys.exit(main())
