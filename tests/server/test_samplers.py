"""``/v1/samplers`` through the app: samplers of a run, a checkpoint, a base model;
sample and compute_logprobs as futures; input refused with the field named; no ε."""

from __future__ import annotations

from typing import Any

import pytest

from tests.server.harness import TRAIN_AND_OFFICER, Harness, batch

PROMPT = {"chunks": [{"tokens": [1, 504, 3303, 314, 253], "type": "encoded_text"}]}
GREEDY = {"max_tokens": 6, "temperature": 0.0, "stop": []}


def create(api: Harness, headers: dict[str, str], **source: str) -> dict[str, Any]:
    response = api.client.post("/v1/samplers", json=source, headers=headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


def run_op(
    api: Harness, headers: dict[str, str], sampler_id: str, op: str, body: dict[str, Any]
) -> dict[str, Any]:
    response = api.client.post(f"/v1/samplers/{sampler_id}/{op}", json=body, headers=headers)
    assert response.status_code == 202, response.text
    ref = response.json()
    assert ref["run_id"] == sampler_id and ref["operation"] == op
    return api.wait(headers, ref["future_id"])


def sample(api: Harness, headers: dict[str, str], sampler_id: str, **body: Any) -> dict[str, Any]:
    state = run_op(api, headers, sampler_id, "sample", {"prompt": PROMPT, **body})
    assert state["status"] == "completed", state
    return dict(state["result"])


def refused(
    api: Harness, headers: dict[str, str], sampler_id: str, body: dict[str, Any]
) -> dict[str, Any]:
    response = api.client.post(f"/v1/samplers/{sampler_id}/sample", json=body, headers=headers)
    assert response.status_code == 422, response.text
    return dict(response.json())


@pytest.fixture(scope="module")
def trained(api: Harness) -> dict[str, Any]:
    """A tenant's run after one DP step, a sampler checkpoint of it, and samplers."""
    owner = api.tenant(scopes=TRAIN_AND_OFFICER)
    run_id = api.create_run(owner)
    initial = api.call(owner, run_id, "save_weights_for_sampler", {"name": "initial"})
    api.call(owner, run_id, "forward_backward", batch())
    api.call(owner, run_id, "optim_step", {"adam_params": {"learning_rate": 0.05}})
    saved = api.call(owner, run_id, "save_weights_for_sampler", {"name": "step1"})
    return {"owner": owner, "run_id": run_id, "initial": initial, "saved": saved}


def test_run_sampler_samples_reproducibly_with_both_logprobs(
    api: Harness, trained: dict[str, Any]
) -> None:
    owner = trained["owner"]
    sampler = create(api, owner, run_id=trained["run_id"])
    assert sampler["source"] == "run" and sampler["base_model"] == "tiny-llama"
    params = {"max_tokens": 8, "temperature": 0.9, "top_k": 50, "seed": 7, "stop": []}
    first = sample(api, owner, sampler["sampler_id"], num_samples=3, sampling_params=params)
    again = sample(api, owner, sampler["sampler_id"], num_samples=3, sampling_params=params)
    assert first == again  # same seed, same weights
    sequences = first["sequences"]
    assert len(sequences) == 3
    assert len({tuple(s["tokens"]) for s in sequences}) > 1  # independent samples
    for seq in sequences:
        assert len(seq["tokens"]) == 8 and seq["stop_reason"] == "length"
        assert len(seq["logprobs"]) == len(seq["model_logprobs"]) == 8
        # top-k at temperature 0.9 sharpens and truncates: not the raw model's values
        assert seq["logprobs"] != seq["model_logprobs"]
    other_seed = sample(
        api, owner, sampler["sampler_id"], num_samples=3, sampling_params={**params, "seed": 8}
    )
    assert other_seed != first


def test_checkpoint_sampler_matches_the_run_it_was_saved_from(
    api: Harness, trained: dict[str, Any]
) -> None:
    owner = trained["owner"]
    run = create(api, owner, run_id=trained["run_id"])
    by_path = create(api, owner, model_path=trained["saved"]["path"])
    by_id = create(api, owner, artifact_id=trained["saved"]["artifact_id"])
    assert by_path["source"] == "checkpoint" and by_path["model_path"] == trained["saved"]["path"]
    outputs = [
        sample(api, owner, s["sampler_id"], sampling_params=GREEDY)["sequences"][0]["tokens"]
        for s in (run, by_path, by_id)
    ]
    assert outputs[0] == outputs[1] == outputs[2]
    # the step-0 checkpoint is the base model (LoRA starts at zero); the step-1 one is not
    base = create(api, owner, base_model="tiny-llama")
    initial = create(api, owner, model_path=trained["initial"]["path"])
    base_logprobs = run_op(
        api, owner, base["sampler_id"], "compute_logprobs", {"prompt": PROMPT, "topk": 2}
    )["result"]
    initial_logprobs = run_op(
        api, owner, initial["sampler_id"], "compute_logprobs", {"prompt": PROMPT}
    )["result"]
    trained_logprobs = run_op(
        api, owner, by_path["sampler_id"], "compute_logprobs", {"prompt": PROMPT}
    )["result"]
    assert base_logprobs["logprobs"][0] is None
    assert base_logprobs["logprobs"] == pytest.approx(initial_logprobs["logprobs"], abs=1e-5)
    assert trained_logprobs["logprobs"][1:] != pytest.approx(base_logprobs["logprobs"][1:])
    assert len(base_logprobs["topk"][1]) == 2


def test_compute_logprobs_equals_forward(api: Harness, trained: dict[str, Any]) -> None:
    owner = trained["owner"]
    sampler = create(api, owner, run_id=trained["run_id"])
    tokens = PROMPT["chunks"][0]["tokens"]
    state = run_op(api, owner, sampler["sampler_id"], "compute_logprobs", {"prompt": PROMPT})
    datum = {
        "model_input": {"chunks": [{"tokens": tokens[:-1], "type": "encoded_text"}]},
        "loss_fn_inputs": {
            "target_tokens": {"data": tokens[1:], "dtype": "int64", "shape": [len(tokens) - 1]},
            "weights": {"data": [1.0] * (len(tokens) - 1), "dtype": "float32", "shape": [4]},
        },
    }
    forward = api.call(owner, trained["run_id"], "forward", {"data": [datum]})
    expected = forward["loss_fn_outputs"][0]["logprobs"]["data"]
    assert state["result"]["logprobs"][1:] == pytest.approx(expected, abs=1e-4)


def test_bad_input_is_refused_naming_the_field(api: Harness, trained: dict[str, Any]) -> None:
    owner = trained["owner"]
    sid = create(api, owner, run_id=trained["run_id"])["sampler_id"]
    cases = [
        ({"prompt": PROMPT, "num_samples": 0}, "num_samples"),
        ({"prompt": PROMPT, "num_samples": 65}, "num_samples"),  # above the server's 64
        ({"prompt": PROMPT, "num_samples": 10**9}, "num_samples"),
        ({"prompt": PROMPT, "sampling_params": {"stop": [""]}}, "sampling_params.stop"),
        ({"prompt": PROMPT, "sampling_params": {"stop": ""}}, "sampling_params.stop"),
        ({"prompt": PROMPT, "sampling_params": {"stop": ["x"] * 17}}, "sampling_params.stop"),
        (
            {"prompt": PROMPT, "sampling_params": {"max_tokens": 10**9}},
            "sampling_params.max_tokens",
        ),
        # tiny-llama's context is 256 tokens: 5 + 252 does not fit
        ({"prompt": PROMPT, "sampling_params": {"max_tokens": 252}}, "sampling_params.max_tokens"),
        ({"prompt": PROMPT, "sampling_params": {"top_p": 0}}, "sampling_params.top_p"),
        ({"prompt": PROMPT, "sampling_params": {"top_k": 0}}, "sampling_params.top_k"),
        ({"prompt": PROMPT, "sampling_params": {"temperature": -1}}, "sampling_params.temperature"),
        ({"prompt": {"chunks": []}}, "prompt"),
        ({"prompt": {"chunks": [{"tokens": [1] * 300}]}}, "prompt"),  # beyond the context
        ({"prompt": {"chunks": [{"tokens": [10**6]}]}}, "prompt"),  # outside the vocabulary
        ({"prompt": {"chunks": [{"tokens": [1] * 32769}]}}, "prompt"),  # above the wire cap
        ({"prompt": PROMPT, "topk_prompt_logprobs": 21}, "topk_prompt_logprobs"),
    ]
    for body, field in cases:
        error = refused(api, owner, sid, body)
        assert error["field"] == field, (body, error)
    response = api.client.post("/v1/samplers", json={}, headers=owner)
    assert response.status_code == 422
    both = {"run_id": trained["run_id"], "base_model": "tiny-llama"}
    assert api.client.post("/v1/samplers", json=both, headers=owner).status_code == 422
    for source in ({"base_model": "/etc"}, {"base_model": "../models/x"}):
        response = api.client.post("/v1/samplers", json=source, headers=owner)
        assert response.status_code == 422 and response.json()["field"] == "base_model"
    training_state = api.call(owner, trained["run_id"], "save_state", {"name": "resume"})
    response = api.client.post(
        "/v1/samplers", json={"artifact_id": training_state["artifact_id"]}, headers=owner
    )
    assert response.status_code == 422 and response.json()["field"] == "artifact_id"
    response = api.client.post(
        "/v1/samplers", json={"model_path": training_state["path"]}, headers=owner
    )
    assert response.status_code == 422 and response.json()["field"] == "model_path"


def test_sampling_charges_no_privacy_budget(api: Harness, trained: dict[str, Any]) -> None:
    owner = trained["owner"]
    before = api.client.get("/v1/budgets", headers=owner).json()
    sid = create(api, owner, run_id=trained["run_id"])["sampler_id"]
    sample(api, owner, sid, num_samples=4, sampling_params={"max_tokens": 4, "seed": 1})
    run_op(api, owner, sid, "compute_logprobs", {"prompt": PROMPT})
    after = api.client.get("/v1/budgets", headers=owner).json()
    assert before == after
    assert before["budgets"] and before["budgets"][0]["total_steps"] == 1


def test_a_new_runs_sampler_waits_for_its_model(api: Harness) -> None:
    owner = api.tenant()
    run_id = api.create_run(owner, model_ref="tiny-llama:seed=3")  # not loaded anywhere yet
    sampler = create(api, owner, run_id=run_id)
    params = {"max_tokens": 3, "temperature": 0.0, "stop": []}
    result = sample(api, owner, sampler["sampler_id"], num_samples=2, sampling_params=params)
    assert [len(s["tokens"]) for s in result["sequences"]] == [3, 3]


def test_sampling_does_not_wait_in_the_runs_training_queue(
    api: Harness, trained: dict[str, Any]
) -> None:
    """With the training queue's threads stopped, a training operation of the run stays
    pending — and a sample from the same run's weights still completes."""
    owner, run_id = trained["owner"], trained["run_id"]
    sid = create(api, owner, run_id=run_id)["sampler_id"]
    queue = api.context.queue
    queue.stop()
    try:
        pending = api.submit(owner, run_id, "forward", batch(3))
        result = sample(api, owner, sid, sampling_params={"max_tokens": 4, "seed": 2})
        assert len(result["sequences"][0]["tokens"]) <= 4
        state = api.client.get(f"/v1/futures/{pending}", headers=owner).json()
        assert state["status"] == "pending"
    finally:
        queue.start()
    assert api.wait(owner, pending)["status"] == "completed"


def test_a_queued_sample_can_be_cancelled_and_other_tenants_cannot(
    api: Harness, trained: dict[str, Any]
) -> None:
    owner = trained["owner"]
    sid = create(api, owner, run_id=trained["run_id"])["sampler_id"]
    refs = [
        api.client.post(
            f"/v1/samplers/{sid}/sample",
            json={"prompt": PROMPT, "num_samples": 8, "sampling_params": {"max_tokens": 32}},
            headers=owner,
        ).json()
        for _ in range(12)
    ]
    intruder = api.tenant()
    last = refs[-1]["future_id"]
    assert api.client.post(f"/v1/futures/{last}/cancel", headers=intruder).status_code == 404
    answer = api.client.post(f"/v1/futures/{last}/cancel", headers=owner).json()
    final = [api.wait(owner, r["future_id"])["status"] for r in refs]
    assert set(final) <= {"completed", "cancelled"}
    assert (answer["cancelled"] and final[-1] == "cancelled") or final[-1] == "completed"
