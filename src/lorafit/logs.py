"""Where lorafit's output goes: stdout carries a command's result only (a run's summary); log lines
go to stderr (``-q``: warnings and errors only, ``-v``: debug too) and to ``run.log`` in the run
folder (everything, no carriage returns); progress bars are drawn only when stderr is a terminal.

Libraries are quieted at their source: transformers' and datasets' loggers hand their records to
lorafit's handlers (one format, and into run.log), their progress bars follow lorafit's setting,
the Trainer's metric dicts become log lines instead of stdout prints, and warnings known to be
noise are filtered where they are raised.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Optional

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
RUN_LOG = "run.log"

_progress: Optional[bool] = None  # None: draw bars when stderr is a terminal

# (logger, message start): library log lines that say nothing a lorafit user can act on
KNOWN_LOG_LINES = [("transformers.trainer_utils", "mtime may not be reliable")]  # checkpoint sorting falls back fine
# (message regex, category): warnings that say nothing a lorafit user can act on
KNOWN_WARNINGS = [
    (r".*`is_gradient_checkpointing` is deprecated", FutureWarning),  # PEFT asks transformers' old name
    (r".*`torch_dtype` is deprecated", FutureWarning),
    # PEFT's checkpoint save asks the Hub whether the base's vocabulary changed; offline it cannot, and LoRA on
    # attention/dense layers never changes it
    (r"Could not find a config file in .* will assume that the vocabulary was not modified", UserWarning),
]


def progress_bars() -> bool:
    """Whether progress bars are drawn: set by :func:`setup_logging`; else when stderr is a terminal."""
    if _progress is not None:
        return _progress
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def setup_logging(verbosity: int = 0) -> None:
    """Log lines to stderr at INFO (``verbosity`` -1: WARNING, 1: DEBUG), library noise filtered,
    progress bars only on a terminal (and never with -q). Sets the environment of the Hugging Face
    libraries before they are imported, so the command stays light until it needs them."""
    global _progress
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "lorafit_console", False):
            root.removeHandler(h)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(NoCarriageReturns(FORMAT, datefmt="%H:%M:%S"))
    console.setLevel(level)
    console.lorafit_console = True
    root.addHandler(console)
    root.setLevel(min(level, logging.INFO))  # run.log gets INFO even with -q
    for noisy in ("httpx", "urllib3", "filelock", "fsspec", "huggingface_hub", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _progress = verbosity >= 0 and bool(getattr(sys.stderr, "isatty", lambda: False)())
    if not _progress:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' bars follow huggingface_hub's
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")  # any other bar (a library's bare tqdm, e.g. GGUF conversion)
    filter_known_warnings()
    adopt_library_loggers()


@contextlib.contextmanager
def known_warnings_silenced():
    """Within the block, the warnings of :data:`KNOWN_WARNINGS` are not shown; the caller's own
    warning filters are restored after (the Python API: ``lorafit.load`` in a notebook)."""
    with warnings.catch_warnings():
        for message, category in KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def filter_known_warnings() -> None:
    """Silence the warnings of :data:`KNOWN_WARNINGS`; route the others through logging (so they
    reach run.log too, one line each)."""
    for message, category in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    logging.captureWarnings(True)


def adopt_library_loggers() -> None:
    """transformers' and datasets' loggers (each has a stderr handler of its own and does not
    propagate) hand their records to lorafit's handlers; their progress bars follow
    :func:`progress_bars`. A library not imported yet is adopted at the next call."""
    for name, start in KNOWN_LOG_LINES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLine) and f.start == start for f in logger.filters):
            logger.addFilter(_DropLine(start))
    if "transformers" in sys.modules:
        from transformers.utils import logging as tl

        tl.disable_default_handler()
        tl.enable_propagation()
        if not progress_bars():
            tl.disable_progress_bar()
    if "datasets" in sys.modules:
        from datasets.utils import logging as dl

        dl.get_logger("datasets").propagate = True
        for h in list(logging.getLogger("datasets").handlers):
            logging.getLogger("datasets").removeHandler(h)
        if not progress_bars():
            import datasets

            datasets.disable_progress_bars()


class _DropLine(logging.Filter):
    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


class NoCarriageReturns(logging.Formatter):
    """A formatter whose lines hold no carriage return (a library's redraw becomes a new line)."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\r\n", "\n").replace("\r", "\n")


class RunLogHandler(logging.Handler):
    """Appends every record to ``<run_dir>/run.log``. Records that come before the run folder exists
    (lorafit writes nothing there until the config, data and budget are checked) are held and
    written when it does; a folder replaced meanwhile (``--fresh``) gets a new file."""

    def __init__(self, run_dir: Path | str, level: int = logging.INFO):
        super().__init__(level)
        self.path = Path(run_dir) / RUN_LOG
        self.setFormatter(NoCarriageReturns(FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
        self._held: list[str] = []
        self._file = None
        self._inode = None

    def _open(self) -> bool:
        from lorafit.io_utils import MARK

        if self._file is not None:
            try:
                if os.stat(self.path).st_ino == self._inode:
                    return True
            except OSError:
                pass
            self._file.close()
            self._file = None
        if not (self.path.parent / MARK).is_file():  # not (yet) a run folder lorafit made
            return False
        self._file = open(self.path, "a", encoding="utf-8")
        self._inode = os.fstat(self._file.fileno()).st_ino
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
            if not self._open():
                self._held.append(line)
                return
            if self._held:
                self._file.write("".join(self._held))
                self._held.clear()
            self._file.write(line)
            self._file.flush()
        except Exception:  # noqa: BLE001  (a log must never fail the run)
            self.handleError(record)

    def close(self) -> None:
        try:
            if self._held and self._open():
                self._file.write("".join(self._held))
            if self._file is not None:
                self._file.close()
        finally:
            self._file = None
            super().close()


class run_log:
    """``with run_log(run_dir, command):`` every log record (all loggers, warnings too) also goes to
    ``run_dir/run.log``, opened by a line naming the command and the time."""

    def __init__(self, run_dir: Path | str, command: str = ""):
        self.handler = RunLogHandler(run_dir)
        self.command = command

    def __enter__(self):
        root = logging.getLogger()
        root.addHandler(self.handler)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        filter_known_warnings()
        # the file's own header line (not shown on stderr)
        self.handler.emit(logging.LogRecord("lorafit", logging.INFO, __file__, 0, "run started%s", (
            f": {self.command}" if self.command else "",), None))
        return self.handler

    def __exit__(self, *exc):
        logging.getLogger().removeHandler(self.handler)
        self.handler.close()
        return False


def trainer_log_line(logs: dict, step: int, max_steps: int) -> str:
    """The Trainer's metric dict as one readable line: ``step 4/12: loss 1.41, grad_norm 1.32, ...``."""
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return f"step {step}/{max_steps}: " + ", ".join(f"{k} {fmt(v)}" for k, v in logs.items() if k != "total_flos")


def quiet_trainer(trainer) -> None:
    """Route a ``transformers.Trainer``'s metric dicts to the log (logger ``lorafit.train``) instead
    of stdout, keeping a progress bar only when :func:`progress_bars`."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback, TrainerCallback

    log = logging.getLogger("lorafit.train")

    class LogMetrics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                log.info("%s", trainer_log_line(logs, state.global_step, state.max_steps))

    class BarAndLog(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            LogMetrics().on_log(args, state, control, logs=logs)

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(BarAndLog() if progress_bars() else LogMetrics())
