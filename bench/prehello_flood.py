"""RSS of a live agent under a pre-Hello flood: many streams that never say Hello.

One agent (node sat-0 of a small local fleet) runs alone; the bench holds
another member's key (sat-1), opens ``--streams`` ISL streams to it and on
each announces an 8 MiB frame and sends its body, never a Hello.  It samples
the agent's VmRSS every 50 ms from before the flood until the Hello timeout
has passed, and prints the peak growth.

    python bench/prehello_flood.py                       # this tree's agent
    python bench/prehello_flood.py --compare /work/main  # and another checkout's, in the same run

Issue 18 measured +200–390 MB for 40 streams before pre-Hello reads were
bounded (agent/links/transport.py); the ratio printed is this tree's growth over
the compared tree's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.ops import fleet# noqa: E402
from agent.client import Client  # noqa: E402
from agent.links.p2p import load_or_create_identity, open_host  # noqa: E402
from mesh.wire import ISL_PROTOCOL  # noqa: E402
from tests.conftest import free_port_block  # noqa: E402

FRAME = 8 << 20
CHUNK = 64 << 10


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def flood(addr: str, key: Path, streams: int, pid: int, watch_s: float) -> dict:
    samples: list[float] = []
    refused = 0

    async def sample() -> None:
        while True:
            samples.append(rss_mb(pid))
            await trio.sleep(0.05)

    async def one(host) -> None:
        nonlocal refused
        try:
            s = await host.open_stream(addr, ISL_PROTOCOL, timeout=10.0)
            await s.send_all(FRAME.to_bytes(4, "big") + b"\0\0\0\0")
            for _ in range(FRAME // CHUNK):
                await s.send_all(b"x" * CHUNK)
        except Exception:
            refused += 1         # the agent closed it: what a bounded agent does

    base = rss_mb(pid)
    async with open_host(load_or_create_identity(key), "127.0.0.1", 0) as host:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample)
            t0 = time.monotonic()
            with trio.move_on_after(watch_s):
                async with trio.open_nursery() as senders:
                    for _ in range(streams):
                        senders.start_soon(one, host)
            await trio.sleep(max(0.0, watch_s - (time.monotonic() - t0)))
            nursery.cancel_scope.cancel()
    return {"base_mb": base, "peak_mb": max(samples), "growth_mb": max(samples) - base, "streams_closed": refused}


def run_once(pythonpath: str, streams: int, models: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        base = free_port_block(3 * 4)
        spec = fleet.FleetSpec(directory=d, n=4, p2p_base_port=base, api_base_port=base + 4,
                               grpc_base_port=base + 8, models=models)
        _, peers = fleet.prepare(spec)
        env = dict(os.environ, PYTHONPATH=pythonpath, PYTHONUNBUFFERED="1")
        log = open(d / "sat-0.log", "ab")
        cmd = fleet.agent_command(spec, "sat-0")
        if Path(pythonpath).resolve() != ROOT:      # an older checkout may not know --roster/--authority
            for flag in ("--roster", "--authority"):
                if flag in cmd:
                    i = cmd.index(flag)
                    del cmd[i:i + 2]
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                cwd=pythonpath)
        try:
            async def ready() -> None:
                with trio.fail_after(60):
                    while True:
                        try:
                            async with Client(peers["sat-0"].api, timeout=1.0) as c:
                                await c.health()
                                return
                        except Exception:
                            await trio.sleep(0.3)
            trio.run(ready)
            time.sleep(1.0)
            return trio.run(flood, peers["sat-0"].multiaddr, d / "data" / "sat-1" / "identity.key", streams,
                            proc.pid, 8.0)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=40)
    ap.add_argument("--compare", metavar="CHECKOUT", help="also flood an agent run from this checkout")
    ap.add_argument("--models", type=Path, default=ROOT / "models")
    args = ap.parse_args()
    rows = [("this tree", run_once(str(ROOT), args.streams, args.models))]
    if args.compare:
        rows.append((args.compare, run_once(args.compare, args.streams, args.models)))
    print(f"pre-Hello flood: {args.streams} streams × an announced {FRAME >> 20} MiB frame, no Hello")
    for name, r in rows:
        print(f"  {name:<16} RSS {r['base_mb']:.0f} MB → peak {r['peak_mb']:.0f} MB (+{r['growth_mb']:.0f} MB); "
              f"streams closed by the agent: {r['streams_closed']}/{args.streams}")
    if len(rows) == 2:
        print(f"  growth ratio (this tree / {args.compare}): {rows[0][1]['growth_mb'] / max(rows[1][1]['growth_mb'], 1e-9):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
