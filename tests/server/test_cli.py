"""``tensafe admin | db``: create tenants from the shell; keys are shown once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.db.session import Database
from server.services.tenants import AuthenticatedTenant, authenticate, build_hasher
from server.settings import Settings
from tensafe.cli import main


def _authenticate(data: str, api_key: str) -> AuthenticatedTenant:
    settings = Settings(data_dir=data)
    db = Database(settings.resolved_database_url())
    try:
        with db.sessions() as session:
            return authenticate(session, api_key=api_key, hasher=build_hasher(settings))
    finally:
        db.dispose()


def _create_tenant_json(data: str, name: str, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    assert main(["admin", "create-tenant", name, "--json", "--data-dir", data]) == 0
    return dict(json.loads(capsys.readouterr().out))


def test_create_tenant_json_and_key_works(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(tmp_path / "data")
    out = _create_tenant_json(data, "acme", capsys)
    assert set(out) >= {"tenant_id", "api_key"} and out["api_key"].startswith("ts_")
    who = _authenticate(data, out["api_key"])
    assert who.tenant_id == out["tenant_id"]
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


def _scopes_of(data: str, api_key: str) -> frozenset[str]:
    return _authenticate(data, api_key).scopes


def test_create_tenant_prints_a_train_key_and_a_privacy_officer_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(tmp_path / "data")
    out = _create_tenant_json(data, "roles", capsys)
    assert out["api_key"] != out["privacy_officer_api_key"]
    assert out["privacy_officer_api_key"].startswith(f"ts_{out['privacy_officer_key_id']}_")
    assert _scopes_of(data, out["api_key"]) == {"train"}
    assert _scopes_of(data, out["privacy_officer_api_key"]) == {"privacy-officer"}

    assert main(["admin", "create-tenant", "roles-text", "--data-dir", data]) == 0
    printed = capsys.readouterr()
    lines = dict(line.split(": ", 1) for line in printed.out.splitlines() if ": " in line)
    assert _scopes_of(data, lines["api_key"]) == {"train"}
    assert _scopes_of(data, lines["privacy_officer_api_key"]) == {"privacy-officer"}
    assert "train key" in printed.out and "privacy-officer key" in printed.out
    assert "shown only once" in printed.err


def test_create_key_with_scopes_and_list_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(tmp_path / "data")
    tenant = _create_tenant_json(data, "keys", capsys)
    tid = tenant["tenant_id"]
    assert main(["admin", "create-key", tid, "--json", "--data-dir", data]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["scopes"] == ["train"] and _scopes_of(data, plain["api_key"]) == {"train"}
    args = ["admin", "create-key", tid, "--scope", "privacy-officer", "--scope", "train"]
    assert main([*args, "--label", "both", "--json", "--data-dir", data]) == 0
    both = json.loads(capsys.readouterr().out)
    assert both["scopes"] == ["train", "privacy-officer"]
    assert _scopes_of(data, both["api_key"]) == {"train", "privacy-officer"}
    assert main(["admin", "revoke-key", plain["key_id"], "--data-dir", data]) == 0
    capsys.readouterr()

    assert main(["admin", "list-keys", tid, "--json", "--data-dir", data]) == 0
    listed = {k["key_id"]: k for k in json.loads(capsys.readouterr().out)}
    assert listed[tenant["key_id"]]["scopes"] == ["train"]
    assert listed[tenant["privacy_officer_key_id"]]["scopes"] == ["privacy-officer"]
    assert listed[both["key_id"]]["scopes"] == ["train", "privacy-officer"]
    assert listed[both["key_id"]]["label"] == "both"
    assert listed[plain["key_id"]]["revoked_at"] is not None
    assert main(["admin", "list-keys", tid, "--data-dir", data]) == 0
    text_out = capsys.readouterr().out
    assert f"{both['key_id']}  train,privacy-officer  active" in text_out
    assert tenant["api_key"] not in text_out and "secret" not in text_out

    with pytest.raises(SystemExit) as bad:
        main(["admin", "create-key", tid, "--scope", "root", "--data-dir", data])
    assert bad.value.code == 2
    assert main(["admin", "list-keys", "ten_nope", "--data-dir", data]) == 2
