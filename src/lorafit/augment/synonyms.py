"""Synonym copies of training rows (augment.synonyms): each copy replaces about ``fraction`` of a
text's content words with a WordNet synonym (:func:`lorafit.text.replace_synonyms`)."""

from __future__ import annotations

import logging
import random
from typing import Optional

import datasets
import numpy as np

from lorafit.errors import ConfigError
from lorafit.text import replace_synonyms, synonym_finder

log = logging.getLogger(__name__)


def synonym_augment(ds: datasets.Dataset, fraction: float, copies: int, seed: int,
                    max_samples: Optional[int] = None, wordnet_dir: Optional[str] = None) -> datasets.Dataset:
    """Augmented copies of the rows of ``ds`` (``text``, ``label``) with WordNet synonyms (from
    the shipped lexicon, or the full WordNet in ``wordnet_dir``).

    Up to ``max_samples`` rows (a seeded subsample; null = all) each get ``copies`` copies in which
    about ``fraction`` of the content words are replaced. Stopwords, numbers, punctuation,
    acronyms, capitalised words inside a sentence (names) and words under 3 letters are never
    replaced. Copies identical to the original (or
    to an earlier copy) are skipped. Returns only the new rows, with columns ``text`` and
    ``label``; the same ``seed`` gives the same rows.
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"synonym fraction must be in (0, 1], got {fraction} (config key augment.synonyms.fraction)")
    if copies < 1:
        raise ConfigError(f"synonym copies must be >= 1, got {copies} (config key augment.synonyms.copies)")
    finder = synonym_finder(wordnet_dir)
    rows = np.arange(len(ds))
    if max_samples is not None and max_samples < len(ds):
        rows = np.sort(np.random.default_rng(seed).choice(len(ds), size=max_samples, replace=False))
    texts, labels = ds["text"][:], ds["label"][:]  # lists: reading a Column item by item is slow
    new_texts, new_labels = [], []
    for i in rows.tolist():
        seen = {texts[i]}
        for c in range(copies):
            # a string seed is hashed with SHA-512: stable across processes and Python versions
            rng = random.Random(f"lorafit-synonyms-{seed}-{i}-{c}")
            new = replace_synonyms(texts[i], fraction, rng, finder)
            if new not in seen:
                seen.add(new)
                new_texts.append(new)
                new_labels.append(labels[i])
    log.info("synonyms: %d new rows from %d source rows (%d copies each)", len(new_texts), len(rows), copies)
    features = datasets.Features({"text": datasets.Value("string"), "label": ds.features["label"]})
    return datasets.Dataset.from_dict({"text": new_texts, "label": new_labels}, features=features)
