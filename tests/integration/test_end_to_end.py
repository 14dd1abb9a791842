"""The training guide's flow over a real server, with the SDK as client:
forward_backward → DP optim_step → save_state (metadata) → load_state → pull →
local decrypt with the exported key → the adapter loads in peft with identical logits."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tg_tinker import BatchData, DPConfig, LoRAConfig, ServiceClient, TrainingConfig
from tg_tinker.types import Datum, ModelInput, TensorData

from tensafe.artifacts import decrypt_to_directory, read_key_file
from tests.integration.conftest import LiveServer

pytestmark = pytest.mark.integration

VOCAB = 49152


def dp_config(**overrides: object) -> DPConfig:
    values: dict[str, object] = {
        "noise_multiplier": 1.0,
        "dataset_size": 1000,
        "expected_batch_size": 4,
    }
    values.update(overrides)
    return DPConfig(**values)  # type: ignore[arg-type]


def tiny_config(**overrides: object) -> TrainingConfig:
    values: dict[str, object] = {
        "model_ref": "tiny-llama",
        "lora_config": LoRAConfig(rank=4, alpha=8),
        "dp_config": dp_config(),
        "seed": 0,
    }
    values.update(overrides)
    return TrainingConfig(**values)  # type: ignore[arg-type]


def random_batch(seed: int, rows: int = 4, length: int = 16) -> BatchData:
    ids = np.random.default_rng(seed).integers(0, VOCAB, size=(rows, length)).tolist()
    labels = [[*row[1:], -100] for row in ids]
    return BatchData(input_ids=ids, attention_mask=[[1] * length] * rows, labels=labels)


def test_train_checkpoint_pull_decrypt_and_load_in_peft(
    live_server: LiveServer, tmp_path: Path
) -> None:
    tenant = live_server.create_tenant()
    with ServiceClient(live_server.url, api_key=tenant["api_key"]) as service:
        tc = service.create_training_client(tiny_config())
        fb = tc.forward_backward(random_batch(0)).result(timeout=120)
        assert fb.loss > 0 and fb.grad_norm is not None and fb.tokens_processed == 64
        step = tc.optim_step().result(timeout=120)
        assert step.step == 1 and step.dp_metrics is not None
        assert step.dp_metrics.epsilon_spent > 0 and step.dp_metrics.steps == 1

        checkpoint = tc.save_state(
            metadata={"epoch": 1, "validation_loss": 0.42, "dataset_version": "v2"}
        ).result(timeout=120)
        assert checkpoint.artifact_id and checkpoint.size_bytes > 0
        assert len(checkpoint.content_hash) == 64 and checkpoint.step == 1
        assert checkpoint.metadata == {"epoch": 1, "validation_loss": 0.42, "dataset_version": "v2"}

        tc.forward_backward(random_batch(1)).result(timeout=120)
        assert tc.optim_step().result(timeout=120).step == 2
        restored = tc.load_state(artifact_id=checkpoint.artifact_id).result(timeout=120)
        assert restored.step == 1 and restored.artifact_id == checkpoint.artifact_id
        tc.refresh()
        assert tc.step == 1 and tc.status == "READY"

        sampler = tc.save_weights_for_sampler("final").result(timeout=120)
        ciphertext = service.pull_artifact(
            sampler.artifact_id, expected_sha256=sampler.content_hash
        )
        assert len(ciphertext) == sampler.size_bytes
        key_file = service.export_tenant_key(tmp_path / "tenant.key")

        tokens = np.random.default_rng(7).integers(0, VOCAB, size=12).tolist()
        datum = Datum(
            model_input=ModelInput.from_ints(tokens[:-1]),
            loss_fn_inputs={"target_tokens": TensorData.from_numpy(np.array(tokens[1:]))},
        )
        server_logprobs = np.asarray(
            tc.forward([datum]).result(timeout=120).loss_fn_outputs[0].logprobs.data
        )
        state_blob = service.pull_artifact(checkpoint.artifact_id)

    key = read_key_file(key_file)
    assert key.tenant_id == tenant["tenant_id"]
    adapter_dir = tmp_path / "adapter"
    decrypted = decrypt_to_directory(
        io.BytesIO(ciphertext),
        adapter_dir,
        keys=key,
        tenant_id=key.tenant_id,
        artifact_id=sampler.artifact_id,
        expected_content_hash=sampler.content_hash,
    )
    assert decrypted.manifest.kind == "lora_adapter"
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["r"] == 4

    from peft import PeftModel

    from tensafe.models import build_tiny_llama

    base = build_tiny_llama().model
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([tokens[:-1]])).logits[0].float()
    local = torch.log_softmax(logits, dim=-1)[torch.arange(11), torch.tensor(tokens[1:])]
    np.testing.assert_allclose(local.numpy(), server_logprobs, rtol=1e-5, atol=1e-5)

    state_dir = tmp_path / "state"
    state = decrypt_to_directory(
        io.BytesIO(state_blob),
        state_dir,
        keys=key,
        tenant_id=key.tenant_id,
        artifact_id=checkpoint.artifact_id,
    )
    assert state.manifest.kind == "training_state" and state.manifest.step == 1
    assert state.manifest.metadata["dataset_version"] == "v2"
    assert state.manifest.dp is not None and state.manifest.dp["epsilon"] > 0


def test_logs_are_json_with_request_ids_and_no_keys(live_server: LiveServer) -> None:
    tenant = live_server.create_tenant()
    with ServiceClient(live_server.url, api_key=tenant["api_key"]) as service:
        service.list_training_runs()

    def request_records() -> list[dict[str, object]]:
        lines = live_server.log_path.read_text().splitlines()
        records = [json.loads(line) for line in lines if line.startswith("{")]
        return [r for r in records if r.get("path") == "/v1/training_runs"]

    deadline = time.monotonic() + 10  # the line is written just after the response
    while not any(r.get("tenant_id") == tenant["tenant_id"] for r in request_records()):
        assert time.monotonic() < deadline, "no request log line for the tenant"
        time.sleep(0.1)
    assert all(r.get("request_id") for r in request_records())
    text = live_server.log_path.read_text()
    assert tenant["api_key"] not in text and tenant["api_key"].split("_", 2)[2] not in text
