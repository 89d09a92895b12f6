"""Atomic outputs and a full disk.

Every file a stage writes goes through ``lorafit.io_utils`` (temporary
``.<name>.<host>.<pid>-<random>.tmp`` folder next to the destination, fsync, rename), so it appears
complete or not at all; a write that fails or is killed midway leaves the previous version (or
nothing) and no stray file a later stage could read, and the next write removes the dead writer's
temporary folder. A full disk is a ``DiskFullError`` whose message is one paragraph naming the file, and
the CLI prints it without a traceback.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import datasets
import pytest
from typer.testing import CliRunner

from conftest import tiny_labeled_rows, tiny_overrides, write_csv
from lorafit import io_utils
from lorafit.cli import app
from lorafit.io_utils import (DiskFullError, as_disk_full, atomic_path, atomic_write_bytes, atomic_write_json,
                              atomic_write_text, save_dataset)


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def _everything(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


class _FailingFile:
    """A file whose write() stores half of the data and then raises ``exc`` (a write cut off)."""

    def __init__(self, real, exc):
        self.real, self.exc = real, exc

    def write(self, data):
        self.real.write(data[: len(data) // 2])
        self.real.flush()
        raise self.exc

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.real.close()

    def __getattr__(self, name):
        return getattr(self.real, name)


def _fail_writes(monkeypatch, exc):
    """Make every file io_utils opens for writing fail half-way with ``exc``."""
    real_open = open

    def failing_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return _FailingFile(f, exc) if any(m in mode for m in "wax") else f

    monkeypatch.setattr(io_utils, "open", failing_open, raising=False)


# ------------------------------------------------------------------ files


@pytest.mark.parametrize("exc", [RuntimeError("killed"), OSError(errno.EIO, "I/O error")])
def test_failed_write_leaves_nothing(tmp_path, monkeypatch, exc):
    _fail_writes(monkeypatch, exc)
    with pytest.raises(type(exc)):
        atomic_write_text(tmp_path / "metrics.json", "x" * 10_000)
    assert _everything(tmp_path) == []  # no partial file, no temp file


def test_failed_write_keeps_the_previous_version(tmp_path, monkeypatch):
    target = tmp_path / "submission.csv"
    atomic_write_text(target, "ID,Label\n0,1\n")
    _fail_writes(monkeypatch, RuntimeError("killed"))
    with pytest.raises(RuntimeError):
        atomic_write_text(target, "ID,Label\n" + "0,2\n" * 1000)
    assert target.read_text() == "ID,Label\n0,1\n"
    assert _everything(tmp_path) == ["submission.csv"]


def test_successful_writes_replace_and_leave_no_temp(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_json(tmp_path / "sub" / "m.json", {"acc": 0.5})  # creates the folder
    atomic_write_text(tmp_path / "a.bin", "new")
    assert (tmp_path / "a.bin").read_text() == "new"
    assert (tmp_path / "sub" / "m.json").read_text() == '{\n  "acc": 0.5\n}\n'
    assert _everything(tmp_path) == ["a.bin", "sub", "sub/m.json"]


def test_failed_folder_write_keeps_the_previous_folder(tmp_path, monkeypatch):
    ds = datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]})
    save_dataset(ds, tmp_path / "data" / "train")
    real_save = datasets.Dataset.save_to_disk

    def save_then_die(self, path, *a, **k):
        real_save(self, path, *a, **k)  # the folder is complete on disk, but the process dies now
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        save_dataset(datasets.Dataset.from_dict({"text": ["c"], "label": [2]}), tmp_path / "data" / "train")
    assert datasets.load_from_disk(str(tmp_path / "data" / "train"))["text"] == ["a", "b"]
    assert os.listdir(tmp_path / "data") == ["train"]


def test_folder_replaces_a_previous_folder(tmp_path):
    with atomic_path(tmp_path / "model") as tmp:
        tmp.mkdir()
        (tmp / "old.txt").write_text("old")
    with atomic_path(tmp_path / "model") as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert _everything(tmp_path) == ["model", "model/new.txt"]


def test_write_killed_by_sigkill_leaves_only_hidden_temp(tmp_path):
    """A real SIGKILL in the middle of a write: the destination never appears half-written, and what
    is left behind is hidden (a later stage listing the folder, or globbing '*.jsonl', never sees it)."""
    marker = tmp_path / "half-written"
    script = textwrap.dedent(f"""
        import time
        from lorafit import io_utils
        real_open = open
        class Slow:
            def __init__(self, f): self.f = f
            def write(self, data):
                self.f.write(data[: len(data) // 2]); self.f.flush()
                open({str(marker)!r}, "w").close()
                time.sleep(60)
            def __enter__(self): return self
            def __exit__(self, *a): self.f.close()
            def __getattr__(self, n): return getattr(self.f, n)
        io_utils.open = lambda p, m="r", *a, **k: Slow(real_open(p, m, *a, **k))
        io_utils.atomic_write_text({str(tmp_path / "shards" / "shard-00000.jsonl")!r}, '{{"text": "x"}}\\n' * 1000)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, "the writer exited early"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    shards = tmp_path / "shards"
    assert not (shards / "shard-00000.jsonl").exists()
    assert _visible(shards) == [] and list(shards.glob("*.jsonl")) == []
    left = os.listdir(shards)
    assert left and all(n.startswith(".shard-00000.jsonl.") and n.endswith(".tmp") for n in left)
    # the rerun writes the file and removes the dead process's temporary folder
    atomic_write_text(shards / "shard-00000.jsonl", "done\n")
    assert (shards / "shard-00000.jsonl").read_text() == "done\n"
    assert os.listdir(shards) == ["shard-00000.jsonl"]


def test_only_dead_writers_temporaries_on_this_host_are_removed(tmp_path):
    from lorafit.io_utils import _host_tag, remove_stale_temporaries

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = _host_tag()
    names = {
        "dead": f".out.json.{host}.{dead.pid}-abc.tmp",
        "alive": f".out.json.{host}.{os.getpid()}-def.tmp",      # a write in progress
        "other_host": f".out.json.00000000.{dead.pid}-ghi.tmp",  # a shared filesystem: not ours to judge
        "other_file": f".other.json.{host}.{dead.pid}-jkl.tmp",
    }
    for n in names.values():
        (tmp_path / n).mkdir()
        (tmp_path / n / "x").write_text("partial")
    removed = remove_stale_temporaries(tmp_path / "out.json")
    assert [p.name for p in removed] == [names["dead"]]
    assert sorted(os.listdir(tmp_path)) == sorted(v for k, v in names.items() if k != "dead")


# ------------------------------------------------------------------ full disk


def test_enospc_becomes_disk_full_error_naming_the_file(tmp_path, monkeypatch):
    target = tmp_path / "runs" / "x" / "metrics.json"
    atomic_write_text(target, "old")
    _fail_writes(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(DiskFullError) as e:
        atomic_write_json(target, {"a": list(range(1000))})
    msg = str(e.value)
    assert str(target) in msg and "no space left" in msg and "free:" in msg
    assert not msg.startswith("[Errno")  # printed as a sentence, not an OSError repr
    assert e.value.errno == errno.ENOSPC and isinstance(e.value, OSError)
    assert target.read_text() == "old" and _everything(target.parent) == ["metrics.json"]


def test_quota_exceeded_is_a_disk_full_error(tmp_path, monkeypatch):
    _fail_writes(monkeypatch, OSError(errno.EDQUOT, "Disk quota exceeded"))
    with pytest.raises(DiskFullError, match="quota"):
        atomic_write_text(tmp_path / "a.txt", "x" * 100)
    assert _everything(tmp_path) == []


def test_disk_full_inside_another_librarys_writer(tmp_path, monkeypatch):
    """safetensors reports a full disk as SafetensorError('... No space left on device (os error 28)'),
    with no errno; inside atomic_path it still becomes DiskFullError and nothing is left."""

    class SafetensorError(Exception):
        pass

    with pytest.raises(DiskFullError, match="model"):
        with atomic_path(tmp_path / "model") as tmp:
            tmp.mkdir()
            (tmp / "adapter_model.safetensors").write_bytes(b"\x00" * 100)
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert _everything(tmp_path) == []


def test_as_disk_full_recognises_full_disks_only(tmp_path, monkeypatch):
    assert as_disk_full(OSError(errno.ENOSPC, "No space left on device")) is not None
    assert as_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded")) is not None
    try:  # a full disk wrapped by another exception
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("could not save checkpoint") from inner
    except RuntimeError as e:
        assert isinstance(as_disk_full(e), DiskFullError)
    assert as_disk_full(RuntimeError("I/O error: No space left on device (os error 28)")) is not None
    assert as_disk_full(OSError(errno.EACCES, "Permission denied")) is None
    assert as_disk_full(ValueError("bad value")) is None
    # torch.save's C++ writer gives no errno: a full disk is judged by the free space left
    torch_err = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    assert as_disk_full(torch_err, tmp_path) is None  # plenty of space here
    monkeypatch.setattr(io_utils.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 1024))
    assert isinstance(as_disk_full(torch_err, tmp_path), DiskFullError)


@pytest.fixture()
def unshare_tmpfs():
    """A command prefix running a shell in a private mount namespace (unprivileged user namespaces),
    where a 64 KiB tmpfs can be mounted; skipped where the kernel or sandbox forbids it."""
    exe = shutil.which("unshare")
    if not exe or not sys.platform.startswith("linux"):
        pytest.skip("needs util-linux unshare on Linux")
    probe = subprocess.run([exe, "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /tmp && echo ok"],
                           capture_output=True, text=True)
    if probe.returncode != 0 or "ok" not in probe.stdout:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {probe.stderr.strip()[:200]}")
    return [exe, "-rm", "sh", "-c"]


def test_real_full_filesystem(tmp_path, unshare_tmpfs):
    """On a real 64 KiB filesystem: raw bytes, a saved dataset (pyarrow's writer) and JSON all fail
    with DiskFullError and leave the filesystem empty."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = textwrap.dedent(f"""
        import os, datasets
        from lorafit.io_utils import DiskFullError, atomic_write_bytes, atomic_write_json, save_dataset
        mnt = {str(mnt)!r}
        attempts = [
            lambda: atomic_write_bytes(mnt + "/big.bin", os.urandom(200_000)),
            lambda: save_dataset(datasets.Dataset.from_dict({{"text": ["x" * 1000] * 300}}), mnt + "/data/train"),
            lambda: atomic_write_json(mnt + "/metrics.json", {{"log": list(range(50_000))}}),
        ]
        for attempt in attempts:
            try:
                attempt()
                print("NO ERROR")
            except DiskFullError as e:
                print("DISKFULL", str(e).splitlines()[0][:60])
        print("LEFT", sorted(os.path.relpath(os.path.join(d, f), mnt) for d, ds, fs in os.walk(mnt) for f in ds + fs))
    """)
    cmd = f"mount -t tmpfs -o size=64k tmpfs {mnt} && exec {sys.executable} -c \"$0\""
    p = subprocess.run([*unshare_tmpfs, cmd, script], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 0, p.stderr[-2000:]
    out = p.stdout.splitlines()
    assert [line.split()[0] for line in out[:3]] == ["DISKFULL"] * 3, p.stdout
    assert "no space left" in out[0]
    assert out[3] in ("LEFT []", "LEFT ['data']"), out[3]  # at most the (empty) parent folder


# ------------------------------------------------------------------ through the CLI


def _cli_args(model_dir: Path, csvs: dict, runs: Path, **extra) -> list[str]:
    return ["run", str(csvs["config"]), *tiny_overrides(model_dir, csvs, runs, **extra)]


@pytest.fixture()
def cli_csvs(tmp_path, tiny_csvs) -> dict:
    config = tmp_path / "exp.yaml"
    config.write_text("name: atomic\n")
    return {**tiny_csvs, "config": config}


def test_cli_disk_full_is_one_paragraph_and_leaves_no_partial_file(tiny_roberta_dir, cli_csvs, tmp_path, monkeypatch):
    _fail_writes(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    runs = tmp_path / "runs"
    res = CliRunner().invoke(app, _cli_args(tiny_roberta_dir, cli_csvs, runs))
    out = res.output
    assert res.exit_code == 2, out
    assert "Traceback" not in out
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert out.count("error: ") == 1, out[-2000:]  # one paragraph (progress bars share the stream)
    msg = out[out.index("error: "):].splitlines()[0]
    assert "no space left" in msg and "free:" in msg and "[Errno" not in msg
    written = Path(re.search(r"while writing '([^']+)'", msg).group(1))  # the run's first file
    run_dir = runs / "tiny"
    assert run_dir in written.parents and not written.exists()
    assert _everything(run_dir) == []  # nothing partial, no temp files


def test_cli_disk_full_during_a_checkpoint_is_one_paragraph(tiny_roberta_dir, cli_csvs, tmp_path, monkeypatch):
    """A full disk while Trainer writes a checkpoint (torch.save, outside lorafit's own writers) must
    also end with the one-paragraph message and exit code 2, not a traceback."""
    import torch

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    res = CliRunner().invoke(app, _cli_args(tiny_roberta_dir, cli_csvs, tmp_path / "runs",
                                            **{"train.max_steps": 1, "train.epochs": 1}))
    assert res.exit_code == 2, (res.output[-2000:], repr(res.exception))
    assert res.output.count("error: ") == 1, res.output[-2000:]  # progress bars share the stream
    assert "error: no space left on the device" in res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("bad", ["label", "config"])
def test_failing_run_leaves_no_run_folder(tiny_roberta_dir, cli_csvs, tmp_path, bad):
    runs = tmp_path / "runs"
    extra = {}
    if bad == "label":
        rows = tiny_labeled_rows(1)
        rows[5]["label"] = 9
        extra["data.source"] = str(write_csv(tmp_path / "bad.csv", rows))
    else:
        extra["train.epochs"] = "many"
    res = CliRunner().invoke(app, _cli_args(tiny_roberta_dir, cli_csvs, runs, **extra))
    assert res.exit_code == 2, res.output
    msg = res.output
    if bad == "label":
        assert "bad.csv" in msg and "row 5" in msg and "line 7" in msg and "9" in msg
    else:
        assert "train.epochs" in msg
    assert not (runs / "tiny").exists()
