"""One job chunk at its executor: many inputs through one model, in order, state carried.

A chunk arrives as one task whose ``scan`` (``mesh.wire.Scan``) says how many
steps it holds: every input is stacked on a new leading axis, except carried
inputs, which hold the state before the first step.  Step t's carried outputs
become step t+1's carried inputs, so a recurrent cell runs over a time series
on the satellite and only the chunk's boundary state crosses the mesh.  With
nothing carried and a batchable model (its manifest opts in), the chunk is one
onnxruntime call over the concatenated batch; otherwise one call per step
through the executor, each under what is left of the task's deadline.
"""

from __future__ import annotations

import time
from typing import Awaitable, Callable

import numpy as np

from agent.compute.executor import Execution, batchable
from agent.compute.models import LoadedModel
from agent.compute.tensors import InputError, check_shape
from agent.zoo import check_limits
from mesh.wire import Scan, Tensor

Run = Callable[[dict[str, np.ndarray], "float | None"], Awaitable[Execution]]


def scan_inputs(model: LoadedModel, inputs: dict[str, Tensor], scan: Scan) -> tuple[dict[str, np.ndarray],
                                                                                     dict[str, np.ndarray]]:
    """(stacked inputs, carried state), every one checked against the model; InputError says what is wrong."""
    in_specs = {s.name: s for s in model.inputs}
    out_names = {s.name for s in model.outputs}
    carried_in = {i for _, i in scan.carry}
    for out, inp in scan.carry:
        if out not in out_names:
            raise InputError(f"carry: {out!r} is not an output of {model.name} ({sorted(out_names)})")
        if inp not in in_specs:
            raise InputError(f"carry: {inp!r} is not an input of {model.name} ({sorted(in_specs)})")
    stacked, state = {}, {}
    for spec in model.inputs:
        if spec.name not in inputs:
            raise InputError(f"input {spec.name!r} missing")
        arr = inputs[spec.name].to_array()
        if arr.dtype.name != spec.dtype:
            raise InputError(f"input {spec.name!r}: dtype {arr.dtype.name}, model expects {spec.dtype}")
        if spec.name in carried_in:
            check_shape(arr, spec)
            state[spec.name] = arr
            continue
        if arr.ndim == 0 or arr.shape[0] != scan.steps:
            raise InputError(f"input {spec.name!r}: a chunk of {scan.steps} steps needs a leading axis of "
                             f"{scan.steps}, got shape {list(arr.shape)}")
        check_shape(arr[0], spec)
        stacked[spec.name] = arr
    for t in range(scan.steps):
        check_limits(model.name, {k: v[t] for k, v in stacked.items()} | state, model.manifest)
    return stacked, state


async def run_scan(model: LoadedModel, stacked: dict[str, np.ndarray], state: dict[str, np.ndarray], scan: Scan,
                   run: Run, deadline: float | None) -> Execution:
    """The chunk's outputs stacked per step, and the onnxruntime time it took."""
    if not scan.carry and batchable(model) and stacked:
        whole = await _as_one_batch(model, stacked, scan, run, deadline)
        if whole is not None:
            return whole
    steps: list[dict[str, np.ndarray]] = []
    compute = 0.0
    carry = dict(state)
    for t in range(scan.steps):
        left = None if not deadline else deadline - time.time()
        result = await run({k: v[t] for k, v in stacked.items()} | carry, left)
        compute += result.compute_s
        steps.append(result.outputs)
        carry = {inp: np.asarray(result.outputs[out]) for out, inp in scan.carry}
    outputs = {k: np.stack([np.asarray(s[k]) for s in steps]) for k in steps[0]}
    return Execution(outputs, compute, scan.steps)


async def _as_one_batch(model: LoadedModel, stacked: dict[str, np.ndarray], scan: Scan, run: Run,
                        deadline: float | None) -> Execution | None:
    """One call over every step's rows; None when an output's rows do not split back per step."""
    rows = {k: v.shape[1] for k, v in stacked.items()}
    if len(set(rows.values())) != 1:
        return None
    per_step = next(iter(rows.values()))
    flat = {k: v.reshape((scan.steps * per_step,) + v.shape[2:]) for k, v in stacked.items()}
    result = await run(flat, None if not deadline else deadline - time.time())
    outputs = {}
    for k, v in result.outputs.items():
        v = np.asarray(v)
        if v.ndim == 0 or v.shape[0] != scan.steps * per_step:
            return None
        outputs[k] = v.reshape((scan.steps, per_step) + v.shape[1:])
    return Execution(outputs, result.compute_s, scan.steps)
