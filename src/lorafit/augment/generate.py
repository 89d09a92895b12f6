"""Generate labeled training samples with a (target-adapted) causal LM and a per-class prompt bank.

The report prompted GPT-2 per class for 3,000 samples each (top-k 50, top-p 0.95, repetition
penalty 1.3), with each sample's length in words drawn from a skew-normal fitted to the training
texts' lengths and clipped to [1, 128].

The run is planned before anything is generated, so it is deterministic and resumable:

1. the plan: for every sample its label, prompt and target length, drawn from ``seed``;
2. the plan is ordered by target length (a batch holds similar lengths, so little is wasted on
   samples that are cut early) and cut into shards of ``batch_size`` samples, each with its own
   seed derived from ``seed`` and the shard number;
3. each shard is generated in one ``model.generate`` call after ``torch.manual_seed(shard seed)``
   and saved atomically as ``out_dir/shards/shard-XXXXX.jsonl``. A restarted call skips shards on
   disk, so a killed run loses at most one shard and never duplicates one. With ``world_size``
   processes, process ``rank`` generates the shards ``j`` with ``j % world_size == rank``.
4. when every shard exists, the samples are assembled in plan order into ``out_dir/samples.jsonl``
   with ``out_dir/manifest.json`` (counts, length statistics, settings, speed).

Sampling is batched, so a sample is reproduced by its shard (its seed is the ``seed`` column),
not on its own.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

import datasets
import numpy as np
import torch
import yaml
from scipy import stats
from tqdm.auto import tqdm

from lorafit.augment.causal_lm import describe_causal_lm, load_causal_lm
from lorafit.augment.sampling import sample
from lorafit.data.clean import word_count
from lorafit.data.io import DataError, resolve_path
from lorafit.io_utils import atomic_write_json, atomic_write_text
from lorafit.precision import generation_precision, torch_dtype

log = logging.getLogger(__name__)

COLUMNS = ("text", "label", "prompt", "seed", "target_words")


# ------------------------------------------------------------------ prompt bank


def load_prompt_bank(path: os.PathLike | str, label_names: Sequence[str]) -> dict[int, list[str]]:
    """Read a YAML mapping ``class name -> list of prompts``; return ``{label id: prompts}``.

    Class names match ``label_names`` case-insensitively; every class needs at least one
    non-empty string prompt.
    """
    p = resolve_path(str(path))
    name = label_names[0] if label_names else "Sports"
    example = f'e.g.\n  {name}:\n    - "The match ended"\n    - "In the final"'
    if not p.is_file():
        raise DataError(f"prompt bank '{p}' does not exist. Set augment.generate.prompts to a YAML file that maps "
                        f"each class name to a list of prompts, {example}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DataError(f"{p}: is not valid YAML: {e}") from None
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{p}: must map each class name to a list of prompts, {example}")
    by_name = {str(n).strip().lower(): i for i, n in enumerate(label_names)}
    bank: dict[int, list[str]] = {}
    for key, prompts in raw.items():
        label = by_name.get(str(key).strip().lower())
        if label is None:
            raise DataError(f"{p}: unknown label '{key}'; the class names are {list(label_names)} (data.labels). "
                            "Rename the key or fix data.labels.")
        if label in bank:
            raise DataError(f"{p}: label '{key}' appears twice (names are matched case-insensitively); "
                            "merge its lists.")
        if not isinstance(prompts, list) or not prompts:
            raise DataError(f"{p}: label '{key}' has no prompts ({prompts!r}); give it a non-empty list of strings.")
        for j, q in enumerate(prompts):
            if not isinstance(q, str):
                raise DataError(f"{p}: label '{key}', prompt {j} is {q!r} ({type(q).__name__}), not a string; "
                                "put it in quotes.")
            if not q.strip():
                raise DataError(f"{p}: label '{key}', prompt {j} is empty; remove it or write a prompt.")
        bank[label] = list(prompts)
    missing = [str(label_names[i]) for i in range(len(label_names)) if i not in bank]
    if missing:
        raise DataError(f"{p}: no prompts for label(s) {missing}; every class needs at least one prompt.")
    return dict(sorted(bank.items()))


SOURCE_PROMPTS = "source"


def source_openings(texts: Sequence[str], labels: Sequence[int], label_names: Sequence[str],
                    words: int) -> dict[int, list[str]]:
    """A prompt bank of openings: the first ``words`` words of every labeled text with at least
    ``words + 2`` words, by class (distinct, in the data's order). The label of a text is the label
    of its opening, so the bank needs no hand-written prompts and has as many openings as rows."""
    bank: dict[int, list[str]] = {}
    seen: set[tuple[int, str]] = set()
    for text, label in zip(texts, labels):
        w = str(text).split()
        if len(w) < words + 2:
            continue
        opening = " ".join(w[:words])
        if (int(label), opening) not in seen:
            seen.add((int(label), opening))
            bank.setdefault(int(label), []).append(opening)
    missing = [str(label_names[i]) for i in range(len(label_names)) if i not in bank]
    if missing:
        raise DataError(f"augment.generate.prompts=source: no training row of class(es) {missing} has "
                        f"{words + 2} words or more to open a sample; lower augment.generate.opening_words or "
                        "give a prompt bank")
    return dict(sorted(bank.items()))


# ------------------------------------------------------------------ lengths


def fit_length_distribution(texts: Sequence[str]) -> tuple[float, float, float]:
    """Fit a skew-normal to the word counts of ``texts``; return its ``(a, loc, scale)``."""
    counts = np.array([word_count(t) for t in texts], dtype=np.float64)
    if len(counts) < 3 or counts.std() == 0:
        raise DataError(f"cannot fit a length distribution to {len(counts)} text(s) "
                        f"{'of one length' if len(counts) >= 3 else ''}; give more training texts or set "
                        "augment.generate.length.mode=given with a, loc and scale.")
    a, loc, scale = stats.skewnorm.fit(counts)
    return float(a), float(loc), float(scale)


def sample_lengths(n: int, a: float, loc: float, scale: float, min_words: int, max_words: int,
                   rng: np.random.Generator) -> np.ndarray:
    """``n`` target lengths in words: skew-normal draws, rounded and clipped to [min_words, max_words]."""
    if not 1 <= min_words <= max_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got {min_words}, {max_words}")
    x = stats.skewnorm.rvs(a, loc=loc, scale=scale, size=n, random_state=rng)
    return np.clip(np.rint(x), min_words, max_words).astype(np.int64)


# ------------------------------------------------------------------ the plan


def build_plan(prompt_bank: dict[int, list[str]], per_class: int, a: float, loc: float, scale: float,
               min_words: int, max_words: int, seed: int) -> list[dict]:
    """Every sample to generate, in plan order (class by class): index, label, prompt, target_words."""
    rng = np.random.default_rng(seed)
    plan = []
    for label, prompts in sorted(prompt_bank.items()):
        lengths = sample_lengths(per_class, a, loc, scale, min_words, max_words, rng)
        choice = rng.integers(len(prompts), size=per_class)
        for k in range(per_class):
            plan.append({"index": len(plan), "label": int(label), "prompt": prompts[choice[k]],
                         "target_words": int(lengths[k])})
    return plan


def shard_plan(plan: list[dict], batch_size: int, seed: int) -> list[tuple[list[int], int]]:
    """Order the plan by target length and cut it into shards: ``[(plan indices, shard seed), ...]``."""
    order = sorted(range(len(plan)), key=lambda i: (plan[i]["target_words"], i))
    shards = []
    for j, start in enumerate(range(0, len(order), batch_size)):
        shard_seed = int(np.random.SeedSequence([seed, j]).generate_state(1)[0])
        shards.append((order[start:start + batch_size], shard_seed))
    return shards


def shard_path(out_dir: Path, j: int) -> Path:
    return out_dir / "shards" / f"shard-{j:05d}.jsonl"


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: line {n} is not valid JSON ({e}); "
                                    "delete the file to regenerate it.") from None
    return rows


def _check_settings(out_dir: Path, settings: dict) -> None:
    """Refuse to mix shards generated with other settings into this run."""
    plan_file = out_dir / "plan.json"
    if plan_file.is_file():
        old = json.loads(plan_file.read_text(encoding="utf-8"))
        if old != settings:
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise DataError(
                f"{out_dir}: holds samples generated with other settings (changed: {', '.join(changed)}). Delete "
                "the folder to start over, or write to another folder."
            )
    else:
        atomic_write_json(plan_file, settings)


# ------------------------------------------------------------------ generation


def encode_prompts(tokenizer, prompts: list[str], prompt_format: str = "plain") -> list[list[int]]:
    """Token ids of each prompt as the LM continues it.

    ``plain``: the prompt after the text separator the LM was adapted with (EOS: a text starts after
    it, as in the packed training stream; for GPT-2 this is its BOS). ``chat``: the prompt as the user's
    turn of the tokenizer's chat template, with the assistant's turn opened (an instruction-tuned LM).
    """
    if prompt_format == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise DataError("augment.generate.format 'chat' needs an LM whose tokenizer has a chat template; "
                            "this one has none. Use format: plain.")
        return [list(tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                   tokenize=True, return_dict=False)) for q in prompts]
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    sep = tokenizer.eos_token_id
    return [[sep, *x] for x in ids]


def max_positions(model) -> Optional[int]:
    """Tokens the causal LM can attend over (GPT-2: 1,024), or None when its config has no limit."""
    c = model.config
    n = getattr(c, "n_positions", None) or getattr(c, "max_position_embeddings", None)
    return n if isinstance(n, int) and n > 0 else None


def new_tokens_for(target_words: int) -> int:
    """Tokens generated for a sample of ``target_words`` words: ~1.3 GPT-2 tokens per English
    word; 1.5x leaves room, the text is cut to its target after."""
    return math.ceil(1.5 * target_words) + 8


def _generate_shard(model, tokenizer, plan: list[dict], members: list[int], shard_seed: int, *, top_k: int,
                    top_p: float, temperature: float, repetition_penalty: float, prompt_format: str,
                    keep_prompt: bool = False) -> list[dict]:
    targets = [plan[i]["target_words"] for i in members]
    given = [word_count(plan[i]["prompt"]) if keep_prompt else 0 for i in members]  # words the prompt supplies
    prompts = encode_prompts(tokenizer, [plan[i]["prompt"] for i in members], prompt_format)
    budgets = [new_tokens_for(t) for t in targets]
    limit = max_positions(model)
    if limit is not None:  # past its positions GPT-2 fails (an index error; on CUDA a device-side assert)
        width = max(len(p) for p in prompts)
        room = limit - width
        if room < 1:
            raise DataError(f"a prompt of {width} tokens leaves no room in the {limit} "
                            "positions of the LM; shorten the prompts in augment.generate.prompts.")
        budgets = [min(b, room) for b in budgets]
    torch.manual_seed(shard_seed)
    new_tokens = sample(model, tokenizer, prompts, budgets, [max(1, t - g) for t, g in zip(targets, given)],
                        top_k=top_k, top_p=top_p,
                        temperature=temperature, repetition_penalty=repetition_penalty,
                        stop_ids=[tokenizer.eos_token_id])
    texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)  # the prompt is not part of the sample
    rows = []
    for i, text, target in zip(members, texts, targets):
        if keep_prompt:  # the prompt is the text's opening words; the LM chose the space after it (or none)
            text = plan[i]["prompt"] + text
        rows.append({"index": i, "text": " ".join(text.split()[:target]), "label": plan[i]["label"],
                     "prompt": plan[i]["prompt"], "seed": shard_seed, "target_words": target})
    return rows


def _generate_rank(job: dict, rank: int, world_size: int) -> tuple[int, Optional[dict]]:
    """Generate the missing shards ``j`` with ``j % world_size == rank``; return (samples generated,
    the generator's description or None when there was nothing to do)."""
    out_dir, shards, plan = job["out_dir"], job["shards"], job["plan"]
    mine = [j for j in range(len(shards)) if j % world_size == rank]
    todo = [j for j in mine if not shard_path(out_dir, j).is_file()]
    if not todo:
        return 0, None
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    dtype = torch_dtype(generation_precision(job["precision"], device))
    tokenizer, model = load_causal_lm(job["model_dir"], dtype=dtype, trust_remote_code=job["trust_remote_code"])
    model.to(device).eval()
    generator = describe_causal_lm(job["model_dir"], model)
    limit, max_words = max_positions(model), job["max_words"]
    if limit is not None and new_tokens_for(max_words) >= limit:
        log.warning("augment.generate.length.max_words=%d asks for up to %d new tokens, but '%s' holds %d "
                    "positions: the longest samples are cut to what fits after their prompt", max_words,
                    new_tokens_for(max_words), job["model_dir"], limit)
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), unit="shard",
               desc=f"generate{f' rank {rank}/{world_size}' if world_size > 1 else ''}")
    generated = 0
    for j in todo:
        members, shard_seed = shards[j]
        rows = _generate_shard(model, tokenizer, plan, members, shard_seed, **job["sampling"])
        atomic_write_text(shard_path(out_dir, j), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        generated += len(rows)
        bar.update(1)
    bar.close()
    return generated, generator


def _one_thread() -> None:
    torch.set_num_threads(1)


def _generate_in_processes(job: dict, processes: int) -> tuple[int, Optional[dict]]:
    """The shards split over ``processes`` worker processes of one thread each (on a CPU a small LM's
    matmuls scale better across processes than across the threads of one). Same shards, same seeds:
    the samples are those of a single process."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    log.info("generating with %d processes of one thread each", processes)
    with ProcessPoolExecutor(processes, mp_context=mp.get_context("spawn"), initializer=_one_thread) as pool:
        results = [f.result() for f in [pool.submit(_generate_rank, job, r, processes) for r in range(processes)]]
    return sum(n for n, _ in results), next((g for _, g in results if g), None)


def _length_stats(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {}
    return {"mean": float(v.mean()), "std": float(v.std()), "min": int(v.min()), "median": float(np.median(v)),
            "max": int(v.max())}


def generate_samples(model_dir: str, prompt_bank: dict[int, list[str]], per_class: int, out_dir: os.PathLike | str,
                     *, a: float, loc: float, scale: float, min_words: int, max_words: int, top_k: int = 50,
                     top_p: float = 0.95, temperature: float = 1.0, repetition_penalty: float = 1.3,
                     batch_size: int = 32, seed: int = 42, rank: int = 0, world_size: int = 1,
                     precision: str = "auto", prompt_format: str = "plain", keep_prompt: bool = False,
                     trust_remote_code: bool = False, processes: int = 1) -> Optional[datasets.Dataset]:
    """Generate ``per_class`` samples for each class of ``prompt_bank`` with the LM at ``model_dir``.

    Returns a ``Dataset`` with columns text, label, prompt, seed (the shard seed) and target_words,
    in plan order: ``per_class * len(prompt_bank)`` rows, some possibly empty (a warning counts
    them). Returns None when this is one of several processes and other ranks' shards are still
    missing; the process that completes the set assembles it. ``precision``: the LM's precision
    (``auto``: bf16 where the device computes it natively; see :func:`lorafit.precision.generation_precision`).
    ``processes``: on a CPU, split the shards over this many worker processes of one thread each.
    """
    out_dir = Path(out_dir)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if per_class < 1 or batch_size < 1:
        raise ValueError(f"per_class and batch_size must be >= 1, got {per_class}, {batch_size}")
    plan = build_plan(prompt_bank, per_class, a, loc, scale, min_words, max_words, seed)
    shards = shard_plan(plan, batch_size, seed)
    settings = {
        "model": str(model_dir), "seed": seed, "per_class": per_class, "batch_size": batch_size,
        "prompt_bank": {str(k): v for k, v in prompt_bank.items()},
        "length": {"a": a, "loc": loc, "scale": scale, "min_words": min_words, "max_words": max_words},
        "sampling": {"top_k": top_k, "top_p": top_p, "temperature": temperature,
                     "repetition_penalty": repetition_penalty},
        # absent at their defaults, so the settings of folders written before these keys still match
        **({"format": prompt_format} if prompt_format != "plain" else {}),
        **({"keep_prompt": True} if keep_prompt else {}),
    }
    _check_settings(out_dir, settings)

    start = time.time()
    job = dict(model_dir=str(model_dir), plan=plan, shards=shards, out_dir=out_dir, max_words=max_words,
               sampling=dict(top_k=top_k, top_p=top_p, temperature=temperature, repetition_penalty=repetition_penalty,
                             prompt_format=prompt_format, keep_prompt=keep_prompt),
               precision=precision, trust_remote_code=trust_remote_code)
    if processes > 1 and world_size == 1 and not torch.cuda.is_available():
        generated, generator = _generate_in_processes(job, processes)
    else:
        generated, generator = _generate_rank(job, rank, world_size)
    wall = time.time() - start

    missing = [j for j in range(len(shards)) if not shard_path(out_dir, j).is_file()]
    if missing:
        log.info("rank %d/%d done; %d shard(s) of other ranks still missing (e.g. %s)", rank, world_size,
                 len(missing), shard_path(out_dir, missing[0]).name)
        return None
    return _assemble(out_dir, plan, len(shards), settings, wall, generated, generator)


def _assemble(out_dir: Path, plan: list[dict], n_shards: int, settings: dict, wall: float,
              generated: int, generator: Optional[dict] = None) -> datasets.Dataset:
    rows = [r for j in range(n_shards) for r in _read_jsonl(shard_path(out_dir, j))]
    rows.sort(key=lambda r: r["index"])
    if [r["index"] for r in rows] != list(range(len(plan))):
        raise DataError(f"{out_dir / 'shards'}: the shard files do not match the plan ({len(rows)} rows for "
                        f"{len(plan)} planned samples); delete the folder and generate again.")
    empty = [r for r in rows if not r["text"]]
    if len(empty) == len(rows):
        raise DataError(f"{out_dir}: the model produced no text at all for {len(rows)} prompts. Check that "
                        f"'{settings['model']}' is a trained causal LM and that the prompts suit it.")
    if empty:
        per_class = {c: sum(r["label"] == c for r in empty) for c in sorted({r["label"] for r in empty})}
        log.warning("%d of %d generated samples are empty (per class: %s)", len(empty), len(rows), per_class)

    samples = out_dir / "samples.jsonl"
    fresh = generated > 0  # this call (re)generated shards: rewrite the assembled files
    if fresh or not samples.is_file():
        atomic_write_text(samples, "".join(json.dumps({k: r[k] for k in COLUMNS}, ensure_ascii=False) + "\n"
                                           for r in rows))
    if fresh or not (out_dir / "manifest.json").is_file():
        labels = sorted({r["label"] for r in rows})
        atomic_write_json(out_dir / "manifest.json", {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "samples": len(rows),
            "shards": n_shards,
            "per_class": {str(c): sum(r["label"] == c for r in rows) for c in labels},
            "non_empty_per_class": {str(c): sum(r["label"] == c and bool(r["text"]) for r in rows) for c in labels},
            "empty": len(empty),
            "target_words": _length_stats([r["target_words"] for r in rows]),
            "output_words": _length_stats([word_count(r["text"]) for r in rows]),
            "settings": settings,
            "generator": generator,
            "this_call": {"samples_generated": generated, "wall_s": round(wall, 3),
                          "samples_per_s": round(generated / wall, 3) if generated and wall > 0 else None},
            "files": {"samples": str(samples), "shards": str(out_dir / "shards")},
        })
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.Value("int64"),
                                  "prompt": datasets.Value("string"), "seed": datasets.Value("int64"),
                                  "target_words": datasets.Value("int64")})
    return datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in COLUMNS}, features=features)
