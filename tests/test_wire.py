"""The link wire format: round trips, and every kind of bad frame."""

import struct
from dataclasses import replace

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.gossip_msgs import Alive, HopAck, Ping
from mesh.frames import FrameDecoder, LinkFrame, corrupt_frame, decode_body, encode_frame
from mesh.wire import (JobCopy, ChaosUpdate, ClockUpdate, Control, ModelChunk, ModelFetch, TaskQuery, TaskStatus,
                       ChecksumError, Hello, Hop, Probe, TaskRequest, TaskResult, Tensor, WireError)

LIMIT = 1 << 20


def request(n=64):
    return TaskRequest("t1", "sat-0", "sat-5", "digits",
                       {"input": Tensor.from_array(np.arange(n, dtype=np.float32).reshape(1, n))}, 64,
                       (Hop("sat-0", 1.0, 1.001, "entry"),))


def test_round_trip_all_messages():
    msgs = [Hello("sat-3"), request(),
            TaskResult("t1", "sat-0", "sat-5", True, {"label": Tensor.from_array(np.array([3]))}, "", 60,
                       (Hop("sat-5", 2.0, 2.1, "execute", 0.03, "compute 0.1 ms"),), 0.0001),
            TaskResult("t2", "sat-0", "sat-5", False, error="boom", attempt=3, deadline=1e9),
            replace(request(), attempt=2, deadline=1.7e9, model_sha256="ab" * 32),
            ModelFetch("f1", "sat-5", "sat-0", "mine", "cd" * 32, 1 << 20, 1 << 20, 60, 1.7e9, 1),
            ModelChunk("f1", "sat-5", "sat-0", "cd" * 32, 0, 3, b"abc", 60, 1.7e9, 0),
            ModelChunk("f1", "sat-5", "sat-0", "cd" * 32, 0, 0, b"", error="unknown model"),
            TaskQuery("q1", "sat-7", "sat-0", "sat-0-abc", 2.5, 60, 1.7e9, 1),
            TaskStatus("q1", "sat-7", "sat-0", "sat-0-abc", b'{"status": "succeeded"}', "", 60, 1.7e9, 1),
            JobCopy("c1", "sat-0", "sat-1", "sat-0-job-ab", "chunk", b"\x80", 60, 1.7e9, 2),
            Control(Ping(5, 1, 2, (1, 3, 2), (Alive(1, 4),))), Control(HopAck(("q:t1:0", "r:t1:0"))),
            ChaosUpdate(([ "abc", 1.0, "sat-1", False, "{}", 1.0, None],)), Probe(7, b"x" * 100),
            ClockUpdate(([2000.0, "sat-1", 2001.0, 50.0, 10.0, True],))]
    dec = FrameDecoder(LIMIT)
    for m in msgs:
        out = dec.feed(encode_frame(LinkFrame(123.5, m, 0.25), LIMIT))
        assert len(out) == 1 and out[0] == LinkFrame(123.5, m, 0.25)


def test_a_job_copy_with_an_unknown_op_is_refused():
    body = msgpack.packb([1, 1.0, 0.0, ["jcopy", "c1", "sat-0", "sat-1", "j", "delete-all", b"", 60, 0.0, 0]],
                         use_bin_type=True)
    with pytest.raises(WireError, match="delete-all"):
        decode_body(body)


def test_hop_ids_name_the_attempt_and_direction():
    req = replace(request(), attempt=2)
    res = TaskResult("t1", "sat-0", "sat-5", True, attempt=2)
    assert req.hop_id == "q:t1:2" and res.hop_id == "r:t1:2" and req.hop_id != replace(req, attempt=3).hop_id


def test_tensor_round_trip_preserves_values():
    arr = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float64)
    assert np.array_equal(Tensor.from_array(arr).to_array(), arr)
    big_endian = arr.astype(">f8")
    assert np.array_equal(Tensor.from_array(big_endian).to_array(), arr)


def test_split_anywhere_yields_same_frames():
    data = b"".join(encode_frame(LinkFrame(float(i), request()), LIMIT) for i in range(3))
    for cut in range(0, len(data), 37):
        dec = FrameDecoder(LIMIT)
        out = dec.feed(data[:cut]) + dec.feed(data[cut:])
        assert [f.sent_at for f in out] == [0.0, 1.0, 2.0]


def test_oversized_frame_is_skipped_and_stream_continues():
    dec = FrameDecoder(1000)
    good = encode_frame(LinkFrame(1.0, Hello("a")), 1000)
    huge = struct.pack(">II", 5000, 0) + b"x" * 5000
    out = dec.feed(good + huge[:2000]) + dec.feed(huge[2000:] + good)
    assert [type(x) for x in out] == [LinkFrame, WireError, LinkFrame]
    assert "exceeds" in str(out[1])
    assert dec.buffered == 0


def test_encoder_refuses_oversized_frame():
    with pytest.raises(WireError, match="exceeds"):
        encode_frame(LinkFrame(1.0, request(10_000)), 1000)


@pytest.mark.parametrize("body, why", [
    (b"\xc1", "not msgpack"),
    (msgpack.packb([2, 1.0, 0.0, ["hello", "a"]]), "version"),
    (msgpack.packb([1, "x", 0.0, ["hello", "a"]]), "sent_at"),
    (msgpack.packb([1, 1.0, -1.0, ["hello", "a"]]), "extra_s"),
    (msgpack.packb([1, 1.0, 0.0, ["nope", "a"]]), "unknown message"),
    (msgpack.packb([1, 1.0, 0.0, ["hello", 5]]), "hello.node"),
    (msgpack.packb([1, 1.0, 0.0, ["task", "t", "a", "b", "m", {"x": ["float32", [2], b"\0" * 4]}, 5, [], 0, 0.0, ""]]), "needs 8 bytes"),
    (msgpack.packb([1, 1.0, 0.0, ["task", "t", "a", "b", "m", {"x": ["complex", [1], b"\0" * 8]}, 5, [], 0, 0.0, ""]]), "dtype"),
    (msgpack.packb([1, 1.0, 0.0, ["task", "t", "a", "b", "m", {}, True, [], 0, 0.0, ""]]), "ttl"),
    (msgpack.packb([1, 1.0, 0.0, ["result", "t", "a", "b", "yes", {}, "", 5, [], 0.0, 0, 0.0]]), "ok"),
    (msgpack.packb([1, 1.0, 0.0, ["task", "t", "a", "b", "m", {}, 5, [["n", 1, 2, "e"]], 0, 0.0, ""]]), "6 fields"),
    (msgpack.packb([1, 1.0, 0.0, ["task", "t", "a", "b", "m", {}, 5, [], -1, 0.0, ""]]), "attempt"),
    (msgpack.packb([1, 1.0, 0.0, ["task", "t", "a", "b", "m", {}, 5, [], 0, float("nan"), ""]]), "deadline"),
    (msgpack.packb([1, 1.0, 0.0, ["task", "t", "a", "b", "m", {}, 5, [], 0, 0.0, "abc"]]), "sha256"),
    (msgpack.packb([1, 1.0, 0.0, ["tquery", "q", "a", "b", "t", 99.0, 5, 0.0, 0]]), "wait_s"),
    (msgpack.packb([1, 1.0, 0.0, ["mfetch", "f", "a", "b", "m", "0" * 64, -1, 10, 5, 0.0, 0]]), "offset"),
    (msgpack.packb([1, 1.0, 0.0, ["mchunk", "f", "a", "b", "0" * 64, 0, 3, "not bytes", 5, 0.0, 0, ""]]), "data"),
    (msgpack.packb([1, 1.0, 0.0, ["ctl", ["ping", 1]]]), "control message"),
    (msgpack.packb([1, 1.0, 0.0, ["ctl", ["hopack", [""]]]]), "hopack"),
    (msgpack.packb([1, 1.0, 0.0, ["probe", "x", b""]]), "probe.seq"),
])
def test_malformed_bodies_give_clear_errors(body, why):
    with pytest.raises(WireError, match=why):
        decode_body(body)


def test_corrupted_frame_fails_its_checksum_and_the_next_one_survives():
    good = encode_frame(LinkFrame(2.0, request()), LIMIT)
    bad = corrupt_frame(good, 17)
    out = FrameDecoder(LIMIT).feed(bad + good)
    assert isinstance(out[0], ChecksumError) and out[1] == LinkFrame(2.0, request())


def test_malformed_frame_does_not_lose_the_next_one():
    import zlib
    bad = struct.pack(">II", 3, zlib.crc32(b"\xc1\xc1\xc1")) + b"\xc1\xc1\xc1"
    good = encode_frame(LinkFrame(2.0, Hello("b")), LIMIT)
    out = FrameDecoder(LIMIT).feed(bad + good)
    assert isinstance(out[0], WireError) and out[1] == LinkFrame(2.0, Hello("b"))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_decoder_never_raises(blob):
    dec = FrameDecoder(256)
    for item in dec.feed(blob):
        assert isinstance(item, (LinkFrame, WireError))
    assert dec.buffered <= 256 + 4
