"""What a job asks for, checked in full before it is accepted (``POST /v1/jobs``).

Every input is checked against the model's signature and limits here, at the
home node, so a chunk never fails at a satellite for a reason that moving it
would not cure.  Inputs of one job must share their shapes: a chunk travels
as one tensor per input name, stacked on a new leading axis.

A stateful step names its state: ``state.carry`` maps an output to the input
it feeds at the next step (``{"h_out": "h"}``), and ``state.initial`` gives
the state before the first input (zeros by default, when the model's shape
for it is fixed).  Each shard carries its own state from ``initial``; a
single sequence (a time series) is a job with one shard.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.runtime.job_journal import arrays_from_wire, arrays_to_wire
from agent.compute.models import LoadedModel
from agent.compute.tensors import InputError, from_json, inputs_from_arrays, inputs_from_json, typed_arrays
from agent.zoo import LimitError, check_limits
from mesh.jobs import MAX_CHUNK, MAX_JOB_INPUTS, MAX_SHARDS
from mesh.voting import MAX_REPLICAS, MODES

DEFAULT_SHARDS = 8
DEFAULT_CHUNK = 8
DEFAULT_TIMEOUT_S = 600.0
MAX_TIMEOUT_S = 6 * 3600.0
KNOWN = {"model", "inputs", "shards", "chunk", "window", "target", "timeout_s", "state", "idempotency_key",
         "replicas", "agreement"}


class JobError(ValueError):
    """A job that cannot be accepted: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class JobSpec:
    model: str
    sha256: str
    inputs: dict[str, np.ndarray]          # every input name, stacked: leading axis = input number
    n: int
    carry: tuple[tuple[str, str], ...]     # (output, input) pairs of a stateful step
    initial: dict[str, np.ndarray]         # the state before the first input of each shard
    shards: int
    chunk: int
    window: int
    target: str
    timeout_s: float
    replicas: int = 1                      # each chunk on this many satellites, one per plane, voted
    agreement: str = "majority"

    @property
    def item_bytes(self) -> int:
        return sum(v[0].nbytes for v in self.inputs.values())

    def chunk_inputs(self, lo: int, hi: int) -> dict[str, np.ndarray]:
        return {k: v[lo:hi] for k, v in self.inputs.items()}

    def to_wire(self, with_inputs: bool = True) -> dict[str, Any]:
        """For the journal (msgpack); a job's copy sends its inputs apart, in slices."""
        return {"model": self.model, "sha256": self.sha256, "n": self.n,
                "inputs": arrays_to_wire(self.inputs) if with_inputs else {},
                "carry": [list(p) for p in self.carry], "initial": arrays_to_wire(self.initial),
                "shards": self.shards, "chunk": self.chunk, "window": self.window, "target": self.target,
                "timeout_s": self.timeout_s, "replicas": self.replicas, "agreement": self.agreement}

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> "JobSpec":
        return cls(raw["model"], raw["sha256"], arrays_from_wire(raw["inputs"]), raw["n"],
                   tuple((a, b) for a, b in raw["carry"]), arrays_from_wire(raw["initial"]), raw["shards"], raw["chunk"],
                   raw["window"], raw["target"], raw["timeout_s"], raw.get("replicas", 1),
                   raw.get("agreement", "majority"))


def _int(body: dict, key: str, default: int, lo: int, hi: int) -> int:
    v = body.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise JobError(400, f"{key!r} must be an integer in {lo}–{hi}")
    return v


def parse_job(body: Any, loaded: LoadedModel, sha256: str, *, max_elements: int, max_chunk_bytes: int,
              targets: tuple[str, ...]) -> JobSpec:
    """The job in ``body`` for model ``loaded``, or JobError naming the first thing wrong."""
    if not isinstance(body, dict):
        raise JobError(400, "a job is a JSON object with 'model' and 'inputs'")
    unknown = set(body) - KNOWN
    if unknown:
        raise JobError(400, f"unknown field(s) {sorted(unknown)}; a job has {sorted(KNOWN)}")
    carry, initial = _state(body.get("state"), loaded, max_elements)
    carried = {i for _, i in carry}
    specs = [s for s in loaded.inputs if s.name not in carried]
    raw = body.get("inputs")
    if typed_arrays(raw):       # binary tensors: each input name stacked, leading axis = input number
        sizes = {v.shape[0] if v.ndim else 0 for v in raw.values()}
        if len(sizes) != 1 or not next(iter(sizes)):
            raise JobError(400, "binary job inputs: every tensor stacks the inputs on its first axis, all "
                                f"of the same length ≥ 1; got {({k: list(v.shape) for k, v in raw.items()})}")
        raw = [{k: v[i] for k, v in raw.items()} for i in range(next(iter(sizes)))]
        read = inputs_from_arrays
    elif isinstance(raw, list) and raw:
        read = inputs_from_json
    else:
        raise JobError(400, "'inputs' must be a non-empty list, one object of input tensors per input")
    if len(raw) > MAX_JOB_INPUTS:
        raise JobError(413, f"a job has at most {MAX_JOB_INPUTS} inputs, got {len(raw)}")
    items = []
    for i, item in enumerate(raw):
        try:
            arrays = read(item, specs, max_elements)
            check_limits(loaded.name, arrays | initial, loaded.manifest)
        except (InputError, LimitError) as exc:
            raise JobError(400, f"input {i}: {exc}") from None
        if items:
            for k, v in arrays.items():
                if v.shape != items[0][k].shape:
                    raise JobError(400, f"input {i}: {k!r} has shape {list(v.shape)}, input 0 has "
                                        f"{list(items[0][k].shape)}; the inputs of one job share their shapes")
        items.append(arrays)
    stacked = {s.name: np.stack([it[s.name] for it in items]) for s in specs}
    item_bytes = sum(v[0].nbytes for v in stacked.values()) + sum(v.nbytes for v in initial.values())
    fits = max(1, max_chunk_bytes // max(1, item_bytes))
    if item_bytes > max_chunk_bytes:
        raise JobError(413, f"one input is {item_bytes} bytes; a chunk may carry at most {max_chunk_bytes}")
    target = body.get("target", "auto")
    if not isinstance(target, str) or target not in targets:
        raise JobError(400, f"'target' of a job is a placement policy: one of {', '.join(targets)}")
    timeout = body.get("timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) \
            or not 1 <= timeout <= MAX_TIMEOUT_S:
        raise JobError(400, f"'timeout_s' must be a number of seconds in 1–{MAX_TIMEOUT_S:g}")
    agreement = body.get("agreement", "majority")
    if not isinstance(agreement, str) or agreement not in MODES:
        raise JobError(400, f"'agreement' must be one of {', '.join(MODES)}")
    return JobSpec(loaded.name, sha256, stacked, len(items), carry, initial,
                   _int(body, "shards", DEFAULT_SHARDS if not carry else 1, 1, MAX_SHARDS),
                   min(_int(body, "chunk", DEFAULT_CHUNK, 1, MAX_CHUNK), fits), _int(body, "window", 2, 1, 8),
                   target, float(timeout), _int(body, "replicas", 1, 1, MAX_REPLICAS), agreement)


def _state(raw: Any, loaded: LoadedModel, max_elements: int) -> tuple[tuple[tuple[str, str], ...],
                                                                        dict[str, np.ndarray]]:
    if raw is None:
        return (), {}
    if not isinstance(raw, dict) or set(raw) - {"carry", "initial"} or not isinstance(raw.get("carry"), dict) \
            or not raw["carry"]:
        raise JobError(400, "'state' is {\"carry\": {OUTPUT: INPUT, ...}, \"initial\": {INPUT: tensor}} "
                            "(initial optional: zeros)")
    ins = {s.name: s for s in loaded.inputs}
    outs = {s.name: s for s in loaded.outputs}
    carry = []
    for out, inp in raw["carry"].items():
        if out not in outs or not isinstance(inp, str) or inp not in ins:
            raise JobError(400, f"state.carry: {out!r} → {inp!r} must map an output of {loaded.name} "
                                f"({sorted(outs)}) to one of its inputs ({sorted(ins)})")
        o, i = outs[out], ins[inp]
        if o.dtype != i.dtype or len(o.shape) != len(i.shape) or \
                any(a is not None and b is not None and a != b for a, b in zip(o.shape, i.shape)):
            raise JobError(400, f"state.carry: output {out!r} ({o.dtype} {list(o.shape)}) cannot feed input "
                                f"{inp!r} ({i.dtype} {list(i.shape)})")
        carry.append((out, inp))
    if len({i for _, i in carry}) != len(carry):
        raise JobError(400, "state.carry: two outputs feed the same input")
    given = raw.get("initial") or {}
    if not isinstance(given, dict) or set(given) - {i for _, i in carry}:
        raise JobError(400, "state.initial: an object giving a tensor for carried inputs only")
    initial = {}
    for _, inp in carry:
        spec = ins[inp]
        if inp in given:
            try:
                initial[inp] = from_json(given[inp], spec, max_elements)
            except InputError as exc:
                raise JobError(400, f"state.initial: {exc}") from None
        elif any(d is None for d in spec.shape):
            raise JobError(400, f"state.initial: input {inp!r} has shape {list(spec.shape)} with free "
                                "dimensions: give its initial value")
        else:
            initial[inp] = np.zeros(spec.shape, dtype=spec.dtype)
    return tuple(carry), initial
