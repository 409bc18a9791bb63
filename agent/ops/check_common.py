"""What both workloads of ``orbitmesh check`` use: the reference outputs, and bringing the fleet back.

``agent/ops/check.py`` (tasks) and ``agent/ops/check_jobs.py`` (jobs) both judge
outputs against onnxruntime run here, and both restart what a scenario left
down before they ask for the final states.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import trio

from agent.ops.chaos_cli import LocalNodeChaos, NodeChaosError
from agent.client import ApiError, Client
from agent.ops.history import NEMESIS, History
from agent.compute.models import session_options


def pct(xs: list[float], p: float) -> float:
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Reference:
    """The expected outputs of the zoo's digits samples, computed here with onnxruntime."""

    def __init__(self, models: Path):
        self.samples = json.loads((models / "digits.json").read_text())["samples"]
        sess = ort.InferenceSession(str(models / "digits.onnx"), sess_options=session_options(),
                                    providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        self.outputs = []
        for s in self.samples:
            values = sess.run(None, {"input": np.asarray(s["inputs"]["input"], dtype=np.float32)})
            self.outputs.append(dict(zip(names, values)))

    def differs(self, k: int, outputs: dict[str, Any] | None) -> str:
        if not outputs:
            return "no outputs"
        for name, want in self.outputs[k].items():
            got = outputs.get(name)
            if got is None:
                return f"output {name!r} missing"
            arr = np.asarray(got["data"], dtype=want.dtype)
            if arr.shape != want.shape or not np.allclose(arr, want, rtol=1e-5, atol=1e-6):
                return f"output {name!r} is {arr.tolist()}, onnxruntime here gives {want.tolist()}"
        return ""


async def bring_back(peers, nodes: LocalNodeChaos | None, hist: History, echo=print) -> list[str]:
    """Restart (or resume) every node left down or paused: its journal is on disk, so what it
    accepted must still end.  Then clear the link faults.  The nodes brought back, by name."""
    restarted: list[str] = []
    if nodes is None:
        return restarted
    for name in peers.names():
        op = None
        try:
            if nodes.status(name) != "running":
                action = "restart" if nodes.status(name) == "down" else "resume"
                op = hist.invoke(NEMESIS, action, {"node": name})
                what = await trio.to_thread.run_sync(nodes.run, action, name)
                hist.complete(op, "ok", {"node": name, "result": what})
                restarted.append(name)
        except NodeChaosError as exc:
            if op is not None:
                hist.complete(op, "fail", error=str(exc))
            echo(f"  could not bring {name} back: {exc}")
    for name in peers.names():          # the first that answers: any may have been killed
        try:
            async with Client(peers[name].api) as c:
                await c.clear_faults()
            break
        except ApiError:
            continue
    return restarted
