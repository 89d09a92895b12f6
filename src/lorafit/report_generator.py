"""The generator's part of the run page and the model card: which language model wrote the run's
synthetic samples (name, license, size), how it was adapted to the target texts (held-out
perplexity before and after), how fast it wrote, and how good the samples are."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from lorafit.io_utils import read_json_or
from lorafit.report_page import esc, num, pct, secs, table
import lorafit.runs as runs
from lorafit.runs import RunFacts


def generator_facts(run_dir: Path, cfg, metrics: Optional[RunFacts]) -> Optional[dict]:
    """What wrote the run's synthetic samples and how good they are: the LM (name, license, size),
    its adaptation (method, steps, held-out target perplexity before and after), the generation
    speed, and the quality measures of the generated and ``augment.extra`` samples. None when the
    run generated nothing and measured no extra samples."""
    lm_dir = Path(cfg.augment.lm.output) if cfg is not None and cfg.augment.lm.output else run_dir / runs.LM
    adapt = read_json_or(lm_dir / runs.TRAIN_LOG, {})
    manifest = read_json_or(run_dir / runs.SYNTHETIC / "manifest.json", {})
    quality = ((metrics.augment.get("quality") if metrics else None)
               or read_json_or(run_dir / runs.AUGMENT_REPORT, {}).get("quality") or {})
    if not (adapt or manifest or quality):
        return None
    # the samples came from the adapted LM unless augment.generate.model named another: then its
    # base model (recorded by the adaptation) is the generator's identity
    own_lm = cfg is None or not cfg.augment.generate.model
    gen = (adapt.get("generator") if own_lm else None) or manifest.get("generator") or adapt.get("generator") or {}
    return {"generator": gen, "stand_in": gen.get("source") == "random init",
            "adaptation": {k: adapt.get(k) for k in ("method", "format", "global_step", "tokens_trained",
                                                      "heldout_perplexity", "wall_time_s", "trainable_parameters")}
            if adapt else None,
            "generation": {"samples": manifest.get("samples"), **(manifest.get("this_call") or {})} if manifest else None,
            "quality": quality}


QUALITY_ROWS = [("judge_fidelity", "label fidelity: an independent judge agrees with the prompt's class", pct),
                ("teacher_fidelity", "label fidelity: the teacher agrees", pct),
                ("distinct_1", "distinct-1 (unique words / words)", lambda v: f"{v:.3f}"),
                ("distinct_2", "distinct-2 (unique word pairs / pairs)", lambda v: f"{v:.3f}"),
                ("near_duplicate_rate", "near duplicates", pct),
                ("length_ks", "length distance to the target texts (KS)", lambda v: f"{v:.3f}"),
                ("target_separability", "told from the target texts (AUC; 0.5 = alike)", lambda v: f"{v:.3f}"),
                ("empty", "empty samples", num)]


def render_generator(g: Optional[dict]) -> str:
    """The generator's part of the samples section (empty when the run generated nothing)."""
    if not g:
        return ""
    out = "<h3>The generator</h3>"
    gen, rows = g.get("generator") or {}, []
    if g.get("stand_in"):
        out += ("<p class=warn>The language model here is a small GPT-2 initialised at random and trained only on "
                "the target texts: a stand-in that exercises the stage, not a generator. Its samples are not "
                "meant to read as text.</p>")
    if gen:
        rows.append(["model", esc(gen.get("name") or gen.get("model"))])
        rows.append(["from", f"<code>{esc(gen.get('model'))}</code> ({esc(gen.get('source'))})"])
        rows.append(["license", esc(gen.get("license") or "not stated")])
        if gen.get("parameters"):
            rows.append(["parameters", num(gen["parameters"])])
    ad = g.get("adaptation")
    if ad:
        ppl = ad.get("heldout_perplexity") or {}
        rows.append(["adapted to the target texts", f"{esc(ad.get('method'))} fine-tuning, {num(ad.get('global_step') or 0)} "
                     f"steps, {num(ad.get('tokens_trained') or 0)} tokens, {secs(ad.get('wall_time_s') or 0)}"])
        if ppl.get("before") is not None:
            rows.append(["held-out target perplexity", f"{ppl['before']:.1f} before, {ppl['after']:.1f} after"])
    gn = g.get("generation")
    if gn and gn.get("samples_per_s"):
        rows.append(["generation", f"{num(gn.get('samples_generated') or 0)} samples in {secs(gn.get('wall_s') or 0)} "
                     f"({gn['samples_per_s']:.1f} samples/s)"])
    if rows:
        out += table(["", ""], rows)
    q = g.get("quality") or {}
    kinds = [k for k in ("synthetic", "extra") if q.get(k)]
    if kinds:
        names = {"synthetic": "generated here", "extra": "augment.extra files"}
        body = [[esc(label)] + [fmt(q[k][key]) if q[k].get(key) is not None else "" for k in kinds]
                for key, label, fmt in QUALITY_ROWS if any(q[k].get(key) is not None for k in kinds)]
        body.append(["words per sample (mean / median)"] + [
            f"{q[k]['words']['mean']:.1f} / {q[k]['words']['median']:g}" if q[k].get("words") else "" for k in kinds])
        out += "<h3>Quality of the synthetic samples (before selection)</h3>"
        out += table(["measure"] + [f"{names[k]} ({num(q[k]['samples'])})" for k in kinds], body)
        out += ("<p>The judge is a bag-of-words naive Bayes trained on the labeled source rows only. Distinct-n "
                "grows as a set shrinks: compare sets of similar size.</p>")
    return out


def generator_line(g: Optional[dict]) -> str:
    """`` (SmolLM2 ..., apache-2.0, 134,515,008 parameters; held-out target perplexity 213 -> 149)``"""
    if not g:
        return ""
    parts = [g.get("name") or g.get("model"), g.get("license") or "license not stated",
             f"{g['parameters']:,} parameters" if g.get("parameters") else None]
    ppl = g.get("heldout_perplexity") or {}
    tail = f"; held-out target perplexity {ppl['before']:.1f} -> {ppl['after']:.1f}" if ppl.get("before") else ""
    return " (" + ", ".join(p for p in parts if p) + tail + ")"
