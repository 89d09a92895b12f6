"""The consistency loss's pieces (UDA, Xie et al. 2020; FixMatch, Sohn et al. 2020): batches of
unlabeled target texts with their synonym copies, and the masked, sharpened loss between the
model's predictions on a text and on its copy. :class:`lorafit.train.LorafitTrainer` adds it."""

from __future__ import annotations

import random
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import DataCollatorWithPadding

from lorafit.data.clean import clip_text
from lorafit.text import replace_synonyms, synonym_finder


class UnlabeledBatches:
    """The unlabeled texts of the consistency loss and a synonym copy of each (``fraction`` of the
    content words replaced from the shipped WordNet lexicon; the same ``seed`` gives the same
    copies), tokenized once like the training texts.

    :meth:`batch` gives the originals and copies of batch ``step``: ``batch_size`` texts in a
    seeded order that is reshuffled each pass over the texts (pass ``e`` uses ``[seed, e]``), so a
    resumed run takes the batches it would have taken. With ``group_by_length`` (as
    ``train.group_by_length``) each run of 50 batches of that order is sorted by length, longest
    first, so a batch holds texts of similar length and pads little (random batches of target texts
    pad to nearly ``max_length``). Processes of a data-parallel run take interleaved batches
    (``rank``, ``world_size``)."""

    def __init__(self, texts: Sequence[str], tokenizer, max_length: int, batch_size: int, seed: int,
                 fraction: float = 0.3, group_by_length: bool = False):
        if not len(texts):
            raise ValueError("the consistency loss needs unlabeled texts; got none")
        finder = synonym_finder()
        texts = [clip_text(t, max_length) for t in texts]
        copies = [replace_synonyms(t, fraction, random.Random(f"lorafit-consistency-{seed}-{i}"), finder)
                  for i, t in enumerate(texts)]
        self.changed = sum(a != b for a, b in zip(texts, copies))
        self.tokenizer, self.batch_size, self.seed = tokenizer, batch_size, seed
        self.pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)
        self.original = self._features(tokenizer(texts, truncation=True, max_length=max_length))
        self.augmented = self._features(tokenizer(copies, truncation=True, max_length=max_length))
        self.lengths = np.array([max(len(a["input_ids"]), len(b["input_ids"]))
                                 for a, b in zip(self.original, self.augmented)])
        self.group_by_length = group_by_length
        self._orders: dict[int, np.ndarray] = {}

    @staticmethod
    def _features(enc) -> list[dict]:
        return [{k: enc[k][i] for k in enc.keys()} for i in range(len(enc["input_ids"]))]

    def __len__(self) -> int:
        return len(self.original)

    def indices(self, step: int, rank: int = 0, world_size: int = 1) -> list[int]:
        n, start = len(self), (step * world_size + rank) * self.batch_size
        out = []
        for p in range(start, start + self.batch_size):
            e, j = divmod(p, n)
            if e not in self._orders:
                self._orders = {e: self._order(e)}  # one pass at a time
            out.append(int(self._orders[e][j]))
        return out

    def _order(self, e: int) -> np.ndarray:
        order = np.random.default_rng([self.seed, e]).permutation(len(self))
        if not self.group_by_length:
            return order
        size = 50 * self.batch_size
        return np.concatenate([chunk[np.argsort(-self.lengths[chunk], kind="stable")]
                               for chunk in np.split(order, range(size, len(order), size))])

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> tuple[dict, dict]:
        ix = self.indices(step, rank, world_size)
        return dict(self.pad([self.original[i] for i in ix])), dict(self.pad([self.augmented[i] for i in ix]))


def _pad_cat(a: dict, b: dict, pad_id: int, left: bool = False) -> dict:
    """Two tokenized batches as one: padded to the longer length (``input_ids`` with ``pad_id``,
    the rest with 0) and stacked, ``a``'s rows first."""
    length = max(a["input_ids"].shape[1], b["input_ids"].shape[1])

    def fit(t, value):
        extra = length - t.shape[1]
        return F.pad(t, (extra, 0) if left else (0, extra), value=value) if extra else t

    if set(a) != set(b):
        raise ValueError(f"the unlabeled batch has other inputs ({sorted(b)}) than the training batch ({sorted(a)})")
    return {k: torch.cat([fit(a[k], pad_id if k == "input_ids" else 0),
                          fit(b[k].to(a[k].device), pad_id if k == "input_ids" else 0)]) for k in a}


def consistency_terms(orig_logits: torch.Tensor, aug_logits: torch.Tensor, threshold: float,
                      temperature: float = 1.0, hard: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The consistency loss of a batch and its mask: ``mean(mask * CE(target, softmax(aug_logits)))``
    with ``mask = max softmax(orig_logits) >= threshold`` and ``target`` = softmax(orig_logits / T)
    (``hard``: its argmax). ``orig_logits`` carry no gradient."""
    orig = orig_logits.detach().float()
    mask = (F.softmax(orig, dim=-1).max(-1).values >= threshold).float()
    target = orig.argmax(-1) if hard else F.softmax(orig / temperature, dim=-1)
    per_row = F.cross_entropy(aug_logits.float(), target, reduction="none")
    return (mask * per_row).mean(), mask
