"""Atomic, locked, race-safe preparation of cache directories."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from tensafe.errors import ModelLoadError
from tensafe.models.cache import (
    STAMP_FILE,
    default_cache_dir,
    is_prepared,
    prepare_directory,
    resolve_cache_dir,
)


def _write_payload(directory: Path, text: str = "payload") -> Mapping[str, object]:
    (directory / "weights.txt").write_text(text)
    return {"name": "test"}


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name)


def test_default_cache_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TENSAFE_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    assert resolve_cache_dir(None) == tmp_path / "c"
    assert resolve_cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("TENSAFE_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "tensafe"


def test_builds_once_and_is_idempotent(tmp_path: Path) -> None:
    target = tmp_path / "models" / "m"
    calls: list[Path] = []

    def build(directory: Path) -> Mapping[str, object]:
        calls.append(directory)
        return _write_payload(directory)

    assert prepare_directory(target, build, description="m") == target
    assert prepare_directory(target, build, description="m") == target
    assert len(calls) == 1
    assert calls[0] != target  # built elsewhere, renamed into place
    assert (target / "weights.txt").read_text() == "payload"
    assert is_prepared(target) and (target / STAMP_FILE).is_file()
    assert _leftovers(target.parent) == []


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "m"

    def build(directory: Path) -> Mapping[str, object]:
        (directory / "half-written").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(ModelLoadError, match="disk full"):
        prepare_directory(target, build, description="m")
    assert not target.exists()
    assert _leftovers(tmp_path) == []


def test_crash_leftovers_and_unstamped_target_are_replaced(tmp_path: Path) -> None:
    target = tmp_path / "m"
    (tmp_path / ".m.tmp-crashed").mkdir()
    target.mkdir()
    (target / "partial").write_text("incomplete copy")
    prepare_directory(target, _write_payload, description="m")
    assert sorted(p.name for p in target.iterdir()) == [STAMP_FILE, "weights.txt"]
    assert _leftovers(tmp_path) == []


def test_lost_rename_race_keeps_the_winner(tmp_path: Path) -> None:
    target = tmp_path / "m"

    def build(directory: Path) -> Mapping[str, object]:
        # Another preparer (not holding our lock) publishes first while we build.
        winner = tmp_path / "winner"
        winner.mkdir()
        _write_payload(winner, "winner")
        (winner / STAMP_FILE).write_text("{}")
        winner.rename(target)
        return _write_payload(directory, "loser")

    assert prepare_directory(target, build, description="m") == target
    assert (target / "weights.txt").read_text() == "winner"
    assert _leftovers(tmp_path) == []


def _prepare_in_child(target: str, log: str) -> str:
    def build(directory: Path) -> Mapping[str, object]:
        with open(log, "a") as handle:
            handle.write("built\n")
        time.sleep(0.5)
        return _write_payload(directory)

    return str(prepare_directory(Path(target), build, description="m"))


def test_two_processes_end_with_one_good_directory(tmp_path: Path) -> None:
    target, log = tmp_path / "m", tmp_path / "log"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.starmap(_prepare_in_child, [(str(target), str(log))] * 2)
    assert results == [str(target)] * 2
    assert log.read_text() == "built\n"  # the second waited for the lock, then reused
    assert (target / "weights.txt").read_text() == "payload" and is_prepared(target)
    assert _leftovers(tmp_path) == []
