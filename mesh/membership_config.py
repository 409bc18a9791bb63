"""Every knob of :class:`mesh.membership.Membership`, and the presets that say why each
has its value (real agent processes, thousands of simulated satellites, unit tests);
``scaled_config`` picks the agents' rates from the fleet's size (docs/membership.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable


@dataclass(frozen=True)
class MembershipConfig:
    """Every knob of membership and gossip; presets below say why each has its value."""

    probe_interval_s: float = 0.5          # T: one neighbour probed per period
    rtt_mult: float = 2.0                  # ack timeout = rtt_mult × physics RTT + rto_margin_s
    rto_margin_s: float = 0.02             # processing and transport beyond physics
    direct_attempts: int = 3               # direct pings per round before going indirect
    indirect_paths: int = 2                # k of SWIM: indirect routes around the link under test
    indirect_attempts: int = 2             # sends along each indirect route
    link_fail_rounds: int = 3              # rounds in a row with no direct answer → link down
    suspicion_mult: float = 3.0            # α: min suspicion = α · log10(n) · T
    suspicion_max_mult: float = 4.0        # β: max suspicion = β · min
    suspicion_k: int = 3                   # confirmations that bring the timeout down to min
    max_lhm: int = 4                       # Lifeguard local health multiplier ceiling
    dead_probe_every: int = 4              # probe a neighbour believed dead every Nth cycle
    spare_heard: bool = False              # skip a round for a neighbour whose own ping reached us since our
    #                                        last round for it (large fleets, scaled_config: frames are the cost)
    gossip_interval_s: float = 0.2         # re-send pending updates this often
    state_gossip_s: float = 0.5            # repeat copies of state records (placement hints) go this often
    drift_gossip_s: float = 0.5            # ... and of a drift (a state change below placement's thresholds,
    #                                        as the driver's state_news judges): large fleets wait longer
    eager_gap_s: float = 0.005             # news is pushed at once, at most this often per node
    eager_state: bool = True               # ... a neighbour's state record too (False: it waits for the next
    #                                        state_gossip_s flush, sharing frames: large fleets, scaled_config)
    gossip_bytes: int = 2048               # update bytes per gossip frame
    piggyback_bytes: int = 512             # update bytes riding on each probe/ack
    retransmit_mult: float = 2.0           # λ of memberlist: λ·log10(n+1) sends per update (≥ 2 per neighbour)
    state_copies: int = 1                  # ... but a state record goes once to each neighbour: the flood's
    #                                        other paths carry it too, and anti-entropy repairs a miss
    sync_interval_s: float = 30.0          # push-pull anti-entropy with one neighbour
    sync_max_bytes: int = 256 * 1024       # updates in one sync answer
    start_grace_s: float = 2.0             # no verdicts while the fleet comes up
    queue_items: int = 1024                # broadcast queue bound
    state_max_bytes: int = 512             # one node's state record, encoded
    relay_cap: int = 1024                  # indirect probes one relay tracks for nacks
    lag_tolerance_s: float = 0.1           # own timers later than this: our silence verdicts are unreliable
    lag_hold_mult: float = 4.0             # after a lag L, hold verdicts for max(T, lag_hold_mult · L)
    remote_verdict_mult: float = 4.0       # a node that cannot probe the suspect waits this × its timeout
    join_grace_s: float = 10.0             # no verdict about a neighbour this soon after its link (re)opened
    unjoined_grace_s: float = 120.0        # ... nor, this long after our start, about one whose link never opened
    incarnation_window: int = 1 << 16      # a rumour may raise an incarnation by at most this (no 2^63−1 for ever)
    version_window: int = 1 << 32          # ... a state version or link report sequence by at most this

    def __post_init__(self) -> None:
        for name in ("probe_interval_s", "gossip_interval_s", "sync_interval_s", "rtt_mult", "state_gossip_s",
                     "drift_gossip_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"membership {name} must be > 0")
        for name in ("direct_attempts", "indirect_attempts", "link_fail_rounds", "dead_probe_every", "state_copies"):
            if getattr(self, name) < 1:
                raise ValueError(f"membership {name} must be ≥ 1")
        if self.indirect_paths < 0 or self.suspicion_k < 0 or self.max_lhm < 0:
            raise ValueError("membership indirect_paths, suspicion_k and max_lhm must be ≥ 0")
        if self.join_grace_s < 0 or self.unjoined_grace_s < 0:
            raise ValueError("membership join_grace_s and unjoined_grace_s must be ≥ 0")
        if self.remote_verdict_mult < 1:
            raise ValueError("membership remote_verdict_mult must be ≥ 1")
        if self.lag_tolerance_s <= 0 or self.lag_hold_mult < 0:
            raise ValueError("membership lag_tolerance_s must be > 0 and lag_hold_mult ≥ 0")
        if self.suspicion_mult <= 0 or self.suspicion_max_mult < 1:
            raise ValueError("membership suspicion_mult must be > 0 and suspicion_max_mult ≥ 1")
        if self.gossip_bytes < 64 or self.piggyback_bytes < 0:
            raise ValueError("membership gossip_bytes must be ≥ 64 and piggyback_bytes ≥ 0")
        if self.incarnation_window < 1 or self.version_window < 1:
            raise ValueError("membership incarnation_window and version_window must be ≥ 1")


def fleet_config() -> MembershipConfig:
    """Real agent processes (24 on a laptop, py-libp2p, wall clock).

    T = 0.5 s: each agent probes one of its 4 neighbours twice a second, so a
    dead node is probed by someone every ~0.5 s.  Each frame costs ~0.3–0.5
    ms of CPU in py-libp2p (plus a yamux window update), and 24 agents share
    2 cores here: at T = 0.25 s the probes alone pushed the fleet's task
    overhead past 5 ms (docs/benchmarks.md).  RTO = 1.5 × physics RTT + 50 ms:
    the margin covers event-loop, Noise and yamux delay on a loaded 2-core VM;
    two direct pings, then two indirect sends around the link.  Suspicion
    min = 2 · log10(24) · 0.5 ≈ 1.4 s, max 2.8 s: a refutation needs ~0.2 s to
    come back over 3-hop detours, and confirmations from the other
    neighbours (who re-probe a suspect at once) bring it to the minimum, so a
    death is known everywhere in ~2.5 s (goal < 3 s).  Two rounds without a
    direct answer mark a link down; the re-check round doubles its direct
    pings, so 10% loss fakes a cut with p ≈ 6e-8 per round.
    """
    return MembershipConfig(probe_interval_s=0.5, rtt_mult=1.5, rto_margin_s=0.05, direct_attempts=2,
                            link_fail_rounds=2, suspicion_mult=2.0, suspicion_max_mult=2.0,
                            gossip_interval_s=0.1, eager_gap_s=0.01, sync_interval_s=20.0, start_grace_s=5.0)


def constellation_config() -> MembershipConfig:
    """Thousands of satellites (starlink-s1 in the simulator).

    T = 0.5 s keeps probe traffic at ~2 rounds/s per node (~230 B/s);
    links are 2–7 ms, so a 20 ms margin keeps RTOs under 50 ms and three
    direct pings fit in 0.15 s.  Suspicion min = 3 · log10(1584) · 0.5 ≈
    4.8 s, max 14 s: Lifeguard's log(n) scaling kept for safety although a
    refutation only travels a few hops here; a death is known everywhere in
    ~5.5 s.  Anti-entropy every 60 s: a 1,584-node digest is ~5 KB.
    """
    return MembershipConfig(probe_interval_s=0.5, rto_margin_s=0.02, link_fail_rounds=2, suspicion_mult=3.0,
                            suspicion_max_mult=3.0, gossip_interval_s=0.2, sync_interval_s=60.0,
                            start_grace_s=2.0)


def small_config() -> MembershipConfig:
    """Small simulated fleets (unit tests): the fleet preset with a short start-up grace."""
    return replace(fleet_config(), start_grace_s=0.5)


# -- rates scaled with the fleet (issue 14, item 3) --------------------------------------------
#
# Probes go to laser neighbours only, so each satellite sends PROBE_FRAMES (a ping and, for its
# neighbours' pings, an ack) per period whatever the fleet's size: the cost per satellite is
# flat, but the satellites that share a machine or a process add up.  Each membership frame
# costs 0.4–1 ms of CPU end to end in Python (send, link model, receive, protocol: the marginal
# cost on the in-process twin, bench/membership_rates.py), more over libp2p.
PROBE_FRAMES = 2                  # frames a satellite sends per period (its ping, one ack)
MACHINE_FRAMES_S = 1000.0         # a fleet's probe frames per second, all of it on one machine: ~0.4
#                                   core or more, a quarter of issue 14's 1.5-core idle target (s1)
PROCESS_FRAMES_S = 250.0          # one process's (one event loop): ≥ 10% of its loop, so frame releases
#                                   stay punctual behind it (per-hop delay error targets)
MAX_PROBE_INTERVAL_S = 5.0        # beyond: slower detection than the rates are worth; budgets give way
MAX_SYNC_INTERVAL_S = 120.0       # anti-entropy is a backstop, but must still run a few times an hour
MIN_SUSPICION_PERIODS = 2.0       # a suspect hears of it (buddy ping) and its other neighbours confirm


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"membership scaling: {name} must be a whole number, not {value!r}")
    if value < 1:
        raise ValueError(f"membership scaling: {name} must be ≥ 1, not {value}")
    return value


def rate_scale(n: int, per_process: int = 1, *, machine_frames_s: float = MACHINE_FRAMES_S,
               process_frames_s: float = PROCESS_FRAMES_S) -> float:
    """How many times slower than ``fleet_config()`` the fleet's membership runs (≥ 1).

    ``n``: the fleet's members (satellites and stations, the peers file);
    ``per_process``: how many of them share this process (a satellite host's K;
    1 for the daemon).  A local fleet (``orbitmesh up``, compose) runs all of its
    ``n`` on one machine, so the machine's budget counts all of them.  The budgets
    (probe frames per second) are arguments for tests and what-ifs.
    """
    n, k = _count("fleet size n", n), _count("satellites per process", per_process)
    if k > n:
        raise ValueError(f"membership scaling: {k} satellites per process but the fleet has only {n}")
    for name, budget in (("machine_frames_s", machine_frames_s), ("process_frames_s", process_frames_s)):
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0 \
                or math.isinf(budget):
            raise ValueError(f"membership scaling: {name} must be a finite number > 0, not {budget!r}")
    t0 = fleet_config().probe_interval_s
    need = max(PROBE_FRAMES * n / machine_frames_s, PROBE_FRAMES * k / process_frames_s)
    return min(max(1.0, need / t0), MAX_PROBE_INTERVAL_S / t0)


def scaled_config(n: int, per_process: int = 1, base: MembershipConfig | None = None, *,
                  machine_frames_s: float = MACHINE_FRAMES_S,
                  process_frames_s: float = PROCESS_FRAMES_S) -> MembershipConfig:
    """The agents' membership for a fleet of ``n`` with ``per_process`` per process.

    Up to the budgets (``MACHINE_FRAMES_S``, ``PROCESS_FRAMES_S``) this is ``base``
    (``fleet_config()``) itself: the demo, 24 satellites, any K, runs exactly as before.
    Beyond, every rate slows by the same factor s (``rate_scale``), so the fleet's
    membership frames stay within the budget: the period T, the gossip re-sends, the
    eager gap and anti-entropy (capped).  What is counted in rounds (pings per round,
    link_fail_rounds) stays; what is a time follows so detection stays correct:
    the minimum suspicion keeps at least the seconds it had at T0 (a refutation
    crosses a loaded host in seconds, not periods) and at least
    ``MIN_SUSPICION_PERIODS`` periods; a node held dead is re-probed as often in
    seconds as before; a fresh link is not judged for at least 3 periods.
    A drift (a state change below placement's thresholds) waits at each hop for the
    slower of that pace and ``state_refresh_s(n) / DRIFT_FLUSHES_PER_REFRESH``: it rides
    pings and shares frames with the others, instead of costing frames every
    ``state_gossip_s`` to every neighbour (starlink-s1: 25 s a hop, a drift ~5 min late
    at 23 hops, against a refresh period of ~42 min).
    """
    s = rate_scale(n, per_process, machine_frames_s=machine_frames_s, process_frames_s=process_frames_s)
    b = base or fleet_config()
    if s == 1.0:
        return b
    t = b.probe_interval_s * s
    log_n = max(1.0, math.log10(n))
    alpha = max(b.suspicion_mult / s, MIN_SUSPICION_PERIODS / log_n)
    return replace(b, probe_interval_s=t, suspicion_mult=alpha,
                   gossip_interval_s=b.gossip_interval_s * s, state_gossip_s=b.state_gossip_s * s,
                   drift_gossip_s=max(b.drift_gossip_s * s, state_refresh_s(n) / DRIFT_FLUSHES_PER_REFRESH),
                   gossip_bytes=round(b.gossip_bytes * s),
                   eager_gap_s=b.eager_gap_s * s, eager_state=False,
                   sync_interval_s=min(max(b.sync_interval_s, MAX_SYNC_INTERVAL_S), b.sync_interval_s * s),
                   dead_probe_every=max(1, round(b.dead_probe_every / s)), spare_heard=True,
                   join_grace_s=max(b.join_grace_s, 3 * t))


# -- state drifts scaled with the fleet ------------------------------------------------------------
#
# Every node's state record (load, battery, models: placement's inputs) floods the whole fleet, so
# each publication costs n deliveries and the fleet's publications cost n² / R a second if each
# node re-publishes its small drifts every R.  Real news (a model, sunlight, the low-battery flag)
# goes at once whatever n; only the re-publication of drifts below those thresholds stretches.
STATE_REFRESH_S = 30.0            # a node's small drifts go out this often on average (small fleets)
STATE_DRIFT_RECORDS_S = 2.0       # drift records a node receives a second, all the fleet's together
MACHINE_DRIFT_DELIVERIES_S = 1000.0   # ... and at most this many drift deliveries a second on the machine
#                                       (every one reaches all n: n² / R), as MACHINE_FRAMES_S for probes
BATTERY_NEWS_STEP = 0.05          # a battery move that is news at once in a small fleet
DRIFT_FLUSHES_PER_REFRESH = 100.0  # a large fleet's drifts wait R / this at each hop (starlink-s1: 25 s)


def state_refresh_s(n: int) -> float:
    """How often a node re-publishes small state drifts in a fleet of ``n`` members: 30 s up to
    60 members, then n / ``STATE_DRIFT_RECORDS_S``, so that the drifts each node hears stay ~2
    records a second, not n / 30 (53 a second at s1, 84,000 deliveries a second across the
    fleet); and beyond 500 members at least n² / ``MACHINE_DRIFT_DELIVERIES_S``, so that the
    fleet's drift deliveries stay within the machine's budget (starlink-s1's 1,590: ~42 min,
    each node hearing 0.6 drift records a second).  Live at s1, 2 drift records a second per
    node cost ~0.3 core of the idle fleet's 1.6 (docs/benchmarks.md)."""
    n = _count("fleet size n", n)
    return max(STATE_REFRESH_S, n / STATE_DRIFT_RECORDS_S, n * n / MACHINE_DRIFT_DELIVERIES_S)


def battery_news_step(n: int) -> float:
    """How far a satellite's battery must move for its state to be news at once in a fleet of
    ``n``: 5% up to 60 members, then as much more as drifts are re-published more rarely
    (``state_refresh_s(n)`` / 30 s; > 100% at starlink-s1: the charge then goes out as a drift).

    A sunlit satellite charges ~3.5% a minute (``mesh.energy``'s defaults), so at 5% every
    satellite's charge floods the fleet every ~86 s, n² deliveries each time, and a fleet that
    started together does it in waves: at starlink-s1 a wave cost ~120 CPU s of a 1,590-node
    simulation.  Scaled, a fleet's battery news stays under ~1 record a second per node.
    Placement reads ``low`` (always news) and sunlight from physics, not the charge itself."""
    return BATTERY_NEWS_STEP * state_refresh_s(n) / STATE_REFRESH_S


def suspicion_bounds(c: MembershipConfig, n: int) -> tuple[float, float]:
    """(min, max) suspicion timeout in seconds at a healthy node (Lifeguard, ``_set_suspect``)."""
    lo = c.suspicion_mult * max(1.0, math.log10(max(1, n))) * c.probe_interval_s
    return lo, lo * c.suspicion_max_mult


def detection_s(c: MembershipConfig, n: int) -> tuple[float, float]:
    """(expected, bound) seconds from a crash to every live node holding it dead, on a quiet fleet.

    Expected: the first of its ~4 neighbours probes it within ~T, a round (direct and
    indirect pings) takes ~0.4 s, its other neighbours confirm within a period so the
    suspicion ends near its minimum, and Dead floods across ~√n hops, each at most an
    eager gap plus a link.  Bound: 3 periods to the first probe, the maximum suspicion
    (no confirmation at all), two rounds, and the flood at half that pace, plus 1 s.
    With ``spare_heard`` the neighbours that the crashed node pinged last spare their
    next round for it: the first probe comes about half a period later, at most one more.
    """
    lo, hi = suspicion_bounds(c, n)
    hops = math.sqrt(n)
    round_s = 0.4
    spared = 1.0 if c.spare_heard else 0.0
    expected = c.probe_interval_s * (1 + 0.5 * spared) + round_s + lo + c.probe_interval_s * 0.5 \
        + hops * (c.eager_gap_s + 0.01)
    bound = (3 + spared) * c.probe_interval_s + 2 * round_s + hi + 2 * hops * (c.eager_gap_s + 0.02) + 1.0
    return expected, bound


def probe_frames_s(c: MembershipConfig, sats: int) -> float:
    """Probe frames per second that ``sats`` satellites send at ``c``'s period (pings and acks)."""
    return PROBE_FRAMES * sats / c.probe_interval_s


PRESETS: dict[str, Callable[[], MembershipConfig]] = {
    "fleet": fleet_config,
    "constellation": constellation_config,
    "small": small_config,
}
