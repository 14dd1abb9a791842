"""A ``tensafe serve`` subprocess for the benchmarks that measure through the server
(``server_overhead.py``, ``sampling.py``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """A ``tensafe serve`` subprocess on 127.0.0.1 in ``data_dir`` (development mode,
    one worker thread, offline); ``env`` adds or overrides environment variables."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = _free_port()
        self.env = {
            **os.environ,
            "TENSAFE_ENVIRONMENT": "development",
            "TENSAFE_WORKER_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tensafe(self, *argv: str) -> str:
        command = [sys.executable, "-m", "tensafe.cli", *argv, "--data-dir", str(self.data_dir)]
        out = subprocess.run(command, env=self.env, capture_output=True, text=True, check=True)
        return out.stdout

    def start(self) -> None:
        import httpx

        log = (self.data_dir / "server.log").open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tensafe.cli",
                "serve",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
            ],
            env=self.env,
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("server exited; see " + str(self.data_dir / "server.log"))
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(60)


__all__ = ["LiveServer"]
