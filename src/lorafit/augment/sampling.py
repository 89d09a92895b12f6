"""Batched sampling from a causal LM, built for CPUs, with the report's sampling settings.

``model.generate`` does the same job (top-k 50, top-p 0.95, repetition penalty 1.3), but on a CPU
its per-token work dominates a small LM: the top-p warper sorts the whole vocabulary (49,152 ids for
SmolLM2) for every row at every step, and every row runs until the longest one is done. This loop
calls the model's own forward with its KV cache (transformers' ``DynamicCache``) and

- samples top-p inside the top-k candidates (the same distribution as HF's top-k then top-p
  warpers, whose top-p sees only the k survivors; sorting k ids instead of the vocabulary);
- applies the repetition penalty as HF's ``RepetitionPenaltyLogitsProcessor`` does (prompt included);
- stops each row at its own end (EOS, its token budget, or its target length in words, counted from
  the tokens that start a word) and drops finished rows from the batch and the cache.

``bench/`` measures it against the notebook style (``pipeline("text-generation")``).
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Optional, Sequence

import torch


@lru_cache(maxsize=8)
def _word_starts(tokenizer) -> Optional[torch.Tensor]:
    """A bool per vocabulary id: does the token begin a new word (byte-level BPE 'Ġ'/'Ċ', SentencePiece
    '▁')? None for a tokenizer with neither marker (then only token budgets stop rows)."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    # byte-level BPE writes the whitespace bytes \t \n \v \f \r and space as these characters
    marks = ("Ġ", "ĉ", "Ċ", "ċ", "Č", "č", "▁")
    starts = torch.tensor([bool(p) and p[0] in marks for p in pieces])
    return starts if bool(starts.any()) else None


def sample(model, tokenizer, prompts: Sequence[Sequence[int]], max_new_tokens: Sequence[int],
           target_words: Optional[Sequence[int]] = None, *, top_k: int = 50, top_p: float = 0.95,
           temperature: float = 1.0, repetition_penalty: float = 1.3,
           stop_ids: Sequence[int] = ()) -> list[list[int]]:
    """Sample a continuation for each prompt (lists of token ids); return the new token ids per row.

    Row ``i`` ends at a token of ``stop_ids`` (not returned), after ``max_new_tokens[i]`` tokens, or
    when a token would start word ``target_words[i] + 1``. Draws from the global torch RNG (seed it).
    """
    device = next(model.parameters()).device
    n = len(prompts)
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((n, width), pad, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding: every row's next token is at the same column
        ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
        mask[i, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    budget = torch.tensor(list(max_new_tokens), device=device)
    words_left = (torch.tensor(list(target_words), device=device) if target_words is not None
                  else torch.full((n,), 1 << 30, device=device))
    starts = _word_starts(tokenizer) if target_words is not None else None
    starts = starts.to(device) if starts is not None else None
    stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)

    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    # transformers renames forward's `past_key_values` to `cache` (the old name warns until 5.40)
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out: list[list[int]] = [[] for _ in range(n)]
    alive = torch.arange(n, device=device)  # rows still generating, as indices into the original batch
    seen = ids.clone()  # the repetition penalty covers the prompt, as in transformers
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    step_input, step_pos = ids, positions
    k = top_k if 0 < top_k < model.config.vocab_size else None
    with torch.inference_mode():
        for step in range(int(budget.max())):
            logits = model(input_ids=step_input, attention_mask=mask, position_ids=step_pos, **{cache_arg: cache},
                           use_cache=True, logits_to_keep=1).logits[:, -1, :].float()
            if repetition_penalty != 1.0:
                prev = logits.gather(1, seen)
                logits.scatter_(1, seen, torch.where(prev < 0, prev * repetition_penalty, prev / repetition_penalty))
            if temperature != 1.0:
                logits = logits / temperature
            values, candidates = logits.topk(k, dim=-1) if k else logits.sort(dim=-1, descending=True)
            probs = values.softmax(-1)
            if top_p < 1.0:  # keep the smallest head whose mass reaches top_p (at least one candidate)
                probs = probs * ((probs.cumsum(-1) - probs) < top_p)
            token = candidates.gather(1, torch.multinomial(probs, 1)).squeeze(1)

            ended = torch.isin(token, stop) if len(stop) else torch.zeros_like(token, dtype=torch.bool)
            if starts is not None:
                words_left = words_left - starts[token].long()
                ended |= words_left < 0  # this token would begin one word too many
            for row, t in zip(alive[~ended].tolist(), token[~ended].tolist()):
                out[row].append(t)
            budget = budget - 1
            ended |= budget <= 0
            if bool(ended.all()):
                break
            keep = (~ended).nonzero().squeeze(1)
            if len(keep) < len(alive):  # drop finished rows from the batch and the cache
                cache.batch_select_indices(keep)
                alive, token, budget, words_left = alive[keep], token[keep], budget[keep], words_left[keep]
                mask, seen, step_pos = mask[keep], seen[keep], step_pos[keep]
            mask = torch.cat([mask, torch.ones_like(token)[:, None]], dim=1)
            seen = torch.cat([seen, token[:, None]], dim=1)
            step_input, step_pos = token[:, None], step_pos[:, -1:] + 1
    return out
