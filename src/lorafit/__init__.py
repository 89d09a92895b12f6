"""lorafit: text classifiers under a trainable-parameter budget, adapted to an unlabeled target domain."""

__version__ = "0.1.0"
