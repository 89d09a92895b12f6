"""Reliability round 3 (issue 26): probes a hostile but realistic user tried, each reproduced here.
Every one ends in a one-line error naming the file/row/key, or in correct behaviour."""

from __future__ import annotations

import datasets
import pytest

from conftest import tiny_labeled_rows


# ------------------------------------------------------------------ item 16: Ctrl-C during tokenization


def test_tokenize_hashes_no_function_so_an_interrupt_cannot_be_swallowed(tiny_roberta_dir, monkeypatch):
    """datasets hashes a map function inside a bare ``except:``: a Ctrl-C arriving then was swallowed
    and the run went on. Simulate the signal arriving whenever a function is hashed: tokenize must
    not hash one (it gives the new fingerprint), and an interrupt inside the map still propagates."""
    from transformers import AutoTokenizer

    from lorafit import train

    tok = AutoTokenizer.from_pretrained(str(tiny_roberta_dir))
    ds = datasets.Dataset.from_list(tiny_labeled_rows(1))
    hashed = []
    real_update = datasets.fingerprint.Hasher.update

    def update(self, value):
        if callable(value) and not isinstance(value, type):
            hashed.append(value)
            raise KeyboardInterrupt  # the signal arrives while dill pickles the function
        return real_update(self, value)

    monkeypatch.setattr(datasets.fingerprint.Hasher, "update", update)
    out = train.tokenize(ds, tok, 32)
    assert hashed == []  # nothing was hashed, so nothing was swallowed
    assert set(out.column_names) == {"labels", "input_ids", "attention_mask", "length"}
    assert list(out["labels"]) == list(ds["label"])
    assert out["length"][0] == len(tok(ds["text"][0], truncation=True, max_length=32)["input_ids"])

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "clip_text", interrupted)  # Ctrl-C inside the map function itself
    with pytest.raises(KeyboardInterrupt):
        train.tokenize(ds, tok, 32)
