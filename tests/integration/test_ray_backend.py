"""The Ray worker backend end to end: a live server (``TENSAFE_WORKER_BACKEND=ray``) on
a real local Ray cluster (CPU) started by the test, two actors, two tenants × two DP-LoRA
runs of one base model.

* a killed actor: the next operation of its run fails with the retryable
  ``WorkerLostError``; the run then resumes from its checkpoint on a live/new actor, ε
  equals what its ledger history recomputes, ``tensafe audit verify`` passes;
* two tenants' runs on one actor: one run's forward_backward/optim_step leaves the
  other's adapter weights and accumulated clipped sum untouched (read inside the actor);
  another tenant's run id is 404.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tg_tinker import SamplingParams, ServiceClient
from tg_tinker.errors import TGTinkerError

from tests.integration.conftest import LiveServer, ledger_rows
from tests.integration.test_end_to_end import dp_config, random_batch, tiny_config

ray = pytest.importorskip("ray")

PROMPT = [1, 504, 3303, 314, 253, 1136]

pytestmark = pytest.mark.integration


def state_digest(engine: Any) -> dict[str, str]:
    """Run inside the actor: hashes of the run's trainable weights and of its
    accumulated clipped gradient sum (empty when nothing is accumulated)."""
    weights = hashlib.sha256()
    for p in engine.params:
        weights.update(p.detach().cpu().numpy().tobytes())
    acc = hashlib.sha256()
    for p in engine.params:
        if p in engine._acc:
            acc.update(engine._acc[p].detach().cpu().numpy().tobytes())
    return {"weights": weights.hexdigest(), "acc": acc.hexdigest(), "n": str(engine._acc_examples)}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, str]]:
    namespace = "tensafe-test-" + uuid.uuid4().hex[:6]
    ray.init(num_cpus=2, include_dashboard=False, namespace=namespace, log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    data_dir = tmp_path_factory.mktemp("ray-live")
    server = LiveServer(
        data_dir,
        f"sqlite:///{data_dir / 'tensafe.db'}",
        extra_env={
            "TENSAFE_WORKER_BACKEND": "ray",
            "TENSAFE_RAY_ADDRESS": address,
            "TENSAFE_RAY_NAMESPACE": namespace,
            "TENSAFE_RAY_ACTORS": "2",
            "TENSAFE_RAY_RUNS_PER_ACTOR": "2",
        },
    )
    server.start()
    try:
        yield server, namespace
    finally:
        server.stop()
        ray.shutdown()


def placement(namespace: str) -> dict[str, tuple[Any, dict[str, tuple[int, int]]]]:
    """``{actor name: (handle, {run_id: (step, pending)})}`` of the live worker actors."""
    found = {}
    for name in ray.util.list_named_actors():
        if name.startswith("tensafe-worker-"):
            handle = ray.get_actor(name, namespace=namespace)
            try:
                found[name] = (handle, ray.get(handle.runs.remote(), timeout=60))
            except ray.exceptions.RayActorError:
                continue
    return found


def actor_of(namespace: str, run_id: str) -> Any:
    """The actor holding the run, once its (asynchronous) load has placed it."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        held = [h for h, runs in placement(namespace).values() if run_id in runs]
        if held:
            (handle,) = held
            return handle
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} was never placed on an actor")


def digest(handle: Any, run_id: str) -> dict[str, str]:
    return ray.get(handle.call.remote(run_id, state_digest, {}), timeout=60)


def ledger_epsilon(server: LiveServer, run_id: str) -> tuple[int, float]:
    """The run's noisy steps in the ledger and the ε an independent recomputation of
    them gives (the run's own δ and accountant, as recorded)."""
    from tensafe.privacy import compute_epsilon

    rows = [r for r in ledger_rows(server, column="run_id", value=run_id) if r["kind"] == "dp_step"]
    history: list[tuple[float, float, int]] = []
    for row in rows:  # consecutive equal steps as one segment, as the run keeps them
        sigma, q = float(row["noise_multiplier"]), float(row["sample_rate"])
        if history and history[-1][:2] == (sigma, q):
            history[-1] = (sigma, q, history[-1][2] + 1)
        else:
            history.append((sigma, q, 1))
    delta, accountant = float(rows[-1]["run_delta"]), str(rows[-1]["run_accountant"])
    return len(rows), compute_epsilon(history=history, delta=delta, accountant=accountant)


def test_runs_share_actors_and_survive_a_killed_actor(
    cluster: tuple[LiveServer, str], tmp_path: Path
) -> None:
    server, namespace = cluster
    tenants = [server.create_tenant(), server.create_tenant()]
    clients = [ServiceClient(server.url, api_key=t["api_key"], max_retries=0) for t in tenants]
    try:
        # created A1, B1, A2, B2: A1 and B1 share the first actor, A2 and B2 the second
        runs = {}
        for label, service in (("A1", clients[0]), ("B1", clients[1]),
                               ("A2", clients[0]), ("B2", clients[1])):  # fmt: skip
            runs[label] = service.create_training_client(tiny_config(dp_config=dp_config()))
        for tc in runs.values():
            actor_of(namespace, tc.run_id)
        actors = placement(namespace)
        assert len(actors) == 2
        together = sorted(sorted(held) for _, held in actors.values())
        assert together == sorted(
            [sorted([runs["A1"].run_id, runs["B1"].run_id]),
             sorted([runs["A2"].run_id, runs["B2"].run_id])]
        )  # fmt: skip

        for i, tc in enumerate(runs.values()):
            tc.forward_backward(random_batch(i)).result(timeout=120)
            tc.optim_step().result(timeout=120)
        checkpoints = {k: tc.save_state("one").result(timeout=120) for k, tc in runs.items()}
        for i, tc in enumerate(runs.values()):
            tc.forward_backward(random_batch(10 + i)).result(timeout=120)
            assert tc.optim_step().result(timeout=120).step == 2

        victim = actor_of(namespace, runs["A1"].run_id)
        ray.kill(victim, no_restart=True)

        with pytest.raises(Exception) as lost:
            runs["A1"].forward_backward(random_batch(20)).result(timeout=120)
        assert getattr(lost.value, "error_name", None) == "WorkerLostError", lost.value
        assert "Retry" in str(lost.value)

        for label in ("A1", "B1"):  # rebuilt on a live or new actor from checkpoint "one"
            tc = runs[label]
            tc.forward_backward(random_batch(30)).result(timeout=120)
            resumed = tc.optim_step().result(timeout=120)
            assert resumed.step == checkpoints[label].step + 1 == 2
            dp = resumed.dp_metrics
            assert dp is not None and dp.steps == 3  # both ledger steps + this one
            steps, expected = ledger_epsilon(server, tc.run_id)
            assert steps == 3 and dp.epsilon_spent == pytest.approx(expected, rel=1e-6)
        for label in ("A2", "B2"):  # the other actor's runs never noticed
            tc = runs[label]
            tc.forward_backward(random_batch(40)).result(timeout=120)
            assert tc.optim_step().result(timeout=120).step == 3
        assert victim not in [h for h, _ in placement(namespace).values()]

        out = server.cli("audit", "verify", "--dataset", "default")
        assert "BROKEN" not in out and "0 row(s)" not in out
        for tc in runs.values():  # frees the actors' room for the next test
            tc.unload_model().result(timeout=120)
    finally:
        for service in clients:
            service.close()


def base_storage(engine: Any) -> dict[str, int]:
    """Run inside the actor: ``{name: data_ptr}`` of the run's frozen base tensors."""
    return {
        name: p.data_ptr() for name, p in engine.model.named_parameters() if not p.requires_grad
    }


def test_two_tenants_on_one_actor_are_isolated(cluster: tuple[LiveServer, str]) -> None:
    server, namespace = cluster
    tenants = [server.create_tenant(), server.create_tenant()]
    with (
        ServiceClient(server.url, api_key=tenants[0]["api_key"]) as alice,
        ServiceClient(server.url, api_key=tenants[1]["api_key"]) as bob,
    ):
        mine = alice.create_training_client(tiny_config(dp_config=dp_config()))
        theirs = bob.create_training_client(tiny_config(dp_config=dp_config()))
        handle = actor_of(namespace, mine.run_id)
        assert handle == actor_of(namespace, theirs.run_id)  # one actor, one base model
        # ... held once: both runs' frozen base tensors are the same memory
        shared = ray.get(handle.call.remote(mine.run_id, base_storage, {}), timeout=60)
        assert shared and shared == ray.get(
            handle.call.remote(theirs.run_id, base_storage, {}), timeout=60
        )

        theirs.forward_backward(random_batch(1)).result(timeout=120)  # pending in its sum
        before = digest(handle, theirs.run_id)
        mine_before = digest(handle, mine.run_id)
        assert before["n"] == "4" and mine_before["n"] == "0"

        mine.forward_backward(random_batch(2)).result(timeout=120)
        assert digest(handle, theirs.run_id) == before  # gradients went to mine only
        mine.optim_step().result(timeout=120)
        assert digest(handle, theirs.run_id) == before  # noise and update too
        after = digest(handle, mine.run_id)
        assert after["weights"] != mine_before["weights"] and after["n"] == "0"

        assert theirs.optim_step().result(timeout=120).step == 1
        assert digest(handle, mine.run_id) == after

        # sealed in the actor, opened by the server's sampler; live weights: refused
        sc = mine.save_weights_and_get_sampling_client()
        tokenizer = sc.get_tokenizer()
        assert tokenizer.decode(tokenizer.encode("hello world")) == "hello world"
        greedy = SamplingParams(max_tokens=4, temperature=0.0, stop=[])
        assert len(sc.sample(PROMPT, 1, greedy).result(timeout=120).sequences[0].tokens) == 4
        with pytest.raises(TGTinkerError, match="Ray backend"):
            live = alice.create_sampling_client(run_id=mine.run_id)
            live.sample(PROMPT, 1, greedy).result(timeout=120)

        response = httpx.get(
            f"{server.url}/v1/training_runs/{theirs.run_id}",
            headers={"Authorization": f"Bearer {tenants[0]['api_key']}"},
        )
        assert response.status_code == 404
        for tc in (mine, theirs):
            tc.unload_model().result(timeout=120)


def test_restart_reattaches_only_an_actor_in_step_with_the_ledger(
    cluster: tuple[LiveServer, str],
) -> None:
    """On an existing cluster the actors are detached: a restarted server re-attaches a
    run whose actor copy is at the database's step (no checkpoint needed) and drops one
    that stepped without a ledger row (that run must be restored from a checkpoint)."""
    from server.worker.engine_calls import call_method

    server, namespace = cluster
    tenant = server.create_tenant()
    with ServiceClient(server.url, api_key=tenant["api_key"]) as service:
        kept = service.create_training_client(tiny_config(dp_config=dp_config()))
        ahead = service.create_training_client(tiny_config(dp_config=dp_config()))
        for tc in (kept, ahead):
            tc.forward_backward(random_batch(1)).result(timeout=120)
            assert tc.optim_step().result(timeout=120).step == 1
    # an actor that steps a run behind the server's back (no budget check, no ledger row)
    handle = actor_of(namespace, ahead.run_id)
    kwargs = {"method": "optim_step", "args": (), "kwargs": {}}
    ray.get(handle.call.remote(ahead.run_id, call_method, kwargs), timeout=60)

    server.restart()

    with ServiceClient(server.url, api_key=tenant["api_key"], max_retries=0) as service:
        kept = service.get_training_client(kept.run_id)
        kept.forward_backward(random_batch(2)).result(timeout=120)
        resumed = kept.optim_step().result(timeout=120)
        assert resumed.step == 2 and resumed.dp_metrics is not None
        assert resumed.dp_metrics.steps == 2  # the live weights, re-attached
        ahead = service.get_training_client(ahead.run_id)
        with pytest.raises(TGTinkerError, match="load_state"):
            ahead.forward_backward(random_batch(2)).result(timeout=120)
        held = {
            run: state for _, runs in placement(namespace).values() for run, state in runs.items()
        }
        assert held[ahead.run_id] == (0, 0)  # the stale step-2 copy is gone; a fresh one waits
        assert held[kept.run_id] == (2, 0)

        # load_state in the actor: another run's checkpoint, its privacy history carried
        checkpoint = kept.save_state("kept-2").result(timeout=120)
        assert ahead.load_state(artifact_id=checkpoint.artifact_id).result(timeout=120).step == 2
        ahead.forward_backward(random_batch(3)).result(timeout=120)
        loaded = ahead.optim_step().result(timeout=120)
        assert loaded.step == 3 and loaded.dp_metrics is not None
        assert loaded.dp_metrics.steps == 1 + 2 + 1  # its own ledger step + kept's two + this
