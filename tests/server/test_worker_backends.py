"""Worker backend settings and the in-process default (no Ray involved); the Ray
backend itself runs against a real cluster in tests/integration/test_ray_backend.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from server.settings import Settings


def test_default_backend_is_in_process_and_never_imports_ray(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from server.settings import Settings\n"
        "from server.worker.backends import InProcessBackend, make_backend\n"
        "import server.app\n"
        f"s = Settings(data_dir={str(tmp_path)!r})\n"
        "assert s.worker_backend == 'inprocess'\n"
        "assert isinstance(make_backend(s, on_lost=lambda runs: None), InProcessBackend)\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_ray_address_needs_the_ray_backend(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="ray_address"):
        Settings(data_dir=tmp_path, ray_address="127.0.0.1:6379")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ray_runs_per_actor", 0),
        ("ray_actors", 0),
        ("ray_cpus_per_actor", 0),
        ("ray_namespace", "bad namespace"),
        ("worker_backend", "threads"),
        ("ray_call_timeout_s", 0),
        ("ray_call_timeout_s", "soon"),
        ("ray_actor_start_timeout_s", -1),
    ],
)
def test_bad_ray_settings_name_the_field(tmp_path: Path, field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(data_dir=tmp_path, **{field: value})  # type: ignore[arg-type]


def test_ray_timeouts_are_generous_by_default_and_read_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    defaults = Settings(data_dir=tmp_path)
    assert defaults.ray_call_timeout_s == defaults.ray_actor_start_timeout_s == 600.0
    monkeypatch.setenv("TENSAFE_RAY_CALL_TIMEOUT_S", "2.5")
    assert Settings(data_dir=tmp_path).ray_call_timeout_s == 2.5


def test_remote_ray_cluster_without_tls_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_USE_TLS", raising=False)
    remote = {"worker_backend": "ray", "ray_address": "ray://head.cluster:10001"}
    with pytest.raises(ValidationError, match="RAY_USE_TLS"):
        Settings(data_dir=tmp_path, **remote)  # type: ignore[arg-type]
    local = Settings(data_dir=tmp_path, worker_backend="ray", ray_address="127.0.0.1:6379")
    assert local.insecure_settings() == []
    monkeypatch.setenv("RAY_USE_TLS", "1")
    assert Settings(data_dir=tmp_path, **remote).ray_address == "ray://head.cluster:10001"  # type: ignore[arg-type]
