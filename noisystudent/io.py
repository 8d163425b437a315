"""Atomic writes: a killed stage leaves the previous complete file or none, never a torn one.

Each writer writes to a temporary file in the same folder, fsyncs it, then renames it over
the target (rename is atomic on POSIX within one filesystem). A full disk (ENOSPC, EDQUOT) while
writing leaves the previous target as it was and raises an OSError naming the target.
"""
from __future__ import annotations

import errno
import glob
import json
import os
import re
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd


class InputError(ValueError):
    """A problem with what the user gave (data, checkpoint, folder): stage commands print it
    as one line naming the file, without a traceback."""


def _mode(default: int) -> int:
    """`default` less the process umask: what open() and mkdir() would give (mkstemp and
    mkdtemp make 0600 / 0700, which would otherwise survive the rename)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return default & ~umask


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clear_stale(parent: Path, name: str) -> None:
    """Temporary files and folders that a killed writer of `name` left (named with its pid):
    inside an output folder they would change the folder's DVC hash."""
    import shutil

    for f in parent.glob(f".{glob.escape(name)}.*"):
        m = re.fullmatch(rf"\.{re.escape(name)}\.(\d+)\.[^.]+\.(tmp|old)", f.name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            shutil.rmtree(f, ignore_errors=True) if f.is_dir() and not f.is_symlink() else f.unlink(missing_ok=True)


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(e: BaseException) -> bool:
    """ENOSPC / EDQUOT, also from writers (pyarrow) that give only the message."""
    return isinstance(e, OSError) and (e.errno in DISK_FULL or any(
        os.strerror(n) in str(e) for n in DISK_FULL))


@contextmanager
def _naming_disk_full(path: Path) -> Iterator[None]:
    """A full disk while writing `path`'s temporary: the error names `path` (the temporary's
    random name means nothing to the user, and it is gone by then)."""
    try:
        yield
    except OSError as e:
        if not is_disk_full(e) or e.filename == str(path):
            raise
        n = e.errno if e.errno in DISK_FULL else next(n for n in DISK_FULL if os.strerror(n) in str(e))
        raise OSError(n, os.strerror(n), str(path)) from e


def _fault_kill_in_write(path: Path) -> None:
    # fault injection (tests): NS_FAULT_KILL_IN_WRITE=<substring> SIGKILLs the writer of a target
    # whose path contains it when the temporary file / folder is whole, just before the rename
    if (sub := os.environ.get("NS_FAULT_KILL_IN_WRITE")) and sub in path.as_posix():
        os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(path.parent, path.name)
    with _naming_disk_full(path):
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            yield Path(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, _mode(0o666))
            _fault_kill_in_write(path)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    _fsync_dir(path.parent)  # (outside: an error here is not "the previous version is unchanged")


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A folder written as a whole: filled under a temporary name, then renamed into place
    (the old one moved aside first and deleted after), so a kill leaves the previous
    complete folder, or none, never a mix of old and new files."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(path.parent, path.name)
    with _naming_disk_full(path):
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
        old = None
        try:
            yield tmp
            for root, _, files in os.walk(tmp):  # everything inside is on disk before the rename
                for name in files:
                    with open(Path(root) / name, "rb") as f:
                        os.fsync(f.fileno())
                _fsync_dir(Path(root))
            os.chmod(tmp, _mode(0o777))
            if path.exists():
                old = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".old", dir=path.parent))
                os.replace(path, old / path.name)
            _fault_kill_in_write(path)
            os.replace(tmp, path)
        except BaseException:
            if old is not None and (old / path.name).exists() and not path.exists():
                os.replace(old / path.name, path)  # the new one did not go in: the previous one back
            shutil.rmtree(tmp, ignore_errors=True)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            raise
    _fsync_dir(path.parent)  # the rename is durable before the previous folder goes
    if old is not None:
        shutil.rmtree(old)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_parquet(path: str | Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def atomic_write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def atomic_write_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def atomic_save_torch(path: str | Path, obj) -> None:
    """Byte-identical for identical content: torch.save names the zip's records after the
    file it writes to, so saving straight to the random temp name would change every time."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def file_sha256(path: Path) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
