"""Start disk writeback while a file is still being written, so its final fsync is short.

A durable write (temp file, ``fsync``, rename) otherwise pays for the whole disk
transfer at the end, after all the CPU work. :class:`WriteBehind` overlaps the two:
each time another window of the file is complete it asks the kernel to start writing
that window out (``sync_file_range(SYNC_FILE_RANGE_WRITE)``) and waits for the window
before it, so about two windows are dirty or in flight at any time and the final
``fsync`` only has the tail left. Standard library only: CPython does not expose
``sync_file_range``, so it is called from the C library through :mod:`ctypes`.
Linux only (elsewhere, or on file systems and files that do not support it, it does
nothing).

It never replaces ``fsync``: ``sync_file_range`` neither writes metadata nor flushes
the disk's cache.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable

WRITEBACK_WINDOW = 32 * 1024 * 1024
"""Bytes per writeback window (also about half the dirty data left for ``fsync``)."""

_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ESPIPE, errno.ENOTSUP}
# <linux/fs.h>: SYNC_FILE_RANGE_WAIT_BEFORE = 1, _WRITE = 2, _WAIT_AFTER = 4.
_START = 2
_WAIT = 1 | 2 | 4


def _libc_sync_file_range() -> Callable[[int, int, int, int], None] | None:
    """``sync_file_range(2)`` as a function raising ``OSError``, or None if unavailable."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (ImportError, OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int

    def sync_file_range(fd: int, offset: int, count: int, flags: int) -> None:
        # ctypes releases the GIL for the call, so waiting here blocks no other thread.
        if function(fd, offset, count, flags) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    return sync_file_range


_SYNC_FILE_RANGE = getattr(os, "sync_file_range", None) or _libc_sync_file_range()


class WriteBehind:
    """Push a sequentially written file's dirty pages to disk window by window.

    Call :meth:`wrote` after each write with the number of bytes appended (bytes
    still in a user-space buffer are harmless: their pages are simply not dirty
    yet, the final ``fsync`` takes them). Not thread-safe: call it from the thread
    that writes.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryFile() as handle:
        ...     behind = WriteBehind(handle.fileno(), window=4096)
        ...     behind.wrote(handle.write(bytes(10_000)))
        ...     behind.started
        8192
    """

    def __init__(self, fd: int, *, window: int = WRITEBACK_WINDOW) -> None:
        """Track ``fd``, written sequentially from offset 0.

        Raises:
            ValueError: unless ``window`` is a positive multiple of 4096.
        """
        if window <= 0 or window % 4096:
            raise ValueError("window must be a positive multiple of 4096 bytes")
        self._fd = fd
        self._window = window
        self._written = 0
        self.started = 0
        """End of the part of the file whose writeback was started."""
        self.enabled = _SYNC_FILE_RANGE is not None
        """False where ``sync_file_range`` is missing or the file does not support it."""

    def wrote(self, count: int) -> None:
        """Account for ``count`` more bytes at the end of the file; starts writeback of
        every window now complete and waits for the window before each.

        Raises:
            OSError: a write error the kernel reported for this file (for example
                ``EIO``); the data must then be considered lost.
        """
        self._written += count
        while self.enabled and self._written - self.started >= self._window:
            start = self.started
            self._sync(start, _START)
            if start >= self._window:
                self._sync(start - self._window, _WAIT)
            self.started = start + self._window

    def _sync(self, offset: int, flags: int) -> None:
        assert _SYNC_FILE_RANGE is not None
        try:
            _SYNC_FILE_RANGE(self._fd, offset, self._window, flags)
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED:
                raise
            self.enabled = False  # e.g. a pipe or a file system without it


__all__ = ["WRITEBACK_WINDOW", "WriteBehind"]
