"""The hostile-client probes of issue #12, each against a live server through the SDK:
a client that lies about N and q, oversizes or repeats its batches, raises its own cap,
or renames its data to get a fresh budget is refused with a clear error."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from tg_tinker import ServiceClient
from tg_tinker.errors import ConflictError, PermissionDeniedError, ValidationError
from tg_tinker.types import BatchData

from tests.integration.conftest import LiveServer
from tests.integration.test_end_to_end import VOCAB, dp_config, tiny_config

pytestmark = pytest.mark.integration


def rows(n: int, *, seed: int = 0, length: int = 8) -> BatchData:
    ids = np.random.default_rng(seed).integers(0, VOCAB, size=(n, length)).tolist()
    return BatchData(input_ids=ids, labels=[[*r[1:], -100] for r in ids])


def test_a_client_declared_run_cannot_lie_about_n_and_q(live_server: LiveServer) -> None:
    tenant = live_server.create_tenant()
    with ServiceClient(live_server.url, api_key=tenant["api_key"]) as service:
        # declared N = 100 000 and q = 1e-4 (q·N = 10), then 300 records in one step
        tc = service.create_training_client(tiny_config(dp_config=dp_config(
            dataset_size=100_000, expected_batch_size=10, dataset_id="lying-" + uuid.uuid4().hex[:6]
        )))  # fmt: skip
        tc.forward_backward(rows(20, seed=1)).result(timeout=120)  # plausible for q·N = 10
        with pytest.raises(ValidationError, match="probability below") as info:
            tc.forward_backward(rows(150, seed=2)).result(timeout=120)
        assert info.value.field == "batch"
        assert tc.optim_step().result(timeout=120).step == 1  # the 20 are a step's batch
        # declared N = 100, a logical batch of 120 (in parts)
        small = service.create_training_client(tiny_config(dp_config=dp_config(
            dataset_size=100, expected_batch_size=100, dataset_id="small-" + uuid.uuid4().hex[:6]
        )))  # fmt: skip
        small.forward_backward(rows(60, seed=3)).result(timeout=120)
        with pytest.raises(ValidationError, match="declared dataset size N = 100"):
            small.forward_backward(rows(60, seed=4)).result(timeout=120)
        # the same record 256 times in one batch
        same = rows(1, seed=5)
        repeated = BatchData(input_ids=same.input_ids * 256, labels=same.labels * 256)
        big = service.create_training_client(tiny_config(dp_config=dp_config(
            dataset_size=1_000_000, expected_batch_size=512,
            dataset_id="dup-" + uuid.uuid4().hex[:6]
        )))  # fmt: skip
        with pytest.raises(ValidationError, match="already in the logical batch") as info:
            big.forward_backward(repeated).result(timeout=120)
        assert info.value.field == "batch.input_ids[1]"
        assert big.optim_step().result(timeout=120).step == 1  # nothing was accumulated


def test_a_training_key_cannot_create_or_raise_a_budget(live_server: LiveServer) -> None:
    tenant = live_server.create_tenant()
    dataset = "capped-" + uuid.uuid4().hex[:6]
    with ServiceClient(live_server.url, api_key=tenant["privacy_officer_api_key"]) as officer:
        officer.create_privacy_budget(dataset, epsilon_cap=1.0)
    with ServiceClient(live_server.url, api_key=tenant["api_key"]) as service:
        with pytest.raises(PermissionDeniedError, match="privacy-officer"):
            service.create_privacy_budget("mine-" + uuid.uuid4().hex[:6], epsilon_cap=1e6)
        with pytest.raises(PermissionDeniedError, match="privacy-officer"):
            service.raise_privacy_budget(dataset, epsilon_cap=1e6)
        assert service.get_privacy_budget(dataset).epsilon_cap == 1.0


@pytest.fixture(scope="module")
def production_server(tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    """A server as deployed: production settings, no default budget cap."""
    data_dir = tmp_path_factory.mktemp("production")
    server = LiveServer(
        data_dir,
        f"sqlite:///{Path(data_dir) / 'tensafe.db'}",
        extra_env={
            "TENSAFE_ENVIRONMENT": "production",
            "TENSAFE_DETERMINISTIC_NOISE": "false",
            "TENSAFE_DEFAULT_EPSILON_CAP": "none",
            "TENSAFE_ALLOW_TEST_MODELS": "true",  # the tiny test model, in production
        },
    )
    server.start()
    yield server  # type: ignore[misc]
    server.stop()


def test_renaming_data_never_buys_a_fresh_budget(production_server: LiveServer) -> None:
    server = production_server
    tenant = server.create_tenant()
    records = [([5, 6, 7, 8], [9, 10]), ([11, 12, 13], [14, 15, 16])] * 8
    with ServiceClient(server.url, api_key=tenant["api_key"]) as service:
        first = service.create_dataset("notes", records, progress=False)
        renamed = service.create_dataset("notes-renamed", records, progress=False)
        assert renamed.dataset_id == first.dataset_id  # the same content is the same dataset
        # a client-declared run under a new name has no budget (no default cap here)
        with pytest.raises(ConflictError, match="no privacy budget") as info:
            service.create_training_client(
                tiny_config(dp_config=dp_config(dataset_id="fresh-name"))
            )
        assert info.value.field == "dp_config.dataset_id"
    with ServiceClient(server.url, api_key=tenant["privacy_officer_api_key"]) as officer:
        budget = officer.create_privacy_budget("declared-notes", epsilon_cap=5.0)
        assert budget.sampling_policy == "server-only"  # the production default
        officer.create_privacy_budget(first.dataset_id, epsilon_cap=5.0)
    with ServiceClient(server.url, api_key=tenant["api_key"]) as service:
        with pytest.raises(ConflictError, match="server-only") as info:
            service.create_training_client(
                tiny_config(dp_config=dp_config(dataset_id="declared-notes"))
            )
        assert info.value.field == "dp_config.sampling"
        tc = service.create_training_client(tiny_config(dp_config=dp_config(
            dataset_size=None, expected_batch_size=None, sample_rate=0.5,
            dataset_id=first.dataset_id,
        )))  # fmt: skip
        batch = tc.draw_batch().result(timeout=120)
        tc.forward_backward(batch).result(timeout=120)
        step = tc.optim_step().result(timeout=120)
        assert step.dp_metrics is not None and step.dp_metrics.sample_rate == 0.5
        report = service.audit_report(first.dataset_id)
        assert isinstance(report, dict) and report["runs"][0]["sampling"] == "server-poisson"
