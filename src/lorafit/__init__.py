"""lorafit: text classifiers under a trainable-parameter budget, adapted to an unlabeled target domain.

The Python API (imported on first use, so ``import lorafit`` stays fast):
``lorafit.run(config, **overrides)`` -> a :class:`lorafit.api.RunResult`;
``lorafit.load(run_dir)`` -> a :class:`lorafit.api.Classifier` with ``.predict`` / ``.predict_proba``.
"""

from importlib.metadata import version as _version

__version__ = _version("lorafit")  # one place: pyproject.toml
__all__ = ["run", "load", "__version__"]


def run(config=None, fresh: bool = False, **overrides):
    """Run every enabled stage of ``config`` with ``overrides``; see :func:`lorafit.api.run`."""
    from lorafit.api import run as _run

    return _run(config, fresh=fresh, **overrides)


def load(run_dir):
    """A trained run's classifier (``.predict(texts)``, ``.predict_proba(texts)``); see :func:`lorafit.api.load`."""
    from lorafit.api import load as _load

    return _load(run_dir)
