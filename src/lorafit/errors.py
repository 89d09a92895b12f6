"""Errors a user can cause and fix. The CLI prints any :class:`LorafitError` as one line naming
the file, row or key at fault, and exits with the error's ``exit_code``, without a traceback.

This module imports nothing heavy, so the CLI can catch these before torch or transformers load.
Each stage raises the subclass that says where the problem is; the classes are re-exported by the
modules that raise them (``lorafit.config.ConfigError``, ``lorafit.data.io.DataError``, ...).
"""

from __future__ import annotations

import errno


class LorafitError(Exception):
    """Base class: an input, config or environment problem the user can fix."""

    exit_code = 2


class ConfigError(LorafitError, ValueError):
    """A config file or override is invalid; the message names the key and the fix."""


class DataError(LorafitError, ValueError):
    """A data file or set is missing, unreadable or malformed; the message names file and row."""


class ModelError(LorafitError, ValueError):
    """A model cannot be resolved or loaded, or does not fit the config."""


class OutputError(LorafitError, OSError):
    """An output path cannot be written (under a file, onto a folder, read-only, ...)."""


class RunConflictError(LorafitError, ValueError):
    """An existing run folder holds a run that the new config cannot continue."""


class RunStateError(LorafitError, ValueError):
    """A file of a run folder is missing, damaged (truncated, overwritten) or disagrees with the run's
    config; the message names it and the way out (recompute it, rerun, or --fresh)."""


class WordNetError(LorafitError, RuntimeError):
    """WordNet data cannot be found or read; the message names the path and the fix."""


class FolderInUseError(LorafitError, RuntimeError):
    """Another live lorafit process holds the lock of an output folder; the message names it."""


class TrainingDiverged(LorafitError, RuntimeError):
    """The training loss (or a trained weight) became NaN or infinite; training stopped there."""


class BudgetExceeded(LorafitError, RuntimeError):
    """The configured model has more trainable parameters than ``budget.max_trainable``."""

    exit_code = 3


class Interrupted(LorafitError):
    """SIGINT/SIGTERM stopped a run; the message says what was saved and how to resume."""

    exit_code = 130


class DiskFullError(LorafitError, OSError):
    """No space left while writing a file; nothing partial was left behind. ``str()`` is the
    message (no ``[Errno 28]`` prefix)."""

    def __init__(self, *args):
        super().__init__(*args)
        if len(args) == 1:  # DiskFullError("message"): keep the OSError fields meaningful
            self.errno, self.strerror = errno.ENOSPC, args[0]

    def __str__(self) -> str:
        return self.strerror or super().__str__()
