"""tinker-cookbook's supervised recipe ``sl_basic``, unmodified, against a live TenSafe
server, offline: only its command-line config changes (base URL, model name, a local
JSONL file as its dataset, small sizes), its key comes from ``TINKER_API_KEY``, and its
DP settings from the tenant's privacy officer (the recipe names none).

The recipe runs in a subprocess of ``$TENSAFE_COOKBOOK_PYTHON``, else this interpreter.
``make install`` puts tinker-cookbook 0.6.1 in the project's environment with
``--no-deps`` (it asks for ``tml-renderers>=0.4.1``, which the package index lacks;
``sl_basic`` does not use it) and its other dependencies through the ``cookbook``
extra, so the recipe not importing is a failed install: the test fails, it does not
skip (docs/tinker.md, "tinker-cookbook").

The model name must be one the cookbook knows (it picks the renderer from it):
``meta-llama/Llama-3.2-1B``. The server serves the tiny test model under that name from
its model cache (an operator-placed directory, as for any hub id offline), and the
recipe loads the tokenizer from a directory of that name in its working directory
(the cookbook's ``get_tokenizer`` takes a local directory first).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from tensafe.models.tiny import build_tiny_llama
from tests.integration.conftest import LiveServer
from tests.integration.test_privacy_budget import ledger

pytestmark = pytest.mark.integration

COOKBOOK_PYTHON = "TENSAFE_COOKBOOK_PYTHON"
MODEL = "meta-llama/Llama-3.2-1B"
BATCH = 8
CONVERSATIONS = 24  # 3 steps of 8


def _cookbook_python() -> str:
    """A Python that imports the recipe; fails saying which one did not and why."""
    python = os.environ.get(COOKBOOK_PYTHON) or sys.executable
    probe = subprocess.run(
        [python, "-c", "import tinker_cookbook.recipes.sl_basic"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if probe.returncode != 0:
        why = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.fail(
            f"tinker-cookbook is not importable with {python} ({why}); `make install` "
            f"installs it, or set {COOKBOOK_PYTHON} to a Python that has tinker==0.38.0 "
            "and tinker-cookbook (docs/tinker.md, 'tinker-cookbook')"
        )
    return python


def _conversations(path: Path) -> None:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
            ]
        }
        for i in range(CONVERSATIONS)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_sl_basic_trains_under_the_privacy_officers_policy(tmp_path: Path) -> None:
    python = _cookbook_python()
    tiny = build_tiny_llama()
    served = tmp_path / "cache" / "models" / MODEL.replace("/", "--")
    tiny.model.save_pretrained(served)
    tiny.tokenizer.save_pretrained(served)
    workdir = tmp_path / "client"
    tiny.tokenizer.save_pretrained(workdir / MODEL)  # tokenizer files only
    _conversations(tmp_path / "conversations.jsonl")

    server = LiveServer(
        tmp_path / "server",
        f"sqlite:///{tmp_path / 'tensafe.db'}",
        extra_env={
            "TENSAFE_MODEL_CACHE_DIR": str(tmp_path / "cache"),
            # N and q of the client-declared run: the operator's defaults
            "TENSAFE_TINKER_DEFAULT_DP": json.dumps(
                {"dataset_size": 1000, "expected_batch_size": BATCH}
            ),
        },
    )
    server.start()
    try:
        tenant = server.create_tenant()
        dataset = "cookbook-" + uuid.uuid4().hex[:6]
        officer = {"Authorization": "Bearer " + tenant["privacy_officer_api_key"]}
        policy = {"dataset_id": dataset, "noise_multiplier": 1.2, "max_grad_norm": 0.8}
        with httpx.Client(base_url=server.url, timeout=60) as http:
            budget = {"dataset_id": dataset, "epsilon_cap": 50.0}
            assert http.post("/v1/budgets", json=budget, headers=officer).status_code == 201
            assert http.put("/v1/dp_policy", json=policy, headers=officer).status_code == 200

        log_path = tmp_path / "recipe-log"
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(
            {
                "TINKER_API_KEY": "tml-" + tenant["api_key"],
                "HF_HUB_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
            }
        )
        recipe = subprocess.run(
            [
                python,
                "-m",
                "tinker_cookbook.recipes.sl_basic",
                f"model_name={MODEL}",
                f"base_url={server.url}",
                f"log_path={log_path}",
                "dataset_builder=tinker_cookbook.supervised.data:FromConversationFileBuilder",
                f"dataset_builder.file_path={tmp_path / 'conversations.jsonl'}",
                f"dataset_builder.common_config.model_name_for_tokenizer={MODEL}",
                "dataset_builder.common_config.renderer_name=role_colon",
                "dataset_builder.common_config.max_length=64",
                f"dataset_builder.common_config.batch_size={BATCH}",
                "lora_rank=4",
                "eval_every=0",
                "save_every=0",
            ],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert recipe.returncode == 0, recipe.stdout[-3000:] + recipe.stderr[-3000:]
        assert "Training completed" in recipe.stdout + recipe.stderr

        metrics = [
            json.loads(line) for line in (log_path / "metrics.jsonl").read_text().splitlines()
        ]
        trained = [m for m in metrics if "dp/epsilon:max" in m]
        assert len(trained) == CONVERSATIONS // BATCH
        assert all(m["dp/noise_multiplier:max"] == 1.2 for m in trained)
        assert all(m["dp/max_grad_norm:max"] == 0.8 for m in trained)
        steps = [r for r in ledger(server, dataset) if r["kind"] == "dp_step"]
        assert [(r["noise_multiplier"], r["max_grad_norm"]) for r in steps] == [(1.2, 0.8)] * 3
        saved = [
            json.loads(line) for line in (log_path / "checkpoints.jsonl").read_text().splitlines()
        ]
        assert saved and saved[-1]["state_path"].startswith("tinker://")
    finally:
        server.stop()
