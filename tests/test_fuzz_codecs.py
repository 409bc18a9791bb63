"""Property-based fuzzing of every decoder that reads bytes from someone else (issue 18).

The property is always the same: whatever comes in, the decoder returns a
value or raises its own error type (WireError, GossipWireError, OipError,
InputError), which the caller turns into a dropped frame or a 4xx.  Any
other exception would be a crash of the link reader or a 500.

Inputs are random bytes, valid frames mutated byte by byte, and valid
messages mutated structurally (a random node of the decoded msgpack tree
replaced by a random value), which reaches the field checks that random
bytes rarely get past.
"""

import json
import os

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.serve.oip_codec import OipError, decode_task_body, encode_infer_request, encode_task_body, parse_infer
from agent.compute.tensors import InputError, TensorSpec, inputs_from_arrays, inputs_from_json, to_json
from mesh.gossip_msgs import Ack, Alive, Dead, GossipWireError, HopAck, LinkState, NodeState, Ping, Suspect, \
    message_from_wire, message_to_wire
from mesh.frames import LinkFrame, decode_body, encode_frame
from mesh.wire import (ChaosUpdate, ClockUpdate, Control, Hello, Hop, ModelChunk, ModelFetch, Probe, TaskQuery,
                       TaskRequest, TaskResult, TaskStatus, Tensor, WireError, decode_message, encode_message)

EXAMPLES = int(os.environ.get("ORBITMESH_FUZZ_EXAMPLES", "300"))   # more for a long hunt
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

MESSAGES = [
    Hello("sat-3"),
    TaskRequest("t1", "sat-0", "sat-5", "digits", {"input": Tensor.from_array(np.ones((1, 4), np.float32))}, 64,
                (Hop("sat-0", 1.0, 1.001, "entry"),), 1, 1.7e9, "ab" * 32),
    TaskResult("t1", "sat-0", "sat-5", True, {"label": Tensor.from_array(np.array([3]))}, "", 60,
               (Hop("sat-5", 2.0, 2.1, "execute", 0.03, "compute 0.1 ms"),), 0.0001),
    ModelFetch("f1", "sat-5", "sat-0", "mine", "cd" * 32, 0, 1 << 20, 60, 1.7e9, 1),
    ModelChunk("f1", "sat-5", "sat-0", "cd" * 32, 0, 3, b"abc", 60, 1.7e9, 0),
    TaskQuery("q1", "sat-7", "sat-0", "sat-0-abc", 2.5, 60, 1.7e9, 1),
    TaskStatus("q1", "sat-7", "sat-0", "sat-0-abc", b'{"status": "succeeded"}', "", 60, 1.7e9, 1),
    Control(Ping(5, 1, 2, (1, 3, 2), (Alive(1, 4), Suspect(2, 3, 1), Dead(4, 1, 2)))),
    Control(Ack(5, 2, 1, (1, 2), (NodeState(3, 7, (("load", 0.5),)), LinkState(1, 2, False, 3, 1)))),
    Control(HopAck(("q:t1:0", "r:t1:0"))),
    ChaosUpdate((["abc", 1.0, "sat-1", False, "{}", 1.0, None],)),
    ClockUpdate(([2000.0, "sat-1", 2001.0, 50.0, 10.0, False, b"s" * 64],)),
    Probe(7, b"x" * 10),
]
LIMIT = 1 << 20

# Any value msgpack can carry (and so any value a peer can put anywhere in a message).
LEAVES = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2 ** 63), max_value=2 ** 64 - 1),
                   st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20), st.binary(max_size=20))
VALUES = st.recursive(LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)


def _paths(tree, prefix=()):
    """Every position in a decoded msgpack tree (lists and dict values), the root first."""
    yield prefix
    if isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _paths(v, prefix + (i,))
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield from _paths(v, prefix + (k,))


def _replace(tree, path, value):
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(tree, list):
        return [(_replace(v, rest, value) if i == head else v) for i, v in enumerate(tree)]
    return {k: (_replace(v, rest, value) if k == head else v) for k, v in tree.items()}


def _decode_quietly(body: bytes) -> None:
    try:
        frame = decode_body(body)
    except WireError:
        return
    assert isinstance(frame, LinkFrame)
    encode_frame(frame, 1 << 30)          # what decodes can be sent on: no half-valid message


@FUZZ
@given(st.binary(max_size=600))
def test_random_bodies_decode_or_raise_wire_error(blob):
    _decode_quietly(blob)
    try:
        decode_message(blob)
    except WireError:
        pass


@FUZZ
@given(st.sampled_from(MESSAGES), st.data())
def test_valid_frames_mutated_byte_by_byte_decode_or_raise_wire_error(msg, data):
    body = encode_frame(LinkFrame(12.5, msg, 0.25), LIMIT)[8:]
    edits = data.draw(st.lists(st.tuples(st.sampled_from(["flip", "cut", "insert", "delete"]),
                                         st.integers(0, len(body) - 1), st.binary(min_size=1, max_size=4)),
                               min_size=1, max_size=4))
    b = bytearray(body)
    for op, at, extra in edits:
        at %= max(len(b), 1)
        if op == "flip" and b:
            b[at] ^= extra[0] or 1
        elif op == "cut":
            del b[at:]
        elif op == "insert":
            b[at:at] = extra
        elif op == "delete":
            del b[at:at + len(extra)]
    _decode_quietly(bytes(b))


@FUZZ
@given(st.sampled_from(MESSAGES), st.data(), VALUES)
def test_valid_messages_with_any_field_replaced_decode_or_raise_wire_error(msg, data, value):
    tree = msgpack.unpackb(encode_frame(LinkFrame(12.5, msg, 0.25), LIMIT)[8:], raw=False)
    path = data.draw(st.sampled_from(list(_paths(tree))))
    _decode_quietly(msgpack.packb(_replace(tree, path, value), use_bin_type=True))


@FUZZ
@given(st.sampled_from([m.msg for m in MESSAGES if isinstance(m, Control)]), st.data(), VALUES)
def test_gossip_messages_with_any_field_replaced_decode_or_raise_gossip_error(msg, data, value):
    tree = msgpack.unpackb(msgpack.packb(message_to_wire(msg)), raw=False)
    path = data.draw(st.sampled_from(list(_paths(tree))))
    try:
        out = message_from_wire(_replace(tree, path, value))
    except GossipWireError:
        return
    message_to_wire(out)


@FUZZ
@given(VALUES)
def test_any_gossip_value_decodes_or_raises_gossip_error(value):
    try:
        message_from_wire(value)
    except GossipWireError:
        pass


def test_every_sample_message_survives_the_codec_unchanged():
    """The mutations above start from valid messages: check that they are."""
    for m in MESSAGES:
        assert decode_message(encode_message(m)) == m


# --- the HTTP bodies ---------------------------------------------------------------

DIGITS = [TensorSpec("input", "float32", (None, 64))]
MATMUL = [TensorSpec("a", "float32", (None, None)), TensorSpec("b", "float32", (None, None))]
TYPES = ["float32", "float64", "float16", "int8", "uint8", "int32", "int64", "bool"]
JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=10))
JSON = st.recursive(JSON_LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                    max_leaves=20)
NUMBERS = st.one_of(st.integers(min_value=-(2 ** 66), max_value=2 ** 66), st.floats(allow_nan=False),
                    st.booleans())
MATRIX = st.one_of(st.lists(st.lists(NUMBERS, max_size=4), max_size=4), JSON)


@FUZZ
@given(st.dictionaries(st.sampled_from(["a", "b", "input", "x"]),
                       st.one_of(MATRIX, st.fixed_dictionaries({"data": MATRIX}, optional={
                           "dtype": st.sampled_from(TYPES + ["complex64", 3]),
                           "shape": st.one_of(st.lists(st.integers(-2, 70), max_size=3), JSON)})), max_size=3),
       st.sampled_from([DIGITS, MATMUL]))
def test_json_task_inputs_are_arrays_of_the_model_or_an_input_error(raw, specs):
    try:
        arrays = inputs_from_json(raw, specs, max_elements=4096)
    except InputError:
        return
    for s in specs:
        a = arrays[s.name]
        assert a.dtype.name == s.dtype and a.ndim == len(s.shape)
        assert np.all(np.isfinite(a))                                  # no 1e39 turned into inf
        json.dumps(to_json(a), allow_nan=False)


@FUZZ
@given(st.dictionaries(st.text(max_size=6), st.one_of(
    st.fixed_dictionaries({"dtype": st.one_of(st.sampled_from(TYPES), JSON),
                           "shape": st.one_of(st.lists(st.integers(-1, 8), max_size=3), JSON),
                           "binary_data_size": st.one_of(st.integers(-5, 300), JSON)}), JSON), max_size=3),
       st.binary(max_size=300), st.one_of(JSON, st.just(None)))
def test_binary_task_bodies_decode_or_raise_oip_error(inputs, tail, extra):
    head = json.dumps({"model": "digits", "inputs": inputs, **({"x": extra} if extra is not None else {})}).encode()
    for header in (str(len(head)), str(len(head) + 3), "-1", "abc", str(10 ** 30)):
        try:
            doc = decode_task_body(head + tail, header)
        except OipError as exc:
            assert 400 <= exc.status < 500
            continue
        try:
            inputs_from_arrays(doc["inputs"], MATMUL, max_elements=4096)
        except InputError:
            pass


@FUZZ
@given(st.lists(st.one_of(JSON, st.fixed_dictionaries({
    "name": st.one_of(st.sampled_from(["a", "b"]), JSON), "datatype": st.one_of(st.sampled_from(
        ["FP32", "FP16", "INT64", "BOOL", "UINT8", "BYTES"]), JSON),
    "shape": st.one_of(st.lists(st.integers(-1, 5), max_size=3), JSON),
}, optional={"data": MATRIX, "parameters": st.one_of(JSON, st.fixed_dictionaries(
    {"binary_data_size": st.one_of(st.integers(-3, 64), JSON)}))})), max_size=3),
    st.dictionaries(st.sampled_from(["id", "parameters", "outputs", "other"]), JSON, max_size=2),
    st.binary(max_size=64))
def test_v2_infer_bodies_parse_or_raise_a_4xx_oip_error(inputs, extra, tail):
    head = json.dumps({"inputs": inputs, **extra}).encode()
    for body, header in ((head, None), (head + tail, str(len(head)))):
        try:
            req = parse_infer(body, header)
        except OipError as exc:
            assert 400 <= exc.status < 500
            continue
        for arr in req.inputs.values():
            assert isinstance(arr, np.ndarray)
            if arr.dtype.kind == "f" and header is None:
                assert np.all(np.isfinite(arr))


@FUZZ
@given(st.binary(max_size=200), st.one_of(st.none(), st.text(max_size=8)))
def test_random_bytes_as_an_http_body_are_an_oip_error(body, header):
    for decode in (parse_infer, decode_task_body):
        if decode is decode_task_body and header is None:
            continue
        try:
            decode(body, header)
        except OipError as exc:
            assert 400 <= exc.status < 500


@pytest.mark.parametrize("arr", [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([True, False]),
                                 np.array([[1, -2]], dtype=np.int64)])
def test_what_the_clients_encode_the_servers_decode(arr):
    """The generators above are anchored on valid bodies: the client encoders' own output decodes."""
    body, n = encode_task_body({"model": "m"}, {"a": arr})
    assert np.array_equal(decode_task_body(body, str(n))["inputs"]["a"], arr)
    body, n = encode_infer_request({"a": arr})
    assert np.array_equal(parse_infer(body, None if n is None else str(n)).inputs["a"], arr)


def test_an_unknown_update_kind_without_fields_is_a_gossip_error_not_an_index_error():
    """Found by the fuzzer above: [""] took the signature from an empty field list (IndexError
    escaped the frame decoder, which turns only WireErrors into dropped frames)."""
    from mesh.gossip_msgs import update_from_wire
    for raw in ([""], ["zz"], ["a"]):
        with pytest.raises(GossipWireError):
            update_from_wire(raw)
