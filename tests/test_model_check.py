"""Uploaded models whose allocations a request could size are refused at upload
(naming the op); what passes runs under the uploads' capped onnxruntime arena."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent.compute.model_check import ModelCheckError, check_model
from agent.compute.models import ModelStore, UploadError

I64, F32 = TensorProto.INT64, TensorProto.FLOAT


def model(nodes, inputs, outputs, inits=(), opset=17) -> bytes:
    graph = helper.make_graph(nodes, "m", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString()


def vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def summed(op_node, inputs, extra=()):
    """``op_node`` whose output ``y`` is summed to a scalar: a small answer, a big allocation."""
    return model([*extra, op_node, helper.make_node("ReduceSum", ["y"], ["z"], keepdims=0)], inputs,
                 [vi("z", F32, [])])


def attack() -> bytes:
    """Issue 18's probe: ConstantOfShape fed by the request's values."""
    return summed(helper.make_node("ConstantOfShape", ["shape"], ["y"],
                                   value=helper.make_tensor("v", F32, [1], [1.0])), [vi("shape", I64, [1])])


@pytest.fixture
def store(tmp_path, models_dir):
    return ModelStore(models_dir, uploads=tmp_path / "uploads")


def test_constant_of_shape_fed_by_input_values_is_refused_at_upload(store):
    with pytest.raises(UploadError) as err:
        store.put("grow", attack())
    assert err.value.status == 400
    assert "op ConstantOfShape takes its output size from the request's input values" in str(err.value)
    assert store.uploaded_names() == []


ONE = numpy_helper.from_array(np.array([1.0], np.float32), "one")
VALUE_SIZED = {
    "Expand": (helper.make_node("Expand", ["one", "s"], ["y"]), [vi("s", I64, [1])], [ONE]),
    "Tile": (helper.make_node("Tile", ["one", "s"], ["y"]), [vi("s", I64, [1])], [ONE]),
    "Range": (helper.make_node("Range", ["a", "b", "d"], ["y"]), [vi(n, F32, []) for n in "abd"], []),
    "OneHot": (helper.make_node("OneHot", ["i", "depth", "vals"], ["y"]), [vi("i", I64, [4]), vi("depth", I64, [])],
               [numpy_helper.from_array(np.array([0.0, 1.0], np.float32), "vals")]),
    "Pad": (helper.make_node("Pad", ["x", "p"], ["y"]), [vi("x", F32, [4]), vi("p", I64, [2])], []),
}


@pytest.mark.parametrize("op", sorted(VALUE_SIZED))
def test_every_allocation_op_sized_by_input_values_is_refused_naming_it(op):
    node, inputs, inits = VALUE_SIZED[op]
    data = model([node, helper.make_node("ReduceSum", ["y"], ["z"], keepdims=0)], inputs, [vi("z", F32, [])], inits)
    with pytest.raises(ModelCheckError, match=f"op {op} takes its output size from the request's input values"):
        check_model(data)


def test_a_size_computed_from_input_values_through_arithmetic_is_still_refused():
    data = summed(helper.make_node("ConstantOfShape", ["s2"], ["y"]), [vi("s", I64, [1])],
                  extra=[helper.make_node("Constant", [], ["k"], value=helper.make_tensor("k", I64, [1], [2])),
                         helper.make_node("Mul", ["s", "k"], ["s2"])])
    with pytest.raises(ModelCheckError, match="ConstantOfShape"):
        check_model(data)


def test_a_loop_that_collects_per_iteration_with_a_trip_count_from_input_values_is_refused():
    """Scan outputs grow with the trip count; a loop-carried value of static shape
    does not (its time is bounded by the task's deadline, which stops a Loop)."""
    body = helper.make_graph([helper.make_node("Identity", ["c"], ["c_out"]),
                              helper.make_node("Identity", ["v"], ["v_out"]),
                              helper.make_node("Identity", ["v"], ["v_scan"])],
                             "body", [vi("i", I64, []), vi("c", TensorProto.BOOL, []), vi("v", F32, [1])],
                             [vi("c_out", TensorProto.BOOL, []), vi("v_out", F32, [1]), vi("v_scan", F32, [1])])
    cond = numpy_helper.from_array(np.array(True), "cond")
    loop = helper.make_node("Loop", ["n", "cond", "x"], ["y", "ys"], body=body)
    outputs = [vi("y", F32, [1]), vi("ys", F32, None)]
    with pytest.raises(ModelCheckError, match="op Loop takes its output size from the request's input values"):
        check_model(model([loop], [vi("n", I64, []), vi("x", F32, [1])], outputs, [cond]))
    n = numpy_helper.from_array(np.array(10, np.int64), "n")
    check_model(model([loop], [vi("x", F32, [1])], outputs, [cond, n]))     # a constant trip count is fine
    carried = helper.make_node("Loop", ["n", "cond", "x"], ["y"], body=helper.make_graph(
        list(body.node)[:2], "body", list(body.input), list(body.output)[:2]))
    check_model(model([carried], [vi("n", I64, []), vi("x", F32, [1])], [vi("y", F32, [1])], [cond]))


def test_a_huge_constant_shape_is_refused_before_onnxruntime_folds_it(store):
    data = summed(helper.make_node("ConstantOfShape", ["s"], ["y"]), [],
                  extra=[helper.make_node("Constant", [], ["s"], value=helper.make_tensor("c", I64, [1], [10 ** 10]))])
    with pytest.raises(UploadError, match=r"its output 'y' has 10000000000 elements .* over the 268435456-byte limit"):
        store.put("huge", data)


def test_sizes_from_an_input_shape_are_allowed_and_run(store):
    """zeros_like(x) the way exporters write it: Shape -> ConstantOfShape."""
    data = model([helper.make_node("Shape", ["x"], ["s"]), helper.make_node("ConstantOfShape", ["s"], ["z0"]),
                  helper.make_node("Add", ["x", "z0"], ["y"])], [vi("x", F32, ["n", 3])], [vi("y", F32, ["n", 3])])
    store.put("like", data)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(store.get("like").session.run(None, {"x": x})[0], x)


def test_the_zoo_passes_the_upload_check(models_dir):
    for path in sorted(models_dir.glob("*.onnx")):
        check_model(path.read_bytes())


def test_external_data_and_custom_domains_are_refused():
    w = helper.make_tensor("w", F32, [1], [1.0])
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("float_data")
    w.external_data.add(key="location", value="/etc/passwd")
    data = model([helper.make_node("Mul", ["x", "w"], ["y"])], [vi("x", F32, [1])], [vi("y", F32, [1])], [w])
    with pytest.raises(ModelCheckError, match="'w' keeps its data outside the model file"):
        check_model(data)
    custom = model([helper.make_node("Evil", ["x"], ["y"], domain="my.ops")], [vi("x", F32, [1])], [vi("y", F32, [1])])
    with pytest.raises(ModelCheckError, match="op domain 'my.ops' is not supported"):
        check_model(custom)
    with pytest.raises(ModelCheckError, match="not a loadable ONNX model"):
        check_model(b"\xff\xff not protobuf")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_an_allocation_multiplied_from_an_input_shape_stops_at_the_uploads_arena(store):
    """Passes the static check (the size comes from x's shape) but asks for 1 GB:
    the run fails with onnxruntime's arena error and the process does not grow by it."""
    k = numpy_helper.from_array(np.array([1000], np.int64), "k")
    data = model([helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Mul", ["s", "k"], ["s2"]),
                  helper.make_node("ConstantOfShape", ["s2"], ["y"], value=helper.make_tensor("v", F32, [1], [1.0])),
                  helper.make_node("ReduceSum", ["y"], ["z"], keepdims=0)], [vi("x", F32, ["n"])], [vi("z", F32, [])],
                 [k])
    store.put("amplify", data)
    session = store.get("amplify").session
    assert session.run(None, {"x": np.zeros(100, np.float32)})[0] == 100_000      # small: fine
    before = _rss()
    with pytest.raises(Exception, match="Available memory of .* is smaller than requested bytes"):
        session.run(None, {"x": np.zeros(250_000, np.float32)})                   # 1 GB asked
    assert _rss() - before < 64 << 20


def test_a_stored_blob_that_never_passed_the_check_is_refused_at_load(store):
    """A data directory from before the check: the blob is checked when its session is made."""
    import hashlib
    import json

    from agent.compute.models import ModelError
    data = attack()
    sha = hashlib.sha256(data).hexdigest()
    (store.uploads / "blobs").mkdir(parents=True)
    (store.uploads / "names").mkdir(parents=True)
    (store.uploads / "blobs" / f"{sha}.onnx").write_bytes(data)
    (store.uploads / "names" / "grow.json").write_text(json.dumps({"sha256": sha, "size": len(data)}))
    with pytest.raises(ModelError, match="'grow' cannot be loaded: model refused: op ConstantOfShape"):
        store.get("grow")


async def test_a_task_stopped_by_the_arena_says_so_in_words(store):
    import trio

    from agent.compute.executor import ExecutionError, Executor
    k = numpy_helper.from_array(np.array([1000], np.int64), "k")
    store.put("amplify", model([helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Mul", ["s", "k"], ["s2"]),
                                helper.make_node("ConstantOfShape", ["s2"], ["y"]),
                                helper.make_node("ReduceSum", ["y"], ["z"], keepdims=0)],
                               [vi("x", F32, ["n"])], [vi("z", F32, [])], [k]))
    ex = Executor(store, workers=1)
    async with trio.open_nursery() as n:
        await n.start(ex.serve)
        with pytest.raises(ExecutionError, match=r"amplify: op ConstantOfShape asked for 1000000000 bytes, over what "
                                                 r"is left of the 268435456-byte memory limit of uploaded models"):
            await ex.run("amplify", {"x": np.zeros(250_000, np.float32)})
        n.cancel_scope.cancel()
