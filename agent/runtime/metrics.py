"""Prometheus exposition of a node: links, tasks, inference, relay, membership, energy.

prometheus_client's exposition format and metric families are used rather
than hand-written text (a well-kept library, already installed with libp2p).
Counts the node keeps anyway (link stats, relay and membership counters, the
battery) are read at scrape time by a custom collector, so nothing is kept
twice; distributions that exist nowhere else (task latency by phase,
inference time) are prometheus_client histograms the node feeds as tasks end
(:class:`TaskMetrics`).
"""

from __future__ import annotations

from typing import Iterator

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from agent import wallclock
from agent.links.transport import ERROR_BUCKETS_S


# Seconds: a digits task on one satellite is ~2 ms, one crossing the
# constellation ~100 ms, a cloud-mask scene or a held frame seconds to minutes.
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                     float("inf"))
INFERENCE_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                       2.5, 5.0, float("inf"))
PHASES = ("total", "physics", "compute", "overhead")
CHILDREN_MAX = 1024     # label values remembered per histogram; beyond, looked up each time


class TaskMetrics:
    """Histograms fed as tasks end: latency by phase at the entry, inference time at the executor."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.latency = Histogram("orbitmesh_task_latency_seconds",
                                 "Accepted to final at the entry node, split by phase (total = physics + compute "
                                 "+ overhead)", ["node", "phase", "status"], buckets=LATENCY_BUCKETS_S, registry=None)
        self.inference = Histogram("orbitmesh_inference_seconds", "onnxruntime time per task at this executor "
                                   "(a batch's time shared by its tasks)", ["node", "model"],
                                   buckets=INFERENCE_BUCKETS_S, registry=None)
        # Each task's histograms by label values, looked up once: ``labels()`` takes a lock and
        # checks its arguments, ~10 µs a call, five calls a task (bounded: statuses and models).
        self._by_status: dict[str, list] = {}
        self._by_model: dict[str, object] = {}

    def task_finished(self, status: str, breakdown: dict[str, float] | None) -> None:
        if not breakdown:
            return
        children = self._by_status.get(status)
        if children is None:
            children = [self.latency.labels(self.node, phase, status) for phase in PHASES]
            if len(self._by_status) < CHILDREN_MAX:
                self._by_status[status] = children
        for phase, child in zip(PHASES, children):
            child.observe(max(0.0, breakdown[f"{phase}_ms"] / 1e3))

    def inference_done(self, model: str, seconds: float) -> None:
        child = self._by_model.get(model)
        if child is None:
            child = self.inference.labels(self.node, model)
            if len(self._by_model) < CHILDREN_MAX:
                self._by_model[model] = child
        child.observe(max(0.0, seconds))

    def collect(self) -> Iterator[object]:
        yield from self.latency.collect()
        yield from self.inference.collect()


def _edge_cache(me: str, cache) -> Iterator[object]:
    """Hit rate = hit / (hit + miss) of orbitmesh_edge_cache_lookups (agent/runtime/edge_cache.py)."""
    lookups = CounterMetricFamily("orbitmesh_edge_cache_lookups", "Edge-cache lookups of placed tasks at this "
                                  "entry, by result (hit: answered without computing)", labels=["node", "result"])
    for result in ("hit", "miss"):
        lookups.add_metric([me, result], cache.counts[result])
    stored = GaugeMetricFamily("orbitmesh_edge_cache_bytes", "Bytes of answers held in the edge cache", labels=["node"])
    stored.add_metric([me], cache.bytes)
    yield from (lookups, stored)


def _jobs(me: str, board) -> Iterator[object]:
    """Jobs at their home (agent/runtime/jobs.py): by status, shard moves, checkpoints and their journal time."""
    jobs = GaugeMetricFamily("orbitmesh_jobs", "Jobs this node is home to (in memory), by status",
                             labels=["node", "status"])
    counts: dict[str, int] = {"running": 0, "succeeded": 0, "failed": 0, "cancelled": 0, "handed_over": 0}
    for job in board.jobs.values():
        counts[job.status] = counts.get(job.status, 0) + 1
    for status, n in counts.items():
        jobs.add_metric([me, status], n)
    moves = CounterMetricFamily("orbitmesh_job_shard_moves", "Shards moved off a satellite (dead, suspected, cut "
                                "off, low in eclipse, or a failed chunk)", labels=["node"])
    moves.add_metric([me], board.moved)
    ckpt = CounterMetricFamily("orbitmesh_job_checkpoints", "Chunks kept as checkpoints", labels=["node"])
    ckpt.add_metric([me], board.checkpoints)
    ckpt_s = CounterMetricFamily("orbitmesh_job_checkpoint_seconds", "Time spent journaling checkpoints",
                                 labels=["node"])
    ckpt_s.add_metric([me], board.checkpoint_s)
    yield from (jobs, moves, ckpt, ckpt_s)
    copies = board.copies
    if copies is not None:      # agent/runtime/job_copies.py: each job's copy on a neighbour, and take-overs
        sent = CounterMetricFamily("orbitmesh_job_copy_records", "Job copy records sent to keepers (resends "
                                   "included)", labels=["node"])
        sent.add_metric([me], copies.records_sent)
        taken = CounterMetricFamily("orbitmesh_job_takeovers", "Jobs this node took over from a home declared dead",
                                    labels=["node"])
        taken.add_metric([me], copies.takeovers)
        yield from (sent, taken)


class NodeCollector:
    def __init__(self, node) -> None:
        self.node = node

    def collect(self) -> Iterator[object]:
        me = self.node.me.name
        links = self.node.links.links
        labels = ["src", "dst"]
        sent = CounterMetricFamily("orbitmesh_link_frames_sent", "Frames written to the link", labels=labels)
        sent_b = CounterMetricFamily("orbitmesh_link_bytes_sent", "Bytes written to the link", labels=labels)
        recv = CounterMetricFamily("orbitmesh_link_frames_received", "Frames received from the link", labels=labels)
        recv_b = CounterMetricFamily("orbitmesh_link_bytes_received", "Bytes received", labels=labels)
        dropped = CounterMetricFamily("orbitmesh_link_frames_dropped", "Frames dropped, by cause",
                                      labels=labels + ["cause"])
        late = CounterMetricFamily("orbitmesh_link_frames_late", "Frames that arrived after their due time",
                                   labels=labels)
        up = GaugeMetricFamily("orbitmesh_link_up", "1 while the link's stream is established", labels=labels)
        err = HistogramMetricFamily("orbitmesh_link_delay_error_seconds",
                                    "Release time minus due time (measured minus emulated delay)", labels=labels)
        for peer, link in sorted(links.items()):
            st = link.stats
            out_l, in_l = [me, peer], [peer, me]
            sent.add_metric(out_l, st.frames_sent)
            sent_b.add_metric(out_l, st.bytes_sent)
            recv.add_metric(in_l, st.frames_received)
            recv_b.add_metric(in_l, st.bytes_received)
            for cause, n in st.dropped.items():
                # sender-side causes belong to me→peer; receiver-side ones to peer→me
                dropped.add_metric((in_l if cause in ("corrupt", "malformed") else out_l) + [cause], n)
            late.add_metric(in_l, st.late_frames)
            up.add_metric(out_l, 1.0 if link.up else 0.0)
            cumulative, buckets = 0, []
            for bound, n in zip(ERROR_BUCKETS_S, st.error_buckets):
                cumulative += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            err.add_metric(in_l, buckets, st.error_sum_s)
        tasks = GaugeMetricFamily("orbitmesh_tasks", "Tasks known to this entry node, by status",
                                  labels=["node", "status"])
        for status, n in sorted(self.node.tasks.counts().items()):
            tasks.add_metric([me, status], n)
        faults = GaugeMetricFamily("orbitmesh_faults_active", "Faults in this node's table", labels=["node"])
        faults.add_metric([me], len(self.node.chaos.listing(wallclock.now())))
        yield from (sent, sent_b, recv, recv_b, dropped, late, up, err, tasks, faults)
        yield from _edge_cache(me, self.node.edge_cache)
        yield from _jobs(me, self.node.jobs)
        yield from _clock(me, self.node.timekeeper.timeline, wallclock.now())
        yield from self._relay_membership_energy(me)
        yield from _storage(me, self.node.storage())
        if self.node.is_ground and self.node.topology.handover != "all":
            ho = CounterMetricFamily("orbitmesh_ground_handovers", "Satellite-to-satellite handovers of this "
                                     "ground station since it started", labels=["node", "policy"])
            ho.add_metric([me, self.node.topology.handover], self.node.count_handovers(wallclock.now()))
            yield ho

    def _relay_membership_energy(self, me: str) -> Iterator[object]:
        node = self.node
        relay = CounterMetricFamily("orbitmesh_relay_events", "Task frames this node relayed, by what happened "
                                    "(sent, acked, retransmissions, held, released, expired, dropped, ...)",
                                    labels=["node", "event"])
        for event, n in sorted(node.relay.counts.items()):
            relay.add_metric([me, event], n)
        members = node.membership
        changes = CounterMetricFamily("orbitmesh_membership_events", "Membership changes this node saw (NodeAlive, "
                                      "NodeSuspect, NodeDead, LinkDown, LinkUp, SelfRefuted, state_changes)",
                                      labels=["node", "event"])
        for event, n in sorted(members.counts.items()):
            changes.add_metric([me, event], n)
        view = GaugeMetricFamily("orbitmesh_members", "Members in this node's view, by status",
                                 labels=["node", "status"])
        by_status: dict[str, int] = {}
        for i in members.names:
            status = members.m.status(i)
            by_status[status] = by_status.get(status, 0) + 1
        for status, n in sorted(by_status.items()):
            view.add_metric([me, status], n)
        yield from (relay, changes, view)
        busy = CounterMetricFamily("orbitmesh_compute_busy_seconds", "onnxruntime seconds run on this node",
                                   labels=["node"])
        busy.add_metric([me], node.busy_s)
        yield busy
        battery = node.battery
        if battery is None:             # a ground station is on the grid
            return
        charge = GaugeMetricFamily("orbitmesh_battery_fraction", "State of charge, 0–1", labels=["node"])
        charge.add_metric([me], battery.fraction)
        sunlit = GaugeMetricFamily("orbitmesh_sunlit", "1 in sunlight, 0 in eclipse", labels=["node"])
        sunlit.add_metric([me], 1.0 if battery.sunlit else 0.0)
        used = CounterMetricFamily("orbitmesh_energy_compute_wh", "Energy spent on compute", labels=["node"])
        used.add_metric([me], battery.used_wh)
        yield from (charge, sunlit, used)


def _clock(me: str, timeline, now: float) -> Iterator[object]:
    """The fleet clock as this node runs it (time control, docs/time.md)."""
    scale, paused = timeline.speed(now)
    speed = GaugeMetricFamily("orbitmesh_clock_scale", "Orbital seconds per wall second the fleet clock is set to "
                              "(kept while paused)", labels=["node"])
    speed.add_metric([me], scale)
    stopped = GaugeMetricFamily("orbitmesh_clock_paused", "1 while the fleet clock is paused", labels=["node"])
    stopped.add_metric([me], 1.0 if paused else 0.0)
    orbit = GaugeMetricFamily("orbitmesh_orbit_time_seconds", "Orbital time (seconds after the constellation "
                              "epoch) on this node's copy of the fleet clock", labels=["node"])
    orbit.add_metric([me], timeline.orbit_t(now))
    yield from (speed, stopped, orbit)


def _storage(me: str, st: dict) -> Iterator[object]:
    """Recovery and storage integrity (``Node.storage``)."""
    journal = st["journal"]
    if journal is not None:
        rec = CounterMetricFamily("orbitmesh_journal_recovered_tasks", "Unfinished tasks read back from the "
                                  "journal at start", labels=["node"])
        rec.add_metric([me], journal["recovered"])
        quar = GaugeMetricFamily("orbitmesh_journal_quarantined_rows", "Journal rows that could not be read "
                                 "back, moved to the quarantine table", labels=["node"])
        quar.add_metric([me], journal["quarantined"])
        yield from (rec, quar)
    fired = CounterMetricFamily("orbitmesh_tasks_failed_by_deadline_timer", "Tasks still pending at their "
                                "deadline that the backstop timer ended", labels=["node"])
    fired.add_metric([me], st["deadline_timer_failed"])
    models = st["models"]
    damaged = GaugeMetricFamily("orbitmesh_models_damaged", "Models refused at load: bytes that do not match "
                                "their digest", labels=["node"])
    damaged.add_metric([me], len(models["damaged"]))
    collected = CounterMetricFamily("orbitmesh_model_versions_collected", "Old model versions removed by "
                                    "retention", labels=["node"])
    collected.add_metric([me], models["collected"])
    yield from (fired, damaged, collected)


def render(node) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    registry.register(node.metrics)
    return generate_latest(registry)
