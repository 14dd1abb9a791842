"""TrainingClient: request shapes of every operation, input forms, cached state,
the printed forms of the reference docs, and the offline tokenizer."""

from __future__ import annotations

import json
import sys
from typing import get_args

import httpx
import numpy as np
import pytest
from tg_tinker import (
    AdamParams,
    BatchData,
    Datum,
    ModelInput,
    ServerError,
    TensorData,
    ValidationError,
)
from tg_tinker.types import GetInfoResponse, LossFnName

from tests.sdk.fakes import FB_RESULT, INFO_RESULT, OPTIM_RESULT, future_ref, future_state, run_json

RUN = "/v1/training_runs/run-1"
FUT = r"/v1/futures/fut-1"


def _accept(api, route, operation=None, seq=1):
    api.on(
        "POST",
        f"{RUN}/{route}",
        httpx.Response(202, json=future_ref(operation=operation or route, seq=seq)),
    )


def _body(api, route):
    return json.loads(api.sent("POST", f"{RUN}/{route}")[-1].content)


def test_seed_000_datums_request_and_printed_result(api, training_client, capsys):
    data = [
        Datum(
            model_input=ModelInput.from_ints([1, 2, 3, 4, 5]),
            loss_fn_inputs={
                "target_tokens": TensorData(data=[2, 3, 4, 5, 6], dtype="int64", shape=[5]),
                "weights": TensorData(data=[1.0] * 5, dtype="float32", shape=[5]),
            },
        )
    ]
    _accept(api, "forward")
    api.on("GET", FUT, future_state("completed", result=FB_RESULT))
    res = training_client.forward(data, loss_fn="cross_entropy").result()
    body = _body(api, "forward")
    assert body["batch"] is None and body["loss_fn"] == "cross_entropy"
    assert body["data"][0]["model_input"]["chunks"][0]["tokens"] == [1, 2, 3, 4, 5]
    assert body["data"][0]["loss_fn_inputs"]["target_tokens"]["dtype"] == "int64"
    print(res)
    printed = capsys.readouterr().out
    assert printed.startswith(
        "ForwardBackwardOutput(loss_fn_output_type='cross_entropy', loss_fn_outputs=[{'logprobs': "
        "TensorData(data=[-8.9375, -1.0], dtype='float32', shape=[2]), 'elementwise_loss': "
    )
    assert res.loss_fn_outputs[0]["logprobs"].data == [-8.9375, -1.0]
    assert res.loss_fn_outputs[0].logprobs.to_numpy().dtype == np.float32


def test_seed_001_batchdata_and_dict_forms(api, training_client):
    _accept(api, "forward_backward")
    batch = BatchData(
        input_ids=[[1, 2, 3, 4], [5, 6, 7, 8]],
        attention_mask=[[1, 1, 1, 1], [1, 1, 1, 1]],
        labels=[[2, 3, 4, -100], [6, 7, 8, -100]],
    )
    training_client.forward_backward(batch)
    first = _body(api, "forward_backward")
    training_client.forward_backward(
        {
            "input_ids": np.array(batch.input_ids),
            "attention_mask": np.array(batch.attention_mask),
            "labels": np.array(batch.labels),
        }
    )
    second = _body(api, "forward_backward")
    assert first == second
    assert first["data"] is None and first["batch"]["labels"][0] == [2, 3, 4, -100]


def test_a_single_datum_and_numpy_loss_inputs_are_accepted(api, training_client):
    _accept(api, "forward_backward")
    datum = Datum(
        model_input=np.array([1, 2, 3]),
        loss_fn_inputs={"target_tokens": np.array([2, 3, 4]), "weights": np.ones(3)},
    )
    training_client.forward_backward(
        datum, loss_fn="importance_sampling", loss_fn_config={"clip": 0.2}
    )
    body = _body(api, "forward_backward")
    assert len(body["data"]) == 1
    assert body["loss_fn"] == "importance_sampling" and body["loss_fn_config"] == {"clip": 0.2}
    assert body["data"][0]["loss_fn_inputs"]["weights"]["dtype"] == "float64"


@pytest.mark.parametrize("empty", [[], BatchData(input_ids=[]), {"input_ids": []}])
def test_an_empty_batch_is_refused_before_sending_with_advice(api, training_client, empty):
    with pytest.raises(ValidationError, match="still call optim_step"):
        training_client.forward_backward(empty)
    assert not api.sent("POST", f"{RUN}/forward_backward")


def test_malformed_input_names_the_field(api, training_client):
    with pytest.raises(ValidationError) as info:
        training_client.forward_backward({"input_ids": [[1, 2]], "position_ids": [[0, 1]]})
    assert info.value.field == "position_ids"
    with pytest.raises(ValidationError, match="expected a list of Datum"):
        training_client.forward_backward("hello")  # type: ignore[arg-type]


@pytest.mark.parametrize("route", ["forward", "forward_backward"])
def test_an_unknown_loss_fn_is_refused_before_sending_naming_the_allowed_ones(
    api, training_client, route
):
    datum = Datum(model_input=[1, 2], loss_fn_inputs={"target_tokens": [2, 3]})
    with pytest.raises(ValidationError) as info:
        getattr(training_client, route)([datum], loss_fn="cross_entropyy")
    assert info.value.field == "loss_fn"
    assert "'cross_entropyy'" in str(info.value)
    assert "cross_entropy, importance_sampling, ppo" in str(info.value)
    assert isinstance(info.value, ValueError)
    assert not api.sent("POST", f"{RUN}/{route}")


def test_every_supported_loss_fn_goes_on_the_wire(api, training_client):
    _accept(api, "forward_backward")
    datum = Datum(model_input=[1, 2], loss_fn_inputs={"target_tokens": [2, 3]})
    for name in get_args(LossFnName):
        training_client.forward_backward([datum], loss_fn=name)
        assert _body(api, "forward_backward")["loss_fn"] == name


def test_optim_step_shapes(api, training_client):
    _accept(api, "optim_step")
    training_client.optim_step()
    assert _body(api, "optim_step") == {"adam_params": None, "apply_dp_noise": True}
    training_client.optim_step(AdamParams(learning_rate=1e-4, beta1=0.9, beta2=0.95, eps=1e-12))
    assert _body(api, "optim_step")["adam_params"]["beta2"] == 0.95
    training_client.optim_step(apply_dp_noise=True)
    assert _body(api, "optim_step")["apply_dp_noise"] is True


def test_optim_step_result_updates_the_cached_step(api, training_client, capsys):
    _accept(api, "optim_step")
    api.on("GET", FUT, future_state("completed", operation="optim_step", result=OPTIM_RESULT))
    assert training_client.step == 0
    res = training_client.optim_step().result()
    assert training_client.step == 1
    print(res)
    assert capsys.readouterr().out.startswith("OptimStepResponse(step=1, learning_rate=0.0001, ")
    assert res.dp_metrics.epsilon_spent == 0.25


def test_an_older_result_read_late_does_not_roll_the_step_back(api, training_client):
    api.on(
        "POST",
        f"{RUN}/optim_step",
        [
            httpx.Response(202, json=future_ref("fut-a", operation="optim_step", seq=1)),
            httpx.Response(202, json=future_ref("fut-b", operation="optim_step", seq=2)),
        ],
    )
    first, second = training_client.optim_step(), training_client.optim_step()
    api.on(
        "GET",
        r"/v1/futures/fut-a",
        future_state("completed", future_id="fut-a", result=OPTIM_RESULT),
    )
    api.on(
        "GET",
        r"/v1/futures/fut-b",
        future_state("completed", future_id="fut-b", seq=2, result={**OPTIM_RESULT, "step": 2}),
    )
    second.result()
    first.result()
    assert training_client.step == 2


def test_save_state_and_seed_001_attribute_access(api, training_client):
    _accept(api, "save_state")
    saved = {
        "artifact_id": "art-1",
        "path": "tensafe://run-1/weights/ckpt",
        "size_bytes": 1234,
        "content_hash": "ab" * 32,
        "metadata": {"epoch": 1},
        "step": 3,
    }
    api.on("GET", FUT, future_state("completed", operation="save_state", result=saved))
    checkpoint = training_client.save_state(include_optimizer=True, metadata={"epoch": 1})
    assert _body(api, "save_state") == {
        "name": None,
        "include_optimizer": True,
        "metadata": {"epoch": 1},
    }
    assert checkpoint.artifact_id == "art-1"  # no .result(): forwarded
    assert checkpoint.size_bytes == 1234 and checkpoint.content_hash == "ab" * 32
    training_client.save_state("initial", include_optimizer=False)
    assert _body(api, "save_state")["name"] == "initial"


def test_save_state_name_is_checked_locally(api, training_client):
    with pytest.raises(ValidationError) as info:
        training_client.save_state("../escape")
    assert info.value.field == "name"
    assert not api.sent("POST", f"{RUN}/save_state")


def test_load_state_by_path_or_artifact_id(api, training_client):
    _accept(api, "load_state")
    loaded = {
        "artifact_id": "art-1",
        "path": "tensafe://run-1/weights/x",
        "step": 7,
        "status": "loaded",
    }
    api.on("GET", FUT, future_state("completed", operation="load_state", result=loaded))
    training_client.load_state("tensafe://run-1/weights/x")
    assert _body(api, "load_state") == {
        "artifact_id": None,
        "path": "tensafe://run-1/weights/x",
        "include_optimizer": True,
    }
    result = training_client.load_state(artifact_id="art-1")
    assert _body(api, "load_state") == {
        "artifact_id": "art-1",
        "path": None,
        "include_optimizer": True,
    }
    assert result.step == 7 and result.status == "loaded"  # seed 001: no .result()
    assert training_client.step == 7


@pytest.mark.parametrize("kwargs", [{}, {"path": "tensafe://r/weights/x", "artifact_id": "a"}])
def test_load_state_needs_exactly_one_reference(api, training_client, kwargs):
    with pytest.raises(ValidationError, match="exactly one"):
        training_client.load_state(**kwargs)


def test_save_weights_for_sampler_and_unload(api, training_client):
    _accept(api, "save_weights_for_sampler")
    training_client.save_weights_for_sampler("final")
    assert _body(api, "save_weights_for_sampler") == {"name": "final"}
    _accept(api, "unload", operation="unload_model")
    api.on(
        "GET",
        FUT,
        future_state("completed", operation="unload_model", result={"model_id": "run-1"}),
    )
    res = training_client.unload().result()
    assert repr(res) == "UnloadModelResponse(model_id='run-1', type='unload_model')"
    assert training_client.status == "TERMINATED"
    assert api.sent("POST", f"{RUN}/unload")[-1].content == b""


def test_identity_refresh_and_heartbeat(api, training_client):
    assert training_client.run_id == training_client.model_id == "run-1"
    assert training_client.status == "READY"
    api.on("GET", RUN, httpx.Response(200, json=run_json(status="BUSY", step=5)))
    run = training_client.refresh()
    assert run.step == 5 and training_client.step == 5 and training_client.status == "BUSY"
    api.on("POST", f"{RUN}/heartbeat", httpx.Response(200, json=run_json(step=6)))
    training_client.heartbeat()
    assert training_client.step == 6 and training_client.status == "READY"
    assert "run-1" in repr(training_client)


def test_get_info_prints_like_the_reference(api, training_client):
    api.on("GET", f"{RUN}/info", httpx.Response(200, json=INFO_RESULT))
    res = training_client.get_info()
    assert isinstance(res, GetInfoResponse)
    assert str(res).startswith(
        "GetInfoResponse(type='get_info', model_data=ModelData(arch='llama', "
        "model_name='smollm2-135m-instruct'), model_id='run-1', is_lora=True, lora_rank=16"
    )


def test_async_twins_send_the_same_requests(api, training_client):
    import asyncio

    for route in ("forward", "forward_backward", "optim_step", "save_state", "load_state"):
        _accept(api, route)
    _accept(api, "save_weights_for_sampler")
    _accept(api, "unload", operation="unload_model")
    datum = Datum(model_input=[1], loss_fn_inputs={"target_tokens": [2]})

    async def main():
        await training_client.forward_async([datum])
        await training_client.forward_backward_async([datum])
        await training_client.optim_step_async(apply_dp_noise=True)
        await training_client.save_state_async("s")
        await training_client.load_state_async(artifact_id="a")
        await training_client.save_weights_for_sampler_async("w")
        await training_client.unload_async()

    asyncio.run(main())
    posted = [r.url.path.rsplit("/", 1)[-1] for r in api.requests if r.method == "POST"]
    assert posted == [
        "forward",
        "forward_backward",
        "optim_step",
        "save_state",
        "load_state",
        "save_weights_for_sampler",
        "unload",
    ]


# ------------------------------------------------------------------ tokenizer
def test_get_tokenizer_builds_offline_from_server_files(
    api, training_client, smollm2_tokenizer, tmp_path, monkeypatch
):
    saved = tmp_path / "saved"
    smollm2_tokenizer.save_pretrained(saved)
    files = {p.name: p.read_text(encoding="utf-8") for p in saved.iterdir() if p.is_file()}
    api.on("GET", f"{RUN}/tokenizer", httpx.Response(200, json={"files": files}))
    monkeypatch.setenv("TG_TINKER_CACHE_DIR", str(tmp_path / "cache"))
    tokenizer = training_client.get_tokenizer()
    text = "Hello, world! Differential privacy."
    assert tokenizer.encode(text) == smollm2_tokenizer.encode(text)
    assert training_client.get_tokenizer() is tokenizer  # cached on the client
    assert len(api.sent("GET", f"{RUN}/tokenizer")) == 1
    assert len(list((tmp_path / "cache" / "tokenizers").iterdir())) == 1


@pytest.mark.parametrize("name", ["../evil.json", "a/b.json", "", ".."])
def test_get_tokenizer_refuses_unsafe_file_names(api, training_client, tmp_path, monkeypatch, name):
    monkeypatch.setenv("TG_TINKER_CACHE_DIR", str(tmp_path))
    api.on("GET", f"{RUN}/tokenizer", httpx.Response(200, json={"files": {name: "{}"}}))
    with pytest.raises(ServerError, match="unsafe name"):
        training_client.get_tokenizer()
    assert not (tmp_path / "evil.json").exists()


def test_get_tokenizer_without_transformers_says_what_to_install(
    api, training_client, tmp_path, monkeypatch
):
    monkeypatch.setenv("TG_TINKER_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(sys.modules, "transformers", None)
    api.on("GET", f"{RUN}/tokenizer", httpx.Response(200, json={"files": {"tokenizer.json": "{}"}}))
    with pytest.raises(ImportError, match="pip install transformers"):
        training_client.get_tokenizer()


def test_get_info_async_waits_for_the_model_like_get_info(api, service):
    import asyncio

    api.on(
        "GET",
        RUN,
        [
            httpx.Response(200, json=run_json(status="INITIALIZING")),  # get_training_client
            httpx.Response(200, json=run_json(status="INITIALIZING")),  # first poll
            httpx.Response(200, json=run_json(status="READY")),
        ],
    )
    api.on("GET", f"{RUN}/info", httpx.Response(200, json=INFO_RESULT))
    tc = service.get_training_client("run-1")
    assert tc.status == "INITIALIZING"
    info = asyncio.run(tc.get_info_async())
    assert info.model_id == "run-1" and tc.status == "READY"
    paths = [r.url.path for r in api.requests if r.method == "GET"]
    assert paths.index(f"{RUN}/info") > paths.index(RUN, 1)  # polled before reading info


def test_get_info_async_reports_a_failed_load(api, service):
    import asyncio

    api.on("GET", RUN, httpx.Response(200, json=run_json(status="INITIALIZING")))
    tc = service.get_training_client("run-1")
    api.on("GET", RUN, httpx.Response(200, json=run_json(status="ERROR")))
    with pytest.raises(ServerError, match="failed to load"):
        asyncio.run(tc.get_info_async())
