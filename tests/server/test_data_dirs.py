"""Data directories are private after start, even when they existed with looser modes."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

from server.context import build_context
from server.data_dirs import tighten_data_dirs
from server.settings import Settings


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_pre_existing_0755_directories_become_0700(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings()
    made = [settings.data_dir, settings.resolved_artifact_dir(), settings.data_dir / "secrets"]
    for path in made:
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
        path.chmod(0o755)
    database = settings.data_dir / "tensafe.db"
    database.touch()
    database.chmod(0o644)
    context = build_context(settings)
    try:
        for path in made:
            assert _mode(path) == 0o700, path
        assert _mode(database) == 0o600
        assert _mode(settings.resolved_keyring_path().parent) == 0o700
    finally:
        context.db.dispose()
    assert tighten_data_dirs(settings) == []  # already private: nothing to change


def test_a_database_outside_the_data_dir_leaves_its_parent_alone(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    settings = make_settings(database_url=f"sqlite:///{shared / 'x.db'}")
    settings.data_dir.mkdir(parents=True)
    tighten_data_dirs(settings)
    assert _mode(shared) == 0o755  # not the server's directory to tighten
