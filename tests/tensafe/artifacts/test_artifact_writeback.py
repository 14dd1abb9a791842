"""WriteBehind: starts writeback window by window, degrades quietly, reports I/O errors."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tensafe.artifacts import writeback
from tensafe.artifacts.writeback import WriteBehind

WAIT = writeback._WAIT
START = writeback._START


class _Recorder:
    def __init__(self, fail_with: int | None = None) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self.fail_with = fail_with

    def __call__(self, fd: int, offset: int, count: int, flags: int) -> None:
        self.calls.append((offset, count, flags))
        if self.fail_with is not None:
            raise OSError(self.fail_with, os.strerror(self.fail_with))


def test_each_complete_window_is_started_and_the_one_before_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorder = _Recorder()
    monkeypatch.setattr(writeback, "_SYNC_FILE_RANGE", recorder)
    behind = WriteBehind(3, window=4096)
    behind.wrote(4095)
    assert recorder.calls == []  # no complete window yet
    behind.wrote(1 + 4096 * 2 + 10)
    assert recorder.calls == [
        (0, 4096, START),
        (4096, 4096, START),
        (0, 4096, WAIT),
        (8192, 4096, START),
        (4096, 4096, WAIT),
    ]
    assert behind.started == 3 * 4096


@pytest.mark.parametrize("code", [errno.EINVAL, errno.ESPIPE, errno.ENOSYS])
def test_unsupported_files_turn_it_off(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    recorder = _Recorder(fail_with=code)
    monkeypatch.setattr(writeback, "_SYNC_FILE_RANGE", recorder)
    behind = WriteBehind(3, window=4096)
    behind.wrote(3 * 4096)
    assert not behind.enabled and len(recorder.calls) == 1


def test_io_errors_are_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writeback, "_SYNC_FILE_RANGE", _Recorder(fail_with=errno.EIO))
    behind = WriteBehind(3, window=4096)
    with pytest.raises(OSError) as info:
        behind.wrote(4096)
    assert info.value.errno == errno.EIO


def test_without_sync_file_range_it_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writeback, "_SYNC_FILE_RANGE", None)
    behind = WriteBehind(3, window=4096)
    behind.wrote(1 << 20)
    assert not behind.enabled and behind.started == 0


@pytest.mark.parametrize("window", [0, -4096, 1000])
def test_window_must_be_whole_pages(window: int) -> None:
    with pytest.raises(ValueError):
        WriteBehind(3, window=window)


def test_real_file_contents_are_unaffected(tmp_path: Path) -> None:
    data = os.urandom(5 * 4096 + 123)
    path = tmp_path / "f"
    with path.open("wb") as handle:
        behind = WriteBehind(handle.fileno(), window=4096)
        for start in range(0, len(data), 3000):
            behind.wrote(handle.write(data[start : start + 3000]))
        handle.flush()
        os.fsync(handle.fileno())
    assert path.read_bytes() == data
    if writeback._SYNC_FILE_RANGE is not None:
        assert behind.enabled and behind.started == 5 * 4096
