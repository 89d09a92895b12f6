#!/usr/bin/env python
"""Write ``roberta-base`` and ``gpt2`` at their true size into a Hugging Face cache, with no network.

The seed recipe (``configs/seed.yaml``) names Hub ids. To rehearse it where the Hub cannot be reached,
this script writes models under those ids, laid out as the Hub cache writes them
(``<HF_HOME>/hub/models--<id>/{blobs,snapshots/<rev>,refs/main}``), so that
``from_pretrained("roberta-base")`` resolves offline (``HF_HUB_OFFLINE=1``) through the same code
path a user's run takes (``lorafit.model.resolve_model`` leaves a Hub id as it is):

* the true architectures and configs: RobertaForMaskedLM (12 layers, hidden 768, vocabulary 50,265,
  514 positions, pad 1, <s> 0, </s> 2) and GPT2LMHeadModel (12 layers, n_embd 768, vocabulary
  50,257, 1,024 positions, <|endoftext|> 50,256); the config files are the Hub's, value for value;
* random weights (seeded), fp32 safetensors, as large as the real ones (~500 MB each);
* byte-level BPE tokenizers (the ``tokenizers`` library) trained on real texts (the shared CSVs
  ``target/test_unlabelled.csv`` and ``agnews/train.csv`` when present, else lorafit's bundled
  sample data) to the true vocabulary sizes, with the true special tokens and ids; where training
  cannot reach the size (small corpora), the vocabulary is padded with filler words (`` qxzaaaa``)
  that no text encodes to.

Nothing here is pretrained: runs on this cache measure time and memory, not accuracy. The snapshot
revision is a digest of the settings and the corpus, so a rerun with the same inputs reuses the
files and a changed corpus writes a new snapshot (``refs/main`` points at the newest).

    python scripts/rehearsal_hub.py --hf-home /tmp/hf          # writes and verifies both models
    HF_HOME=/tmp/hf HF_HUB_OFFLINE=1 lorafit run configs/seed.yaml data.source=pkg://sample/train.csv ...
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE_DATA = REPO / "src" / "lorafit" / "data" / "sample"
FORMAT_VERSION = 1
SOURCE_DIGEST = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]  # an edited script writes anew

# The Hub's config.json of each id, value for value (roberta-base: the same as
# src/lorafit/model_configs/roberta-base.json, which the budget check uses offline).
ROBERTA_CONFIG = {
    "architectures": ["RobertaForMaskedLM"],
    "attention_probs_dropout_prob": 0.1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 514,
    "model_type": "roberta",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "type_vocab_size": 1,
    "vocab_size": 50265,
}
GPT2_CONFIG = {
    "activation_function": "gelu_new",
    "architectures": ["GPT2LMHeadModel"],
    "attn_pdrop": 0.1,
    "bos_token_id": 50256,
    "embd_pdrop": 0.1,
    "eos_token_id": 50256,
    "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05,
    "model_type": "gpt2",
    "n_ctx": 1024,
    "n_embd": 768,
    "n_head": 12,
    "n_layer": 12,
    "n_positions": 1024,
    "resid_pdrop": 0.1,
    "summary_activation": None,
    "summary_first_dropout": 0.1,
    "summary_proj_to_labels": True,
    "summary_type": "cls_index",
    "summary_use_proj": True,
    "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
    "vocab_size": 50257,
}
GPT2_GENERATION_CONFIG = {"_from_model_config": True, "bos_token_id": 50256, "eos_token_id": 50256}

# Special tokens at their Hub ids: (token, id); a negative id counts from the end of the vocabulary.
ROBERTA_SPECIALS = [("<s>", 0), ("<pad>", 1), ("</s>", 2), ("<unk>", 3), ("<mask>", -1)]
GPT2_SPECIALS = [("<|endoftext|>", -1)]
MODELS = {
    # id: (config.json, special tokens)
    "roberta-base": (ROBERTA_CONFIG, ROBERTA_SPECIALS),
    "gpt2": (GPT2_CONFIG, GPT2_SPECIALS),
}
# --scale tiny: the same ids, vocabularies, positions and special tokens, but 2 narrow layers, so a
# CPU can run the GPU check's whole path in seconds (bench/gpu_check.py --size tiny)
TINY = {
    "roberta-base": {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128},
    "gpt2": {"n_layer": 2, "n_embd": 64, "n_head": 2},
}


def model_config(model_id: str, scale: str = "true") -> dict:
    """The config.json written for ``model_id``: the Hub's, or its tiny variant."""
    config = dict(MODELS[model_id][0])
    if scale == "tiny":
        config.update(TINY[model_id])
    elif scale != "true":
        raise ValueError(f"scale must be true or tiny, got {scale!r}")
    return config


# ----------------------------------------------------------------------------- texts


def corpus_files(data_dir: Path | None = None) -> list[Path]:
    """The CSVs the tokenizers are trained on: the shared target and AG News texts when present,
    else (or when ``data_dir`` is ``"sample"``) lorafit's bundled sample data."""
    if str(data_dir) == "sample":
        return sorted(SAMPLE_DATA.glob("*.csv"))
    d = Path(data_dir) if data_dir else SHARED_DATA
    shared = [d / "target" / "test_unlabelled.csv", d / "agnews" / "train.csv"]
    if all(p.is_file() for p in shared):
        return shared
    if data_dir:
        raise SystemExit(f"--data-dir {data_dir}: expected target/test_unlabelled.csv and agnews/train.csv there")
    return sorted(SAMPLE_DATA.glob("*.csv"))


def read_texts(files: list[Path]) -> list[str]:
    texts = []
    for p in files:
        with open(p, newline="", encoding="utf-8") as f:
            texts += [r["text"] for r in csv.DictReader(f) if r.get("text")]
    return texts


# ----------------------------------------------------------------------------- tokenizers


def filler_tokens(n: int, taken: set[str]) -> list[str]:
    """``n`` byte-level tokens that read as separate made-up words (`` qxzaaaa``, `` qxzaaab``, ...)
    and are not in ``taken``. No merge produces them, so no text encodes to them; a random LM
    that samples them writes words that survive lorafit's text cleaning."""
    out, i = [], 0
    while len(out) < n:
        k, letters = i, ""
        for _ in range(4):
            k, r = divmod(k, 26)
            letters = chr(97 + r) + letters
        tok = "\u0120qxz" + letters + (str(k) if k else "")  # \u0120 is byte-level BPE's space
        if tok not in taken:
            out.append(tok)
        i += 1
    return out


def train_tokenizer(texts: list[str], vocab_size: int, specials: list[tuple[str, int]], model_id: str):
    """A byte-level BPE ``tokenizers.Tokenizer`` of exactly ``vocab_size`` entries with ``specials``
    at their ids, and the number of filler entries it needed."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    front = [t for t, i in specials if i >= 0]
    back = [t for t, i in specials if i < 0]
    assert [i for _, i in specials if i >= 0] == list(range(len(front)))
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(back), min_frequency=1, special_tokens=front,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(texts, trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = dict(sorted(model["vocab"].items(), key=lambda kv: kv[1]))
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    n_fill = vocab_size - len(back) - len(vocab)
    for tok in filler_tokens(n_fill, set(vocab)):
        vocab[tok] = len(vocab)
    for tok in back:
        vocab[tok] = len(vocab)
    assert len(vocab) == vocab_size and sorted(vocab.values()) == list(range(vocab_size))

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if model_id == "roberta-base":
        tok.post_processor = processors.RobertaProcessing(("</s>", vocab["</s>"]), ("<s>", vocab["<s>"]),
                                                          trim_offsets=True, add_prefix_space=False)
        tok.add_special_tokens([AddedToken(t, special=True, lstrip=t == "<mask>", normalized=False)
                                for t in front + back])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        tok.add_special_tokens([AddedToken(t, special=True) for t in front + back])
    for t, i in specials:
        want = i if i >= 0 else vocab_size + i
        assert tok.token_to_id(t) == want, (t, tok.token_to_id(t), want)
    return tok, vocab, merges, n_fill


def tokenizer_files(model_id: str, tok, vocab: dict, merges: list) -> dict[str, bytes]:
    """The tokenizer files of the Hub repo: tokenizer.json, vocab.json, merges.txt (and gpt2's
    tokenizer_config.json; roberta-base has none on the Hub)."""
    files = {
        "tokenizer.json": tok.to_str(pretty=True).encode(),
        "vocab.json": json.dumps(vocab, ensure_ascii=False).encode(),
        "merges.txt": ("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)).encode(),
    }
    if model_id == "gpt2":
        files["tokenizer_config.json"] = json.dumps({"model_max_length": 1024}).encode()
    return files


# ----------------------------------------------------------------------------- weights


def write_weights(model_id: str, config: dict, seed: int, path: Path) -> int:
    """Random weights of the true architecture, seeded, as a safetensors file with the Hub file's
    keys (roberta-base's include the pooler; gpt2's carry no ``transformer.`` prefix and no tied
    ``lm_head``). Returns the number of parameters in the file."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, GPT2LMHeadModel, RobertaForMaskedLM

    cfg_dict = dict(config)
    cfg = AutoConfig.for_model(cfg_dict.pop("model_type"), **cfg_dict)
    torch.manual_seed(seed)
    cls = RobertaForMaskedLM if model_id == "roberta-base" else GPT2LMHeadModel
    model = cls(cfg).eval()
    n_params = sum(p.numel() for p in model.parameters())
    state = {}
    seen = set()
    for k, v in model.state_dict().items():
        if v.data_ptr() in seen:  # a tied copy (the LM head shares the token embeddings)
            continue
        seen.add(v.data_ptr())
        if model_id == "gpt2":
            if k.startswith("lm_head."):
                continue
            k = k.removeprefix("transformer.")
        state[k] = v.detach().contiguous()
    if model_id == "roberta-base":  # the Hub file also holds the pooler of the pretraining model (RobertaModel's)
        h = cfg.hidden_size
        state["roberta.pooler.dense.weight"] = torch.randn(h, h) * cfg.initializer_range
        state["roberta.pooler.dense.bias"] = torch.zeros(h)
        n_params += h * h + h
    save_file(state, str(path), metadata={"format": "pt"})
    return n_params


# ----------------------------------------------------------------------------- the cache


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def repo_folder(cache_dir: Path, model_id: str) -> Path:
    return Path(cache_dir) / ("models--" + model_id.replace("/", "--"))


def snapshot_complete(cache_dir: Path, model_id: str, revision: str) -> bool:
    snap = repo_folder(cache_dir, model_id) / "snapshots" / revision
    return (snap / ".rehearsal.json").is_file() and all((snap / f).exists() for f in
                                                        json.loads((snap / ".rehearsal.json").read_text())["files"])


def write_snapshot(cache_dir: Path, model_id: str, revision: str, files: dict[str, bytes | Path], info: dict) -> Path:
    """Lay ``files`` out as huggingface_hub does: content-addressed ``blobs/`` (git-sha1 for small
    files, sha256 for LFS ones such as weights), ``snapshots/<revision>/<name>`` relative links to
    them, and ``refs/main`` holding the revision. A file ``.rehearsal.json`` in the snapshot says
    what made it (the Hub never writes one)."""
    root = repo_folder(cache_dir, model_id)
    blobs, snap = root / "blobs", root / "snapshots" / revision
    blobs.mkdir(parents=True, exist_ok=True)
    if snap.exists():
        shutil.rmtree(snap)
    snap.mkdir(parents=True)
    for name, content in files.items():
        if isinstance(content, Path):
            etag = _sha256_file(content)
            if (blobs / etag).exists():
                content.unlink()
            else:
                os.replace(content, blobs / etag)
        else:
            etag = _git_blob_sha1(content)
            tmp = blobs / f".{etag}.{os.getpid()}.incomplete"
            tmp.write_bytes(content)
            os.replace(tmp, blobs / etag)
        try:
            os.symlink(os.path.relpath(blobs / etag, snap), snap / name)
        except OSError:  # no symlinks (some file systems): huggingface_hub copies then too
            shutil.copyfile(blobs / etag, snap / name)
    (snap / ".rehearsal.json").write_text(json.dumps({**info, "files": sorted(files)}, indent=2))
    (root / "refs").mkdir(exist_ok=True)
    ref_tmp = root / "refs" / f".main.{os.getpid()}"
    ref_tmp.write_text(revision)
    os.replace(ref_tmp, root / "refs" / "main")
    return snap


def default_hf_home() -> Path:
    return Path(os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                / "huggingface")


def build_cache(hf_home: Path | None = None, cache_dir: Path | None = None, seed: int = 0,
                data_dir: Path | None = None, models: tuple[str, ...] = ("roberta-base", "gpt2"),
                force: bool = False, scale: str = "true", log=print) -> dict:
    """Write the rehearsal models into ``cache_dir`` (default ``<hf_home>/hub``); return a report
    per model id (revision, snapshot folder, parameters, fillers, seconds, reused or not).
    ``scale="tiny"``: 2 narrow layers instead of 12 (same vocabularies, positions, special tokens)."""
    hf_home = Path(hf_home) if hf_home else default_hf_home()
    cache_dir = Path(cache_dir) if cache_dir else hf_home / "hub"
    cache_dir.mkdir(parents=True, exist_ok=True)
    files = corpus_files(data_dir)
    texts = read_texts(files)
    corpus_digest = hashlib.sha256("\0".join(texts).encode()).hexdigest()
    report = {"cache_dir": str(cache_dir), "corpus": [str(p) for p in files], "corpus_texts": len(texts),
              "models": {}}
    for model_id in models:
        config, specials = model_config(model_id, scale), MODELS[model_id][1]
        t0 = time.time()
        key = json.dumps([FORMAT_VERSION, SOURCE_DIGEST, model_id, config, specials, seed, corpus_digest],
                         sort_keys=True)
        revision = hashlib.sha1(key.encode()).hexdigest()
        if not force and snapshot_complete(cache_dir, model_id, revision):
            info = json.loads((repo_folder(cache_dir, model_id) / "snapshots" / revision / ".rehearsal.json")
                              .read_text())
            ref = repo_folder(cache_dir, model_id) / "refs" / "main"
            ref.write_text(revision)
            report["models"][model_id] = {**info, "reused": True, "seconds": round(time.time() - t0, 1)}
            log(f"{model_id}: reusing snapshot {revision[:12]} in {cache_dir}")
            continue
        log(f"{model_id}: training a {config['vocab_size']:,}-entry byte-level BPE on {len(texts):,} texts ...")
        tok, vocab, merges, n_fill = train_tokenizer(texts, config["vocab_size"], specials, model_id)
        payload: dict[str, bytes | Path] = tokenizer_files(model_id, tok, vocab, merges)
        payload["config.json"] = json.dumps(config, indent=2).encode()
        if model_id == "gpt2":
            payload["generation_config.json"] = json.dumps(GPT2_GENERATION_CONFIG, indent=2).encode()
        log(f"{model_id}: random weights (seed {seed}) of the {'true' if scale == 'true' else 'tiny'} architecture ...")
        (repo_folder(cache_dir, model_id) / "blobs").mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".safetensors.incomplete", dir=repo_folder(cache_dir, model_id) / "blobs")
        os.close(fd)
        n_params = write_weights(model_id, config, seed, Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the Hub's blobs are readable by all
        payload["model.safetensors"] = Path(tmp)
        info = {"model_id": model_id, "revision": revision, "scale": scale, "seed": seed, "parameters": n_params,
                "vocab_size": config["vocab_size"], "bpe_entries": len(vocab) - n_fill, "filler_entries": n_fill,
                "corpus": [p.name for p in files], "corpus_texts": len(texts), "format_version": FORMAT_VERSION,
                "note": "random weights for a rehearsal (time and memory at true size); not a pretrained model"}
        snap = write_snapshot(cache_dir, model_id, revision, payload, info)
        report["models"][model_id] = {**info, "snapshot": str(snap), "reused": False,
                                      "seconds": round(time.time() - t0, 1)}
        log(f"{model_id}: {n_params:,} parameters, {n_fill:,} filler vocabulary entries -> {snap} "
            f"({time.time() - t0:.1f} s)")
    return report


# ----------------------------------------------------------------------------- verification


VERIFY_CODE = r"""
import json, sys, torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
from lorafit.model import resolve_model, load_model_config
from lorafit.augment.lm_adapt import load_causal_lm
out = {}
for mid, vocab, positions in (("roberta-base", 50265, 514), ("gpt2", 50257, 1024)):
    assert resolve_model(mid) == mid, resolve_model(mid)  # a Hub id, not a local folder
    cfg = AutoConfig.from_pretrained(mid)
    tok = AutoTokenizer.from_pretrained(mid)
    n_pos = getattr(cfg, "max_position_embeddings", None) or cfg.n_positions
    assert cfg.vocab_size == vocab and len(tok) == vocab and n_pos == positions, (mid, cfg.vocab_size, len(tok), n_pos)
    text = "Oil prices climb after the cartel agrees to cut output"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == text, tok.decode(ids)
    r = {"config": type(cfg).__name__, "tokenizer": type(tok).__name__, "vocab": len(tok), "positions": n_pos,
         "ids_of_text": ids[:6]}
    if mid == "roberta-base":
        assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.mask_token_id) == (0, 1, 2, 3, 50264)
        assert ids[0] == 0 and ids[-1] == 2
        model, info = AutoModel.from_pretrained(mid, output_loading_info=True)
        full = tok(" ".join([text] * 80), truncation=True, max_length=512, return_tensors="pt")
        assert full["input_ids"].shape[1] == 512
        with torch.inference_mode():
            h = model(**full).last_hidden_state
        assert h.shape == (1, 512, cfg.hidden_size) and torch.isfinite(h).all()
        lcfg = load_model_config(mid, 4, ["a", "b", "c", "d"])
        assert lcfg.vocab_size == vocab and lcfg.pad_token_id == 1
    else:
        assert tok.eos_token_id == tok.bos_token_id == 50256 and tok.model_max_length == 1024
        assert ids == tok(text, add_special_tokens=False)["input_ids"]  # GPT-2 adds no BOS/EOS
        model, info = AutoModelForCausalLM.from_pretrained(mid, output_loading_info=True)
        ltok, lm = load_causal_lm(mid)
        assert ltok.pad_token_id == 50256 and lm.generation_config.pad_token_id == 50256
        x = torch.randint(0, vocab, (1, 1024))
        with torch.inference_mode():
            logits = model(input_ids=x).logits
        assert logits.shape == (1, 1024, vocab) and torch.isfinite(logits).all()
        assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied, as on the Hub
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    r.update(model=type(model).__name__, parameters=sum(p.numel() for p in model.parameters()),
             unexpected_keys=len(info["unexpected_keys"]))
    if SCALE == "true":  # the published sizes of the pretrained models
        assert r["parameters"] == {"roberta-base": 124645632, "gpt2": 124439808}[mid], r
    out[mid] = r
print("VERIFY " + json.dumps(out))
"""


def offline_env(hf_home: Path, cache_dir: Path | None = None, base: dict | None = None) -> dict:
    """The environment of a run that must find these models offline in ``hf_home``."""
    env = dict(os.environ if base is None else base)
    for k in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_HOME"):
        env.pop(k, None)
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", HF_HUB_DISABLE_TELEMETRY="1")
    if cache_dir is not None and Path(cache_dir).resolve() != (Path(hf_home) / "hub").resolve():
        env["HF_HUB_CACHE"] = str(cache_dir)
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def verify(hf_home: Path, cache_dir: Path | None = None, python: str = sys.executable, scale: str = "true") -> dict:
    """Load both ids offline in a fresh process (the Hub library reads HF_HOME at import): configs,
    tokenizers (sizes, special ids, round trip), models (no missing weights; a 512-token RoBERTa and
    a 1,024-token GPT-2 forward), and lorafit's own loaders. Returns what it saw."""
    proc = subprocess.run([python, "-c", f"SCALE = {scale!r}\n" + VERIFY_CODE], env=offline_env(hf_home, cache_dir), capture_output=True,
                          text=True, timeout=900)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("VERIFY ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"verification failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return json.loads(line[len("VERIFY "):])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--hf-home", type=Path, default=None, help="HF_HOME to write into (default: $HF_HOME or "
                   "~/.cache/huggingface); the models go to <hf-home>/hub")
    p.add_argument("--cache-dir", type=Path, default=None, help="the Hub cache folder itself (HF_HUB_CACHE), "
                   "if not <hf-home>/hub")
    p.add_argument("--data-dir", default=None, help="folder with target/test_unlabelled.csv and agnews/train.csv "
                   "for the tokenizers, or 'sample' for lorafit's bundled sample data (default ../shared/data if "
                   "present, else the sample data)")
    p.add_argument("--models", default="roberta-base,gpt2", help="comma-separated subset of roberta-base,gpt2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", choices=("true", "tiny"), default="true",
                   help="true: the real architectures (default); tiny: 2 narrow layers under the same ids, "
                        "vocabularies and positions, for a quick CPU run of the GPU check's path")
    p.add_argument("--force", action="store_true", help="rewrite snapshots that already exist")
    p.add_argument("--no-verify", action="store_true", help="skip loading both models back offline")
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    a = p.parse_args(argv)
    models = tuple(m.strip() for m in a.models.split(",") if m.strip())
    bad = [m for m in models if m not in MODELS]
    if bad:
        p.error(f"--models: unknown {bad}; choose from {','.join(MODELS)}")
    hf_home = a.hf_home or default_hf_home()
    t0 = time.time()
    report = build_cache(hf_home, a.cache_dir, a.seed, a.data_dir, models, a.force, a.scale)
    if not a.no_verify and set(models) == set(MODELS):
        t1 = time.time()
        report["verified"] = verify(hf_home, a.cache_dir, scale=a.scale)
        print(f"verified offline (HF_HOME={hf_home}, HF_HUB_OFFLINE=1) in {time.time() - t1:.1f} s: "
              + "; ".join(f"{m}: {v['model']} {v['parameters']:,} params, {v['tokenizer']} {v['vocab']:,}, "
                          f"{v['positions']} positions" for m, v in report["verified"].items()))
    report["seconds"] = round(time.time() - t0, 1)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=2))
    print(f"done in {report['seconds']:.1f} s; use it with: HF_HOME={hf_home} HF_HUB_OFFLINE=1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
