"""The page around ``report.html`` (see :mod:`lorafit.report`): one self-contained HTML file, its
style inline, no script, no font or image fetched from anywhere."""

from __future__ import annotations

import html
from typing import Optional
from string import Template

from lorafit.config import hub_model_id
from lorafit.metrics import restored_line
from lorafit.runs import RunFacts, RunMetrics

# Plain CSS: system fonts, a narrow column, tables that read at a glance. No external URL.
STYLE = """
:root { --ink: #1f2933; --muted: #6b7785; --line: #d9dee4; --accent: #2f6fad; --soft: #eef3f8; --warn: #b54708; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       margin: 0 auto; max-width: 1120px; padding: 20px 28px 60px; }
h1 { font-size: 22px; margin: 0 0 2px; }
h2 { font-size: 17px; margin: 30px 0 8px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 14px; margin: 16px 0 6px; }
.sub { color: var(--muted); margin: 0 0 14px; }
nav { font-size: 12px; color: var(--muted); margin-bottom: 8px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 10px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; min-width: 150px; background: #fff; }
.card .v { font-size: 24px; font-weight: 650; }
.card .k { color: var(--muted); font-size: 12px; }
table { border-collapse: collapse; margin: 6px 0 10px; }
th, td { border-bottom: 1px solid var(--line); padding: 3px 10px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
td.cm { text-align: center; min-width: 46px; font-variant-numeric: tabular-nums; }
.bar { display: inline-block; height: 11px; background: var(--accent); border-radius: 2px; vertical-align: middle; }
.bar.alt { background: #9db7d3; }
.barcell { width: 280px; }
.missing { color: var(--muted); font-style: italic; }
.warn { color: var(--warn); }
.text { max-width: 640px; }
.prompt { color: var(--muted); }
pre { background: var(--soft); padding: 10px; border-radius: 6px; font-size: 12px; overflow-x: auto; }
img { max-width: 100%; }
.two { display: flex; flex-wrap: wrap; gap: 28px; align-items: flex-start; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""

PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>$style</style>
</head>
<body>
<h1>$title</h1>
<p class="sub">$subtitle</p>
<nav>$nav</nav>
$sections
<footer>Written by lorafit from the files of this run folder. Self-contained: no script, nothing loaded from elsewhere.</footer>
</body>
</html>
""")


def esc(value) -> str:
    """HTML-escape ``value``. ``://`` is written ``:&#47;&#47;`` (shown the same) so that no URL,
    even one quoted from the data, appears literally in the page."""
    return html.escape(str(value)).replace("://", ":&#47;&#47;")


def section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}">\n<h2>{esc(title)}</h2>\n{body}\n</section>'


def missing(text: str) -> str:
    return f'<p class="missing">{esc(text)}</p>'


def table(header: list, rows: list, numeric: set | None = None, cls: str = "") -> str:
    """A table of already-escaped cells; columns in ``numeric`` are right-aligned."""
    numeric = numeric or set()
    th = "".join(f'<th class="n">{h}</th>' if i in numeric else f"<th>{h}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def bar(fraction: float, width: int = 260, alt: bool = False) -> str:
    px = max(0, min(width, round(width * fraction))) if fraction == fraction else 0
    return f'<span class="bar{" alt" if alt else ""}" style="width:{px}px"></span>'


def card(value: str, key: str) -> str:
    return f'<div class="card"><div class="v">{value}</div><div class="k">{key}</div></div>'


def image(png_b64: str, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{png_b64}">'


def page(title: str, subtitle: str, sections: list[tuple[str, str, str]]) -> str:
    """``sections``: (id, title, body html)."""
    nav = "".join(f'<a href="#{sid}">{esc(t)}</a>' for sid, t, _ in sections)
    body = "\n".join(section(*s) for s in sections)
    return PAGE.substitute(title=esc(title), subtitle=subtitle, nav=nav, sections=body, style=STYLE)


# ------------------------------------------------------------------ formatting


def pct(x) -> str:
    return f"{100 * x:.2f}%"


def num(n) -> str:
    return f"{n:,}" if isinstance(n, int) and not isinstance(n, bool) else esc(n)


def secs(s) -> str:
    return f"{s:,.1f} s"


def _get(d: dict, *path, default=None):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


# ------------------------------------------------------------------ sections


def _headline(f: dict) -> str:
    m: Optional[RunMetrics] = f["metrics"]
    labels = f["labels"]
    if m is None:
        return missing("No metrics.json in this run folder (the run did not finish): no results to show.")
    cards = [card(pct(m.val_accuracy), "validation accuracy"), card(pct(m.val_macro_f1), "validation macro-F1")]
    if m.wall_seconds is not None:
        cards.append(card(secs(m.wall_seconds), "wall time"))
    b = m.budget
    if "trainable" in b:
        cards.append(card(num(b["trainable"]), f"trainable parameters (limit {num(b.get('max_trainable', '?'))})"))
    if m.train_rows is not None:
        cards.append(card(num(m.train_rows), "training rows"))
    out = f'<div class="cards">{"".join(cards)}</div>'
    if m.restored:  # the model is the best evaluation's, which is not the last one's
        out += f"<p>{'Main training: ' if m.selftrain else ''}{esc(restored_line(m.restored))}.</p>"
    dist = _get(m.target, "predicted_distribution")
    if dist:
        total = sum(dist) or 1
        rows = [[esc(n), num(c), pct(c / total), bar(c / total)] for n, c in zip(labels, dist)]
        out += (f"<h3>Target predictions per class ({num(m.target['rows'])} rows, submission.csv)</h3>"
                + table(["class", "predicted", "share", ""], rows, numeric={1, 2}))
    else:
        out += missing("No target set in this run: no predictions per class.")
    e = m.ensemble
    if e:
        rows = [[esc(n), pct(a)] for n, a in zip(e.get("names", []), e.get("val_accuracy_per_adapter", []))]
        rows.append(["<b>ensemble (mean probability)</b>", f"<b>{pct(e.get('val_accuracy', m.val_accuracy))}</b>"])
        out += (f"<h3>Ensemble of {num(e.get('adapters', len(rows) - 1))} adapters on one frozen base</h3>"
                + table(["adapter", "validation accuracy"], rows, numeric={1}))
    return out


def _budget(f: dict) -> str:
    b = f["metrics"].budget if f["metrics"] else None
    if not b:
        return missing("metrics.json has no budget record.")
    limit = b.get("max_trainable") or 1
    rows = [[esc(name), num(n), pct(n / limit), bar(n / limit)] for name, n in (b.get("breakdown") or {}).items()]
    if b.get("adapters", 1) > 1:  # the rows above are one adapter's
        n = b.get("trainable_per_adapter", 0)
        k = b["adapters"] * n
        rows.append([f"x {b['adapters']} adapters (one adapter: {num(n)})", num(k), pct(k / limit), bar(k / limit)])
    for v in b.get("views") or []:  # frozen views' heads (lorafit.views)
        rows.append([f"+ view {esc(v['view'])}", num(v["params"]), pct(v["params"] / limit), bar(v["params"] / limit)])
    rows.append(["<b>trainable in all</b>", f"<b>{num(b['trainable'])}</b>", pct(b["trainable"] / limit),
                 bar(b["trainable"] / limit)])
    rows.append(["limit (budget.max_trainable)", num(limit), "100.00%", bar(1.0, alt=True)])
    ok = b.get("within_budget", b["trainable"] <= limit)
    out = table(["parameters", "count", "of the limit", ""], rows, numeric={1, 2})
    out += (f'<p>{"Within" if ok else "<span class=warn>Over</span>"} the budget; '
            f"{num(b.get('total', '?'))} parameters in all "
            + (f"({100 * b['trainable'] / b['total']:.3f}% trainable).</p>" if b.get("total") else ".</p>"))
    top = b.get("largest_contributors") or []
    if top:
        out += "<h3>Largest contributors</h3>" + table(
            ["module", "parameters"], [[f"<code>{esc(c['module'])}</code>", num(c["params"])] for c in top], numeric={1})
    return out


def _data(f: dict) -> str:
    m: Optional[RunMetrics] = f["metrics"]
    labels = f["labels"]
    if m is None or not m.data:
        return missing("metrics.json has no data record.")
    d, aug, st = m.data, m.augment, m.selftrain
    rows = []

    def add(stage, n, detail=""):
        if n is not None:
            rows.append([esc(stage), num(n), detail])

    def per_class(counts) -> str:
        if isinstance(counts, dict):
            counts = [counts.get(str(i), counts.get(i, 0)) for i in range(len(labels))]
        return esc(", ".join(f"{n} {c}" for n, c in zip(labels, counts))) if counts else ""

    add("source rows loaded", d.get("source_rows"))
    if "dropped_by_length" in d and "source_rows" in d:
        add("after cleaning and the length filter", d["source_rows"] - d["dropped_by_length"],
            f"{num(d['dropped_by_length'])} removed by clean.min_words/max_words")
    add("training split", d.get("train_rows"), per_class(d.get("train_label_counts")))
    add("validation split", d.get("val_rows"), per_class(d.get("val_label_counts")))
    ar = aug.get("rows") or {}
    add("synonym copies added (WordNet)", ar.get("synonyms"))
    add("synthetic samples generated", ar.get("synthetic_generated"))
    add("extra labeled rows loaded", ar.get("extra_loaded"))
    sel = aug.get("selection") or {}
    if sel:
        add("kept by selection", sel.get("kept"),
            f"of {num(sel.get('input'))}; per class: {per_class(sel.get('kept_per_class'))}")
    add("training set used", m.train_rows)
    add("target rows (unlabeled)", d.get("target_rows"))
    out = table(["stage", "rows", "detail"], rows, numeric={1})
    if not ar:
        out += missing("No augmentation in this run (synonyms, generation and extra data were off).")
    if sel:
        out += "<h3>Selection rules (rows removed, in order)</h3>" + table(
            ["rule", "removed"], [[f"<code>{esc(r)}</code>", num(n)] for r, n in (sel.get("removed") or {}).items()],
            numeric={1})
    out += "<h3>Self-training</h3>"
    if st:
        score = lambda x: pct(x) if isinstance(x, float) else ""  # noqa: E731 (absent in older runs)
        blank = lambda x: "" if x is None else num(x)  # noqa: E731
        out += table(["round", "mode", "confident per class", "cap", "pseudo-labels kept per class", "kept",
                      "trained on", "target predicted before", "after", "labels changed", "validation acc",
                      "proxy acc", "proxy acc, target prior"],
                     [[num(r.round), esc(r.mode), per_class(r.confident_per_class), num(r.cap),
                       per_class(r.kept_per_class), num(r.kept), blank(r.train_rows),
                       per_class(r.target_distribution_before), per_class(r.target_distribution_after),
                       blank(r.target_changed), score(r.val_accuracy), score(r.proxy_accuracy),
                       score(r.proxy_accuracy_target_prior)]
                      for r in st], numeric={0, 3, 5, 6, 9, 10, 11, 12})
        for r in st:  # an ensemble per round (selftrain.students, train.adapters): each member's accuracy
            each = r.val_accuracy_per_student or r.val_accuracy_per_adapter
            if each:
                who = "student" if r.val_accuracy_per_student else "adapter"
                out += (f"<p>Round {num(r.round)}: validation accuracy per {who}: "
                        + ", ".join(pct(x) for x in each if isinstance(x, float)) + "</p>")
    else:
        out += missing("No self-training rounds in this run.")
    return out


def _curves(f: dict) -> str:
    if not f["curves_png"]:
        return missing("No training log (train_log.json) in this run folder.")
    phases = ", ".join(f"{esc(n)}: steps {s + 1}-{e}" for n, s, e in f["phases"])
    return image(f["curves_png"], "training curves") + f"<p>One step axis across phases ({phases}).</p>"


def _confusion(f: dict) -> str:
    val, labels = f["metrics"].val if f["metrics"] else {}, f["labels"]
    cm = val.get("confusion_matrix")
    if not cm:
        return missing("metrics.json has no validation metrics.")
    top = max(max(r) for r in cm) or 1
    rows = []
    for name, r in zip(labels, cm):
        cells = "".join(f'<td class="cm" style="background:rgba(47,111,173,{0.08 + 0.75 * v / top:.2f});'
                        f'color:{"#fff" if v > top / 2 else "inherit"}">{num(v)}</td>' for v in r)
        rows.append(f"<tr><th>{esc(name)}</th>{cells}</tr>")
    head = "".join(f"<th>{esc(n)}</th>" for n in labels)
    out = ('<div class="two"><div><h3>Confusion matrix (rows: true, columns: predicted)</h3>'
           f'<table class="confusion"><thead><tr><th></th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>')
    pc = val.get("per_class") or {}
    prow = [[esc(n), pct(c["precision"]), pct(c["recall"]), pct(c["f1"]), num(c["support"])] for n, c in pc.items()]
    prow.append(["<b>macro</b>", "", "", f"<b>{pct(val['macro_f1'])}</b>", num(sum(c["support"] for c in pc.values()))])
    out += ('<div><h3>Per class</h3>' + table(["class", "precision", "recall", "F1", "support"], prow,
                                              numeric={1, 2, 3, 4}, cls="per-class") + "</div></div>")
    return out


def _lengths(f: dict) -> str:
    if not f["lengths_png"]:
        return missing("No texts to measure: data/train, the target set and synthetic/samples.jsonl are all absent.")
    rows = [[esc(n), num(s["n"]), f"{s['median']:.0f}", f"{s['mean']:.1f}", f"{s['p95']:.0f}"]
            for n, s in f["lengths"].items()]
    out = image(f["lengths_png"], "length histograms") + table(
        ["texts", "count", "median words", "mean", "95th percentile"], rows, numeric={1, 2, 3, 4})
    absent = [n for n in ("source (training set)", "target", "synthetic (generated)") if n not in f["lengths"]]
    if absent:
        out += missing("Not measured (absent from this run): " + ", ".join(absent) + ".")
    return out + "<p>The source histogram counts the saved training set without its synthetic rows.</p>"


def _samples(f: dict) -> str:
    out = f.get("generator_html", "") + "<h3>Synthetic samples per class, with their prompt</h3>"
    if f["synthetic"]:
        rows = []
        for name, items in f["synthetic"].items():
            for s in items:
                kept = {True: "kept", False: "<span class=warn>dropped</span>", None: ""}[s["kept"]]
                rows.append([esc(name), f'<span class="prompt">{esc(s["prompt"])}</span>',
                             f'<div class="text">{esc(s["text"])}</div>', kept])
        out += table(["class", "prompt", "generated text", "selection"], rows)
    else:
        out += missing("No synthetic samples in this run (augment.generate was off).")
    out += "<h3>Target texts with the predicted label</h3>"
    if f["target_examples"]:
        rows = [[num(e["row"]), f'<div class="text">{esc(e["text"])}</div>', esc(e["label"]),
                 esc(e["raw_label"]) if e["raw_label"] != e["label"] else "", f"{e['confidence']:.3f}"]
                for e in f["target_examples"]]
        out += table(["row", "text", "predicted", "before the prior", "confidence"], rows, numeric={0, 4})
        out += "<p>Per predicted class: the most confident, a middle and the least confident row.</p>"
    else:
        out += missing(f["notes"].get("target") or "No target predictions in this run.")
    return out


def _prior(f: dict) -> str:
    p, labels = f["prior"], f["labels"]
    if not p:
        return missing(f["notes"].get("target") or "No target set in this run.")
    raw, final, em, train = p.get("raw"), p.get("final"), p.get("em"), p.get("train_prior")
    rows = []
    for i, name in enumerate(labels):
        rows.append([esc(name), f"{train[i]:.3f}" if train else "", num(raw[i]) if raw else "", num(final[i]),
                     f"{em[i]:.3f}" if em else "", f"{p['prior'][i]:.3f}" if p.get("prior") else ""])
    out = table(["class", "training prior", "predicted (argmax)", "predicted after the prior", "EM prior estimate",
                 "prior applied"], rows, numeric={1, 2, 3, 4, 5})
    out += (f"<p>Prior applied: <code>{esc(p['mode'])}</code>"
            + (f"; {num(p['changed'])} predictions changed by it" if p.get("changed") is not None else "")
            + (f"; mean confidence {p['mean_confidence']:.3f}" if p.get("mean_confidence") is not None else "")
            + f". EM estimate: {esc(p['em_source'])}.</p>")
    return out


def _timing(f: dict) -> str:
    m: Optional[RunMetrics] = f["metrics"]
    st = m.stage_seconds if m else {}
    if not st:
        known = [f"{n} {secs(v)}" for n, v in (("training", m.train_seconds), ("wall", m.wall_seconds))
                 if v is not None] if m else []
        return missing("This run did not record time per stage (metrics.json has no stage_seconds)"
                       + (f"; {', '.join(known)}." if known else "."))
    total = sum(st.values()) or 1
    rows = [[esc(s), secs(v), pct(v / total), bar(v / total)] for s, v in st.items()]
    if m.wall_seconds is not None:
        rows.append(["<b>wall time</b>", secs(m.wall_seconds), "", ""])
    return table(["stage", "time", "share", ""], rows, numeric={1, 2})


def config_differences(config: dict) -> list[tuple[str, object, object]]:
    """(key, value, default) of each key of a saved config whose value is not lorafit's default
    (``name`` aside); a key the defaults lack has default None."""
    from lorafit.config import flatten, load_config

    defaults = flatten(load_config(None, []).to_dict())
    return [(k, v, defaults.get(k)) for k, v in flatten(config).items() if k != "name" and defaults.get(k, v is None) != v]


def _config(f: dict) -> str:
    if not f["config"]:
        return missing("No config.yaml in this run folder.")
    import yaml

    try:
        changed = config_differences(f["config"])
    except Exception:  # noqa: BLE001  (a config of another lorafit version: shown whole only)
        changed = None
    whole = (f"<details><summary>the whole config.yaml</summary><pre>{esc(yaml.safe_dump(f['config'], sort_keys=False))}"
             "</pre></details>")
    if changed is None:
        return whole
    if not changed:
        return "<p>Every key has its default value.</p>" + whole
    rows = [[f"<code>{esc(k)}</code>", f"<code>{esc(v)}</code>", f"<code>{esc(d)}</code>"] for k, v, d in changed]
    return (f"<p>{len(changed)} keys differ from lorafit's defaults.</p>" + table(["key", "this run", "default"], rows)
            + whole)


PROVENANCE = [("started", "started"), ("command", "command"), ("lorafit_version", "lorafit version"),
              ("config", "config file"), ("git_commit", "git commit of the config's repository"),
              ("git_dirty", "config file changed since that commit")]


def _environment(f: dict) -> str:
    m = f["metrics"]
    env = m.environment if m else None
    origin = (m.provenance or {}) if m else {}
    out = ""
    if origin:
        out += "<h3>Provenance</h3>" + table(["", ""], [[esc(label), f"<code>{esc(origin[k])}</code>"]
                                                       for k, label in PROVENANCE if k in origin])
    if not env:
        return out + missing("This run did not record its environment (metrics.json has no environment).")
    return out + table(["", ""], [[esc(k), esc(v)] for k, v in env.items()])


SECTIONS = [
    ("headline", "Results", _headline), ("budget", "Parameter budget", _budget), ("data", "Data at every stage", _data),
    ("curves", "Training curves", _curves), ("confusion", "Validation: confusion and per class", _confusion),
    ("lengths", "Text lengths", _lengths), ("samples", "Samples", _samples),
    ("prior", "Target distribution and label prior", _prior), ("timing", "Time per stage", _timing),
    ("config", "Config", _config), ("environment", "Environment", _environment),
]


def render_report(facts: dict) -> str:
    """The whole ``report.html`` page from :func:`lorafit.report.report_facts`."""
    cfg = facts["config"]
    model = _get(cfg, "model", "name")
    sub = f"lorafit run <b>{esc(facts['name'])}</b>" + (f" &middot; model <code>{esc(model)}</code>" if model else "")
    sub += f" &middot; classes: {esc(', '.join(facts['labels']))}"
    return page(f"lorafit run: {facts['name']}", sub, [(sid, title, fn(facts)) for sid, title, fn in SECTIONS])


# ------------------------------------------------------------------ the model card


def render_model_card(cfg, m: RunFacts, generator: str = "") -> str:
    """A Hugging Face model card (README.md with YAML front matter) for a run's LoRA adapter: with
    the results when ``m`` is a finished run's :class:`RunMetrics`."""
    from lorafit.export import card_data

    results = m if isinstance(m, RunMetrics) else None

    labels = list(map(str, cfg.data.labels or []))  # none yet: a config whose run infers them from its data
    classes = f"{len(labels)} classes" if labels else "the classes of its data"
    # the front matter is huggingface_hub's ModelCardData: base model, licence, language, datasets, eval results, budget
    front = card_data(cfg, m.to_dict(), "peft").to_yaml()
    lo, tr, a, st = cfg.lora, cfg.train, cfg.augment, cfg.selftrain
    b = m.budget
    n_adapters = ((results and results.ensemble) or {}).get("adapters") or b.get("adapters") or cfg.predictor_adapters
    what = (f"A LoRA adapter (PEFT) with a classification head for {classes}" if n_adapters == 1 else
            f"An ensemble of {n_adapters} LoRA adapters (PEFT) on one frozen base, each with its own classification "
            f"head for {classes} (lorafit averages their probabilities)")
    out = ["---", front.strip(), "---", "",
           f"# {cfg.name}: LoRA text classifier on `{cfg.model.name}`", "",
           f"{what}, trained by lorafit under a trainable-parameter budget.", "",
           ("Labels (id: name): " + ", ".join(f"{i}: {n}" for i, n in enumerate(labels)) if labels else
            "Labels: inferred from the data when the run loads it (data.labels is not set)"), "",
           "## Trainable-parameter budget", ""]
    if b:
        out += ["| parameters | count |", "|---|---:|"]
        out += [f"| {k} | {v:,} |" for k, v in (b.get("breakdown") or {}).items()]
        if b.get("adapters", 1) > 1:
            each = b.get("trainable_per_adapter", 0)
            out.append(f"| x {b['adapters']} adapters ({each:,} each) | {b['trainable']:,} |")
        out += [f"| **trainable** | **{b['trainable']:,}** |", f"| limit (budget.max_trainable) | {b['max_trainable']:,} |",
                f"| all parameters | {b.get('total', 0):,} |", ""]
    else:
        out += [f"Limit: {cfg.budget.max_trainable:,} trainable parameters.", ""]
    d, ar = m.data, m.augment.get("rows") or {}
    out += ["## Training data and augmentation", "",
            f"- source: `{cfg.data.source}`" + (f" ({d['source_rows']:,} rows)" if "source_rows" in d else ""),
            f"- validation: `{cfg.data.validation}`" if cfg.data.validation
            else f"- validation: {cfg.data.val_fraction:g} of the source, stratified",
            f"- unlabeled target set: `{cfg.data.target}`" if cfg.data.target else "- no unlabeled target set"]
    if "train_rows" in d:
        out.append(f"- training rows: {d['train_rows']:,} from the source; {m.train_rows if m.train_rows is not None else d['train_rows']:,} "
                   "after augmentation")
    out.append(f"- WordNet synonyms: {'on' if a.synonyms.enabled else 'off'}"
               + (f" ({ar['synonyms']:,} copies)" if "synonyms" in ar else ""))
    out.append(f"- language model adapted to the target texts: {'`' + a.lm.model + '`' if a.lm.enabled else 'off'}"
               + generator)
    out.append(f"- generated samples: {'on' if a.generate.enabled else 'off'}"
               + (f" ({ar.get('synthetic_generated', 0):,} generated, {ar.get('synthetic', 0):,} kept by selection)"
                  if "synthetic_generated" in ar else ""))
    out.append("- self-training on the target set: "
               + (f"{st.rounds} round(s) ({st.mode}), threshold {st.threshold:g}" if st.enabled else "off"))
    out += ["", "## Settings", "",
            f"- LoRA: r={lo.r}, alpha={lo.lora_alpha:g}, dropout={lo.lora_dropout:g}, target modules "
            f"{list(lo.target_modules)}, bias={lo.bias}, modules_to_save={lo.modules_to_save}",
            f"- training: {tr.epochs:g} epochs, batch {tr.batch_size}, learning rate {tr.learning_rate:g}, "
            f"{tr.lr_scheduler} schedule, warmup {tr.warmup_ratio:g}, precision {tr.precision}, seed {tr.seed}",
            f"- max length {cfg.model.max_length} tokens; target prior: {cfg.predict.prior}", ""]
    extra = []
    if n_adapters > 1:
        extra.append(f"{n_adapters} adapters averaged, adapter i seeded seed + 1000 * i (train.adapters {tr.adapters}"
                     + (f", selftrain.students {st.students}, selftrain.ensemble_teacher {st.ensemble_teacher}"
                        if st.enabled and st.mode == "student" else "") + ")")
    if tr.average_checkpoints > 1:
        extra.append(f"each adapter's weights averaged over its last {tr.average_checkpoints} checkpoints")
    if extra:
        out.insert(-1, "- " + "; ".join(extra))
    out += ["## Results", ""]
    if results:
        out += [f"- validation accuracy: {pct(results.val_accuracy)}; macro-F1: {pct(results.val_macro_f1)}"]
        if results.restored:  # which evaluation's weights these are
            out.append(f"- {'main training: ' if results.selftrain else ''}{restored_line(results.restored)}")
        origin = results.provenance or {}
        if origin:
            out.append(f"- trained with lorafit {origin.get('lorafit_version', '?')}, started {origin.get('started', '?')}"
                       + (f", config at git commit `{origin['git_commit'][:12]}`"
                          + (" (with uncommitted changes)" if origin.get("git_dirty") else "")
                          if origin.get("git_commit") else ""))
        if results.ensemble:
            e = results.ensemble
            out.append("- validation accuracy per adapter: " + ", ".join(
                f"{n} {pct(a)}" for n, a in zip(e.get("names", []), e.get("val_accuracy_per_adapter", []))))
        if results.target:
            dist = ", ".join(f"{n} {c:,}" for n, c in zip(labels, results.target["predicted_distribution"]))
            out.append(f"- target set: {results.target['rows']:,} rows predicted ({dist})")
        out.append("")
        pc = results.val.get("per_class") or {}
        if pc:
            out += ["| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
            out += [f"| {n} | {pct(c['precision'])} | {pct(c['recall'])} | {pct(c['f1'])} | {c['support']:,} |"
                    for n, c in pc.items()]
            out.append("")
    else:
        out += ["Evaluation pending: this card is rewritten with results when the run finishes.", ""]
    out += ["## How to use", "", "```python",
            "import json",
            "from peft import AutoPeftModelForSequenceClassification",
            "from transformers import AutoTokenizer", "",
            "folder = \"path/to/this/folder\"",
            "labels = json.load(open(f\"{folder}/labels.json\"))  # the head's class names",
            "model = AutoPeftModelForSequenceClassification.from_pretrained(",
            "    folder, id2label={int(i): n for i, n in labels[\"id2label\"].items()}, label2id=labels[\"label2id\"]).eval()",
            "tokenizer = AutoTokenizer.from_pretrained(folder)",
            f"batch = tokenizer([\"some text\"], truncation=True, max_length={cfg.model.max_length}, "
            "padding=True, return_tensors=\"pt\")",
            "print([model.config.id2label[i] for i in model(**batch).logits.argmax(-1).tolist()])", "```", "",
            "With lorafit: `lorafit predict RUN_DIR` (cleans texts as at training time and applies the run's "
            "label prior), or `lorafit.load(RUN_DIR).predict(texts)`. `lorafit export RUN_DIR --merged DIR` writes "
            "a plain transformers model that `pipeline(\"text-classification\", model=DIR)` loads with no "
            "arguments. PEFT loads the base model named by `base_model_name_or_path` in adapter_config.json "
            f"(`{hub_model_id(str(cfg.model.name))}`); the bundled MiniLM is placed in the Hugging Face cache under "
            "its Hub id, so it also loads offline.", "",
            *([f"This folder holds {n_adapters} adapters: `default` at the top and the others in sub-folders "
               "(PEFT's layout). The snippet above loads `default` alone; load the others with "
               "`model.load_adapter(\"path/to/this/folder/NAME\", adapter_name=\"NAME\")` and average the softmax "
               "probabilities of each (`model.set_adapter(NAME)`), as lorafit does.", ""] if n_adapters > 1 else []),
            "## Limitations", "",
            "- Validation numbers come from the source distribution; the target set is unlabeled, so accuracy "
            "there is unknown. The predicted target distribution and the EM prior estimate in report.html are "
            "the only target-side signals.",
            "- lorafit cleans texts (HTML entities, whitespace) before training and prediction; raw PEFT use "
            "without that cleaning may score slightly differently.",
            "- Synthetic samples are written by a language model and labeled by their prompt's class; some do "
            "not match their label.",
            f"- Texts longer than {cfg.model.max_length} tokens are truncated.", ""]
    return "\n".join(out)
