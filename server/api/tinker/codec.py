"""The protobuf side of the Tinker protocol, on the official ``tinker`` 0.38 module.

* :func:`decode_forward_backward` — the body of ``POST /api/v1/forward_backward``
  (``application/x-protobuf``, optionally ``Content-Encoding: zstd``) into a
  ``tinker_public.ForwardBackwardRequest``;
* :func:`native_batch_request` — that message as the native
  :class:`tg_tinker.types.ForwardBackwardRequest` (losses mapped to their Tinker-
  convention ``_sum`` twins; a ``tensafe_record_id`` input names a drawn record);
* :func:`encode_forward_backward_output` — a native forward/forward_backward result as
  a ``tinker_public.ForwardBackwardOutput`` (per-datum ``logprobs`` and
  ``elementwise_loss``, metrics ``name:reduction``);
* :func:`encode_sample_response` — a native sample result as a
  ``tinker_public.SampleResponse``.

Every refusal is a :class:`~server.errors.ValidationError` naming the field
(``data[2].loss_fn_inputs.weights``), so a bad request is a 422 before anything is queued.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import zstandard
from google.protobuf.message import DecodeError
from pydantic import ValidationError as PydanticValidationError
from tg_tinker.types import Datum, ForwardBackwardRequest
from tinker.proto import tinker_public_pb2 as pb

from server.errors import PayloadTooLargeError, ValidationError

PROTOBUF = "application/x-protobuf"

#: Tinker's losses this server computes (each as its ``_sum`` twin: Tinker's convention).
SUPPORTED_LOSSES = ("cross_entropy", "importance_sampling", "ppo", "cispo", "dro")
#: Named by the 0.38 client but not implemented here; refused with a clear message.
REFUSED_LOSSES = ("gspo", "stable_reinforce", "custom")
#: The ``loss_fn_inputs`` key that names the drawn record a datum belongs to.
RECORD_ID_INPUT = "tensafe_record_id"

_NUMPY = {
    pb.DTYPE_FLOAT32: np.dtype("<f4"),
    pb.DTYPE_INT64: np.dtype("<i8"),
    pb.DTYPE_INT32: np.dtype("<i4"),
}


def decode_forward_backward(
    body: bytes, *, content_encoding: str | None, max_bytes: int
) -> pb.ForwardBackwardRequest:
    """Parse (and first decompress, for ``zstd``) a forward_backward body.

    Raises:
        ValidationError: (``body``) an unknown content encoding, a corrupt zstd frame, or
            bytes that are not a ForwardBackwardRequest.
        PayloadTooLargeError: the decompressed body is above ``max_bytes``.
    """
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "zstd":
        try:
            declared = zstandard.frame_content_size(body)
        except zstandard.ZstdError:
            declared = -1  # not even a frame header: decompress() names the problem
        if declared > max_bytes:
            raise PayloadTooLargeError(
                f"the decompressed body is above the server's limit of {max_bytes} bytes",
                field="body",
            )
        try:
            body = zstandard.ZstdDecompressor().decompress(body, max_output_size=max_bytes)
        except zstandard.ZstdError as exc:
            raise ValidationError(
                f"not a complete zstd frame of at most {max_bytes} bytes ({exc})", field="body"
            ) from None
    elif encoding != "identity":
        raise ValidationError(
            f"unsupported Content-Encoding {content_encoding!r}; send zstd or none",
            field="Content-Encoding",
        )
    message = pb.ForwardBackwardRequest()
    try:
        message.ParseFromString(body)
    except DecodeError:
        raise ValidationError(
            "the body is not a tinker_public.ForwardBackwardRequest protobuf", field="body"
        ) from None
    if "\x00" in message.model_id:  # never reaches a database query
        raise ValidationError("must not contain NUL characters", field="model_id")
    return message


def native_loss_name(loss_fn: str) -> str:
    """The native loss a Tinker loss name runs as.

    Raises:
        ValidationError: (``loss_fn``) a loss this server does not compute.
    """
    if loss_fn in SUPPORTED_LOSSES:
        return loss_fn + "_sum"
    supported = ", ".join(SUPPORTED_LOSSES)
    if loss_fn in REFUSED_LOSSES:
        raise ValidationError(
            f"the loss {loss_fn!r} is not implemented by this TenSafe server; supported: "
            f"{supported} (forward_backward_custom works: it runs on cross_entropy)",
            field="loss_fn",
        )
    raise ValidationError(f"unknown loss {loss_fn!r}; supported: {supported}", field="loss_fn")


def _loss_config(message: pb.ForwardBackwardRequest) -> dict[str, float] | None:
    config: dict[str, float] = {}
    for key, value in message.loss_fn_config_v2.items():
        if value.WhichOneof("value") == "text":
            raise ValidationError(
                "text values are not accepted; give a number", field=f"loss_fn_config.{key}"
            )
        config[key] = value.number
    for key, number in message.loss_fn_config.items():
        config.setdefault(key, number)  # legacy map: only keys v2 lacks
    return config or None


def _tensor(tensor: pb.Tensor, *, field: str) -> np.ndarray:
    if tensor.WhichOneof("encoding") != "dense":
        raise ValidationError(
            "only dense tensors are accepted (sparse top-k targets are not supported)",
            field=field,
        )
    dtype = _NUMPY.get(tensor.dtype)
    if dtype is None:
        raise ValidationError("dtype must be float32, int64 or int32", field=field)
    if len(tensor.dense) % dtype.itemsize:
        raise ValidationError(
            f"{len(tensor.dense)} bytes is not a whole number of {dtype.name} values",
            field=field,
        )
    values = np.frombuffer(tensor.dense, dtype=dtype)
    shape = list(tensor.shape)
    if shape and int(np.prod(shape)) != values.size:
        raise ValidationError(f"shape {shape} needs {int(np.prod(shape))} values", field=field)
    if values.ndim != 1 or (len(shape) > 1):
        raise ValidationError("must be one-dimensional (one value per token)", field=field)
    return values


def _record_id(values: np.ndarray, *, field: str) -> int:
    if values.dtype.kind != "i" or values.size == 0 or (values != values[0]).any():
        raise ValidationError(
            "must hold one integer record id (repeated per token, or a single value)",
            field=field,
        )
    if values[0] < 0:
        raise ValidationError("record ids are non-negative", field=field)
    return int(values[0])


def _datum(datum: pb.Datum, *, index: int) -> Datum:
    base = f"data[{index}]"
    tokens: list[np.ndarray] = []
    for c, chunk in enumerate(datum.model_input):
        kind = chunk.WhichOneof("chunk")
        if kind != "encoded_text":
            raise ValidationError(
                f"{kind} chunks are not supported; this server trains text models",
                field=f"{base}.model_input[{c}]",
            )
        raw = chunk.encoded_text.tokens
        if len(raw) % 4:
            raise ValidationError("tokens must be int32", field=f"{base}.model_input[{c}]")
        tokens.append(np.frombuffer(raw, dtype="<i4"))
    inputs: dict[str, Any] = {}
    record_id = None
    for name, tensor in datum.loss_fn_inputs.items():
        field = f"{base}.loss_fn_inputs.{name}"
        values = _tensor(tensor, field=field)
        if name == RECORD_ID_INPUT:
            record_id = _record_id(values, field=field)
        else:
            inputs[name] = values.astype(np.int64) if values.dtype.kind == "i" else values
    flat = np.concatenate(tokens) if tokens else np.zeros(0, dtype=np.int64)
    try:
        return Datum(model_input=flat.astype(np.int64), loss_fn_inputs=inputs, record_id=record_id)
    except PydanticValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error.get("loc", ()))
        raise ValidationError(
            str(error.get("msg", "invalid")), field=f"{base}.{where}" if where else base
        ) from None


def native_batch_request(message: pb.ForwardBackwardRequest) -> ForwardBackwardRequest:
    """The native request for a decoded Tinker forward/forward_backward.

    Raises:
        ValidationError: an unsupported loss, chunk type or tensor encoding; an empty batch.
    """
    loss_fn = native_loss_name(message.loss_fn or "cross_entropy")
    if not message.data:
        raise ValidationError("batch is empty", field="data")
    data = [_datum(d, index=i) for i, d in enumerate(message.data)]
    return ForwardBackwardRequest(
        data=data,
        loss_fn=loss_fn,
        loss_fn_config=_loss_config(message),  # type: ignore[arg-type]
    )


def _batched(arrays: list[np.ndarray]) -> pb.BatchedTensor:
    sizes = [a.nbytes for a in arrays]
    offsets = np.zeros(len(arrays) + 1, dtype="<i8")
    offsets[1:] = np.cumsum(sizes)
    return pb.BatchedTensor(
        data=b"".join(a.tobytes() for a in arrays),
        offsets=offsets.tobytes(),
        dtype=pb.DTYPE_FLOAT32,
    )


def tinker_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """Metrics with keys of the form ``name:reduction`` the client requires (a key
    without one becomes ``name:mean``; ``loss:sum`` is always present)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = key if key.count(":") == 1 else key.replace(":", "/") + ":mean"
        out[name] = float(value)
    out.setdefault("loss:sum", 0.0)
    return out


def encode_forward_backward_output(result: Mapping[str, Any]) -> bytes:
    """A native ``ForwardBackwardOutput`` (as stored, JSON) as Tinker protobuf bytes."""
    outputs = result.get("loss_fn_outputs") or []
    message = pb.ForwardBackwardOutput(
        loss_fn_output_type="ArrayRecord", metrics=tinker_metrics(result.get("metrics") or {})
    )
    record = message.loss_fn_outputs.add(type_tag="ArrayRecord", num_datums=len(outputs))
    for field in ("logprobs", "elementwise_loss"):
        arrays = [np.asarray(o[field]["data"], dtype="<f4") for o in outputs]
        record.fields[field].CopyFrom(_batched(arrays))
    return message.SerializeToString()


__all__ = [
    "PROTOBUF",
    "RECORD_ID_INPUT",
    "REFUSED_LOSSES",
    "SUPPORTED_LOSSES",
    "decode_forward_backward",
    "encode_forward_backward_output",
    "encode_sample_response",
    "native_batch_request",
    "native_loss_name",
    "tinker_metrics",
]


_STOP = {"stop": pb.STOP_REASON_STOP, "length": pb.STOP_REASON_LENGTH}
#: How Tinker marks an empty top-k cell (fewer than k alternatives).
_EMPTY_TOPK = (0, -99999.0)


def _topk(rows: list[Any]) -> pb.TopkLogprobs:
    k = max((len(r) for r in rows if r), default=0)
    ids = np.full((len(rows), k), _EMPTY_TOPK[0], dtype="<i4")
    logprobs = np.full((len(rows), k), _EMPTY_TOPK[1], dtype="<f4")
    for i, row in enumerate(rows):
        for j, (token, logprob) in enumerate(row or []):
            ids[i, j], logprobs[i, j] = token, logprob
    return pb.TopkLogprobs(
        token_ids=ids.tobytes(), logprobs=logprobs.tobytes(), k=k, length=len(rows)
    )


def encode_sample_response(result: Mapping[str, Any]) -> bytes:
    """A native ``SampleResponse`` (JSON) as a Tinker ``SampleResponse`` protobuf:
    tokens int32, log-probabilities float32, NaN where a prompt position has none."""
    message = pb.SampleResponse()
    for seq in result.get("sequences") or []:
        message.sequences.add(
            stop_reason=_STOP[seq["stop_reason"]],
            tokens=np.asarray(seq["tokens"], dtype="<i4").tobytes(),
            logprobs=np.asarray(seq["logprobs"], dtype="<f4").tobytes(),
        )
    prompt = result.get("prompt_logprobs")
    if prompt is not None:
        values = [np.nan if v is None else v for v in prompt]
        message.prompt_logprobs = np.asarray(values, dtype="<f4").tobytes()
    topk = result.get("topk_prompt_logprobs")
    if topk:
        message.topk_prompt_logprobs.CopyFrom(_topk(topk))
    return message.SerializeToString()
