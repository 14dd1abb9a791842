"""Settings: embedded defaults, environment variables, and refusal of insecure values."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from server.settings import Settings, default_data_dir


def test_defaults_need_no_configuration(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    assert s.environment == "production"
    assert s.resolved_database_url() == f"sqlite:///{tmp_path / 'tensafe.db'}"
    assert s.resolved_artifact_dir() == tmp_path / "artifacts"
    assert s.resolved_keyring_path() == tmp_path / "keyring" / "keyring.json"
    assert s.require_dp


def test_default_data_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / "tensafe"


def test_environment_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TENSAFE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TENSAFE_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("TENSAFE_DATABASE_URL", "postgresql+psycopg://u@h/db")
    s = Settings()
    assert s.data_dir == tmp_path and s.max_batch_size == 7
    assert s.resolved_database_url() == "postgresql+psycopg://u@h/db"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"api_key_pepper": "changethis"}, "placeholder"),
        ({"api_key_pepper": "short-pepper"}, "at least 32"),
        (
            {"storage_backend": "s3", "s3_bucket": "b", "s3_endpoint_url": "http://minio.example"},
            "plain http",
        ),
    ],
)
def test_insecure_values_refused_outside_development(
    tmp_path: Path, overrides: dict[str, str], reason: str
) -> None:
    with pytest.raises(ValidationError, match=reason):
        Settings(data_dir=tmp_path, **overrides)
    dev = Settings(data_dir=tmp_path, environment="development", **overrides)
    assert dev.insecure_settings()


def test_secure_values_accepted(tmp_path: Path) -> None:
    s = Settings(
        data_dir=tmp_path,
        api_key_pepper="x" * 40,
        storage_backend="s3",
        s3_bucket="b",
        s3_endpoint_url="http://127.0.0.1:9000",
    )
    assert s.insecure_settings() == []
    assert "x" * 40 not in repr(s)


def test_s3_needs_a_bucket(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="s3_bucket"):
        Settings(data_dir=tmp_path, storage_backend="s3")


def test_unknown_setting_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        Settings(data_dir=tmp_path, no_such_setting=1)  # type: ignore[call-arg]


def test_deterministic_noise_is_refused_outside_development(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="deterministic_noise"):
        Settings(data_dir=tmp_path, deterministic_noise=True)
    assert Settings(data_dir=tmp_path, deterministic_noise=True, environment="development")
