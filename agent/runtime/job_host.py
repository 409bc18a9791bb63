"""What a job's home asks of its node: placement, chunk tasks, how its satellites are doing, and a keeper.

Kept apart from ``agent/runtime/node.py`` so the job machinery (``agent/runtime/jobs.py``)
depends on a small interface, not on the node's internals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from agent import entropy, wallclock
from agent.runtime.job_spec import JobError, JobSpec, parse_job
from agent.compute.models import bad_name
from agent.runtime.tasks import SubmitError, TaskRecord
from mesh.contacts import ContactPlan, contact_plan
from mesh.placement import TARGETS
from mesh.wire import JobCopy, Scan

if TYPE_CHECKING:
    from agent.runtime.jobs import Job

DEFAULT_COMPUTE_S = 0.05      # a model never run anywhere yet: what a chunk's timeout assumes per input
FLEET_VIEW_S = 10.0           # after a start, the node itself is not a candidate for this long
COPY_DEADLINE_S = 30.0        # a job copy's record may wait (store-and-forward) this long on its way
DOWNLINK_PLAN_S = (3600.0, 6 * 3600.0)  # a station's pass plan looks 1 h ahead (0.1 s for starlink-s1), then 6 h
DOWNLINK_STEP_S = 20.0        # orbital s between samples (edges refined to 1 s): LEO passes last minutes
DOWNLINK_PASS_S = 20.0        # wall s a pass must still last to bring a result down


class NodeJobHost:
    def __init__(self, node: Any):
        self.node = node        # agent.runtime.node.Node (not imported: it imports this module)
        self._plan: ContactPlan | None = None     # a station's own passes, for its chunks' deadlines

    @property
    def name(self) -> str:
        return self.node.me.name

    def place_shard(self, spec: JobSpec, exclude: frozenset[str]) -> tuple[str, str]:
        n = self.node
        loaded = n.store.get(n.store.key(spec.model, spec.sha256))
        sample = {k: v[:1].reshape(v.shape[1:]) for k, v in spec.inputs.items()} | spec.initial
        try:
            chosen, why = n._place(spec.model, spec.target, sample, loaded, spec.timeout_s,
                                   exclude=exclude | self._shunned())
        except SubmitError as exc:
            raise JobError(exc.status, str(exc)) from None
        return chosen[0], why

    def _shunned(self) -> frozenset[str]:
        """Never a shard's satellite: stations (a job's shards are orbital compute; its home may be a
        station), suspects (a node killed a moment ago is suspect before it is dead), and the node
        itself just after a start (it alone looks free, as it has heard of nobody yet)."""
        n = self.node
        out = {e.name for i, e in n.peers.by_index.items() if n.topology.names.is_ground(i) or i in n.membership.suspects()}
        if wallclock.now() - n.started < FLEET_VIEW_S:
            out.add(self.name)
        return frozenset(out)

    def send_chunk(self, spec: JobSpec, task_id: str, executor: str, inputs: dict[str, np.ndarray], scan: Scan,
                   timeout_s: float) -> TaskRecord:
        n = self.node
        if len(n._requests) >= n.config.limits.max_pending_tasks:
            raise JobError(429, f"{len(n._requests)} tasks pending at {self.name}")
        loaded = n.store.get(n.store.key(spec.model, spec.sha256))
        try:
            if spec.replicas > 1:       # k satellites in different planes, their answers voted on
                executors, why = n._place(spec.model, spec.target, inputs, loaded, timeout_s, replicas=spec.replicas,
                                          exclude=self._shunned())
                return n._submit_replicas(spec.model, loaded, inputs, executors, f"job chunk of {scan.steps}: {why}",
                                          spec.agreement, timeout_s, None, False, task_id=task_id, scan=scan)
            return n._accept(spec.model, loaded, inputs, executor, f"job chunk of {scan.steps}", timeout_s,
                             None, False, None, task_id=task_id, scan=scan)
        except SubmitError as exc:
            raise JobError(exc.status, str(exc)) from None

    def unfit(self, node: str) -> str | None:
        """Why ``node`` should stop running a shard now, or None."""
        n = self.node
        if node not in n.peers:
            return f"{node} is not in the fleet"
        if n.peers[node].index in n.membership.dead_nodes():
            return f"{node} declared dead by the fleet's membership"
        if n.peers[node].index in n.membership.suspects():
            # No waiting for the verdict: a false suspicion costs the chunks in flight, a true one
            # would cost the whole suspicion timeout.
            return f"{node} suspected by the fleet's membership (it missed its probes)"
        state = n._own_state() if node == self.name else n.membership.state_of(node)
        if state and state.get("low") and n.sunlit_of(node) is False:
            return f"{node} in eclipse with its battery below the reserve"
        return None

    def reachable(self, node: str) -> bool:
        return node == self.name or self.node._path_to(node) is not None

    @property
    def is_ground(self) -> bool:
        return self.node.is_ground

    def isolated(self) -> bool:
        """No link up at all: nothing can be told about any satellite from here right now."""
        return not any(link.up for link in self.node.links.links.values())

    def downlink_wait_s(self, after_s: float) -> float | None:
        """Seconds from now until this station next has a satellite in view for ``DOWNLINK_PASS_S`` or more,
        ``after_s`` from now at the earliest (a chunk's result can come down no sooner), from its contact
        plan; None if no such pass comes within a plan's horizon or the fleet's clock is paused."""
        n = self.node
        now = wallclock.now()
        rate = n.timekeeper.timeline.rate(now)
        if rate <= 0:
            return None
        t = n.orbit_t(now + after_s)
        for horizon in DOWNLINK_PLAN_S:         # the short plan serves dense shells; sparse ones, the long
            plan = self._plan
            if plan is None or not plan.t0 <= t <= (plan.t0 + plan.t1) / 2 or plan.t1 - plan.t0 < horizon:
                plan = self._plan = contact_plan(n.topology, t, horizon, nodes=[n.me.index],
                                                 step_s=DOWNLINK_STEP_S, tol_s=1.0)
            seen = plan.next_in_view(n.me.index, t, lasting_s=DOWNLINK_PASS_S * rate)
            if seen is not None:
                return after_s + (seen - t) / rate
        return None

    # -- a job's copy on a neighbour (agent/runtime/job_copies.py) ------------------------------------------

    @property
    def max_frame_bytes(self) -> int:
        return self.node.config.limits.max_frame_bytes

    def choose_keeper(self, exclude: frozenset[str]) -> str | None:
        """A satellite this home has a laser link up to, fit to keep a copy: one of its own plane first
        (intra-plane links never rewire), then the nearest by name, so a restarted home picks the same one."""
        n = self.node
        mine = n.constellation.plane_of[n.me.index] if not n.is_ground else None
        fit = [name for name, link in n.links.links.items()
               if link.up and name not in exclude and self.keeper_problem(name) is None]
        if not fit:
            return None
        return min(fit, key=lambda name: (n.constellation.plane_of[n.peers[name].index] != mine, name))

    def keeper_problem(self, node: str) -> str | None:
        """Why ``node`` cannot keep (or go on keeping) a job's copy, or None."""
        n = self.node
        if node not in n.peers or node == self.name:
            return f"{node} is not another node of the fleet"
        i = n.peers[node].index
        if n.topology.names.is_ground(i):
            return f"{node} is a ground station"
        if i in n.membership.dead_nodes() or i in n.membership.suspects():
            return f"{node} is suspected or declared dead"
        if n._path_to(node) is None:
            return f"{node} is cut off from {self.name}"
        return None

    def declared_dead(self, node: str) -> bool:
        n = self.node
        return node in n.peers and n.peers[node].index in n.membership.dead_nodes()

    def send_copy(self, dst: str, job_id: str, op: str, body: bytes) -> str:
        n = self.node
        msg = JobCopy(entropy.hex_id(16), self.name, dst, job_id, op, body, n.config.limits.ttl,
                      wallclock.now() + COPY_DEADLINE_S)
        n.relay.seen(msg)
        problem = n.relay.send(msg, dst)
        n._wake.set()
        return problem

    def expected_compute_s(self, node: str, model: str) -> float:
        known = self.node.compute_table.get(node, model)
        return known if known is not None else DEFAULT_COMPUTE_S


async def submit_job(node: Any, body: Any) -> tuple["Job", bool]:
    """Check a ``POST /v1/jobs`` body in full and accept the job at ``node`` (JobError says why not)."""
    if not isinstance(body, dict):
        raise JobError(400, "a job is a JSON object with 'model' and 'inputs'")
    key = body.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 128):
        raise JobError(400, "an idempotency key must be a string of 1–128 characters")
    if key is not None:
        known = node.jobs.find_by_key(key)
        if known is not None:
            return known, False
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise JobError(400, "'model' must be a non-empty string")
    if bad_name(model):
        raise JobError(400, bad_name(model))
    loaded = await node.load_model(model)       # SubmitError 404/422, answered as such by the API
    limits = node.config.limits
    spec = await wallclock.off_loop(
        lambda: parse_job(body, loaded, loaded.sha256 or node.store.sha256(model), max_elements=limits.max_frame_bytes // 4,
                          max_chunk_bytes=limits.max_frame_bytes // 2, targets=TARGETS))
    return node.jobs.submit(spec, key)


def wait_left(job: "Job", wait_s: float) -> float:
    return max(0.0, min(wait_s, job.deadline - wallclock.now() + 1.0))
