"""Every example script runs against a live server on the tiny model, so none can rot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCRIPTS = [
    "basic_loop.py",
    "gradient_accumulation.py",
    "pipelining.py",
    "checkpoint_resume.py",
    "pull_and_decrypt.py",
]


@pytest.fixture(scope="module")
def example_env(live_server):
    if live_server.database_url.startswith("postgresql"):
        pytest.skip("the examples run once, on the embedded SQLite default")
    tenant = live_server.create_tenant("examples")
    # as docs/quickstart.md says: an admin creates the examples' dataset budget first
    live_server.cli(
        "admin", "create-budget", tenant["tenant_id"], "synthetic-notes", "--epsilon-cap", "100"
    )
    return {
        **os.environ,
        "TG_TINKER_BASE_URL": live_server.url,
        "TG_TINKER_API_KEY": tenant["api_key"],
        "HF_HUB_OFFLINE": "1",
    }


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs(script, example_env, tmp_path):
    args = ["--model", "tiny-llama", "--steps", "2", "--dataset-size", "16", "--batch", "4"]
    if script == "pull_and_decrypt.py":
        args += ["--out-dir", str(tmp_path)]
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        env=example_env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "ε" in out.stdout or "decrypted and verified" in out.stdout
    if script == "pull_and_decrypt.py":
        assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
        assert "loaded into peft" in out.stdout
