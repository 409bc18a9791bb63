"""Reliable delivery of routed frames (pure): per-hop acks, dedup, store-and-forward, end-to-end retry.

A task must arrive even when links drop frames, cut, or disappear.  Four
layers, each a small state machine that is fed time and returns what to do:

* :class:`HopSender` — per-hop reliability.  Every routed frame gets a hop
  message id; the receiver answers ``HopAck`` (``mesh.gossip_msgs``); the
  sender retransmits after an RTO computed from the link's *physics* RTT,
  with backoff, and gives up after a bounded number of attempts (``HopFailed``:
  route around that link, or hold).  Where acks come back later than physics
  allows (an emulator whose processes are loaded: starlink-s1 on 2 cores took
  2–9 s between processes), the RTO a neighbour gets is raised to what its acks
  show, as TCP does (RFC 6298: smoothed RTT + 4 × its variation from acks of
  frames sent once; a backed-off RTO kept until such a sample), so a slow hop
  is not mistaken for a dead one; never below physics, at most
  ``hop_rto_learned_max_s``.
* :class:`DedupWindow` — receivers act on a hop message id once (a lost ack
  makes the sender repeat a frame the receiver already has), bounded in size
  and age.
* :class:`StoreAndForward` — a frame with no route (destination cut off,
  dead, or behind a closed contact) is held, bounded in count, until a route
  reappears or the contact plan's predicted time comes; at its deadline it
  expires with a reason.  Nothing is dropped silently.
* :class:`TaskLedger` (entry node) and :class:`ExecutionCache` (executor) —
  end-to-end retry with dedup by task id: the entry re-sends a task that has
  no result in time, under the same task id; the executor runs a task id once
  and answers repeats from its cache; the entry takes the first result and
  reports a task that has none by its deadline as failed, with the last
  known reason.

Integration API::

    hs = HopSender(cfg, rtt_fn)                  # rtt_fn(neighbour, now) -> physics round trip (s)
    tx = hs.send(now, msg_id, to, item, size)    # Transmit: put item on the link to `to` now
    item = hs.on_ack(now, msg_id, from_node)     # HopAck arrived (None if unknown/duplicate)
    for x in hs.tick(now): Transmit (resend) | HopFailed (give up: reroute or hold)
    dd = DedupWindow(cfg.dedup_capacity, cfg.dedup_ttl_s); dd.first(now, msg_id) -> bool
    sf = StoreAndForward(cfg.store_capacity); sf.hold(now, id, item, dst, deadline, retry_at=, why=)
    sf.release_ready(now, reachable_fn) -> [Held];  sf.expire(now) -> [Expired]
    led = TaskLedger(cfg); led.submit(now, task_id, dst, deadline) -> Attempt
    led.on_result(now, task_id) -> bool (first?);  led.tick(now) -> [Attempt | TaskFailed]
    ex = ExecutionCache(); ex.begin(task_id) -> ("new"|"running"|"done", result); ex.finish(task_id, result)

Hop message ids: ``f"{kind}:{task_id}:{attempt}"`` is unique per transfer and the
same at every hop, so every node's dedup window recognises a repeat.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Callable

RttFn = Callable[[int, float], float]


@dataclass(frozen=True)
class DeliveryConfig:
    hop_rtt_mult: float = 2.0          # RTO = mult × physics RTT + margin + serialization
    hop_rto_margin_s: float = 0.02     # processing allowance beyond physics
    hop_backoff: float = 1.5           # RTO growth per retransmission
    hop_rto_max_s: float = 1.0
    hop_max_attempts: int = 8          # 10% loss each way: a hop fails all 8 with p = 0.19^8 ≈ 2e-6
    hop_rto_learned_max_s: float = 10.0  # the most a neighbour's slow acks may raise its RTO to
    bandwidth_bps: float = 10e9        # serialization term of the RTO
    dedup_capacity: int = 100_000      # hop ids remembered per node
    dedup_ttl_s: float = 600.0         # longer than any task deadline
    store_capacity: int = 1024         # frames held per node
    store_recheck_s: float = 1.0       # hold-queue re-check without news
    e2e_retry_s: float = 5.0           # first end-to-end retry when no result arrived
    e2e_backoff: float = 2.0
    exec_cache: int = 4096             # results an executor keeps for repeats

    def __post_init__(self) -> None:
        if self.hop_max_attempts < 1 or self.store_capacity < 1 or self.dedup_capacity < 1:
            raise ValueError("delivery: attempts and capacities must be ≥ 1")
        if not (self.hop_rtt_mult > 0 and self.hop_backoff >= 1 and self.e2e_retry_s > 0 and self.e2e_backoff >= 1):
            raise ValueError("delivery: multipliers must be positive (backoffs ≥ 1)")


def fleet_delivery() -> DeliveryConfig:
    """Real processes: 50 ms margin for event-loop and py-libp2p delays on a loaded VM."""
    return DeliveryConfig(hop_rto_margin_s=0.05, hop_rto_max_s=2.0)


def constellation_delivery() -> DeliveryConfig:
    return DeliveryConfig()


# -- per hop -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Transmit:
    """Send ``item`` (again, when ``attempt`` > 1) to neighbour ``to`` now."""

    msg_id: str
    to: int
    item: Any
    attempt: int


@dataclass(frozen=True)
class HopFailed:
    """``to`` never acknowledged ``msg_id``: route around that link, or hold the item."""

    msg_id: str
    to: int
    item: Any
    attempts: int
    reason: str


class _Out:
    __slots__ = ("msg_id", "to", "item", "size", "attempts", "rto", "cap", "next_at", "first_at")

    def __init__(self, msg_id: str, to: int, item: Any, size: int, rto: float, cap: float, now: float):
        self.msg_id, self.to, self.item, self.size = msg_id, to, item, size
        self.attempts = 1
        self.rto = rto
        self.cap = cap              # backoff stops here: the physics cap, or the learned RTO if larger
        self.first_at = now
        self.next_at = now + rto


class _Learned:
    """What one neighbour's acks say of its round trip (RFC 6298's estimator)."""

    __slots__ = ("srtt", "rttvar", "rto")

    def __init__(self) -> None:
        self.srtt = -1.0            # no frame sent once acknowledged yet
        self.rttvar = self.rto = 0.0


LATE_ACKS_REMEMBERED = 256     # transfers given up on whose late ack would still teach the RTO


class HopSender:
    """Outstanding hop transfers of one node, retransmitted until acknowledged."""

    def __init__(self, config: DeliveryConfig, rtt_fn: RttFn):
        self.config = config
        self.rtt_fn = rtt_fn
        self._out: dict[str, _Out] = {}
        self._learned: dict[int, _Learned] = {}
        self._given_up: OrderedDict[str, tuple[int, float]] = OrderedDict()   # msg id -> (to, last rto)
        self.retransmissions = 0
        self.failures = 0
        self.late_acks = 0

    def __len__(self) -> int:
        return len(self._out)

    def _rto(self, to: int, now: float, size: int) -> float:
        c = self.config
        rtt = self.rtt_fn(to, now)
        physics = min(c.hop_rto_max_s, c.hop_rtt_mult * rtt + c.hop_rto_margin_s + size * 8.0 / c.bandwidth_bps)
        learned = self._learned.get(to)
        return physics if learned is None else max(physics, learned.rto)

    def learned_rto(self, to: int) -> float:
        """The RTO ``to``'s acks have taught (0: none yet, physics alone)."""
        learned = self._learned.get(to)
        return 0.0 if learned is None else learned.rto

    def _sample(self, to: int, rtt: float) -> None:
        """An unambiguous round trip (a frame sent once): RFC 6298's smoothing."""
        learned = self._learned.setdefault(to, _Learned())
        if learned.srtt < 0:
            learned.srtt, learned.rttvar = rtt, rtt / 2
        else:
            learned.rttvar = 0.75 * learned.rttvar + 0.25 * abs(learned.srtt - rtt)
            learned.srtt = 0.875 * learned.srtt + 0.125 * rtt
        learned.rto = min(self.config.hop_rto_learned_max_s, learned.srtt + 4 * learned.rttvar)

    def _keep_backed_off(self, to: int, rto: float) -> None:
        """An ambiguous ack (after retransmissions) or none: keep the backed-off RTO for the
        next frames to ``to`` until a frame sent once is acknowledged."""
        learned = self._learned.setdefault(to, _Learned())
        learned.rto = min(self.config.hop_rto_learned_max_s, max(learned.rto, rto))

    def send(self, now: float, msg_id: str, to: int, item: Any, size: int = 0) -> Transmit:
        """Start a transfer; the caller sends ``item`` to ``to`` now."""
        if msg_id in self._out:
            raise ValueError(f"hop message {msg_id!r} is already outstanding")
        rto = self._rto(to, now, size)
        self._out[msg_id] = _Out(msg_id, to, item, size, rto, max(self.config.hop_rto_max_s, rto), now)
        return Transmit(msg_id, to, item, 1)

    def next_at(self, msg_id: str) -> float:
        """When the outstanding transfer ``msg_id`` next needs a look (its retransmission)."""
        return self._out[msg_id].next_at

    def on_ack(self, now: float, msg_id: str, from_node: int) -> Any:
        """The item acknowledged, or None (unknown id, or an ack from elsewhere)."""
        o = self._out.get(msg_id)
        if o is None or o.to != from_node:
            late = self._given_up.pop(msg_id, None)
            if late is not None and late[0] == from_node:      # slow, not dead: wait longer next time
                self.late_acks += 1
                self._keep_backed_off(from_node, late[1])
            return None
        del self._out[msg_id]
        if o.attempts == 1:
            self._sample(from_node, now - o.first_at)
        else:
            self._keep_backed_off(from_node, o.rto)
        return o.item

    def cancel(self, msg_id: str) -> None:
        self._out.pop(msg_id, None)

    def abandon(self, now: float, gone: Callable[[int], bool]) -> list[HopFailed]:
        """Give up at once on transfers to neighbours ``gone`` says are dead or cut off
        (membership knows before the retransmissions run out): route them again."""
        out = []
        for o in [o for o in self._out.values() if gone(o.to)]:
            del self._out[o.msg_id]
            self.failures += 1
            out.append(HopFailed(o.msg_id, o.to, o.item, o.attempts,
                                 f"node {o.to} declared unreachable after {now - o.first_at:.2f} s"))
        return out

    def tick(self, now: float) -> list[Transmit | HopFailed]:
        c = self.config
        out: list[Transmit | HopFailed] = []
        for o in [o for o in self._out.values() if o.next_at <= now]:
            if o.attempts >= c.hop_max_attempts:
                del self._out[o.msg_id]
                self.failures += 1
                self._given_up[o.msg_id] = (o.to, o.rto * c.hop_backoff)
                if len(self._given_up) > LATE_ACKS_REMEMBERED:
                    self._given_up.popitem(last=False)
                out.append(HopFailed(o.msg_id, o.to, o.item, o.attempts,
                                     f"no hop ack from node {o.to} after {o.attempts} attempts over "
                                     f"{now - o.first_at:.2f} s"))
                continue
            o.attempts += 1
            o.rto = min(o.cap, o.rto * c.hop_backoff)
            o.next_at = now + o.rto
            self.retransmissions += 1
            out.append(Transmit(o.msg_id, o.to, o.item, o.attempts))
        return out

    def next_deadline(self) -> float:
        if not self._out:
            return math.inf
        return min(o.next_at for o in self._out.values())


class DedupWindow:
    """Message ids seen recently (bounded count and age): act on each once."""

    def __init__(self, capacity: int = 100_000, ttl_s: float = 600.0):
        self.capacity = capacity
        self.ttl_s = ttl_s
        self._seen: OrderedDict[str, float] = OrderedDict()

    def first(self, now: float, msg_id: str) -> bool:
        """True the first time ``msg_id`` is seen (within the window)."""
        seen = self._seen
        while seen:
            k, exp = next(iter(seen.items()))
            if exp > now:
                break
            seen.popitem(last=False)
        if msg_id in seen:
            return False
        seen[msg_id] = now + self.ttl_s
        if len(seen) > self.capacity:
            seen.popitem(last=False)
        return True

    def __contains__(self, msg_id: str) -> bool:
        return msg_id in self._seen

    def __len__(self) -> int:
        return len(self._seen)


# -- store and forward ---------------------------------------------------------------------

@dataclass(frozen=True)
class Held:
    item_id: str
    item: Any
    dst: int
    deadline: float
    since: float
    why: str = "no route"
    retry_at: float | None = None


@dataclass(frozen=True)
class Expired:
    """A held (or refused) item that will not be forwarded: the reason says why."""

    item_id: str
    item: Any
    dst: int
    reason: str


class StoreAndForward:
    """Items waiting for a route to their destination; bounded, each with a deadline."""

    def __init__(self, capacity: int = 1024, recheck_s: float = 1.0):
        self.capacity = capacity
        self.recheck_s = recheck_s
        self._held: OrderedDict[str, Held] = OrderedDict()
        self._next_check = math.inf

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._held

    def hold(self, now: float, item_id: str, item: Any, dst: int, deadline: float, *,
             retry_at: float | None = None, why: str = "no route") -> Expired | None:
        """Keep ``item`` until a route to ``dst`` appears; an Expired if it cannot be kept."""
        if deadline <= now:
            return Expired(item_id, item, dst, f"deadline passed before a route to node {dst} appeared ({why})")
        if item_id in self._held:
            return None
        if len(self._held) >= self.capacity:
            return Expired(item_id, item, dst, f"store-and-forward buffer full ({self.capacity} items) "
                                               f"while node {dst} is unreachable ({why})")
        self._held[item_id] = Held(item_id, item, dst, deadline, now, why, retry_at)
        self._next_check = min(self._next_check, now + self.recheck_s)
        return None

    def release_ready(self, now: float, reachable: Callable[[int], bool]) -> list[Held]:
        """Remove and return (oldest first) the items whose destination is reachable now."""
        out = []
        cache: dict[int, bool] = {}
        for item_id, h in list(self._held.items()):
            if h.deadline <= now:
                continue
            ok = cache.get(h.dst)
            if ok is None:
                ok = cache[h.dst] = bool(reachable(h.dst))
            if ok:
                del self._held[item_id]
                out.append(h)
            elif h.retry_at is not None and h.retry_at <= now:
                self._held[item_id] = replace(h, retry_at=None)   # the predicted contact came and went
        self._next_check = now + self.recheck_s if self._held else math.inf
        return out

    def expire(self, now: float) -> list[Expired]:
        out = []
        for item_id, h in list(self._held.items()):
            if h.deadline <= now:
                del self._held[item_id]
                out.append(Expired(item_id, h.item, h.dst,
                                   f"undeliverable: held {now - h.since:.1f} s for node {h.dst} ({h.why}); "
                                   f"no route before the deadline"))
        return out

    def next_deadline(self) -> float:
        """When to call ``expire`` / ``release_ready`` next without other news."""
        if not self._held:
            return math.inf
        t = self._next_check
        for h in self._held.values():
            t = min(t, h.deadline, h.retry_at if h.retry_at is not None else math.inf)
        return t

    def items(self) -> list[Held]:
        return list(self._held.values())


# -- end to end ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Attempt:
    """(Re)send task ``task_id`` towards ``dst``; ``attempt`` starts at 0."""

    task_id: str
    dst: int
    attempt: int


@dataclass(frozen=True)
class TaskFailed:
    task_id: str
    reason: str
    attempts: int


@dataclass
class _Task:
    task_id: str
    dst: int
    deadline: float
    created: float
    retry_s: float
    next_retry: float
    attempts: int = 1
    last_problem: str = ""


class TaskLedger:
    """The entry node's book of tasks in flight: retries, first result, explicit failure."""

    def __init__(self, config: DeliveryConfig, name_of: Callable[[int], str] = lambda i: f"node {i}"):
        """``name_of``: how a node index reads in a failure's reason (the agent passes its names)."""
        self.config = config
        self.name_of = name_of
        self._tasks: dict[str, _Task] = {}
        self._finished: OrderedDict[str, bool] = OrderedDict()
        self.retries = 0
        self.duplicates = 0

    def __len__(self) -> int:
        return len(self._tasks)

    def submit(self, now: float, task_id: str, dst: int, deadline: float, retry_after: float | None = None) -> Attempt:
        if task_id in self._tasks or task_id in self._finished:
            raise ValueError(f"task {task_id!r} was already submitted")
        r = self.config.e2e_retry_s if retry_after is None else retry_after
        self._tasks[task_id] = _Task(task_id, dst, deadline, now, r, now + r)
        return Attempt(task_id, dst, 0)

    def note(self, task_id: str, problem: str) -> None:
        """Remember the latest trouble on the way (for the failure message)."""
        t = self._tasks.get(task_id)
        if t is not None:
            t.last_problem = problem

    def _close(self, task_id: str, ok: bool) -> None:
        self._tasks.pop(task_id, None)
        self._finished[task_id] = ok
        if len(self._finished) > 65536:
            self._finished.popitem(last=False)

    def on_result(self, now: float, task_id: str) -> bool:
        """True for the first result of a pending task; repeats and late ones are False."""
        if task_id not in self._tasks:
            self.duplicates += task_id in self._finished
            return False
        self._close(task_id, True)
        return True

    def fail(self, now: float, task_id: str, reason: str) -> TaskFailed | None:
        """An explicit, final failure (e.g. the executor refused it)."""
        t = self._tasks.get(task_id)
        if t is None:
            return None
        self._close(task_id, False)
        return TaskFailed(task_id, reason, t.attempts)

    def tick(self, now: float) -> list[Attempt | TaskFailed]:
        out: list[Attempt | TaskFailed] = []
        for t in list(self._tasks.values()):
            if t.deadline <= now:
                self._close(t.task_id, False)
                why = f"; last problem: {t.last_problem}" if t.last_problem else ""
                out.append(TaskFailed(t.task_id, f"no result within {t.deadline - t.created:.1f} s after "
                                                 f"{t.attempts} attempt(s) to reach {self.name_of(t.dst)}{why}", t.attempts))
            elif t.next_retry <= now:
                # A first retry may be asked for early (a restarted entry node resends
                # at once); from then on the usual spacing applies.
                t.retry_s = max(t.retry_s * self.config.e2e_backoff, self.config.e2e_retry_s)
                t.next_retry = now + t.retry_s
                t.attempts += 1
                self.retries += 1
                out.append(Attempt(t.task_id, t.dst, t.attempts - 1))
        return out

    def next_deadline(self) -> float:
        if not self._tasks:
            return math.inf
        return min(min(t.deadline, t.next_retry) for t in self._tasks.values())

    def pending(self) -> list[str]:
        return list(self._tasks)


class ExecutionCache:
    """Executor side of end-to-end dedup: run each task id once, answer repeats from cache."""

    def __init__(self, capacity: int = 4096):
        self.capacity = capacity
        self._runs: OrderedDict[str, tuple[bool, Any]] = OrderedDict()

    def begin(self, task_id: str) -> tuple[str, Any]:
        hit = self._runs.get(task_id)
        if hit is None:
            self._runs[task_id] = (False, None)
            if len(self._runs) > self.capacity:
                self._runs.popitem(last=False)
            return ("new", None)
        done, result = hit
        return ("done", result) if done else ("running", None)

    def finish(self, task_id: str, result: Any) -> None:
        self._runs[task_id] = (True, result)
        self._runs.move_to_end(task_id)
