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
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainingArguments,
    set_seed,
)

from lorafit.data.io import DataError
from lorafit.io_utils import atomic_path, atomic_write_json, last_complete_checkpoint
from lorafit.model import ModelError, resolve_model
from lorafit.precision import pick_precision

log = logging.getLogger(__name__)


def load_causal_lm(name: str, dtype: torch.dtype | None = None):
    """Tokenizer and ``AutoModelForCausalLM`` from a Hub id or a local folder.

    The tokenizer must have an EOS token (it separates the packed texts); when it has no pad
    token, EOS doubles as one.
    """
    if name.startswith(SCRATCH_PREFIX):
        tokenizer, model = scratch_gpt2(name[len(SCRATCH_PREFIX):])
        return _with_pad(tokenizer, model, name)
    path = resolve_model(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, **({"dtype": dtype} if dtype else {}))
    except (OSError, ValueError) as e:
        raise ModelError(
            f"could not load the causal language model '{name}': {str(e)[:300]}. Offline? Download it once where "
            "there is a network (`hf download gpt2`, then set HF_HUB_OFFLINE=1) or point the config "
            "(augment.lm.model / augment.generate.model) at a local folder with config.json and the weights."
        ) from None
    return _with_pad(tokenizer, model, name)


def _with_pad(tokenizer, model, name: str):
    if tokenizer.eos_token_id is None:
        raise ModelError(f"the tokenizer of '{name}' has no EOS token; lorafit needs one to separate texts. "
                         "Set tokenizer.eos_token in its tokenizer_config.json.")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model


SCRATCH_PREFIX = "scratch:"


def scratch_gpt2(tokenizer_name: str, n_layer: int = 2, n_embd: int = 128, n_head: int = 4):
    """A small randomly initialised GPT-2 over the tokenizer of ``tokenizer_name``.

    For machines with no pretrained causal LM (``augment.lm.model: scratch:minilm``): adaptation
    then trains it from scratch on the target texts, which exercises the whole augmentation path
    offline but writes far worse text than a pretrained GPT-2 adapted for two epochs.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(tokenizer_name))
    if tokenizer.eos_token is None:  # BERT-style tokenizers: [SEP] ends a text
        tokenizer.eos_token = tokenizer.sep_token
    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                     bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    log.info("LM: a %d-layer GPT-2 (hidden %d) initialised at random over the '%s' tokenizer "
             "(no pretrained causal LM requested)", n_layer, n_embd, tokenizer_name)
    return tokenizer, GPT2LMHeadModel(cfg)


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


def adapt_language_model(model: str, texts: Sequence[str], output_dir: Path | str, epochs: float = 2,
                         block_size: int = 256, batch_size: int = 8, learning_rate: float = 5e-5, seed: int = 42,
                         max_steps: int = -1, precision: str = "auto", save_steps: int = 500,
                         keep_checkpoints: bool = False) -> Path:
    """Fine-tune the causal LM ``model`` (Hub id or folder) on ``texts``; return ``output_dir/model``.

    ``max_steps`` > 0 overrides ``epochs``. ``precision``: auto|bf16|fp16|fp32. A checkpoint is
    written every ``save_steps`` steps to ``output_dir/checkpoints``; a rerun resumes from the last
    one. Once the final model is saved they are removed, unless ``keep_checkpoints``.
    """
    output_dir = Path(output_dir)
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise DataError("the target set has no non-empty texts to adapt the language model on. Set data.target to "
                        "the unlabeled target texts, or disable augment.lm.")
    set_seed(seed)
    tokenizer, lm = load_causal_lm(model)
    max_positions = getattr(lm.config, "max_position_embeddings", None) or getattr(lm.config, "n_positions", None)
    if max_positions and block_size > max_positions:
        log.warning("augment.lm.block_size %d exceeds the %d positions of '%s'; using %d",
                    block_size, max_positions, model, max_positions)
        block_size = max_positions
    train_ds, stats = pack_texts(tokenizer, texts, block_size)
    log.info("LM adaptation on %d texts: %d tokens in %d blocks of %d (%d dropped)", stats["texts"],
             stats["tokens"], stats["blocks"], stats["block_size"], stats["tokens_dropped"])

    prec = pick_precision(precision)
    cuda = torch.cuda.is_available()
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
    last = last_complete_checkpoint(ckpt_dir) if ckpt_dir.is_dir() else None  # never a half-saved one
    if last:
        log.info("resuming LM adaptation from %s", last)
    start = time.time()
    result = trainer.train(resume_from_checkpoint=last)
    wall = time.time() - start

    with atomic_path(output_dir / "model") as tmp:
        trainer.save_model(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    atomic_write_json(output_dir / "train_log.json", {
        "model": model,
        **stats,
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
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # the finished model supersedes them
    log.info("adapted LM saved to %s (%d steps, %.1f s)", output_dir / "model", trainer.state.global_step, wall)
    return output_dir / "model"
