"""The Tinker-protocol codecs and mappings, checked against the official client's own
encoders and decoders (``tinker.proto.request_conv`` / ``response_conv`` of 0.38)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zstandard
from pydantic import ValidationError as PydanticValidationError
from tinker import types as tt
from tinker.proto import tinker_public_pb2 as pb
from tinker.proto.request_conv import forward_backward_request_to_proto
from tinker.proto.response_conv import (
    deserialize_forward_backward_output,
    deserialize_sample_response,
)

from server.api.tinker.codec import (
    decode_forward_backward,
    encode_forward_backward_output,
    encode_sample_response,
    native_batch_request,
    tinker_metrics,
)
from server.api.tinker.futures import optim_metrics
from server.errors import PayloadTooLargeError, ValidationError
from server.services import tinker_models as models
from server.settings import Settings

LIMIT = 1 << 20


def _wire(data: list[tt.Datum], loss_fn: str = "cross_entropy", **config: float) -> bytes:
    request = tt.ForwardBackwardRequest(
        forward_backward_input=tt.ForwardBackwardInput(
            data=data, loss_fn=loss_fn, loss_fn_config=config or None
        ),
        model_id="ses_1:train:0",
        seq_id=7,
    )
    return forward_backward_request_to_proto(request).SerializeToString()


def _datum(tokens: list[int], **extra: np.ndarray) -> tt.Datum:
    return tt.Datum(
        model_input=tt.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": np.asarray(tokens[1:], dtype=np.int64), **extra},
    )


def test_a_client_encoded_batch_decodes_to_the_same_native_datums() -> None:
    weights = np.asarray([0.0, 1.0, -2.5], dtype=np.float32)  # custom losses send negatives
    body = _wire(
        [_datum([5, 6, 7, 8], weights=weights), _datum([9, 10])],
        "ppo",
        clip_low_threshold=0.7,
    )
    message = decode_forward_backward(body, content_encoding=None, max_bytes=LIMIT)
    assert message.model_id == "ses_1:train:0" and message.seq_id == 7
    native = native_batch_request(message)
    assert native.loss_fn == "ppo_sum"  # Tinker's convention: per-example sums
    assert native.loss_fn_config == {"clip_low_threshold": 0.7}
    assert native.data is not None and len(native.data) == 2
    first = native.data[0]
    assert first.model_input.to_ints() == [5, 6, 7]
    assert first.loss_fn_inputs["target_tokens"].tolist() == [6, 7, 8]
    assert first.loss_fn_inputs["target_tokens"].dtype == "int64"
    np.testing.assert_array_equal(first.loss_fn_inputs["weights"].to_numpy(), weights)
    assert native.data[1].model_input.to_ints() == [9] and first.record_id is None


def test_zstd_bodies_and_their_limits() -> None:
    body = _wire([_datum([1, 2, 3])])
    packed = zstandard.ZstdCompressor().compress(body)
    message = decode_forward_backward(packed, content_encoding="zstd", max_bytes=LIMIT)
    assert native_batch_request(message).data[0].model_input.to_ints() == [1, 2]  # type: ignore[index]
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (LIMIT + 10))
    with pytest.raises(PayloadTooLargeError):
        decode_forward_backward(bomb, content_encoding="zstd", max_bytes=LIMIT)
    with pytest.raises(ValidationError) as bad_frame:
        decode_forward_backward(b"\x28\xb5\x2f\xfdjunk", content_encoding="zstd", max_bytes=LIMIT)
    assert bad_frame.value.field == "body"
    with pytest.raises(ValidationError) as gzip:
        decode_forward_backward(body, content_encoding="gzip", max_bytes=LIMIT)
    assert gzip.value.field == "Content-Encoding"
    with pytest.raises(ValidationError) as garbage:
        decode_forward_backward(b"\xff\xff\xff\xff", content_encoding=None, max_bytes=LIMIT)
    assert garbage.value.field == "body"


def test_the_record_id_input_names_the_drawn_record() -> None:
    ids = np.full(2, 41, dtype=np.int64)
    body = _wire([_datum([1, 2, 3], tensafe_record_id=ids)])
    native = native_batch_request(
        decode_forward_backward(body, content_encoding=None, max_bytes=LIMIT)
    )
    assert native.data is not None and native.data[0].record_id == 41
    assert "tensafe_record_id" not in native.data[0].loss_fn_inputs
    mixed = _wire([_datum([1, 2, 3], tensafe_record_id=np.asarray([1, 2], dtype=np.int64))])
    with pytest.raises(ValidationError) as refused:
        native_batch_request(decode_forward_backward(mixed, content_encoding=None, max_bytes=LIMIT))
    assert refused.value.field == "data[0].loss_fn_inputs.tensafe_record_id"


@pytest.mark.parametrize("loss", ["gspo", "stable_reinforce", "custom"])
def test_losses_not_implemented_are_refused_by_name(loss: str) -> None:
    body = _wire([_datum([1, 2])], loss)
    with pytest.raises(ValidationError, match="not implemented") as refused:
        native_batch_request(decode_forward_backward(body, content_encoding=None, max_bytes=LIMIT))
    assert refused.value.field == "loss_fn"


def test_images_sparse_tensors_and_text_config_are_refused_naming_the_field() -> None:
    message = pb.ForwardBackwardRequest(model_id="m", seq_id=1, loss_fn="cross_entropy")
    datum = message.data.add()
    datum.model_input.add().image.data = b"png"
    with pytest.raises(ValidationError) as image:
        native_batch_request(message)
    assert image.value.field == "data[0].model_input[0]"

    message = pb.ForwardBackwardRequest(model_id="m", seq_id=1, loss_fn="cross_entropy")
    datum = message.data.add()
    datum.model_input.add().encoded_text.tokens = np.asarray([1, 2], dtype="<i4").tobytes()
    sparse = datum.loss_fn_inputs["target_tokens"]
    sparse.dtype = pb.DTYPE_INT64
    sparse.sparse_csr.values = np.asarray([3], dtype="<i8").tobytes()
    with pytest.raises(ValidationError) as csr:
        native_batch_request(message)
    assert csr.value.field == "data[0].loss_fn_inputs.target_tokens"

    message.data[0].loss_fn_inputs["target_tokens"].dense = np.asarray([2, 3], "<i8").tobytes()
    message.loss_fn_config_v2["mode"].text = "fast"
    with pytest.raises(ValidationError) as text:
        native_batch_request(message)
    assert text.value.field == "loss_fn_config.mode"


def test_results_decode_with_the_clients_own_decoder() -> None:
    native = {
        "loss_fn_outputs": [
            {
                "logprobs": {"data": [-1.0, -2.0, -3.0], "dtype": "float32", "shape": [3]},
                "elementwise_loss": {"data": [1.0, 2.0, 3.0], "dtype": "float32", "shape": [3]},
            },
            {
                "logprobs": {"data": [-0.5], "dtype": "float32", "shape": [1]},
                "elementwise_loss": {"data": [0.5], "dtype": "float32", "shape": [1]},
            },
        ],
        "metrics": {"loss:sum": 6.5, "dp/clip_fraction": 0.5, "num_examples:sum": 2.0},
    }
    out = deserialize_forward_backward_output(encode_forward_backward_output(native))
    assert [o["logprobs"].tolist() for o in out.loss_fn_outputs] == [[-1.0, -2.0, -3.0], [-0.5]]
    assert out.loss_fn_outputs[1]["elementwise_loss"].tolist() == [0.5]
    assert out.metrics == {"loss:sum": 6.5, "dp/clip_fraction:mean": 0.5, "num_examples:sum": 2.0}


def test_every_metric_key_has_one_reduction() -> None:
    metrics = tinker_metrics({"a": 1.0, "b:max": 2.0, "c:d:e": 3.0})
    assert all(key.count(":") == 1 for key in metrics)
    assert metrics["loss:sum"] == 0.0 and metrics["b:max"] == 2.0


def test_dp_settings_from_user_metadata() -> None:
    dp = models.dp_settings(
        {"tensafe.dp.noise_multiplier": "1.5", "tensafe.dp.dataset_size": "100", "other": "x"}
    )
    assert dp is not None and dp.noise_multiplier == 1.5 and dp.dataset_size == 100
    assert models.dp_settings({"unrelated": "1"}) is None
    off = models.dp_settings({"tensafe.dp": "off", "tensafe.dp.noise_multiplier": "1"})
    assert off is not None and off.enabled is False
    with pytest.raises(ValidationError) as unknown:
        models.dp_settings({"tensafe.dp.noise": "1"})
    assert unknown.value.field == "user_metadata.tensafe.dp.noise"
    with pytest.raises(ValidationError) as bad:
        models.dp_settings({"tensafe.dp.max_grad_norm": "-1"})
    assert bad.value.field == "user_metadata.tensafe.dp.max_grad_norm"
    merged = models.merged_dp(
        {"tensafe.dp.noise_multiplier": "1.0", "tensafe.dp.dataset_size": "10"},
        {"tensafe.dp.noise_multiplier": "2.0"},
    )
    assert merged.noise_multiplier == 2.0 and merged.dataset_size == 10  # the model's wins
    with pytest.raises(ValidationError, match=r"tensafe\.dp"):
        models.merged_dp({}, {})
    server = {"noise_multiplier": 0.8, "dataset_id": "notes", "sample_rate": 0.01}
    default = models.merged_dp({}, {}, defaults=server)  # an unmodified script
    assert default.noise_multiplier == 0.8 and default.dataset_id == "notes"
    mixed = models.merged_dp({"tensafe.dp.noise_multiplier": "2"}, {}, defaults=server)
    assert mixed.noise_multiplier == 2.0 and mixed.sample_rate == 0.01


def test_the_default_dp_setting_is_checked_at_start(tmp_path: Path) -> None:
    ok = Settings(data_dir=tmp_path, tinker_default_dp={"noise_multiplier": 1.0})
    assert ok.tinker_default_dp == {"noise_multiplier": 1.0}
    with pytest.raises(PydanticValidationError, match="noise"):
        Settings(data_dir=tmp_path, tinker_default_dp={"noise": 1.0})


def test_tinker_paths_map_to_the_native_ones() -> None:
    native = "tensafe://run_abc/weights/step-3"
    path = models.tinker_path(model_id="ses_1:train:0", native_path=native)
    assert path == "tinker://ses_1:train:0/weights/step-3"
    assert models.parse_tinker_path(path) == ("ses_1:train:0", "weights", "step-3")
    for bad in (
        "tensafe://x/weights/a",
        "tinker://m/other/a",
        "tinker://m/weights",
        "tinker:///w/a",
    ):
        with pytest.raises(ValidationError):
            models.parse_tinker_path(bad)
    assert models.model_id_for(session_id="ses_1", seq=2) == "ses_1:train:2"


def test_sample_results_decode_with_the_clients_own_decoder() -> None:
    native = {
        "sequences": [
            {
                "tokens": [4, 5],
                "logprobs": [-0.5, -1.5],
                "model_logprobs": [],
                "stop_reason": "length",
            },
            {"tokens": [6], "logprobs": [-0.25], "model_logprobs": [], "stop_reason": "stop"},
        ],
        "prompt_logprobs": [None, -2.0, -3.0],
        "topk_prompt_logprobs": [None, [[7, -0.1], [8, -0.2]], [[9, -0.3]]],
    }
    out = deserialize_sample_response(encode_sample_response(native))
    assert [s.tokens for s in out.sequences] == [[4, 5], [6]]
    assert [s.stop_reason for s in out.sequences] == ["length", "stop"]
    assert out.sequences[0].logprobs == pytest.approx([-0.5, -1.5])
    assert out.prompt_logprobs is not None
    assert out.prompt_logprobs[0] is None and out.prompt_logprobs[1:] == pytest.approx([-2, -3])
    topk = out.topk_prompt_logprobs
    assert topk is not None
    assert [t for t, _ in topk[1]] == [7, 8]
    assert [lp for _, lp in topk[1]] == pytest.approx([-0.1, -0.2])
    assert topk[2] is not None and [t for t, _ in topk[2]] == [9]  # the empty cell is dropped


def test_optim_step_metrics_carry_the_dp_figures() -> None:
    native = {
        "step": 3,
        "learning_rate": 1e-4,
        "metrics": {"grad_norm:mean": 0.5, "dp/clip_fraction": 1.0},
        "dp_metrics": {
            "epsilon_spent": 0.7,
            "delta": 1e-5,
            "noise_multiplier": 1.1,
            "sample_rate": 0.004,
            "max_grad_norm": 1.0,
            "expected_batch_size": 4.0,
            "accountant": "prv",
            "steps": 3,
        },
    }
    metrics = optim_metrics(native)
    assert all(key.count(":") == 1 for key in metrics)
    assert metrics["dp/epsilon:max"] == 0.7 and metrics["dp/delta:max"] == 1e-5
    assert metrics["dp/steps:max"] == 3 and metrics["step:max"] == 3
    assert metrics["dp/clip_fraction:mean"] == 1.0 and "loss:sum" not in metrics
    assert "dp/epsilon:max" not in optim_metrics({**native, "dp_metrics": None})


def test_a_nul_in_the_model_id_is_refused_before_any_query() -> None:
    body = pb.ForwardBackwardRequest(model_id="m\x00", seq_id=1).SerializeToString()
    with pytest.raises(ValidationError) as refused:
        decode_forward_backward(body, content_encoding=None, max_bytes=LIMIT)
    assert refused.value.field == "model_id"
