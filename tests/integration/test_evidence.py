"""Signed evidence bundles over a real server: every saved checkpoint has one, it is
pulled beside the artifact and verifies offline with the published key; tampering and
another tenant's requests fail."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from tg_tinker import NotFoundError, ServiceClient
from tg_tinker.artifacts import decrypt, load_key_file
from tg_tinker.errors import EvidenceError
from tg_tinker.evidence import verify_bundle

from tests.integration.conftest import LiveServer
from tests.integration.test_end_to_end import random_batch, tiny_config

pytestmark = pytest.mark.integration


def test_checkpoint_bundles_verify_offline(live_server: LiveServer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    tenant = live_server.create_tenant()
    with ServiceClient(live_server.url, api_key=tenant["api_key"]) as service:
        tc = service.create_training_client(tiny_config())
        for seed in range(2):
            tc.forward_backward(random_batch(seed)).result(timeout=120)
            step = tc.optim_step().result(timeout=120)
        state = tc.save_state().result(timeout=120)
        audit = subprocess.run(  # live_server.cli, with room for a loaded machine
            [sys.executable, "-m", "tensafe.cli", "audit", "canaries", "--run", tc.run_id,
             "--seed", "1", "--data-dir", str(live_server.data_dir)],
            env=live_server.env(), capture_output=True, text=True, check=True, timeout=500,
        )  # fmt: skip
        assert "passed" in audit.stdout  # the step audited at this run's setting, filed under it
        saved = tc.save_weights_for_sampler("final").result(timeout=120)
        artifact = service.pull_artifact(saved.artifact_id, expected_sha256=saved.content_hash)
        bundle = service.pull_evidence(saved.artifact_id)
        keys = service.evidence_public_keys()
        key_file = service.export_tenant_key(tmp_path / "tenant.key")
        assert service.pull_evidence(state.artifact_id) != bundle  # one bundle per checkpoint
        assert asyncio.run(service.pull_evidence_async(saved.artifact_id)) == bundle
        assert asyncio.run(service.evidence_public_keys_async()) == keys
    (current,) = [k for k in keys if k["current"]]
    public = str(current["public_key_pem"]).encode()

    result = verify_bundle(bundle, artifact=artifact, public_key=public)  # offline from here
    predicate = result.predicate
    assert result.artifact_id == saved.artifact_id and result.keyid == current["keyid"]
    assert predicate["dp"]["steps"] == 2 and predicate["dp"]["accountant"] == "prv"
    assert predicate["epsilon"]["reported"] == pytest.approx(step.dp_metrics.epsilon_spent)
    assert predicate["epsilon"]["pld"] == pytest.approx(predicate["epsilon"]["prv"], rel=0.02)
    assert "agrees" in result.epsilon_check
    assert 0 <= predicate["epsilon_lower_bound"] <= predicate["epsilon"]["reported"]
    assert predicate["keys"]["tenant_id"] == tenant["tenant_id"] and predicate["keys"]["kek_id"]
    assert predicate["ledger_head"]["seq"] >= 3 and len(predicate["ledger_head"]["link"]) == 64
    assert predicate["base_model"]["name"] and predicate["sampling"] == "client-declared"
    assert len(predicate["base_model"]["sha256"]) == 64
    # the plaintext subject is what the tenant key decrypts to
    opened = decrypt(artifact, load_key_file(key_file), expected_content_hash=saved.content_hash)
    assert result.plaintext_sha256 == opened.manifest["plaintext_sha256"]
    assert b"material" not in bundle and tenant["api_key"].encode() not in bundle

    with pytest.raises(EvidenceError, match="does not match"):
        verify_bundle(bundle, artifact=artifact[:-1] + bytes([artifact[-1] ^ 1]), public_key=public)

    other = live_server.create_tenant()
    with (
        ServiceClient(live_server.url, api_key=other["api_key"]) as stranger,
        pytest.raises(NotFoundError),
    ):
        stranger.pull_evidence(saved.artifact_id)
