"""Private files for key material: owner-only modes, atomic replace, advisory locks."""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tensafe.errors import KeyProviderError


def check_private(path: Path, *, what: str) -> None:
    """Refuse a file or directory that other users may access or that we do not own.

    Raises:
        KeyProviderError: naming the path, its mode and the command that fixes it.
    """
    info = path.stat()
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        wanted = "700" if stat.S_ISDIR(info.st_mode) else "600"
        raise KeyProviderError(
            f"{what} {path} is accessible to group or others (mode {mode:o}); "
            f"refusing to use it. Fix with: chmod {wanted} {path}"
        )
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        raise KeyProviderError(f"{what} {path} is owned by uid {info.st_uid}, not by this user")


def ensure_private_dir(path: Path, *, what: str) -> None:
    """Create ``path`` (mode 0700) if missing; refuse it if others may write to it
    (they could replace the files in it).

    Raises:
        KeyProviderError: if the directory is group- or world-writable.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o022 and not mode & stat.S_ISVTX:
        raise KeyProviderError(
            f"{what} {path} is writable by group or others (mode {mode:o}); "
            f"refusing to use it. Fix with: chmod 700 {path}"
        )


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically; the file is mode 0600 throughout."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    fsync_dir(path.parent)


def create_private(path: Path, data: bytes) -> bool:
    """Create ``path`` with ``data`` (mode 0600) unless it exists; True if created."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        os.unlink(path)
        raise
    fsync_dir(path.parent)
    return True


@contextlib.contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock (``flock``) on ``lock_path`` (created 0600)."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


__all__ = [
    "atomic_write_private",
    "check_private",
    "create_private",
    "ensure_private_dir",
    "fsync_dir",
    "locked",
]
