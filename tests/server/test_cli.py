"""``tensafe admin | db``: create tenants from the shell; keys are shown once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.db.session import Database
from server.services.tenants import authenticate, build_hasher
from server.settings import Settings
from tensafe.cli import main


def test_create_tenant_json_and_key_works(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(tmp_path / "data")
    assert main(["admin", "create-tenant", "acme", "--json", "--data-dir", data]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"tenant_id", "api_key"} and out["api_key"].startswith("ts_")
    settings = Settings(data_dir=data)
    db = Database(settings.resolved_database_url())
    try:
        with db.sessions() as session:
            who = authenticate(session, api_key=out["api_key"], hasher=build_hasher(settings))
        assert who.tenant_id == out["tenant_id"]
    finally:
        db.dispose()
    raw = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("tensafe.db*"))
    assert out["api_key"].encode() not in raw
    assert out["api_key"].split("_", 2)[2].encode() not in raw

    assert main(["admin", "create-tenant", "acme", "--data-dir", data]) == 2  # duplicate name
    assert "already exists" in capsys.readouterr().err


def test_keys_listing_and_revocation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path / "data")
    main(["admin", "create-tenant", "beta", "--json", "--data-dir", data])
    tenant = json.loads(capsys.readouterr().out)
    assert main(["admin", "create-key", tenant["tenant_id"], "--json", "--data-dir", data]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["tenant_id"] == tenant["tenant_id"] and second["api_key"] != tenant["api_key"]
    assert main(["admin", "revoke-key", second["key_id"], "--data-dir", data]) == 0
    assert main(["admin", "list-tenants", "--json", "--data-dir", data]) == 0
    capsys.readouterr()
    assert main(["admin", "revoke-key", "0" * 16, "--data-dir", data]) == 2


def test_db_upgrade_and_current(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path / "data")
    assert main(["db", "current", "--data-dir", data]) == 1  # empty database
    assert main(["db", "upgrade", "--data-dir", data]) == 0
    assert main(["db", "current", "--data-dir", data]) == 0
    assert "head: " in capsys.readouterr().out


def test_insecure_settings_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENSAFE_API_KEY_PEPPER", "changethis")
    assert main(["db", "upgrade", "--data-dir", str(tmp_path)]) == 2
    assert "placeholder" in capsys.readouterr().err
