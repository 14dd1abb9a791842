"""``tensafe keys``: rotation keeps old artifacts readable; shredding makes them unreadable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.db.session import Database
from server.services.keys import build_keyring
from server.settings import Settings
from tensafe.artifacts import open_bytes, seal_bytes
from tensafe.cli import main
from tensafe.errors import KeyProviderError


def _keyring(data: str):
    settings = Settings(data_dir=data)
    db = Database(settings.resolved_database_url())
    return db, build_keyring(settings, db)


def test_rotate_rewrap_and_shred(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path / "data")
    assert main(["admin", "create-tenant", "clinic", "--json", "--data-dir", data]) == 0
    tenant = json.loads(capsys.readouterr().out)["tenant_id"]
    db, keyring = _keyring(data)
    try:
        old = seal_bytes(b"v1 weights", tenant_key=keyring.current_key(tenant), artifact_id="art_a")

        assert main(["keys", "rotate-tenant", tenant, "--data-dir", data]) == 0
        assert "version 2" in capsys.readouterr().out
        new_key = keyring.current_key(tenant)
        assert new_key.version == 2
        new = seal_bytes(b"v2 weights", tenant_key=new_key, artifact_id="art_b")

        assert main(["keys", "rotate-kek", "--data-dir", data]) == 0
        assert "rewrapped" in capsys.readouterr().out
        db2, fresh = _keyring(data)  # a new process's view after the KEK rotation
        for blob, aid, plain in ((old, "art_a", b"v1 weights"), (new, "art_b", b"v2 weights")):
            assert open_bytes(blob, keys=fresh, tenant_id=tenant, artifact_id=aid) == plain
        db2.dispose()

        assert main(["keys", "list", tenant, "--data-dir", data]) == 0
        assert json.loads(capsys.readouterr().out)["versions"] == [1, 2]

        assert main(["keys", "shred", tenant, "--data-dir", data]) == 2  # needs --yes
        assert "irreversible" in capsys.readouterr().err
        assert main(["keys", "shred", tenant, "--yes", "--data-dir", data]) == 0
        assert "destroyed 2 key version(s)" in capsys.readouterr().out
        db3, after = _keyring(data)
        with pytest.raises(KeyProviderError):
            open_bytes(old, keys=after, tenant_id=tenant, artifact_id="art_a")
        db3.dispose()

        assert main(["keys", "list", "ten_nope", "--data-dir", data]) == 2
    finally:
        db.dispose()
