"""examples/rl_loop.py against a live server on the tiny model: under DP, sampling from
the run's current weights on the server, the mean reward rises over a few steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import LiveServer

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "rl_loop.py"


def test_rl_loop_reward_rises_under_dp(live_server: LiveServer, tmp_path: Path) -> None:
    if live_server.database_url.startswith("postgresql"):
        pytest.skip("the example runs once, on the embedded SQLite default")
    tenant = live_server.create_tenant()
    env = {
        **os.environ,
        "TG_TINKER_BASE_URL": live_server.url,
        "TG_TINKER_API_KEY": tenant["api_key"],
        "HF_HUB_OFFLINE": "1",
    }
    args = ["--model", "tiny-llama", "--steps", "6", "--top-k", "16", "--clip", "1e-4"]
    args += ["--lr", "0.02", "--seed", "0", "--json"]
    out = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    # the same prompts and sampling seeds before and after: only the weights changed
    assert summary["after"] > summary["before"] + 0.1, out.stdout
    steps = summary["steps"]
    assert len(steps) == 6 and max(steps[-2:]) > steps[0], out.stdout
    assert 0 < summary["epsilon"] < 1000  # every step was a charged DP step
