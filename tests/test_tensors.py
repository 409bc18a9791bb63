"""Input checking at the API edge: every bad tensor gets a clear reason."""

import numpy as np
import pytest

from agent.compute.tensors import InputError, TensorSpec, from_json, inputs_from_json, to_json

SPEC = TensorSpec("input", "float32", (None, 4))
INT_SPEC = TensorSpec("ids", "int64", (1, None))


def test_nested_list_is_cast_to_the_model_dtype():
    arr = from_json([[1, 2, 3, 4], [5, 6, 7, 8.5]], SPEC, 100)
    assert arr.dtype == np.float32 and arr.shape == (2, 4)


def test_typed_tensor_with_flat_data_and_shape():
    arr = from_json({"dtype": "float32", "shape": [2, 4], "data": list(range(8))}, SPEC, 100)
    assert arr.shape == (2, 4) and arr[1, 3] == 7


@pytest.mark.parametrize("value, spec, words", [
    ([[1, 2, 3]], SPEC, "dimension 1 is 3"),
    ([1, 2, 3, 4], SPEC, "rank 1"),
    ([[1, 2], [1, 2, 3]], SPEC, "ragged"),
    ([["a", "b", "c", "d"]], SPEC, "non-numbers"),
    ([[1.5, 2.0]], INT_SPEC, "cannot be int64"),
    ([[True, False, True, True]], SPEC, "cannot be float32"),
    ([[float("nan"), 1, 2, 3]], SPEC, "NaN"),
    ({"dtype": "int64", "data": [1, 2, 3, 4]}, SPEC, "dtype 'int64' given"),
    ({"data": [1, 2, 3], "shape": [1, 4]}, SPEC, "does not hold"),
    ({"data": [1, 2, 3, 4], "shape": [1, -4]}, SPEC, "non-negative"),
    ({"values": [1]}, SPEC, "typed tensor"),
    ("1,2,3,4", SPEC, "nested) list"),
    ([[0] * 4] * 30, SPEC, "exceed the limit"),
])
def test_bad_inputs(value, spec, words):
    with pytest.raises(InputError, match=words.replace("(", r"\(").replace(")", r"\)")):
        from_json(value, spec, max_elements=100)


def test_names_must_match_the_signature():
    with pytest.raises(InputError, match=r"missing \['input'\], unexpected \['x'\]"):
        inputs_from_json({"x": [[1, 2, 3, 4]]}, [SPEC], 100)
    with pytest.raises(InputError, match="expected an object"):
        inputs_from_json([1], [SPEC], 100)


def test_to_json_round_trip():
    arr = np.arange(6, dtype=np.int64).reshape(2, 3)
    out = to_json(arr)
    assert out == {"dtype": "int64", "shape": [2, 3], "data": [[0, 1, 2], [3, 4, 5]]}
    back = from_json(out, TensorSpec("x", "int64", (None, 3)), 100)
    assert np.array_equal(back, arr)
