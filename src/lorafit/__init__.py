"""lorafit: text classifiers under a trainable-parameter budget, adapted to an unlabeled target domain."""

from importlib.metadata import version as _version

__version__ = _version("lorafit")  # one place: pyproject.toml
