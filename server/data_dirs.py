"""The server's data directories are private: tightened to 0700 (files to 0600) on start.

``mkdir(mode=0o700)`` does nothing to a directory that already exists, so a data
directory created by hand (or by an older version) with 0755 would stay readable by
every user of the machine. :func:`tighten_data_dirs` fixes the modes of what the
server owns and logs each change.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from sqlalchemy.engine import make_url

from server.settings import Settings

log = logging.getLogger("tensafe.server")

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def data_paths(settings: Settings) -> tuple[list[Path], list[Path]]:
    """``(directories, files)`` the server keeps private: the data directory and, when
    they are local, the artifact, keyring, secrets and tokenizer directories and the
    SQLite database with its WAL files."""
    dirs = [settings.data_dir, settings.data_dir / "secrets", settings.data_dir / "tokenizers"]
    files: list[Path] = []
    if settings.storage_backend == "local":
        dirs.append(settings.resolved_artifact_dir())
    if settings.key_provider == "local":
        dirs.append(settings.resolved_keyring_path().parent)
    url = make_url(settings.resolved_database_url())
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        database = Path(url.database or "").absolute()
        if database.parent.is_relative_to(settings.data_dir):  # never a shared parent
            dirs.append(database.parent)
        files += [database, Path(f"{database}-wal"), Path(f"{database}-shm")]
    return dirs, files


def tighten_data_dirs(settings: Settings) -> list[Path]:
    """Make the server's existing data directories 0700 and its database files 0600
    (only those this user owns; group/other bits are removed, nothing is added).
    Returns the paths changed."""
    changed: list[Path] = []
    dirs, files = data_paths(settings)
    for path, mode in [(d, PRIVATE_DIR) for d in dirs] + [(f, PRIVATE_FILE) for f in files]:
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077 == 0:
            continue
        os.chmod(path, stat.S_IMODE(info.st_mode) & mode)
        log.warning("tightened %s from %o to %o", path, stat.S_IMODE(info.st_mode), mode)
        changed.append(path)
    return changed


__all__ = ["data_paths", "tighten_data_dirs"]
