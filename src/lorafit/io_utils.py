"""Atomic file writing: a file appears complete or not at all.

Everything is written to a temporary file in the destination folder, flushed and fsynced, then
renamed over the destination (``os.replace`` is atomic on POSIX). Temporary names start with '.'
(``.<name>.<host>.<pid>-<random>.tmp/``), so a process killed mid-write leaves nothing that a later
stage reads as output, and the next write of the same file removes what a dead writer on this
host left. A full disk (or quota) becomes a :class:`DiskFullError` naming the file instead of a
traceback; :func:`as_disk_full` recognises one raised by other libraries' writers (Trainer
checkpoints, safetensors, torch.save).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional


_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# how other writers report a full disk without an errno (safetensors, Rust I/O, C++ iostreams)
_FULL_MESSAGES = ("no space left on device", "disk quota exceeded", "os error 28", "errno 28")
# torch.save's C++ writer on a full disk: "PytorchStreamWriter failed writing file ..." or
# "unexpected pos 576 vs 534" (context: "basic_ios::clear: iostream error"); no errno at all
_TORCH_WRITE_FAILED = ("pytorchstreamwriter failed", "unexpected pos", "iostream error", "file write failed")


from lorafit.errors import DiskFullError, FolderInUseError, OutputError  # noqa: E402  (DiskFullError re-exported)

log = logging.getLogger(__name__)


def _disk_full(path: Path | str | None, exc: Optional[BaseException] = None) -> DiskFullError:
    free = "unknown"
    where = Path(path) if path is not None else Path.cwd()
    with contextlib.suppress(OSError):
        free = f"{shutil.disk_usage(_existing(where)).free / 2**20:.1f} MiB"
    what = f" while writing '{path}' (free: {free})" if path is not None else \
        f" (free in the working directory: {free})"
    quota = isinstance(exc, OSError) and exc.errno == errno.EDQUOT
    return DiskFullError(
        errno.ENOSPC,
        f"{'disk quota exceeded' if quota else 'no space left on the device'}{what}. "
        "Free some disk space (old runs/ folders, checkpoints) or set output_dir to another disk, then rerun; "
        "the run resumes from its last complete checkpoint.",
    )


def _existing(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(path: os.PathLike | str, what: str = "output", folder: bool = False) -> Path:
    """Raise :class:`OutputError` unless ``path`` can be created or replaced: a file path must not
    be an existing folder (``folder=False``) and a folder path not an existing file; the nearest
    existing parent must be a folder we can create files in (tried for real: permission bits say
    nothing for root or read-only mounts). Nothing is left behind. Returns ``path``."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise OutputError(f"{what} '{path}' is a file, not a folder; choose another path")
    if not folder and path.is_dir():
        raise OutputError(f"{what} '{path}' is a folder; give a file path such as '{path / 'submission.csv'}'")
    parent = _existing(path if folder else path.parent)
    if not parent.is_dir():
        raise OutputError(f"{what} '{path}' cannot be created: '{parent}' is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".lorafit-write-check-", dir=parent)
    except OSError as e:
        if _is_full(e):
            raise _disk_full(path, e) from None
        raise OutputError(f"{what} '{path}' cannot be written: folder '{parent}' is not writable "
                          f"({e.strerror or e}); choose another path") from None
    os.close(fd)
    os.unlink(probe)
    return path


def _output_error(path: Path, e: OSError) -> Optional[OutputError]:
    """The :class:`OutputError` for an OS error that means ``path`` cannot be written, else None."""
    reason = {errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.EROFS: "read-only file system",
              errno.ENOTDIR: "a parent is a file, not a folder", errno.EISDIR: "it is a folder",
              errno.EEXIST: "a parent is a file, not a folder"}.get(e.errno)
    if reason is None:
        return None
    return OutputError(f"cannot write '{path}': {reason}; choose another output path")


def _is_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in _FULL_ERRNOS


# the output folders this process writes (noted by lock_folder), newest last: where a full disk is
# looked for when an error does not say which file it was writing
_output_folders: list[Path] = []


def note_output_folder(folder: os.PathLike | str) -> None:
    """Remember that this process writes into ``folder`` (see :func:`as_disk_full`)."""
    p = Path(os.path.abspath(folder))
    if p in _output_folders:
        _output_folders.remove(p)
    _output_folders.append(p)


def as_disk_full(exc: BaseException, path: Optional[os.PathLike | str] = None,
                 min_free: int = 16 * 2**20) -> Optional[DiskFullError]:
    """A :class:`DiskFullError` if ``exc`` (or an exception it was raised from) means the disk is full,
    else None. Recognises ENOSPC/EDQUOT errnos, the messages of writers that drop the errno
    (safetensors), and torch.save's errno-less C++ write failures when the disk holding ``path``
    has less than ``min_free`` bytes left (default: the disks of the output folders this process
    writes, :func:`note_output_folder`, then the working directory's: a run's output_dir is often
    on another disk). Used by the CLI to print one paragraph instead of a traceback, whatever
    library was writing."""
    if path is None and _output_folders:
        places = [*reversed(_output_folders), Path.cwd()]
        path_or_folder = _output_folders[-1]
    else:
        places = [Path(path) if path is not None else Path.cwd()]
        path_or_folder = path
    seen = set()
    e: Optional[BaseException] = exc
    torch_write_failed = False
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, DiskFullError):
            return e
        if _is_full(e):
            return _disk_full(getattr(e, "filename", None) or path_or_folder, e)
        msg = str(e).lower()
        if any(m in msg for m in _FULL_MESSAGES):
            return _disk_full(path_or_folder, e)
        torch_write_failed |= isinstance(e, RuntimeError) and any(m in msg for m in _TORCH_WRITE_FAILED)
        e = e.__cause__ or e.__context__
    if torch_write_failed:
        for place in places:
            with contextlib.suppress(OSError):
                if shutil.disk_usage(_existing(place)).free < min_free:
                    return _disk_full(path if path is not None or place == Path.cwd() else place, exc)
    return None


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _fsync_dir(folder: Path) -> None:
    # make the rename itself durable (a power cut after os.replace could otherwise lose it)
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _host_tag() -> str:
    import hashlib
    import socket

    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def pid_alive(pid) -> bool:
    """Whether process ``pid`` on this host may still run (False only when it certainly does not)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError, TypeError):
        return True  # someone else's process, or not a pid we can judge: leave its files alone
    return True


def remove_stale_temporaries(path: os.PathLike | str) -> list[Path]:
    """Remove the temporary folders that writers of ``path`` on this host left when they were
    killed (their process no longer exists); returns what was removed. Temporaries of live
    processes and of other hosts (a shared filesystem) are left alone."""
    path = Path(path)
    prefix = f".{path.name}.{_host_tag()}."
    removed = []
    with contextlib.suppress(OSError):
        for p in path.parent.iterdir():
            if not (p.name.startswith(prefix) and p.name.endswith(".tmp")):
                continue
            pid = p.name[len(prefix):].split("-", 1)[0]
            if pid.isdigit() and not pid_alive(pid):
                _remove(p)
                removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_path(path: os.PathLike | str, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``.

    Works for files and for folders (e.g. ``Dataset.save_to_disk``): a folder replaces the old one.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_host_tag()}.{os.getpid()}-", suffix=".tmp",
                                    dir=path.parent)) / ("x" + suffix)
    except OSError as e:
        if _is_full(e):
            raise _disk_full(path, e) from None
        raise (_output_error(path, e) or e) from None
    try:
        yield tmp
        try:
            if tmp.is_dir():
                old = None
                if path.exists() or path.is_symlink():
                    old = path.with_name(f".{path.name}.old")
                    _remove(old)
                    os.replace(path, old)
                os.replace(tmp, path)
                if old is not None:
                    _remove(old)
            else:
                os.replace(tmp, path)
        except (IsADirectoryError, NotADirectoryError, PermissionError) as e:  # a file onto a folder, ...
            raise (_output_error(path, e) or e) from None
        _fsync_dir(path.parent)
    except DiskFullError:
        raise
    except Exception as e:  # the body may be another library's writer (safetensors, torch.save, pyarrow)
        full = as_disk_full(e, path.parent)
        if full is not None:
            raise _disk_full(path, e) from None
        raise
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def read_json_or(path: os.PathLike | str, default):
    """A JSON file's content, or ``default`` when it is missing or unreadable (for optional facts
    such as a report's sections; results that must not be lost use :func:`lorafit.runs.read_json_file`)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def texts_digest(texts) -> str:
    """SHA-1 of a sequence of texts (order included): which texts saved results were computed for."""
    import hashlib

    h = hashlib.sha1()
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    return h.hexdigest()


def atomic_write_bytes(path: os.PathLike | str, data: bytes) -> None:
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            if _is_full(e):
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
        ds.save_to_disk(str(tmp))  # a full disk (pyarrow's OSError) becomes DiskFullError in atomic_path


def last_complete_checkpoint(folder: os.PathLike | str) -> Optional[str]:
    """The newest Trainer ``checkpoint-N`` in ``folder`` whose ``trainer_state.json`` (written
    last by Trainer) parses; incomplete ones, left by a kill during a save, are removed. Training
    and LM adaptation both resume from it."""
    done = []
    for p in Path(folder).glob("checkpoint-*"):
        step = p.name.rsplit("-", 1)[-1]
        if not (p.is_dir() and step.isdigit()):
            continue
        try:
            json.loads((p / "trainer_state.json").read_text())
            done.append((int(step), p))
        except (OSError, ValueError):
            log.warning("removing incomplete checkpoint %s", p)
            shutil.rmtree(p, ignore_errors=True)
    return str(max(done)[1]) if done else None


# ------------------------------------------------------------------ folders lorafit owns
# lorafit deletes or replaces files only inside folders it made: each carries this mark (a small
# JSON file). A folder that exists without it is the user's, and lorafit refuses to write there.
MARK = ".lorafit"


class NotOursError(OutputError):
    """An output folder exists and holds files that lorafit did not write."""


def is_ours(folder: os.PathLike | str) -> bool:
    """Whether ``folder`` carries lorafit's mark (lorafit made it)."""
    return (Path(folder) / MARK).is_file()


def check_ours(folder: os.PathLike | str, what: str, legacy=None) -> Path:
    """Refuse, before anything is written, an output ``folder`` that lorafit may not write into.

    Allowed: a folder that does not exist yet, an empty one, one carrying lorafit's mark, or one
    that ``legacy(folder)`` recognises as made by an earlier lorafit (which wrote no mark). A
    symbolic link is refused: lorafit neither writes nor deletes through one.
    """
    p = Path(folder)
    if p.is_symlink():
        raise NotOursError(f"{what} '{p}' is a symbolic link; lorafit does not write or delete through links. "
                           "Point the output at a real folder.")
    if not p.exists() or is_ours(p):
        return p
    if not p.is_dir():
        raise NotOursError(f"{what} '{p}' is a file, not a folder; choose another output path.")
    if any(p.iterdir()) and not (legacy is not None and legacy(p)):
        raise NotOursError(f"{what} '{p}' already holds files that lorafit did not write (no {MARK} mark); "
                           "lorafit never changes them. Choose another folder, or empty this one yourself.")
    return p


def mark_ours(folder: os.PathLike | str, kind: str) -> Path:
    """Create ``folder`` (with parents) and put lorafit's mark in it; return the path."""
    p = Path(folder)
    p.mkdir(parents=True, exist_ok=True)
    if not is_ours(p):
        from lorafit import __version__

        atomic_write_json(p / MARK, {"made_by": "lorafit", "kind": kind, "version": __version__})
    return p


def remove_ours(folder: os.PathLike | str, what: str, legacy=None) -> None:
    """Delete ``folder`` and everything in it, only if lorafit made it (see :func:`check_ours`)."""
    p = check_ours(folder, what, legacy)
    if p.exists():
        shutil.rmtree(p)


# ------------------------------------------------------------------ one writer per folder
# A process that writes a run folder (`lorafit run`, `adapt-lm`, `generate`) holds an advisory lock
# (flock) on a file in it that names the process. The kernel drops the lock when the process ends,
# however it ends, so a lock left by a dead process is taken over at once; a second process is
# refused with one line naming the first. The lock file is replaced on take-over, and a holder
# checks that the file it locked is still the one at the path (a take-over races with the unlink
# at exit otherwise).
LOCK = ".lorafit.lock"
_held: dict[Path, tuple[int, int]] = {}  # lock path -> (fd, inode) held by this process


def _lock_path(folder: Path, rank: int) -> Path:
    return folder / (LOCK if rank == 0 else f"{LOCK}.{rank}")


def _holder(path: Path) -> str:
    """Who holds the lock at ``path``, as its file says."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return (f"pid {info['pid']} on {info['host']} ({info.get('command', 'lorafit')}, since "
                f"{info.get('since', '?')})")
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its name yet"


def _in_use(what: str, folder, path: Path) -> FolderInUseError:
    return FolderInUseError(f"{what} '{folder}' is in use by another lorafit process: {_holder(path)}. Wait for it "
                            "to finish or stop it, or use another folder (name=): two processes writing one folder "
                            "would mix their files")


def _still_held(path: Path) -> bool:
    held = _held.get(path)
    if held is None:
        return False
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == held[1]:
            return True
    os.close(held[0])  # the folder was replaced (--fresh) or the file removed: lock the new one
    del _held[path]
    return False


def lock_folder(folder: os.PathLike | str, what: str, rank: int = 0) -> Path:
    """Hold the lock of output ``folder`` (an existing folder lorafit made) until this process ends;
    return the lock file. Raises :class:`FolderInUseError` naming the holder when another live
    process holds it. Taking it again in the same process is a no-op. ``rank``: each process of a
    job that splits the work (``lorafit generate`` under torchrun) holds a lock of its own."""
    import fcntl
    import socket
    import sys
    import time

    path = _lock_path(Path(os.path.abspath(folder)), rank)
    if _still_held(path):
        return path
    for _ in range(5):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _in_use(what, folder, path) from None
        except OSError:
            os.close(fd)
            raise
        st = os.fstat(fd)
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == st.st_ino:
                break
        os.close(fd)  # the holder unlinked it as we opened it: lock the file now at the path
    else:
        raise FolderInUseError(f"{what} '{folder}': could not take its lock file '{path}'")
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "command": " ".join(["lorafit", *sys.argv[1:3]]) if sys.argv else "lorafit",
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(info) + "\n").encode())
    _held[path] = (fd, st.st_ino)
    note_output_folder(folder)  # a full disk is looked for there too (as_disk_full)
    return path


def check_unlocked(folder: os.PathLike | str, what: str, rank: int = 0) -> None:
    """Raise :class:`FolderInUseError` if another live process holds ``folder``'s lock (see
    :func:`lock_folder`); nothing is written. For a check before a long stage, so the second of two
    processes fails in a second rather than after loading its model."""
    import fcntl

    path = _lock_path(Path(os.path.abspath(folder)), rank)
    if _still_held(path) or not path.is_file():
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(what, folder, path) from None
    finally:
        os.close(fd)


def release_folder(folder: os.PathLike | str, rank: int = 0) -> None:
    """Drop this process's lock of ``folder`` (see :func:`lock_folder`) and remove its lock file."""
    _release(_lock_path(Path(os.path.abspath(folder)), rank))


def release_folder_locks() -> None:
    """Drop every lock this process holds and remove its lock files (at exit)."""
    for path in list(_held):
        _release(path)


def _release(path: Path) -> None:
    if path in _held:
        fd, ino = _held.pop(path)
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == ino:
                os.unlink(path)
        with contextlib.suppress(OSError):
            os.close(fd)


atexit.register(release_folder_locks)


# ------------------------------------------------------------------ an unreachable Hugging Face Hub
_TRUE = {"1", "ON", "YES", "TRUE"}


def offline_if_hub_unreachable(timeout: float = 2.0) -> Optional[str]:
    """Switch this process to offline mode (``HF_HUB_OFFLINE=1``, ``HF_DATASETS_OFFLINE=1``) when the
    Hugging Face Hub cannot be reached: a name lookup and TCP connect to its endpoint within
    ``timeout`` seconds. Unreachable, huggingface_hub retries each file for ~23 s (1+2+4+8+8 s of
    backoff), so a command took 24-76 s to fail; offline, a cached model loads at once and a missing
    one fails at once. Call before transformers/datasets are imported (they read the variables
    then). Skipped when offline mode is already set or a proxy is configured (the proxy, not a
    direct connection, is the way out). Returns why the Hub is unreachable, or None."""
    import socket
    import threading
    from urllib.parse import urlparse

    if any(os.environ.get(v, "").upper() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return None
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)
    outcome: list = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(e.strerror or type(e).__name__)

    t = threading.Thread(target=probe, daemon=True)  # a name lookup ignores socket timeouts: wait in a thread
    t.start()
    t.join(timeout)
    reason = outcome[0] if outcome else f"no answer within {timeout:g} s"
    if reason is None:
        return None
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    log.warning("the Hugging Face Hub (%s) cannot be reached (%s): working offline, from the local cache only; "
                "set HF_HUB_OFFLINE=1 to skip this check", host, reason)
    return reason
