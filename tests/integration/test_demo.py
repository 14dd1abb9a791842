"""The demo pipeline (`make demo`) end to end on the tiny model: fast, and it cannot rot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_end_to_end_and_stops_its_server(tmp_path):
    data_dir = tmp_path / "demo"
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "demo.py"),
            "--data-dir",
            str(data_dir),
            "--model",
            "tiny-llama",
            "--steps",
            "6",
            "--train-size",
            "32",
            "--batch",
            "8",
            "--sigma",
            "0.5",
            "--lr",
            "1e-2",
            "--dataset-epsilon-cap",
            "100",
        ],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "held-out loss after training" in text
    assert "pulled, decrypted and verified locally" in text
    assert "BEFORE" in text and "AFTER" in text
    # the answers come from the server's SamplingClient; the pulled adapter answers locally
    assert "generated on the server (SamplingClient)" in text and "LOCAL" in text
    assert "server stopped" in text
    report = data_dir / "privacy-audit-report.html"
    assert "privacy audit report:" in text and report.exists()
    html = report.read_text()
    assert "data:image/png;base64," in html and "clinical-notes-synthetic-v1" in html
    assert (data_dir / "client" / "adapter" / "adapter_model.safetensors").exists()
    # the checkpoint on the server side exists only as ciphertext
    stored = [
        p for p in (data_dir / "artifacts").rglob("*") if p.is_file() and p.stat().st_size > 1024
    ]
    assert stored and all(p.read_bytes()[:8] == b"\x89TSAFE\r\n" for p in stored)
