"""The SDK conveniences on the wire types: numpy round trips (property tests),
array wrapping in Datum / BatchData, and LossFnOutput's mapping access."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tg_tinker import BatchData, Datum, LossFnOutput, TensorData
from tg_tinker.types import ForwardBackwardRequest

SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)
DTYPES = st.sampled_from([np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32])
FLOATS = st.sampled_from([np.float32, np.float64])


def _finite(dtype):
    return hnp.arrays(
        dtype, SHAPES, elements=st.floats(allow_nan=False, allow_infinity=False, width=32)
    )


@settings(max_examples=60, deadline=None)
@given(st.one_of(DTYPES.flatmap(lambda d: hnp.arrays(d, SHAPES)), FLOATS.flatmap(_finite)))
def test_tensor_data_numpy_round_trip_including_json(array):
    td = TensorData.from_numpy(array)
    expected_dtype = "int64" if array.dtype.kind in "iu" else str(array.dtype)
    assert td.dtype == expected_dtype
    assert td.shape == list(array.shape)
    back = TensorData.model_validate_json(td.model_dump_json()).to_numpy()
    assert back.dtype == np.dtype(expected_dtype)
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array.astype(expected_dtype))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=20), st.data())
def test_datum_wraps_lists_and_arrays_like_from_numpy(tokens, data):
    weights = data.draw(
        st.lists(st.floats(0, 1, width=32), min_size=len(tokens), max_size=len(tokens))
    )
    datum = Datum(
        model_input=np.array(tokens, dtype=np.int64),
        loss_fn_inputs={"target_tokens": tokens, "weights": np.array(weights, dtype=np.float32)},
    )
    assert datum.model_input.to_ints() == tokens
    assert datum.loss_fn_inputs["target_tokens"].dtype == "int64"
    assert datum.loss_fn_inputs["weights"].dtype == "float32"
    np.testing.assert_array_equal(datum.loss_fn_inputs["weights"].to_numpy(), np.float32(weights))
    # Validated again on the server from JSON: identical.
    assert Datum.model_validate_json(datum.model_dump_json()) == datum


def test_python_float_lists_become_float32_and_bools_become_floats():
    datum = Datum(
        model_input=[1, 2], loss_fn_inputs={"weights": [1.0, 0.5], "mask": np.array([True, False])}
    )
    assert datum.loss_fn_inputs["weights"].dtype == "float32"
    assert datum.loss_fn_inputs["mask"] == TensorData(data=[1.0, 0.0], dtype="float32", shape=[2])


def test_non_numeric_arrays_are_refused():
    with pytest.raises(ValueError, match="dtype"):
        Datum(model_input=[1], loss_fn_inputs={"weights": np.array(["a"])})
    with pytest.raises(ValueError, match="integer token ids"):
        Datum(model_input=[1.5, 2.0], loss_fn_inputs={})
    with pytest.raises(ValueError, match="integer token ids"):
        Datum(model_input=[[1, 2]], loss_fn_inputs={})


def test_batch_data_accepts_2d_arrays_and_rows_of_arrays():
    ids = np.arange(6).reshape(2, 3)
    a = BatchData(
        input_ids=ids,
        attention_mask=np.ones_like(ids),
        labels=[np.array([1, 2, -100]), [4, 5, -100]],
    )
    assert a.input_ids == [[0, 1, 2], [3, 4, 5]]
    assert a.labels == [[1, 2, -100], [4, 5, -100]]
    assert BatchData.model_validate_json(a.model_dump_json()) == a


def test_loss_fn_output_reads_by_key_and_prints_as_a_dict():
    lp = TensorData(data=[-1.5], dtype="float32", shape=[1])
    el = TensorData(data=[1.5], dtype="float32", shape=[1])
    out = LossFnOutput(logprobs=lp, elementwise_loss=el)
    assert out["logprobs"] is out.logprobs and out["elementwise_loss"] is el
    assert dict(out) == {"logprobs": lp, "elementwise_loss": el}
    assert repr(out) == (
        "{'logprobs': TensorData(data=[-1.5], dtype='float32', shape=[1]), "
        "'elementwise_loss': TensorData(data=[1.5], dtype='float32', shape=[1])}"
    )
    with pytest.raises(KeyError):
        out["model_config"]


def test_request_still_needs_exactly_one_form():
    with pytest.raises(ValueError, match="exactly one"):
        ForwardBackwardRequest()
