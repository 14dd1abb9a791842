"""The Ray worker backend end to end: a live server (``TENSAFE_WORKER_BACKEND=ray``) on
a real local Ray cluster (CPU) started by the test, two actors, two tenants × two DP-LoRA
runs of one base model.

* a killed actor: the next operation of its run fails with the retryable
  ``WorkerLostError``; the run then resumes from its checkpoint on a live/new actor, ε
  equals what its ledger history recomputes, ``tensafe audit verify`` passes;
* an actor killed mid-operation: the running call and another run's call queued behind
  it both fail at once with ``WorkerLostError``, then both runs resume;
* a hung actor (really blocked by a test call submitted straight to it): past
  ``ray_call_timeout_s`` the server kills it; the timed-out ``optim_step`` and a queued
  call fail with ``WorkerLostError``, no ledger row is written for the step, and the
  runs resume with ε equal to the ledger's;
* placement: a full fine-tuning run has an actor of its own;
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
from tg_tinker import SamplingParams, ServiceClient, TrainingClient, WorkerLostError
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


def stall(engine: Any, seconds: float) -> None:
    """Run inside the actor (test only, submitted by the test straight to the actor):
    block it, as a hung call would."""
    time.sleep(seconds)


def resumes_from_checkpoint(
    server: LiveServer, tc: TrainingClient, *, seed: int, step: int, noisy_steps: int
) -> None:
    """One forward_backward + optim_step of a run whose worker was lost: it reaches
    ``step`` (its checkpoint's step + 1) with ``noisy_steps`` in its accountant, and ε
    equals what an independent recomputation of its ledger rows gives."""
    tc.forward_backward(random_batch(seed)).result(timeout=120)
    resumed = tc.optim_step().result(timeout=120)
    assert resumed.step == step
    dp = resumed.dp_metrics
    assert dp is not None and dp.steps == noisy_steps
    steps, expected = ledger_epsilon(server, tc.run_id)
    assert steps == noisy_steps and dp.epsilon_spent == pytest.approx(expected, rel=1e-6)


def wait_until_running(server: LiveServer, api_key: str, future_id: str) -> None:
    """Until the server has started the operation (claimed it from the run's queue)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        response = httpx.get(
            f"{server.url}/v1/futures/{future_id}",
            headers={"Authorization": f"Bearer {api_key}"},
        )
        if response.json()["status"] != "pending":
            return
        time.sleep(0.1)
    raise AssertionError(f"operation {future_id} never started")


def two_runs_on_one_actor(
    service: ServiceClient, namespace: str, **config: object
) -> tuple[TrainingClient, TrainingClient, Any]:
    """Two DP-LoRA runs of one base model (packed on one actor), each trained one step
    and checkpointed; and their actor."""
    runs = tuple(
        service.create_training_client(tiny_config(dp_config=dp_config(), **config))
        for _ in range(2)
    )
    for i, tc in enumerate(runs):
        tc.forward_backward(random_batch(100 + i)).result(timeout=120)
        tc.optim_step().result(timeout=120)
        tc.save_state("one").result(timeout=120)
    handle = actor_of(namespace, runs[0].run_id)
    assert handle == actor_of(namespace, runs[1].run_id)
    return runs[0], runs[1], handle


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
            assert checkpoints[label].step == 1
            # at checkpoint step + 1, with both ledger steps + this one
            resumes_from_checkpoint(server, runs[label], seed=30, step=2, noisy_steps=3)
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


def test_an_actor_killed_mid_operation_fails_running_and_queued_calls_at_once(
    cluster: tuple[LiveServer, str],
) -> None:
    server, namespace = cluster
    tenant = server.create_tenant()
    with ServiceClient(server.url, api_key=tenant["api_key"], max_retries=0) as service:
        long_run, other, victim = two_runs_on_one_actor(service, namespace)
        # a forward_backward of seconds runs in the actor; the other run's call (the
        # server's second worker thread) waits behind it in the actor's queue
        running = long_run.forward_backward(random_batch(1, rows=16, length=256))
        queued = other.forward_backward(random_batch(2))
        time.sleep(1.0)
        killed_at = time.monotonic()
        ray.kill(victim, no_restart=True)
        for future in (running, queued):
            with pytest.raises(WorkerLostError, match="was lost"):
                future.result(timeout=60)
        assert time.monotonic() - killed_at < 30  # failed at once, nothing hung

        for i, tc in enumerate((long_run, other)):  # checkpoint "one" (step 1), elsewhere
            resumes_from_checkpoint(server, tc, seed=3 + i, step=2, noisy_steps=2)
            assert actor_of(namespace, tc.run_id) != victim
        for tc in (long_run, other):
            tc.unload_model().result(timeout=120)


def test_a_full_fine_tuning_run_has_an_actor_of_its_own(cluster: tuple[LiveServer, str]) -> None:
    server, namespace = cluster
    tenant = server.create_tenant()
    with ServiceClient(server.url, api_key=tenant["api_key"], max_retries=0) as service:
        full = service.create_training_client(tiny_config(lora_config=None))
        lora = [service.create_training_client(tiny_config()) for _ in range(2)]
        own = actor_of(namespace, full.run_id)
        # LoRA runs of the same base model go elsewhere (and pack together there)
        assert all(actor_of(namespace, tc.run_id) != own for tc in lora)
        assert actor_of(namespace, lora[0].run_id) == actor_of(namespace, lora[1].run_id)
        # the other actor is full now: a third LoRA run is refused, not put beside `full`
        refused = service.create_training_client(tiny_config())
        with pytest.raises(TGTinkerError, match="worker actors are full"):
            refused.forward_backward(random_batch(0)).result(timeout=120)
        held = {name: set(runs) for name, (_, runs) in placement(namespace).items()}
        assert {full.run_id} in held.values()
        full.forward_backward(random_batch(1)).result(timeout=120)
        assert full.optim_step().result(timeout=120).step == 1
        for tc in (full, *lora):
            tc.unload_model().result(timeout=120)


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
    that stepped without a ledger row (that run must be restored from a checkpoint). A
    full fine-tuning run's actor stays its own across the restart."""
    from server.worker.engine_calls import call_method

    server, namespace = cluster
    tenant = server.create_tenant()
    with ServiceClient(server.url, api_key=tenant["api_key"]) as service:
        kept = service.create_training_client(tiny_config(dp_config=dp_config()))
        ahead = service.create_training_client(tiny_config(dp_config=dp_config()))
        for tc in (kept, ahead):
            tc.forward_backward(random_batch(1)).result(timeout=120)
            assert tc.optim_step().result(timeout=120).step == 1
        full = service.create_training_client(tiny_config(lora_config=None))
        full_actor = actor_of(namespace, full.run_id)  # the other actor, to itself
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

        # the restarted server learnt from the actors which run is a full fine-tuning one
        refused = service.create_training_client(tiny_config())
        with pytest.raises(TGTinkerError, match="worker actors are full"):
            refused.forward_backward(random_batch(0)).result(timeout=120)
        (alone,) = [set(runs) for h, runs in placement(namespace).values() if h == full_actor]
        assert alone == {full.run_id}
        for tc in (kept, ahead, service.get_training_client(full.run_id)):  # frees the room
            tc.unload_model().result(timeout=120)


def test_a_hung_actor_is_killed_after_the_call_timeout(cluster: tuple[LiveServer, str]) -> None:
    """The actor is really blocked (a call the test submits straight to it sleeps); the
    server, restarted with a 5 s ``ray_call_timeout_s``, gives up on the calls queued
    behind it, kills it and rebuilds its runs elsewhere. The timed-out call is an
    ``optim_step``: it leaves no ledger row, and the rebuilt run's ε is the ledger's."""
    server, namespace = cluster
    timeout_s = 5.0
    server.extra_env["TENSAFE_RAY_CALL_TIMEOUT_S"] = str(timeout_s)
    server.restart()
    try:
        tenant = server.create_tenant()
        with ServiceClient(server.url, api_key=tenant["api_key"], max_retries=0) as service:
            stepping, other, victim = two_runs_on_one_actor(service, namespace)
            stepping.forward_backward(random_batch(1)).result(timeout=120)  # pending: 4
            blocked = victim.call.remote(stepping.run_id, stall, {"seconds": 600})
            submitted = time.monotonic()
            # queued in the actor first: the optim_step holds the (SQLite) database's
            # write transaction while it waits, which would keep this one from starting
            queued = other.forward_backward(random_batch(2))
            wait_until_running(server, tenant["api_key"], queued.future_id)
            time.sleep(0.5)  # from claimed to submitted to the actor
            timed_out = stepping.optim_step()
            for future in (timed_out, queued):
                with pytest.raises(WorkerLostError, match="hung"):
                    future.result(timeout=120)
            waited = time.monotonic() - submitted
            assert timeout_s <= waited < timeout_s + 30
            with pytest.raises(ray.exceptions.RayActorError):  # killed, not left blocked
                ray.get(blocked, timeout=60)
            assert ledger_epsilon(server, stepping.run_id)[0] == 1  # the lost step: no row

            # its accumulated gradients died with the actor: the client is told so once
            with pytest.raises(TGTinkerError, match="resubmit the whole logical batch"):
                stepping.forward_backward(random_batch(3)).result(timeout=120)
            for i, tc in enumerate((stepping, other)):  # from checkpoint "one", elsewhere
                resumes_from_checkpoint(server, tc, seed=4 + i, step=2, noisy_steps=2)
                assert actor_of(namespace, tc.run_id) != victim
            for tc in (stepping, other):
                tc.unload_model().result(timeout=120)
    finally:
        server.extra_env.pop("TENSAFE_RAY_CALL_TIMEOUT_S")
        server.restart()
