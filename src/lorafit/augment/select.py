"""Select usable synthetic samples: clean them, then drop, in this order,

1. ``short``: empty texts or texts under ``min_words`` words;
2. ``duplicate_of_reference``: texts that equal a reference text (e.g. the training set);
3. ``exact_duplicate``: texts equal to an earlier kept text;
4. ``near_duplicate``: texts whose character 5-gram set has Jaccard similarity >= ``near_duplicate``
   with an earlier kept text;
5. ``teacher_disagrees``: texts a teacher model assigns to another class with probability
   >= ``teacher_confidence`` (only when ``teacher_probs`` is given). With ``disagree="relabel"``
   such rows are kept with the teacher's class instead, with ``disagree="downweight"`` kept with
   their label and a ``weight`` column of ``disagree_weight`` (the other rows 1).

Texts are compared after lower-casing and collapsing whitespace. The near-duplicate search is
exact (no MinHash sampling; shingles are 64-bit hashes) and fast: prefix filtering. With
shingles ordered rarest first, two sets with Jaccard >= t must share a shingle among the first
``|x| - ceil(t*|x|) + 1`` of each (Bayardo et al., "Scaling up all pairs similarity search", 2007;
plus the positional filter of Xiao et al., PPJoin, 2008), so only texts sharing a rare shingle
are compared.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Optional, Sequence

import datasets
import numpy as np

from lorafit.data.clean import clean_text, word_count

log = logging.getLogger(__name__)

SHINGLE = 5
RULES = ("short", "duplicate_of_reference", "exact_duplicate", "near_duplicate", "teacher_disagrees")
DISAGREE = ("drop", "relabel", "downweight")  # what happens to a row the teacher confidently contradicts


def _key(text: str) -> str:
    return " ".join(text.lower().split())


_PRIME = np.uint64(1099511628211)  # FNV prime: a polynomial hash of code points, mod 2**64


def _window_hashes(codes: np.ndarray, w: int) -> np.ndarray:
    """Hashes of all length-``w`` windows of ``codes``: c[i]*P^(w-1) + ... + c[i+w-1] mod 2**64."""
    h = np.zeros(len(codes) - w + 1, dtype=np.uint64)
    for m in range(w):
        h = h * _PRIME + codes[m: len(codes) - w + 1 + m]
    return h


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two sorted arrays of distinct values."""
    inter = np.intersect1d(a, b, assume_unique=True).size
    union = a.size + b.size - inter
    return inter / union if union else 1.0


def _ranked_sets(texts: Sequence[str], k: int = SHINGLE) -> list[np.ndarray]:
    """Per text, its distinct shingles as sorted global ranks (0 = the rarest in the collection).

    All texts are hashed in one pass over their concatenated code points; only shorter texts
    than ``k`` are hashed one by one.
    """
    keys = [_key(t) for t in texts]
    lengths = np.array([len(t) for t in keys], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(keys) else lengths
    codes = np.frombuffer("".join(keys).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    long_ = np.flatnonzero(lengths >= k)
    # windows of text i start at starts[i] .. starts[i] + lengths[i] - k
    n_windows = lengths[long_] - k + 1
    owner = np.repeat(long_, n_windows)
    pos = np.repeat(starts[long_] - np.concatenate([[0], np.cumsum(n_windows)[:-1]]), n_windows) + \
        np.arange(n_windows.sum())
    hashes = [_window_hashes(codes, k)[pos]] if len(codes) >= k else []
    owners = [owner]
    for i in np.flatnonzero(lengths < k):  # the whole text is its one shingle
        hashes.append(_window_hashes(codes[starts[i]: starts[i] + lengths[i]], int(lengths[i])))
        owners.append(np.array([i]))
    h = np.concatenate(hashes) if hashes else np.zeros(0, dtype=np.uint64)
    owner = np.concatenate(owners)
    # any fixed total order works for prefix filtering; rarest first keeps candidate lists short
    uniq, inverse, counts = _unique_inverse_counts(h)
    rank_of = np.empty(uniq.size, dtype=np.int64)
    rank_of[np.lexsort((uniq, counts))] = np.arange(uniq.size)
    pairs = np.sort((owner.astype(np.int64) << 32) | rank_of[inverse])  # by text, then rank
    pairs = pairs[np.concatenate([[True], pairs[1:] != pairs[:-1]])] if pairs.size else pairs
    bounds = np.searchsorted(pairs >> 32, np.arange(len(texts) + 1))
    ranks = pairs & 0xFFFFFFFF
    return [ranks[bounds[i]: bounds[i + 1]] for i in range(len(texts))]


def _unique_inverse_counts(values: np.ndarray):
    """``np.unique(values, return_inverse=True, return_counts=True)`` by one sort (numpy 2's
    hash-based unique is several times slower on millions of 64-bit values)."""
    order = np.argsort(values)
    ordered = values[order]
    new = np.ones(ordered.size, dtype=bool)
    new[1:] = ordered[1:] != ordered[:-1]
    group = np.cumsum(new) - 1
    inverse = np.empty(values.size, dtype=np.int64)
    inverse[order] = group
    counts = np.diff(np.append(np.flatnonzero(new), ordered.size))
    return ordered[new], inverse, counts


def near_duplicates(texts: Sequence[str], threshold: float) -> list[int]:
    """Positions of texts with Jaccard >= ``threshold`` (character 5-grams) to an earlier kept text.

    Greedy in order: the first of a group of near duplicates is kept. Exact, via prefix filtering:
    a text is compared only with kept texts that share a shingle in both prefixes and whose size
    and first shared position leave room for the required overlap.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
    t, eps = threshold, 1e-9  # eps keeps float rounding (0.7 * 10 = 7.000000000000001) from losing a pair
    sets = _ranked_sets(texts)
    n = len(sets)
    sizes = np.array([s.size for s in sets], dtype=np.int64)
    plen = sizes - np.ceil(t * sizes - eps).astype(np.int64) + 1
    # inverted index of every text's prefix: postings sorted by shingle rank, then text
    p_owner = np.repeat(np.arange(n), plen)
    p_pos = np.arange(plen.sum()) - np.repeat(np.cumsum(plen) - plen, plen)
    p_rank = np.concatenate([s[:m] for s, m in zip(sets, plen)]) if n else np.zeros(0, dtype=np.int64)
    order = np.lexsort((p_owner, p_rank))
    p_owner, p_pos, p_rank = p_owner[order], p_pos[order], p_rank[order]

    kept = np.zeros(n, dtype=bool)
    dropped = []
    for x in range(n):
        nx, prefix = sizes[x], sets[x][: plen[x]]
        lo, hi = np.searchsorted(p_rank, prefix, "left"), np.searchsorted(p_rank, prefix, "right")
        counts = hi - lo
        total = counts.sum()
        if total:
            # postings of the prefix shingles: text y, position j of the shingle in y, i in x
            at = np.repeat(lo - (np.cumsum(counts) - counts), counts) + np.arange(total)
            ys, js, i = p_owner[at], p_pos[at], np.repeat(np.arange(len(prefix)), counts)
            ny = sizes[ys]
            need = np.ceil(t / (1 + t) * (nx + ny) - eps)  # overlap needed for Jaccard >= t
            # Positional filter: at the first shingle x and y share, all shared ones sit at
            # positions >= i in x and >= j in y, so the overlap is at most 1 + min(rest of x,
            # rest of y); a later shared shingle gives a smaller bound, so testing every posting
            # keeps exactly the texts whose first one passes.
            ok = kept[ys] & (ny >= t * nx - eps) & (ny <= nx / t + eps) & \
                (1 + np.minimum(nx - i - 1, ny - js - 1) >= need)
            if ok.any() and any(jaccard(sets[x], sets[y]) >= t for y in np.unique(ys[ok]).tolist()):
                dropped.append(x)
                continue
        kept[x] = True
    return dropped


def teacher_disagreement(labels: Sequence[int], probs: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Which rows a teacher confidently contradicts: a boolean mask (its top class is not the row's
    label and has probability >= ``confidence``) and the teacher's top class per row."""
    probs = np.asarray(probs)
    pred = probs.argmax(1) if len(probs) else np.zeros(0, dtype=int)
    top = probs[np.arange(len(probs)), pred] if len(probs) else np.zeros(0)
    return (pred != np.asarray(labels, dtype=int)) & (top >= confidence), pred


def apply_disagreement(ds: datasets.Dataset, mask: np.ndarray, pred: np.ndarray, rule: str,
                       weight: float = 0.3) -> tuple[datasets.Dataset, int]:
    """Apply ``rule`` (:data:`DISAGREE`) to the rows of ``ds`` where ``mask`` is set: ``drop`` removes
    them, ``relabel`` gives them the class ``pred`` (the teacher's), ``downweight`` multiplies their
    ``weight`` (1 where the column is missing; it is added) by ``weight``. Returns the rows and how
    many rows the rule touched."""
    if rule not in DISAGREE:
        raise ValueError(f"unknown disagreement rule {rule!r}; use one of {DISAGREE}")
    mask = np.asarray(mask, dtype=bool)
    n = int(mask.sum())
    if rule == "drop":
        return (ds.select(np.flatnonzero(~mask)) if n else ds), n
    if rule == "relabel":
        labels = np.where(mask, pred, np.asarray(ds["label"][:], dtype=int)).astype(int).tolist()
        return _replace_column(ds, "label", labels, ds.features["label"]), n
    old = np.asarray(ds["weight"][:], dtype=np.float64) if "weight" in ds.column_names else np.ones(len(ds))
    weights = np.where(mask, old * weight, old).tolist()
    return _replace_column(ds, "weight", weights, datasets.Value("float64")), n


def _replace_column(ds: datasets.Dataset, name: str, values: list, feature) -> datasets.Dataset:
    """``ds`` with column ``name`` set to ``values`` (added last when it is new, else in its place)."""
    order = ds.column_names if name in ds.column_names else [*ds.column_names, name]
    if name in ds.column_names:
        ds = ds.remove_columns(name)
    return ds.add_column(name, values, feature=feature).select_columns(order)


def select_samples(ds: datasets.Dataset, min_words: int = 5, near_duplicate: Optional[float] = 0.8,
                   reference_texts: Optional[Sequence[str]] = None, teacher_probs: Optional[np.ndarray] = None,
                   teacher_confidence: float = 0.9, disagree: str = "drop",
                   disagree_weight: float = 0.3) -> tuple[datasets.Dataset, dict]:
    """Filter ``ds`` (``text``, ``label`` and any other columns) by the rules in the module docstring.

    ``reference_texts`` are compared as given (up to case and whitespace): pass cleaned texts.
    ``teacher_probs`` is an ``N x K`` array of class probabilities aligned with the rows of ``ds``.
    ``disagree``: ``drop`` the rows the teacher confidently contradicts, ``relabel`` them, or
    ``downweight`` them to ``disagree_weight`` (see :func:`apply_disagreement`).
    Returns the kept rows (texts cleaned, other columns unchanged) and a report:
    ``{"input", "kept", "removed": {rule: count}, "kept_per_class": {label: count}}`` (with
    ``relabeled`` or ``downweighted`` counts under the other rules).
    """
    if disagree not in DISAGREE:
        raise ValueError(f"unknown disagreement rule {disagree!r}; use one of {DISAGREE}")
    n = len(ds)
    if teacher_probs is not None:
        teacher_probs = np.asarray(teacher_probs)
        if teacher_probs.ndim != 2 or teacher_probs.shape[0] != n:
            raise ValueError(f"teacher_probs must be an array of shape ({n}, n_classes) aligned with the samples, "
                             f"got shape {teacher_probs.shape}")
    texts = [clean_text(t) for t in ds["text"][:]]
    labels = ds["label"][:]  # a list: reading a Column item by item is slow
    removed = dict.fromkeys(RULES, 0)

    keep = []
    for i, t in enumerate(texts):
        if not t or word_count(t) < min_words:
            removed["short"] += 1
        else:
            keep.append(i)

    # references (the training set) were cleaned when loaded; cleaning 120k texts again costs seconds
    reference = {_key(t) for t in reference_texts} if reference_texts is not None else set()
    seen: set[str] = set()
    survivors = []
    for i in keep:
        k = _key(texts[i])
        if k in reference:
            removed["duplicate_of_reference"] += 1
        elif k in seen:
            removed["exact_duplicate"] += 1
        else:
            seen.add(k)
            survivors.append(i)
    keep = survivors

    if near_duplicate is not None and keep:
        dropped = set(near_duplicates([texts[i] for i in keep], near_duplicate))
        removed["near_duplicate"] = len(dropped)
        keep = [i for pos, i in enumerate(keep) if pos not in dropped]

    touched = None  # rows kept but relabeled or downweighted
    if teacher_probs is not None:
        mask, pred = teacher_disagreement([labels[i] for i in keep], teacher_probs[keep], teacher_confidence)
        if disagree == "drop":
            removed["teacher_disagrees"] = int(mask.sum())
            keep = [i for i, bad in zip(keep, mask.tolist()) if not bad]
        else:
            touched = (mask, pred)

    out = ds.select(keep)
    out = out.remove_columns("text").add_column("text", [texts[i] for i in keep]).select_columns(ds.column_names)
    if touched is not None:
        out, count = apply_disagreement(out, *touched, disagree, disagree_weight)
        labels = dict(zip(keep, out["label"][:]))  # after relabelling
    kept_labels = Counter(labels[i] for i in keep)
    report = {
        "input": n,
        "kept": len(keep),
        "removed": removed,
        "kept_per_class": {int(c): kept_labels[c] for c in sorted(kept_labels)},
        "settings": {"min_words": min_words, "near_duplicate": near_duplicate,
                     "teacher_confidence": teacher_confidence if teacher_probs is not None else None},
    }
    if disagree != "drop":
        report[{"relabel": "relabeled", "downweight": "downweighted"}[disagree]] = count if touched is not None else 0
        report["settings"]["disagree"] = disagree
        if disagree == "downweight":
            report["settings"]["disagree_weight"] = disagree_weight
    log.info("selection: kept %d of %d (removed %s)", len(keep), n, {k: v for k, v in removed.items() if v})
    return out, report
