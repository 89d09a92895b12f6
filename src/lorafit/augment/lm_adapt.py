"""Adapt a causal language model (the report: GPT-2, 2 epochs) to the unlabeled target texts.

The texts are tokenized, each followed by EOS, concatenated and cut into ``block_size``-token
blocks ("packing"). Unlike the report's notebook, which padded every text to 512 tokens, every
token trained on is real text. Training is the plain Hugging Face ``Trainer`` with
``DataCollatorForLanguageModeling(mlm=False)``; checkpoints go to ``<output_dir>/checkpoints``
and a restarted call resumes from the last one.

Outputs: ``<output_dir>/model`` (weights + tokenizer, written atomically: if the folder exists,
the stage finished) and ``<output_dir>/train_log.json`` (tokens, blocks, wall time, log history).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Sequence

import datasets
import numpy as np
import torch
from transformers import (
    DataCollatorForLanguageModeling,
    Trainer,
    TrainingArguments,
    set_seed,
)

from lorafit.augment.causal_lm import (GENERATOR_FILE, SCRATCH_PREFIX, describe_causal_lm, load_causal_lm,  # noqa: F401 (re-exported)
                                      perplexity, scratch_gpt2)
from lorafit.data.io import DataError
from lorafit.errors import ConfigError
from lorafit.io_utils import atomic_path, atomic_write_json, last_complete_checkpoint
from lorafit.logs import quiet_trainer
from lorafit.precision import pick_precision

log = logging.getLogger(__name__)


def format_texts(tokenizer, texts: Sequence[str], text_format: str, instruction: str) -> list[str]:
    """The texts as the LM trains on them: ``plain`` (as they are) or ``chat`` (each one the
    assistant's answer to ``instruction`` in the tokenizer's chat template, so an instruction-tuned
    LM keeps following prompts while it learns the target texts' style)."""
    if text_format == "plain":
        return list(texts)
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("config key 'augment.lm.format': 'chat' needs a tokenizer with a chat template, and this "
                          "LM's has none; use format: plain")
    return [tokenizer.apply_chat_template([{"role": "user", "content": instruction},
                                           {"role": "assistant", "content": t}], tokenize=False) for t in texts]


def pack_texts(tokenizer, texts: Sequence[str], block_size: int) -> tuple[datasets.Dataset, dict]:
    """Tokenize ``texts``, append EOS to each, concatenate and cut into blocks of ``block_size``.

    The incomplete last block is dropped (its token count is reported), except when there is not
    even one full block: then the whole stream is one shorter block. Returns a ``Dataset`` with an
    ``input_ids`` column and a dict of counts (texts, tokens, blocks, tokens_in_blocks, tokens_dropped).
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    stream = np.fromiter((t for seq in ids for t in (*seq, eos)), dtype=np.int64)
    n_blocks = len(stream) // block_size
    if n_blocks == 0:
        blocks = stream[None, :]
        log.warning("the target texts hold only %d tokens, less than one block of %d; training on one short block",
                    len(stream), block_size)
    else:
        blocks = stream[: n_blocks * block_size].reshape(n_blocks, block_size)
    stats = {
        "texts": len(ids),
        "tokens": int(len(stream)),
        "blocks": int(blocks.shape[0]),
        "block_size": int(blocks.shape[1]),
        "tokens_in_blocks": int(blocks.size),
        "tokens_dropped": int(len(stream) - blocks.size),
    }
    return datasets.Dataset.from_dict({"input_ids": blocks.tolist()}), stats


def split_heldout(texts: list[str], fraction: float, seed: int, cap: int = 200) -> tuple[list[str], list[str]]:
    """(train, held-out) texts: a seeded ``fraction`` of them (at most ``cap``) kept out of training to
    measure the perplexity before and after adaptation; none when there are fewer than 20 texts."""
    if fraction <= 0 or len(texts) < 20:
        return texts, []
    n = min(cap, max(1, round(fraction * len(texts))))
    order = np.random.default_rng(seed).permutation(len(texts))
    held = set(order[:n].tolist())
    return [t for i, t in enumerate(texts) if i not in held], [texts[i] for i in sorted(held)]


def adapt_language_model(model: str, texts: Sequence[str], output_dir: Path | str, epochs: float = 2,
                         block_size: int = 256, batch_size: int = 8, learning_rate: float = 5e-5, seed: int = 42,
                         max_steps: int = -1, precision: str = "auto", save_steps: int = 500,
                         keep_checkpoints: bool = False, method: str = "full", lora_r: int = 16,
                         lora_alpha: int = 32, lora_target_modules="all-linear", heldout: float = 0.05,
                         text_format: str = "plain", instruction: str = "Write a short news text.",
                         trust_remote_code: bool = False) -> Path:
    """Fine-tune the causal LM ``model`` on ``texts``; return ``output_dir/model``.

    ``method``: ``full`` (every weight) or ``lora`` (a LoRA adapter of rank ``lora_r`` on
    ``lora_target_modules``, merged into the weights when training ends, so the saved model is
    an ordinary checkpoint). ``max_steps`` > 0 overrides ``epochs``. ``precision``:
    auto|bf16|fp16|fp32. ``heldout``: the fraction of texts kept out to measure perplexity before and
    after (in ``train_log.json``). ``text_format``: ``plain`` or ``chat`` (see :func:`format_texts`).
    A checkpoint is written every ``save_steps`` steps to ``output_dir/checkpoints``; a rerun resumes
    from the last one. Once the final model is saved they are removed, unless ``keep_checkpoints``.
    """
    output_dir = Path(output_dir)
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise DataError("the target set has no non-empty texts to adapt the language model on. Set data.target to "
                        "the unlabeled target texts, or disable augment.lm.")
    set_seed(seed)
    tokenizer, lm = load_causal_lm(model, trust_remote_code=trust_remote_code)
    generator = describe_causal_lm(model, lm)
    max_positions = getattr(lm.config, "max_position_embeddings", None) or getattr(lm.config, "n_positions", None)
    if max_positions and block_size > max_positions:
        log.warning("augment.lm.block_size %d exceeds the %d positions of '%s'; using %d",
                    block_size, max_positions, model, max_positions)
        block_size = max_positions
    train_texts, held_texts = split_heldout(texts, heldout, seed)
    train_ds, stats = pack_texts(tokenizer, format_texts(tokenizer, train_texts, text_format, instruction), block_size)
    held_blocks = (pack_texts(tokenizer, format_texts(tokenizer, held_texts, text_format, instruction),
                              block_size)[0]["input_ids"] if held_texts else [])
    log.info("LM adaptation (%s) on %d texts: %d tokens in %d blocks of %d (%d dropped); %d texts held out",
             method, stats["texts"], stats["tokens"], stats["blocks"], stats["block_size"], stats["tokens_dropped"],
             len(held_texts))

    prec = pick_precision(precision)
    cuda = torch.cuda.is_available()
    ppl_before = perplexity(lm, held_blocks) if held_blocks else None
    if method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        lm = get_peft_model(lm, LoraConfig(task_type=TaskType.CAUSAL_LM, r=lora_r, lora_alpha=lora_alpha,
                                           lora_dropout=0.0, target_modules=lora_target_modules))
    trainable = int(sum(p.numel() for p in lm.parameters() if p.requires_grad))
    ckpt_dir = output_dir / "checkpoints"
    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        num_train_epochs=float(epochs),
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        data_seed=seed,
        bf16=prec == "bf16",
        fp16=prec == "fp16",
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=2,
        logging_steps=10,
        logging_first_step=True,
        include_num_input_tokens_seen="all",  # blocks are never padded: every token is real text
        report_to="none",
        use_cpu=not cuda,
        dataloader_pin_memory=cuda,
    )
    # pad == EOS, so the collator ignores EOS positions in the loss, as the report's recipe did; the
    # length of generated texts is set by the sampled target lengths, not by learned stops.
    trainer = Trainer(model=lm, args=args, train_dataset=train_ds, processing_class=tokenizer,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    quiet_trainer(trainer)  # its metric dicts go to the log, not to stdout
    last = last_complete_checkpoint(ckpt_dir) if ckpt_dir.is_dir() else None  # never a half-saved one
    if last:
        log.info("resuming LM adaptation from %s", last)
    start = time.time()
    result = trainer.train(resume_from_checkpoint=last)
    wall = time.time() - start
    adapted = lm.merge_and_unload() if method == "lora" else lm
    ppl_after = perplexity(adapted, held_blocks) if held_blocks else None
    if ppl_before is not None:
        log.info("held-out target perplexity: %.2f before, %.2f after adaptation", ppl_before, ppl_after)

    with atomic_path(output_dir / "model") as tmp:
        adapted.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        # who the weights come from, for the manifests, the report and the model card of what it writes
        atomic_write_json(tmp / GENERATOR_FILE, {**generator, "adapted": {
            "method": method, "format": text_format, "steps": trainer.state.global_step,
            "heldout_perplexity": {"before": ppl_before, "after": ppl_after}}})
    atomic_write_json(output_dir / "train_log.json", {
        "model": model,
        "generator": generator,
        "method": method,
        "format": text_format,
        **({"instruction": instruction} if text_format == "chat" else {}),
        **({"lora": {"r": lora_r, "lora_alpha": lora_alpha, "target_modules": lora_target_modules}}
           if method == "lora" else {}),
        "trainable_parameters": trainable,
        **stats,
        "heldout_texts": len(held_texts),
        "heldout_perplexity": {"before": ppl_before, "after": ppl_after},
        "epochs": epochs,
        "max_steps": max_steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
        "precision": prec,
        "global_step": trainer.state.global_step,
        "tokens_trained": int(trainer.state.num_input_tokens_seen),
        "train_loss": result.training_loss,
        "resumed_from": last,
        "wall_time_s": round(wall, 3),
        "log_history": trainer.state.log_history,
    })
    if not keep_checkpoints:
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # the finished model supersedes them (inside lorafit's folder)
    log.info("adapted LM saved to %s (%d steps, %.1f s)", output_dir / "model", trainer.state.global_step, wall)
    return output_dir / "model"
