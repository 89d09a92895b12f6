"""Atomic file writing: a file appears complete or not at all.

Everything is written to a temporary file in the destination folder, flushed and fsynced, then
renamed over the destination (``os.replace`` is atomic on POSIX). A full disk becomes a
:class:`DiskFullError` naming the file instead of a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


class DiskFullError(OSError):
    """No space left while writing ``path``; nothing partial was left behind."""


def _disk_full(path: Path, exc: OSError) -> DiskFullError:
    free = "unknown"
    with contextlib.suppress(OSError):
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.1f} MiB"
    return DiskFullError(
        errno.ENOSPC,
        f"no space left on the device while writing '{path}' (free: {free}). "
        "Free some disk space (old runs/ folders, checkpoints) or set output_dir to another disk, then rerun; "
        "the run resumes from its last complete checkpoint.",
    )


@contextlib.contextmanager
def atomic_path(path: os.PathLike | str, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``.

    Works for files and for folders (e.g. ``Dataset.save_to_disk``): a folder replaces the old one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)) / ("x" + suffix)
    try:
        yield tmp
        if tmp.is_dir():
            old = None
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                if old.exists():
                    shutil.rmtree(old)
                os.replace(path, old)
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise _disk_full(path, e) from None
        raise
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def atomic_write_bytes(path: os.PathLike | str, data: bytes) -> None:
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise _disk_full(path, e) from None
            raise


def atomic_write_text(path: os.PathLike | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: os.PathLike | str, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot serialise {type(o).__name__}")


def save_dataset(ds, path: os.PathLike | str) -> None:
    """``Dataset.save_to_disk`` into a temporary folder, renamed into place when complete."""
    with atomic_path(path) as tmp:
        try:
            ds.save_to_disk(str(tmp))
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise _disk_full(Path(path), e) from None
            raise
