"""The messages of the inter-satellite links and their msgpack encoding.

Messages are small frozen dataclasses; ``encode_message`` / ``decode_message``
turn one into msgpack bytes and back, checking every field of what arrives
(a :class:`WireError` names what was wrong).  The frames that carry them over a
link (length, CRC, sent time) are :mod:`mesh.frames`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Union

import msgpack
import numpy as np

from mesh.gossip_msgs import GossipWireError, Message as GossipMessage, message_from_wire, message_to_wire

ISL_PROTOCOL = "/orbitmesh/isl/1.0.0"

DTYPES = frozenset({"float16", "float32", "float64", "int8", "uint8", "int16", "int32", "int64", "bool"})
MAX_TENSOR_DIMS = 8


class WireError(ValueError):
    """A frame or message that does not follow the wire format."""


class ChecksumError(WireError):
    """A frame whose body does not match its CRC32."""


@dataclass(frozen=True)
class Tensor:
    """An n-d array as it travels: dtype name, shape, raw little-endian bytes."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise WireError(f"unsupported dtype {self.dtype!r}; supported: {', '.join(sorted(DTYPES))}")
        if len(self.shape) > MAX_TENSOR_DIMS or any((not isinstance(d, int)) or d < 0 for d in self.shape):
            raise WireError(f"bad tensor shape {self.shape!r}")
        need = math.prod(self.shape) * np.dtype(self.dtype).itemsize
        if len(self.data) != need:
            raise WireError(f"tensor of shape {self.shape} and dtype {self.dtype} needs {need} bytes, got {len(self.data)}")

    @classmethod
    def from_array(cls, array: np.ndarray) -> "Tensor":
        arr = np.ascontiguousarray(array)
        dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        return cls(str(np.dtype(dt).name), tuple(int(d) for d in arr.shape), arr.astype(dt, copy=False).tobytes())

    def to_array(self) -> np.ndarray:
        return np.frombuffer(self.data, dtype=np.dtype(self.dtype).newbyteorder("<")).reshape(self.shape)

    @property
    def nbytes(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class Hop:
    """One stop of a routed message: where, when, what happened, and why."""

    node: str
    arrived: float            # wall time (unix s) the message was released to this node
    departed: float           # wall time it left (or finished here)
    event: str                # entry | forward | execute | deliver
    link_expected_s: float = 0.0  # physics delay of the link it arrived on (0 at entry)
    detail: str = ""


@dataclass(frozen=True)
class Hello:
    """First frame on a link in each direction: who is on the other end."""

    node: str


MAX_SCAN_STEPS = 4096
MAX_CARRY = 8


@dataclass(frozen=True)
class Scan:
    """Run the model ``steps`` times over inputs stacked on a new leading axis (one job chunk).

    ``carry`` pairs (output, input): step t's output feeds step t+1's input, so a
    recurrent step keeps its state; a carried input arrives unstacked, as the
    state before the first step.  Outputs come back stacked the same way.
    """

    steps: int
    carry: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= MAX_SCAN_STEPS:
            raise WireError(f"scan steps must be in 1–{MAX_SCAN_STEPS}")
        if len(self.carry) > MAX_CARRY:
            raise WireError(f"at most {MAX_CARRY} carried states")


@dataclass(frozen=True)
class TaskRequest:
    task_id: str
    entry: str                # node that accepted it and awaits the result
    executor: str             # node that runs it
    model: str
    inputs: dict[str, Tensor]
    ttl: int
    trace: tuple[Hop, ...] = ()
    attempt: int = 0          # end-to-end retry number (same task id): hop ids differ per attempt
    deadline: float = 0.0     # wall time after which nobody waits for it (store-and-forward expiry)
    model_sha256: str = ""    # the entry's version of the model: an executor without it fetches it
    scan: Scan | None = None  # a job chunk: many inputs, run in order at the executor

    @property
    def hop_id(self) -> str:
        """Same at every hop of one attempt, so each node's dedup window knows a repeat."""
        return f"q:{self.task_id}:{self.attempt}"


@dataclass(frozen=True)
class TaskResult:
    task_id: str
    entry: str
    executor: str
    ok: bool
    outputs: dict[str, Tensor] = field(default_factory=dict)
    error: str = ""
    ttl: int = 64
    trace: tuple[Hop, ...] = ()
    compute_s: float = 0.0    # onnxruntime time at the executor
    attempt: int = 0          # the request attempt this answers
    deadline: float = 0.0

    @property
    def hop_id(self) -> str:
        return f"r:{self.task_id}:{self.attempt}"


@dataclass(frozen=True)
class ModelFetch:
    """Ask ``holder`` for bytes [offset, offset + length) of a model (routed)."""

    fetch_id: str
    requester: str
    holder: str
    model: str
    sha256: str
    offset: int
    length: int
    ttl: int = 64
    deadline: float = 0.0
    attempt: int = 0
    trace: tuple[Hop, ...] = ()

    @property
    def hop_id(self) -> str:
        return f"mf:{self.fetch_id}:{self.offset}:{self.attempt}"


@dataclass(frozen=True)
class ModelChunk:
    """A piece of a model on its way to ``requester`` (routed); ``error`` if the holder cannot serve it."""

    fetch_id: str
    requester: str
    holder: str
    sha256: str
    offset: int
    total: int
    data: bytes
    ttl: int = 64
    deadline: float = 0.0
    attempt: int = 0
    error: str = ""
    trace: tuple[Hop, ...] = ()

    @property
    def hop_id(self) -> str:
        return f"mc:{self.fetch_id}:{self.offset}:{self.attempt}"


@dataclass(frozen=True)
class TaskQuery:
    """Ask a task's entry node for its record (routed); the entry answers with a TaskStatus."""

    query_id: str
    asker: str
    entry: str
    task_id: str
    wait_s: float = 0.0       # the entry may hold the answer this long for a final state
    ttl: int = 64
    deadline: float = 0.0
    attempt: int = 0
    trace: tuple[Hop, ...] = ()

    @property
    def hop_id(self) -> str:
        return f"tq:{self.query_id}:{self.attempt}"


@dataclass(frozen=True)
class TaskStatus:
    """A task's record as its entry node has it (JSON bytes), or why it has none."""

    query_id: str
    asker: str
    entry: str
    task_id: str
    record: bytes = b""
    error: str = ""
    ttl: int = 64
    deadline: float = 0.0
    attempt: int = 0
    trace: tuple[Hop, ...] = ()

    @property
    def hop_id(self) -> str:
        return f"ts:{self.query_id}:{self.attempt}"


@dataclass(frozen=True)
class JobCopy:
    """One record of a job's copy between its home and the neighbour that keeps it (routed).

    ``op`` says what ``body`` (msgpack) holds: the job (``accept``), a slice of
    its inputs (``inputs``), a checkpoint (``chunk``), a shard's move (``move``),
    its end (``end``), ``forget`` (the home chose another keeper), ``ack`` (the
    keeper has stored a record) or ``taken`` (the keeper took the job over).
    """

    copy_id: str
    sender: str
    receiver: str
    job_id: str
    op: str
    body: bytes = b""
    ttl: int = 64
    deadline: float = 0.0
    attempt: int = 0
    trace: tuple[Hop, ...] = ()

    @property
    def hop_id(self) -> str:
        return f"jc:{self.copy_id}:{self.attempt}"


COPY_OPS = ("accept", "inputs", "chunk", "move", "end", "forget", "ack", "taken")


@dataclass(frozen=True)
class Control:
    """Membership, gossip and hop acknowledgements: one ``mesh.gossip_msgs`` message."""

    msg: GossipMessage


@dataclass(frozen=True)
class ChaosUpdate:
    """Fault-table entries (mesh.chaos.Entry.to_wire), flooded hop by hop."""

    entries: tuple[list, ...]


@dataclass(frozen=True)
class ClockUpdate:
    """Fleet-clock records (mesh.timeline.ClockRecord.to_wire), flooded hop by hop."""

    records: tuple[list, ...]


MAX_CLOCK_RECORDS = 32


@dataclass(frozen=True)
class Probe:
    """Measurement traffic: a numbered frame padded to a chosen size."""

    seq: int
    padding: bytes = b""


Message = Union[Hello, TaskRequest, TaskResult, ChaosUpdate, ClockUpdate, Probe, Control, ModelFetch, ModelChunk,
                TaskQuery, TaskStatus, JobCopy]
ROUTED = (TaskRequest, TaskResult, ModelFetch, ModelChunk, TaskQuery, TaskStatus, JobCopy)


# --- encoding -----------------------------------------------------------------

def _enc_tensors(ts: dict[str, Tensor]) -> dict[str, list]:
    return {k: [t.dtype, list(t.shape), t.data] for k, t in ts.items()}


def _enc_trace(trace: tuple[Hop, ...]) -> list:
    return [[h.node, h.arrived, h.departed, h.event, h.link_expected_s, h.detail] for h in trace]


def _encode_msg(msg: Message) -> list:
    if isinstance(msg, Hello):
        return ["hello", msg.node]
    if isinstance(msg, TaskRequest):
        return ["task", msg.task_id, msg.entry, msg.executor, msg.model, _enc_tensors(msg.inputs),
                msg.ttl, _enc_trace(msg.trace), msg.attempt, msg.deadline, msg.model_sha256] + \
            ([[msg.scan.steps, [list(p) for p in msg.scan.carry]]] if msg.scan else [])
    if isinstance(msg, TaskResult):
        return ["result", msg.task_id, msg.entry, msg.executor, msg.ok, _enc_tensors(msg.outputs),
                msg.error, msg.ttl, _enc_trace(msg.trace), msg.compute_s, msg.attempt, msg.deadline]
    if isinstance(msg, Control):
        return ["ctl", message_to_wire(msg.msg)]
    if isinstance(msg, TaskQuery):
        return ["tquery", msg.query_id, msg.asker, msg.entry, msg.task_id, msg.wait_s, msg.ttl, msg.deadline,
                msg.attempt]
    if isinstance(msg, TaskStatus):
        return ["tstatus", msg.query_id, msg.asker, msg.entry, msg.task_id, msg.record, msg.error, msg.ttl,
                msg.deadline, msg.attempt]
    if isinstance(msg, ModelFetch):
        return ["mfetch", msg.fetch_id, msg.requester, msg.holder, msg.model, msg.sha256, msg.offset, msg.length,
                msg.ttl, msg.deadline, msg.attempt]
    if isinstance(msg, ModelChunk):
        return ["mchunk", msg.fetch_id, msg.requester, msg.holder, msg.sha256, msg.offset, msg.total, msg.data,
                msg.ttl, msg.deadline, msg.attempt, msg.error]
    if isinstance(msg, JobCopy):
        return ["jcopy", msg.copy_id, msg.sender, msg.receiver, msg.job_id, msg.op, msg.body, msg.ttl, msg.deadline,
                msg.attempt]
    if isinstance(msg, ChaosUpdate):
        return ["chaos", list(msg.entries)]
    if isinstance(msg, ClockUpdate):
        return ["clock", list(msg.records)]
    if isinstance(msg, Probe):
        return ["probe", msg.seq, msg.padding]
    raise TypeError(f"not a wire message: {type(msg).__name__}")


def _unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise WireError(f"not msgpack: {type(exc).__name__}") from None


def decode_message(data: bytes) -> Message:
    """The inverse of ``encode_message`` (journals store messages this way)."""
    return _decode_msg(_unpack(data))


def encode_message(msg: Message) -> bytes:
    """A message's msgpack bytes, encoded once however many copies are sent."""
    return msgpack.packb(_encode_msg(msg), use_bin_type=True)


# --- decoding -----------------------------------------------------------------

def _expect(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise WireError(f"{what}: expected a number, got a boolean")
    if not isinstance(value, kind):
        raise WireError(f"{what}: expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    return value


def _dec_tensors(raw: Any, what: str) -> dict[str, Tensor]:
    _expect(raw, dict, what)
    out = {}
    for name, t in raw.items():
        _expect(name, str, f"{what} name")
        _expect(t, list, f"{what}[{name}]")
        if len(t) != 3:
            raise WireError(f"{what}[{name}]: expected [dtype, shape, data]")
        dtype, shape, data = t
        out[name] = Tensor(_expect(dtype, str, "dtype"), tuple(_expect(shape, list, "shape")),
                           _expect(data, bytes, "data"))
    return out


def _dec_trace(raw: Any) -> tuple[Hop, ...]:
    _expect(raw, list, "trace")
    hops = []
    for h in raw:
        if not isinstance(h, list) or len(h) != 6:
            raise WireError("trace hop: expected 6 fields")
        hops.append(Hop(_expect(h[0], str, "hop.node"), float(_expect(h[1], (int, float), "hop.arrived")),
                        float(_expect(h[2], (int, float), "hop.departed")), _expect(h[3], str, "hop.event"),
                        float(_expect(h[4], (int, float), "hop.link")), _expect(h[5], str, "hop.detail")))
    return tuple(hops)


def _attempt(v: Any) -> int:
    if not 0 <= _expect(v, int, "attempt") < 1 << 31:
        raise WireError("attempt out of range")
    return v


def _deadline(v: Any) -> float:
    d = float(_expect(v, (int, float), "deadline"))
    if not math.isfinite(d) or d < 0:
        raise WireError("deadline must be finite and ≥ 0")
    return d


def _count(v: Any, what: str) -> int:
    if not 0 <= _expect(v, int, what) < 1 << 40:
        raise WireError(f"{what} out of range")
    return v


def _scan(v: Any) -> Scan:
    _expect(v, list, "scan")
    if len(v) != 2:
        raise WireError("scan: expected [steps, carry]")
    carry = []
    for pair in _expect(v[1], list, "scan.carry"):
        if not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(x, str) for x in pair):
            raise WireError("scan.carry: expected [output, input] name pairs")
        carry.append((pair[0], pair[1]))
    return Scan(_expect(v[0], int, "scan.steps"), tuple(carry))


def _sha(v: Any, allow_empty: bool = False) -> str:
    _expect(v, str, "sha256")
    if (allow_empty and v == "") or (len(v) == 64 and all(c in "0123456789abcdef" for c in v)):
        return v
    raise WireError("sha256 must be 64 lowercase hex digits")


def _decode_msg(raw: Any) -> Message:
    _expect(raw, list, "message")
    if not raw:
        raise WireError("empty message")
    kind, args = raw[0], raw[1:]
    try:
        if kind == "hello" and len(args) == 1:
            return Hello(_expect(args[0], str, "hello.node"))
        if kind == "task" and len(args) in (10, 11):
            tid, entry, ex, model, inputs, ttl, trace, attempt, deadline, sha = args[:10]
            return TaskRequest(_expect(tid, str, "task_id"), _expect(entry, str, "entry"), _expect(ex, str, "executor"),
                               _expect(model, str, "model"), _dec_tensors(inputs, "inputs"),
                               _expect(ttl, int, "ttl"), _dec_trace(trace), _attempt(attempt), _deadline(deadline),
                               _sha(sha, allow_empty=True), _scan(args[10]) if len(args) == 11 else None)
        if kind == "tquery" and len(args) == 8:
            qid, asker, entry, tid, wait, ttl, deadline, attempt = args
            w = float(_expect(wait, (int, float), "wait_s"))
            if not 0 <= w <= 60:
                raise WireError("wait_s must be in [0, 60]")
            return TaskQuery(_expect(qid, str, "query_id"), _expect(asker, str, "asker"), _expect(entry, str, "entry"),
                             _expect(tid, str, "task_id"), w, _expect(ttl, int, "ttl"), _deadline(deadline),
                             _attempt(attempt))
        if kind == "tstatus" and len(args) == 9:
            qid, asker, entry, tid, record, err, ttl, deadline, attempt = args
            return TaskStatus(_expect(qid, str, "query_id"), _expect(asker, str, "asker"),
                              _expect(entry, str, "entry"), _expect(tid, str, "task_id"),
                              _expect(record, bytes, "record"), _expect(err, str, "error"), _expect(ttl, int, "ttl"),
                              _deadline(deadline), _attempt(attempt))
        if kind == "jcopy" and len(args) == 9:
            cid, sender, receiver, jid, op, body, ttl, deadline, attempt = args
            if op not in COPY_OPS:
                raise WireError(f"op {op!r} is not one of {', '.join(COPY_OPS)}")
            return JobCopy(_expect(cid, str, "copy_id"), _expect(sender, str, "sender"),
                           _expect(receiver, str, "receiver"), _expect(jid, str, "job_id"), op,
                           _expect(body, bytes, "body"), _expect(ttl, int, "ttl"), _deadline(deadline),
                           _attempt(attempt))
        if kind == "mfetch" and len(args) == 10:
            fid, req, holder, model, sha, offset, length, ttl, deadline, attempt = args
            return ModelFetch(_expect(fid, str, "fetch_id"), _expect(req, str, "requester"),
                              _expect(holder, str, "holder"), _expect(model, str, "model"), _sha(sha),
                              _count(offset, "offset"), _count(length, "length"), _expect(ttl, int, "ttl"),
                              _deadline(deadline), _attempt(attempt))
        if kind == "mchunk" and len(args) == 11:
            fid, req, holder, sha, offset, total, data, ttl, deadline, attempt, err = args
            return ModelChunk(_expect(fid, str, "fetch_id"), _expect(req, str, "requester"),
                              _expect(holder, str, "holder"), _sha(sha), _count(offset, "offset"),
                              _count(total, "total"), _expect(data, bytes, "data"), _expect(ttl, int, "ttl"),
                              _deadline(deadline), _attempt(attempt), _expect(err, str, "error"))
        if kind == "result" and len(args) == 11:
            tid, entry, ex, ok, outputs, err, ttl, trace, compute, attempt, deadline = args
            return TaskResult(_expect(tid, str, "task_id"), _expect(entry, str, "entry"), _expect(ex, str, "executor"),
                              _expect(ok, bool, "ok"), _dec_tensors(outputs, "outputs"), _expect(err, str, "error"),
                              _expect(ttl, int, "ttl"), _dec_trace(trace),
                              float(_expect(compute, (int, float), "compute_s")), _attempt(attempt),
                              _deadline(deadline))
        if kind == "ctl" and len(args) == 1:
            try:
                return Control(message_from_wire(args[0]))
            except GossipWireError as exc:
                raise WireError(f"control message: {exc}") from None
        if kind == "chaos" and len(args) == 1:
            entries = _expect(args[0], list, "chaos entries")
            if len(entries) > 4096:
                raise WireError("chaos: too many entries")
            return ChaosUpdate(tuple(_expect(e, list, "chaos entry") for e in entries))
        if kind == "clock" and len(args) == 1:
            records = _expect(args[0], list, "clock records")
            if len(records) > MAX_CLOCK_RECORDS:
                raise WireError(f"clock: more than {MAX_CLOCK_RECORDS} records")
            return ClockUpdate(tuple(_expect(r, list, "clock record") for r in records))
        if kind == "probe" and len(args) == 2:
            return Probe(_expect(args[0], int, "probe.seq"), _expect(args[1], bytes, "probe.padding"))
    except (TypeError, ValueError) as exc:
        if isinstance(exc, WireError):
            raise
        raise WireError(f"{kind} message: {exc}") from None
    raise WireError(f"unknown message kind {kind!r} with {len(args)} fields")
