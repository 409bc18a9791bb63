"""Issue 18's mesh attacks, tried one by one against a live fleet; prints what each got.

    python bench/mesh_attacks.py [--compare /work/main]

Five agents run but one (the rogue, sat-1), whose key the probe holds: it
dials a running neighbour as the rogue and sends one attack at a time, then
reads the target's view (the victim's status and incarnation, the fault
table, the rogue's published state).  ``--compare`` runs the same probe
against another checkout's agents (before the fix) in the same run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.ops import fleet# noqa: E402
from agent.client import ApiError, Client  # noqa: E402
from mesh.gossip_msgs import Dead, Gossip, NodeState, check_state_values  # noqa: E402
from mesh.wire import ChaosUpdate, Control  # noqa: E402
from tests.conftest import free_port_block, member, membership_views  # noqa: E402
from tests.test_mesh_attack import _entry, _neighbour_of, _signed, _speak_as  # noqa: E402

N = 5
ROGUE = "sat-1"


def attacks(v: int, r: int, inc: int, seed: bytes | None, rogue: str, victim: str) -> list[tuple[str, object]]:
    """The attacks; ``seed`` None: in the old wire form (no signatures), for an agent from before them."""
    def S(u):
        return _signed(u, seed) if seed else u

    cut_off = {"kind": "partition", "groups": [[victim]]}

    return [
        ("Dead(victim) at 2^63-1, signed by the rogue", Control(Gossip((S(Dead(v, 2**63 - 1, r)),)))),
        ("Dead(victim) at inc+7, signed by the rogue", Control(Gossip((S(Dead(v, inc + 7, r)),)))),
        ("Dead(victim) 'by the victim', rogue's key", Control(Gossip((S(Dead(v, inc, v)),)))),
        ("Dead(victim) unsigned", Control(Gossip((Dead(v, inc, r),)))),
        ("partition(victim), version inf", ChaosUpdate((_entry("aaaaaaaaaaaa", float("inf"), rogue, seed, cut_off),))),
        ("partition(victim), 30 years ahead", ChaosUpdate((_entry("bbbbbbbbbbbb", time.time() + 1e9, rogue, seed,
                                                                 cut_off),))),
        ("partition(victim), unsigned", ChaosUpdate((_entry("cccccccccccc", time.time(), rogue, None, cut_off),))),
        ("the rogue's own state (valid)", Control(Gossip((S(NodeState(r, 1, check_state_values({"x": 1}))),)))),
    ]


async def probe(spec, peers, target: str, victim: str, signing: bool) -> list[tuple[str, str]]:
    seed = (spec.directory / "data" / ROGUE / "identity.key").read_bytes() if signing else None
    v, r = peers[victim].index, peers[ROGUE].index
    with trio.fail_after(30):
        while (m := member((await membership_views(peers, [target]))[target], victim))["incarnation"] < 1:
            await trio.sleep(0.2)
    inc = m["incarnation"]
    out, damaged = [], False
    for what, msg in attacks(v, r, inc, seed, ROGUE, victim):
        await _speak_as(spec, peers, ROGUE, target, [msg])
        view = (await membership_views(peers, [target]))[target]
        vm = member(view, victim)
        async with Client(peers[target].api) as c:
            try:
                faults = (await c.faults())["faults"]
                nf = f"{len(faults)} fault(s)"
            except ApiError as exc:          # e.g. a fault table holding inf cannot be listed
                faults, nf = [exc], f"fault list fails: {exc}"
        got = (f"victim {vm['status']} at incarnation {vm['incarnation']}; {nf}; "
               f"rogue state {member(view, ROGUE)['state']}")
        out.append((what, got))
        if (vm["status"] != "alive" or vm["incarnation"] != inc or faults) and not damaged:
            damaged = True
            out.append(("", "^ the attack took: the rows below start from this damage"))
    return out


def run_once(pythonpath: str, models: Path) -> list[tuple[str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        base = free_port_block(3 * N)
        spec = fleet.FleetSpec(directory=d, n=N, p2p_base_port=base, api_base_port=base + N,
                               grpc_base_port=base + 2 * N, models=models)
        _, peers = fleet.prepare(spec)
        env = dict(os.environ, PYTHONPATH=pythonpath, PYTHONUNBUFFERED="1", OPENBLAS_NUM_THREADS="1")
        procs = {}
        for name in peers.names():
            if name == ROGUE:
                continue
            cmd = fleet.agent_command(spec, name)
            if Path(pythonpath).resolve() != ROOT:        # an older checkout may not know these
                for flag in ("--roster", "--authority"):
                    i = cmd.index(flag)
                    del cmd[i:i + 2]
            procs[name] = subprocess.Popen(cmd, env=env, cwd=pythonpath, stdout=open(d / f"{name}.log", "ab"),
                                           stderr=subprocess.STDOUT)
        try:
            target = trio.run(partial(_neighbour_of, peers, ROGUE, procs))
            victim = next(n for n in peers.names() if n not in (ROGUE, target))
            return trio.run(probe, spec, peers, target, victim, Path(pythonpath).resolve() == ROOT)
        finally:
            for p in procs.values():
                p.terminate()
            for p in procs.values():
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare", metavar="CHECKOUT")
    ap.add_argument("--models", type=Path, default=ROOT / "models")
    args = ap.parse_args()
    for name, path in [("this tree", str(ROOT))] + ([(args.compare, args.compare)] if args.compare else []):
        print(f"{name}:")
        for what, got in run_once(path, args.models):
            print(f"  {what:<44} {got}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
