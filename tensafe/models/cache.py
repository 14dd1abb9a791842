"""TenSafe's local model cache: where prepared models live and how they get there safely.

A prepared directory is built in a temporary directory beside its final place and
renamed into place only when complete, with a stamp file written last. Concurrent
preparers serialize on a file lock, and even without the lock a lost rename race
leaves one good directory (the loser discards its copy). So a directory under the
cache that carries the stamp is always complete.

Example::

    >>> root = resolve_cache_dir(None)  # $TENSAFE_CACHE_DIR or ~/.cache/tensafe
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from filelock import FileLock, Timeout

from tensafe.errors import ModelLoadError

CACHE_ENV_VAR = "TENSAFE_CACHE_DIR"
STAMP_FILE = "tensafe-prepared.json"
_LOCK_TIMEOUT_S = 1800.0


def default_cache_dir() -> Path:
    """``$TENSAFE_CACHE_DIR`` if set, else ``~/.cache/tensafe``. Nothing is created."""
    configured = os.environ.get(CACHE_ENV_VAR)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "tensafe"


def resolve_cache_dir(cache_dir: Path | str | None) -> Path:
    """The given cache directory (``~`` expanded), or :func:`default_cache_dir`."""
    return default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()


def is_prepared(directory: Path) -> bool:
    """Whether ``directory`` is a complete prepared directory (it carries the stamp)."""
    return (directory / STAMP_FILE).is_file()


def progress(message: str) -> None:
    """One progress line on stderr (long preparations say what they are doing)."""
    print(f"tensafe: {message}", file=sys.stderr, flush=True)


def prepare_directory(
    target: Path,
    build: Callable[[Path], Mapping[str, object]],
    *,
    description: str,
) -> Path:
    """Make ``target`` a complete prepared directory, building it at most once.

    ``build(tmp)`` fills the empty directory ``tmp`` and returns the provenance
    stamp (JSON-serializable) written last as ``tensafe-prepared.json``. Returns
    ``target`` immediately when it is already prepared (idempotent).

    Promises: ``target`` never holds a partial build; two processes preparing at
    once end with one good directory and one build (file lock); temporaries of a
    crashed build are removed by the next preparer; a directory at ``target``
    without the stamp (an interrupted manual copy) is replaced.

    Raises:
        ModelLoadError: the lock could not be taken in time, or the build failed
            (the original error is chained).
    """
    if is_prepared(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target.parent / f".{target.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        progress(f"waiting for another process preparing {description} ...")
        try:
            lock.acquire(timeout=_LOCK_TIMEOUT_S)
        except Timeout as exc:
            raise ModelLoadError(
                f"timed out after {_LOCK_TIMEOUT_S:.0f} s waiting for the lock on {target}; "
                f"remove {lock.lock_file} if no other process is preparing it"
            ) from exc
    try:
        if is_prepared(target):  # another process finished while we waited
            return target
        _remove_leftovers(target)
        return _build_and_publish(target, build, description=description)
    finally:
        lock.release()


def _remove_leftovers(target: Path) -> None:
    # Under the lock no other preparer is building, so any temporary is a crash's leftover.
    for leftover in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    if target.exists():  # present but unstamped: incomplete, never ours to trust
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-stale-", dir=target.parent))
        os.replace(target, aside / target.name)
        shutil.rmtree(aside, ignore_errors=True)


def _build_and_publish(
    target: Path, build: Callable[[Path], Mapping[str, object]], *, description: str
) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache holds public model files
    started = time.perf_counter()
    try:
        try:
            stamp = dict(build(tmp))
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"preparing {description} failed: {exc}") from exc
        stamp.setdefault("prepared_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        (tmp / STAMP_FILE).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
        try:
            os.rename(tmp, target)
        except OSError:
            # Lost a race to a preparer that did not hold our lock: keep the winner's copy.
            if not is_prepared(target):
                raise
        else:
            progress(f"prepared {description} in {time.perf_counter() - started:.1f} s: {target}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


__all__ = [
    "CACHE_ENV_VAR",
    "STAMP_FILE",
    "default_cache_dir",
    "is_prepared",
    "prepare_directory",
    "progress",
    "resolve_cache_dir",
]
