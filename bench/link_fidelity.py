"""Link fidelity on a local fleet: measured one-way delay minus physics, and loss.

For every laser link of the fleet (both directions), a node sends numbered
probe frames of SIZE bytes at RATE frames/s; the receiver records each
frame's release time minus its due time (sent + distance/c + serialization).
Baselines from the same run: the one-way latency of a raw trio TCP socket on
loopback (the transport latency the emulator cancels out) and the physics
delay itself.  Then a configured loss rate is compared with the measured one.

    python bench/link_fidelity.py [-n 24] [--rate 100] [--seconds 5] [--sizes 1024,65536]
"""

from __future__ import annotations

import argparse
import math
from functools import partial
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from agent.client import Client  # noqa: E402
from tests.conftest import local_fleet  # noqa: E402


async def raw_socket_one_way(size: int, rate: float, seconds: float) -> list[float]:
    """One-way latency of SIZE-byte writes on a plain trio loopback socket."""
    lat: list[float] = []
    count = int(rate * seconds)

    async def server(stream: trio.SocketStream) -> None:
        buf = bytearray()
        while len(lat) < count:
            data = await stream.receive_some(1 << 20)
            if not data:
                return
            buf += data
            while len(buf) >= size:
                sent = float(bytes(buf[:32]).rstrip(b"\0"))
                lat.append(time.time() - sent)
                del buf[:size]

    async with trio.open_nursery() as n:
        listeners = await n.start(partial(trio.serve_tcp, server, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        start = trio.current_time()
        for i in range(count):
            await trio.sleep_until(start + i / rate)
            await stream.send_all(f"{time.time():.9f}".encode().ljust(32, b"\0") + b"\0" * (size - 32))
        with trio.move_on_after(5):
            while len(lat) < count:
                await trio.sleep(0.01)
        n.cancel_scope.cancel()
    return lat


async def probe_all_links(peers, links, size, rate, seconds, concurrent):
    limiter = trio.CapacityLimiter(concurrent)

    async def one(src, dst):
        async with limiter:
            async with Client(peers[src].api) as c:
                await c.probe(dst, rate_hz=rate, size=size, duration_s=seconds)
            await trio.sleep(seconds + 0.5)

    async with trio.open_nursery() as n:
        for src, dst in links:
            n.start_soon(one, src, dst)


async def collect(peers):
    errors, sent, received = [], {}, {}
    for name in peers.names():
        async with Client(peers[name].api) as c:
            for link in (await c.links(samples=True))["links"]:
                errors.extend(link["probe_errors_s"])
                sent[(name, link["peer"])] = link["probes_sent"]
                received[(link["peer"], name)] = link["probes_received"]
    return errors, sent, received


def pcts(xs_ms):
    return (f"p50 {np.percentile(xs_ms, 50):.3f} ms, p99 {np.percentile(xs_ms, 99):.3f} ms, "
            f"max {max(xs_ms):.3f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=24)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--sizes", default="1024,65536")
    ap.add_argument("--concurrent-links", type=int, default=8,
                    help="link directions probed at once (all of them at once saturates 2 cores)")
    ap.add_argument("--loss", type=float, default=0.10)
    ap.add_argument("--loss-frames", type=int, default=2000)
    ap.add_argument("--models", type=Path, default=Path("models"))
    args = ap.parse_args()
    print(f"machine: {platform.node()} {platform.machine()} cores {__import__('os').cpu_count()} "
          f"python {platform.python_version()} date {time.strftime('%Y-%m-%d %H:%M')}")
    with tempfile.TemporaryDirectory() as d:
        with local_fleet(Path(d), args.models, args.n, ready_timeout=180.0) as (_, cfg, peers, _):
            from agent.ops.chaos_cli import fleet_topo
            topo = fleet_topo(Path(d))
            links = sorted(tuple(sorted(link)) for link in topo.links)
            directed = links + [(b, a) for a, b in links]
            for size in (int(s) for s in args.sizes.split(",")):
                raw = trio.run(raw_socket_one_way, size, args.rate, args.seconds)
                before, _, _ = trio.run(collect, peers)
                trio.run(probe_all_links, peers, directed, size, args.rate, args.seconds, args.concurrent_links)
                errors, _, _ = trio.run(collect, peers)
                errs_ms = [e * 1e3 for e in errors[len(before):]] if len(errors) > len(before) else [e * 1e3 for e in errors]
                raw_ms = [x * 1e3 for x in raw]
                print(f"\n{size}-byte frames, {args.rate:g}/s on each of {len(directed)} link directions "
                      f"({args.concurrent_links} at a time), {len(errs_ms)} frames:")
                print(f"  baseline raw trio socket one-way latency: {pcts(raw_ms)}")
                print(f"  emulation error (release − due, i.e. measured − physics): {pcts(errs_ms)}")
                abs_p99 = np.percentile(np.abs(errs_ms), 99)
                print(f"  p99 |error| {abs_p99:.3f} ms (goal ≤ 0.5 ms); "
                      f"ratio to raw socket p99 latency {abs_p99 / np.percentile(raw_ms, 99):.2f}; "
                      f"share within 0.5 ms {np.mean(np.abs(errs_ms) <= 0.5) * 100:.2f}%")
            # configured vs measured loss on a few links
            sample_links = links[:: max(1, len(links) // 6)][:6]

            async def loss_run():
                async with Client(peers[peers.names()[0]].api) as c:
                    ids = [(await c.apply_fault({"kind": "loss", "a": a, "b": b, "loss": args.loss,
                                                 "direction": "a->b"}))["fault"]["id"] for a, b in sample_links]
                await trio.sleep(0.5)
                _, sent0, recv0 = await collect(peers)
                await probe_all_links(peers, sample_links, 1024, 500.0, args.loss_frames / 500.0, len(sample_links))
                _, sent1, recv1 = await collect(peers)
                async with Client(peers[peers.names()[0]].api) as c:
                    for fid in ids:
                        await c.clear_faults(fid)
                return [(sent1[k] - sent0[k], recv1[k] - recv0[k]) for k in sample_links]

            results = trio.run(loss_run)
            print(f"\nconfigured loss {args.loss * 100:g}% (Bernoulli) on {len(sample_links)} links:")
            inside = 0
            for (a, b), (sent, got) in zip(sample_links, results):
                lost = sent - got
                p = args.loss
                half = 1.96 * math.sqrt(sent * p * (1 - p))
                ok = sent * p - half <= lost <= sent * p + half
                inside += ok
                print(f"  {a}→{b}: {lost}/{sent} lost = {lost / sent * 100:.2f}% "
                      f"(95% interval {(sent * p - half) / sent * 100:.2f}–{(sent * p + half) / sent * 100:.2f}%) "
                      f"{'inside' if ok else 'OUTSIDE'}")
            total_sent = sum(s for s, _ in results)
            total_lost = sum(s - g for s, g in results)
            print(f"  overall {total_lost}/{total_sent} = {total_lost / total_sent * 100:.2f}% "
                  f"(measured / configured = {total_lost / total_sent / args.loss:.3f}); {inside}/{len(results)} "
                  f"links inside their 95% interval (expect ~95%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
