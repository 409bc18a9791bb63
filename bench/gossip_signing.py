"""What signed gossip costs: Ed25519 per record, and a whole membership run signed vs unsigned.

    python bench/gossip_signing.py

1. Per record (``cryptography``'s Ed25519, as the agent wires it through
   ``agent.links.roster.mesh_trust``): sign, verify, and a repeated check answered
   by ``mesh.trust.Trust``'s cache.
2. Membership on the in-memory twin of tests/test_membership.py (a 4×4
   torus, 10% loss, a state change per node per second, one node killed):
   the same seeded run with and without trust, measured in the same process:
   CPU seconds, gossip frames and update bytes, and their ratios.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from mesh.gossip_msgs import Dead, NodeState, check_state_values, encode, signed_bytes  # noqa: E402
from mesh.membership import Membership  # noqa: E402
from tests.test_membership import N, Twin, cfg  # noqa: E402
from tests.test_trust import TrustedTwin  # noqa: E402


def _best(fn, n: int, repeats: int = 5) -> float:
    """µs per call, best of ``repeats`` (the machine is shared: the minimum is the cost)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n)
    return best * 1e6


def per_record(n: int = 500) -> dict[str, float]:
    from tests.test_trust import sign, trust
    key = Ed25519PrivateKey.generate()
    pub = key.public_key()
    rec = NodeState(3, 7, check_state_values({"load": 0.4, "queue": 2, "models": ["digits", "cloudmask"]}))
    payload = signed_bytes(rec)
    sig = key.sign(payload)
    tr = trust(0)
    u = sign(Dead(2, 0, 1), 1)
    tr.check(u)
    return {"sign_us": _best(lambda: key.sign(payload), n), "verify_us": _best(lambda: pub.verify(sig, payload), n),
            "cached_check_us": _best(lambda: tr.check(u), n)}


def run(twin_cls, seconds: float = 20.0, repeats: int = 3) -> dict[str, float]:
    """The run ``repeats`` times; its counts, and the least CPU it took."""
    out = min((_run(twin_cls, seconds) for _ in range(repeats)), key=lambda r: r["cpu_s"])
    return out


def _run(twin_cls, seconds: float) -> dict[str, float]:
    tw = twin_cls(cfg(), loss=0.1, seed=7)
    rng = random.Random(7)
    cpu = time.process_time()
    t = 0.0
    while t < seconds:
        t += 1.0
        for i in tw.live():
            tw.out(i, tw.nodes[i].set_state(tw.now, {"load": round(rng.random(), 2)}))
        if t == 5.0:
            tw.kill(5)
        tw.run(t)
    cpu = time.process_time() - cpu
    gossip = [m for _, _, m in tw.sent if type(m).__name__ == "Gossip"]
    frames = len(tw.sent)
    ups = sum(len(getattr(m, "updates", ())) for _, _, m in tw.sent)
    upd_bytes = sum(u.wire_size for _, _, m in tw.sent for u in getattr(m, "updates", ()))
    dead_everywhere = all(tw.nodes[i].status(5) == "dead" for i in tw.live())
    return {"cpu_s": cpu, "frames": frames, "gossip_frames": len(gossip), "updates": ups,
            "update_bytes": upd_bytes, "frame_bytes": sum(len(encode(m)) for _, _, m in tw.sent),
            "dead_everywhere": dead_everywhere}


def main() -> int:
    r = per_record()
    print("per record (cryptography Ed25519, this machine):")
    print(f"  sign {r['sign_us']:.1f} µs   verify {r['verify_us']:.1f} µs   "
          f"repeated check (cache) {r['cached_check_us']:.2f} µs   verify/cached = {r['verify_us'] / r['cached_check_us']:.0f}×")
    plain, signed = run(Twin), run(TrustedTwin)
    print(f"membership twin: {N} nodes, 20 s virtual, 10% loss, a state change per node per second, one death")
    print(f"  {'':<14}{'unsigned':>12}{'signed':>12}{'ratio':>8}")
    for k in ("cpu_s", "frames", "gossip_frames", "updates", "update_bytes", "frame_bytes"):
        a, b = plain[k], signed[k]
        print(f"  {k:<14}{a:>12.3f}{b:>12.3f}{b / a if a else float('nan'):>8.2f}" if k == "cpu_s"
              else f"  {k:<14}{a:>12d}{b:>12d}{b / a if a else float('nan'):>8.2f}")
    print(f"  death known everywhere: unsigned {plain['dead_everywhere']}, signed {signed['dead_everywhere']}")
    print(f"  frame rate per node: unsigned {plain['frames'] / N / 20:.1f}/s, signed {signed['frames'] / N / 20:.1f}/s; "
          f"mean frame {plain['frame_bytes'] / plain['frames']:.0f} B unsigned, "
          f"{signed['frame_bytes'] / signed['frames']:.0f} B signed")
    per_node_s = signed["cpu_s"] / N / 20.0
    print(f"  signed CPU per node: {per_node_s * 1e3:.2f} ms per second of protocol time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
