"""The run report (report.html), run comparison and the model card, on one tiny run that has every
stage a report shows: generated samples (scratch LM), a self-training round and a label prior."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import tiny_labeled_rows, tiny_overrides, write_csv
from lorafit.cli import app
from lorafit.config import load_config, merge_overrides
from lorafit.pipeline import run
from lorafit.report import compare_runs, training_phases
from lorafit.report_page import pct
from test_pipeline import NO_AUGMENT

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("headline", "budget", "data", "curves", "confusion", "lengths", "samples", "prior", "timing", "config",
            "environment")
STAGES = {"data", "model", "augment", "train", "selftrain", "save", "evaluate", "predict"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest on a busy machine
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def full_run(tiny_roberta_dir, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("report")
    csvs = {
        "train": write_csv(root / "data" / "train.csv", tiny_labeled_rows(4)),
        "dev": write_csv(root / "data" / "dev.csv", tiny_labeled_rows(1)),
        "target": write_csv(root / "data" / "target.csv", [{"text": r["text"].upper()} for r in tiny_labeled_rows(1)]),
    }
    on = merge_overrides(NO_AUGMENT, [  # the later keys switch generation and self-training back on
          "augment.lm.enabled=true", f"augment.lm.model=scratch:{tiny_roberta_dir}", "augment.lm.max_steps=2",
          "augment.lm.block_size=16", "augment.lm.batch_size=4",
          "augment.generate.enabled=true", f"augment.generate.prompts={REPO / 'configs/prompts/agnews.yaml'}",
          "augment.generate.per_class=3", "augment.generate.batch_size=6", "augment.generate.length.mode=given",
          "augment.generate.length.a=0", "augment.generate.length.loc=8", "augment.generate.length.scale=2",
          "augment.generate.length.max_words=12", "augment.select.min_words=1",
          "selftrain.enabled=true", "selftrain.rounds=1", "selftrain.epochs=1", "selftrain.threshold=0.0",
          "predict.prior=uniform"])
    cfg = load_config(None, [*on, *tiny_overrides(tiny_roberta_dir, csvs, root / "runs")])
    metrics = run(cfg).to_dict()
    run_dir = root / "runs" / "tiny"
    return {"cfg": cfg, "metrics": metrics, "run_dir": run_dir, "root": root,
            "html": (run_dir / "report.html").read_text(encoding="utf-8")}


def _section(page: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', page, re.S)
    assert m, f"section {sid} missing"
    return m.group(1)


def test_metrics_record_stage_times_and_environment(full_run):
    m = json.loads((full_run["run_dir"] / "metrics.json").read_text())
    assert STAGES <= set(m["stage_seconds"]), m["stage_seconds"]
    assert all(v >= 0 for v in m["stage_seconds"].values())
    assert sum(m["stage_seconds"].values()) <= m["wall_seconds"] + 1
    env = m["environment"]
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["torch_threads"] >= 1
    assert {"transformers", "peft", "python"} <= set(env)
    # the kernels' instruction set, so numbers from two machines can be told apart (issue 11, item 6)
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert set(env["cpu_bf16"]) <= {"amx_bf16", "avx512_bf16"}


def test_report_has_every_section(full_run):
    page = full_run["html"]
    for sid in SECTIONS:
        body = _section(page, sid)
        assert 'class="missing"' not in body, f"{sid} says something is missing in a run that has everything"
    assert page.count('src="data:image/png;base64,') == 2  # curves and length histograms
    samples = _section(page, "samples")
    prompt = json.loads((full_run["run_dir"] / "synthetic" / "samples.jsonl").read_text().splitlines()[0])["prompt"]
    assert html.escape(prompt) in samples
    assert "Target texts with the predicted label" in samples and "confidence" in samples
    lengths = _section(page, "lengths")
    for name in ("source (training set)", "target", "synthetic (generated)"):
        assert name in lengths
    assert "self-training round 1" in _section(page, "curves")
    assert "EM prior estimate" in _section(page, "prior") and "estimated here" in _section(page, "prior")


def test_report_is_self_contained(full_run):
    page = full_run["html"]
    assert "://" not in page  # no URL at all, not even quoted from the data
    assert "<script" not in page.lower() and "@import" not in page and "url(" not in page
    for ref in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert ref.startswith(("data:image/png;base64,", "#")), ref
    assert not list(full_run["run_dir"].glob("*.tmp*"))


def test_report_numbers_equal_metrics(full_run):
    page, m = full_run["html"], json.loads((full_run["run_dir"] / "metrics.json").read_text())
    head = _section(page, "headline")
    assert pct(m["val_accuracy"]) in head and pct(m["val_macro_f1"]) in head
    assert f"{m['wall_seconds']:,.1f} s" in head
    rows = re.findall(r"<tr><td>([^<]+)</td><td class=\"n\">([\d,]+)</td>", head)
    assert [int(n.replace(",", "")) for _, n in rows] == m["target"]["predicted_distribution"]

    conf = _section(page, "confusion")
    table = re.search(r'<table class="confusion">(.*?)</table>', conf, re.S).group(1)
    cells = [int(c) for c in re.findall(r'<td class="cm"[^>]*>(\d+)</td>', table)]
    assert cells == [v for r in m["val"]["confusion_matrix"] for v in r]
    for name, c in m["val"]["per_class"].items():
        assert re.search(rf"<td>{re.escape(html.escape(name))}</td><td class=\"n\">{re.escape(pct(c['precision']))}</td>"
                         rf"<td class=\"n\">{re.escape(pct(c['recall']))}</td><td class=\"n\">{re.escape(pct(c['f1']))}</td>",
                         conf), name

    budget = _section(page, "budget")
    for n in [m["budget"]["trainable"], m["budget"]["max_trainable"], *m["budget"]["breakdown"].values()]:
        assert f">{n:,}<" in budget

    data = _section(page, "data")
    rows = m["augment"]["rows"]
    for n in (m["data"]["source_rows"], m["data"]["train_rows"], m["data"]["val_rows"], rows["synthetic_generated"],
              m["augment"]["selection"]["kept"], m["train_rows"], m["data"]["target_rows"]):
        assert f'<td class="n">{n:,}</td>' in data
    for rule, n in m["augment"]["selection"]["removed"].items():
        assert f"<td><code>{rule}</code></td><td class=\"n\">{n:,}</td>" in data
    (st,) = m["selftrain"]
    assert f'<td class="n">{st["kept"]:,}</td>' in data

    timing = _section(page, "timing")
    for stage, s in m["stage_seconds"].items():
        assert f"<td>{stage}</td><td class=\"n\">{s:,.1f} s</td>" in timing

    prior = _section(page, "prior")
    for name, raw, final in zip(m["val"]["per_class"], m["target"]["raw_distribution"],
                                m["target"]["predicted_distribution"]):
        assert re.search(rf"<td>{re.escape(html.escape(name))}</td><td class=\"n\">[\d.]+</td>"
                         rf"<td class=\"n\">{raw:,}</td><td class=\"n\">{final:,}</td>", prior), name
    assert f"<td>{html.escape(torch.__version__)}</td>" in _section(page, "environment")
    assert f"name: {full_run['cfg'].name}" in _section(page, "config")


def test_curves_put_phases_on_one_step_axis(full_run):
    history = json.loads((full_run["run_dir"] / "train_log.json").read_text())
    points, phases = training_phases(history)
    assert [p[0] for p in phases] == ["training", "self-training round 1"]
    (_, s0, e0), (_, s1, e1) = phases
    assert s0 == 0 and s1 == e0 and e1 > e0
    assert all(a <= b for (a, _), (b, _) in zip(points, points[1:])), "the step axis goes back"
    losses = [g for g, h in points if "loss" in h]
    assert losses == sorted(losses) and losses[-1] > e0  # the round's losses continue the line


def test_training_phases_of_a_made_up_log():
    history = [{"loss": 1.0, "step": 2}, {"eval_accuracy": 0.5, "step": 4}, {"train_loss": 0.9, "step": 4},
               {"loss": 0.8, "step": 2, "selftrain_round": 1}, {"eval_accuracy": 0.6, "step": 3, "selftrain_round": 1},
               {"loss": 0.7, "step": 1, "selftrain_round": 2}, {"note": "no step"}]
    points, phases = training_phases(history)
    assert [g for g, _ in points] == [2, 4, 4, 6, 7, 8]
    assert phases == [("training", 0, 4), ("self-training round 1", 4, 7), ("self-training round 2", 7, 8)]
    assert training_phases([]) == ([], [])


def _older_run(full_run, tmp_path) -> Path:
    """A copy of the run as an older lorafit (or a run without target and synthetic data) leaves it."""
    old = tmp_path / "old"
    old.mkdir()
    for name in ("config.yaml", "model"):
        src = full_run["run_dir"] / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, old / name)
    m = json.loads((full_run["run_dir"] / "metrics.json").read_text())
    for key in ("stage_seconds", "environment", "target", "augment", "selftrain", "wall_seconds"):
        m.pop(key)
    (old / "metrics.json").write_text(json.dumps(m))
    cfg = yaml.safe_load((old / "config.yaml").read_text())
    cfg["data"]["target"] = None
    cfg["name"] = "old"
    cfg["lora"]["r"] = 2
    (old / "config.yaml").write_text(yaml.safe_dump(cfg))
    return old


def test_report_of_an_older_run_says_what_is_missing(full_run, tmp_path):
    old = _older_run(full_run, tmp_path)
    res = CliRunner().invoke(app, ["report", str(old)])
    assert res.exit_code == 0, res.output
    page = (old / "report.html").read_text()
    for sid in ("timing", "environment", "curves", "lengths", "prior"):
        assert 'class="missing"' in _section(page, sid), sid
    assert "No target set in this run" in _section(page, "headline")
    assert "No synthetic samples" in _section(page, "samples")
    assert pct(full_run["metrics"]["val_accuracy"]) in _section(page, "headline")
    assert (old / "model" / "README.md").read_text().startswith("---\n")
    # only metrics.json: still a report
    (old / "config.yaml").unlink()
    assert CliRunner().invoke(app, ["report", str(old)]).exit_code == 0
    assert 'class="missing"' in _section((old / "report.html").read_text(), "config")
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "no such run folder" in res.output


def test_compare_shows_differing_keys_and_blank_missing_fields(full_run, tmp_path):
    old = _older_run(full_run, tmp_path)
    names, rows = compare_runs([full_run["run_dir"], old])
    assert names == ["tiny", "old"]
    table = dict(rows)
    assert table["lora.r"] == ["4", "2"]
    assert table["data.target"][1] == "null"
    assert "name" not in table and "lora.lora_alpha" not in table  # equal keys are left out
    m = full_run["metrics"]
    assert table["val accuracy"] == [pct(m["val_accuracy"])] * 2
    assert table["target predicted"] == [" / ".join(map(str, m["target"]["predicted_distribution"])), ""]
    assert table["time: train (s)"] == [f"{m['stage_seconds']['train']:.1f}", ""]
    assert table["wall time (s)"][1] == ""

    out = tmp_path / "compare.html"
    res = CliRunner().invoke(app, ["compare", str(full_run["run_dir"]), str(old), "--html", str(out)])
    assert res.exit_code == 0, res.output
    assert "lora.r" in res.output and pct(m["val_accuracy"]) in res.output
    page = out.read_text()
    assert "<td>lora.r</td>" not in page and "<b>lora.r</b>" in page and "://" not in page


def test_model_card(full_run):
    text = (full_run["run_dir"] / "model" / "README.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    cfg, m = full_run["cfg"], full_run["metrics"]
    assert front["library_name"] == "peft" and front["pipeline_tag"] == "text-classification"
    assert front["base_model"] == cfg.model.name and "lorafit" in front["tags"]
    assert set(front["metrics"]) == {"accuracy", "f1"}
    values = {x["type"]: x["value"] for x in front["model-index"][0]["results"][0]["metrics"]}
    assert values == {"accuracy": round(m["val_accuracy"], 4), "f1": round(m["val_macro_f1"], 4)}
    for heading in ("## Trainable-parameter budget", "## Training data and augmentation", "## Settings",
                    "## Results", "## Limitations"):
        assert heading in text
    assert f"**{m['budget']['trainable']:,}**" in text and pct(m["val_accuracy"]) in text


def test_peft_loads_the_adapter_like_lorafit(full_run):
    """PEFT's own loader, reading only the adapter folder, gives lorafit's logits."""
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoTokenizer

    from lorafit.model import load_trained
    from lorafit.inference import predict_logits

    adapter = full_run["run_dir"] / "model"
    texts = [r["text"] for r in tiny_labeled_rows(1)]
    model, tok, cfg, _ = load_trained(full_run["run_dir"], merge=False)
    ours = predict_logits(model, tok, texts, max_length=cfg.model.max_length, precision="fp32")

    peft_model = AutoPeftModelForSequenceClassification.from_pretrained(str(adapter), num_labels=4).eval()
    peft_tok = AutoTokenizer.from_pretrained(str(adapter))
    batch = peft_tok(texts, truncation=True, max_length=cfg.model.max_length, padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = peft_model(**batch).logits.float().numpy()
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4)


def test_model_card_names_the_hub_id_of_the_shipped_minilm():
    """``model.name: minilm`` is an alias of a Hub model: the card's base_model is that Hub id, so
    the shared folder points at a model others can download."""
    from lorafit.config import hub_model_id

    assert hub_model_id("minilm") == "sentence-transformers/all-MiniLM-L6-v2"
    assert hub_model_id("roberta-base") == "roberta-base" and hub_model_id("/models/x") == "/models/x"


def test_self_training_rows_show_the_proxy_with_the_target_prior():
    from lorafit.report_page import _data
    from lorafit.runs import RunMetrics

    rnd = {"round": 1, "mode": "student", "kept_per_class": [2, 2], "kept": 4, "val_accuracy": 0.9,
           "proxy_accuracy": 0.7525, "proxy_accuracy_prior": 0.7650, "proxy_accuracy_target_prior": 0.7775}
    m = RunMetrics(val_accuracy=0.9, val_macro_f1=0.9, data={"source_rows": 10}, selftrain=[rnd])
    body = _data({"metrics": m, "labels": ["a", "b"]})
    assert "<th class=\"n\">proxy acc, target prior</th>" in body
    row = re.search(r"<tr><td class=\"n\">1</td>.*?</tr>", body, re.S).group(0)
    assert row.endswith('<td class="n">75.25%</td><td class="n">77.75%</td></tr>'), row
