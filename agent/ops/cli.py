"""The ``orbitmesh`` command line."""

from __future__ import annotations

import argparse
from functools import partial
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from agent.agent_cli import setup_logging

DEFAULT_DIR = Path(".fleet")


# -- printing ------------------------------------------------------------------

def format_task(rec: dict[str, Any], expected_label: int | None = None) -> str:
    lines = []
    head = f"task {rec['task_id'][:8]}  {rec['entry']} → {rec['executor']}  {rec['model']}  {rec['status'].upper()}"
    if rec["status"] == "succeeded" and rec.get("outputs"):
        out = rec["outputs"]
        if "label" in out:
            label = out["label"]["data"][0]
            head += f"  label={label}"
            if expected_label is not None:
                head += f" (true {expected_label}) " + ("✓" if label == expected_label else "✗")
        else:
            head += "  outputs: " + ", ".join(f"{k}{v['shape']}" for k, v in out.items())
    elif rec.get("error"):
        head += f"  error: {rec['error']}"
    lines.append(head)
    trace = rec.get("trace") or []
    if trace:
        lines.append(f"    {'node':<8} {'event':<8} {'link physics':>13} {'link measured':>14} {'dwell':>9}")
        for h in trace:
            phys = f"{h['link_expected_ms']:.3f} ms" if h.get("link_expected_ms") is not None else "—"
            meas = f"{h['link_measured_ms']:.3f} ms" if h.get("link_measured_ms") is not None else "—"
            lines.append(f"    {h['node']:<8} {h['event']:<8} {phys:>13} {meas:>14} {h['dwell_ms']:>6.2f} ms"
                         + (f"  {h['detail']}" if h.get("detail") else ""))
    lat = rec.get("latency")
    if lat:
        lines.append(f"    total {lat['total_ms']:.2f} ms = physics {lat['physics_ms']:.2f} ms "
                     f"({lat['hops']} link crossings) + compute {lat['compute_ms']:.2f} ms "
                     f"+ overhead {lat['overhead_ms']:.2f} ms")
    rep = rec.get("replicas")
    if rep:
        each = ", ".join(f"{r['node']} {r['status']}" + (f" {r['digest'][:8]}" if r.get("digest") else "")
                         for r in rep["replicas"])
        lines.append(f"    replicas ({rep['agreement']}): {each}")
        lines.append(f"    decision: {rep['decision'] or 'pending'}"
                     + (f"; disagreed: {', '.join(rep['dissenters'])}" if rep["dissenters"] else "")
                     + (f"; failed: {', '.join(rep['failed'])}" if rep["failed"] else ""))
    return "\n".join(lines)


_last_progress = [-1]


def _progress(ready: int, total: int) -> None:
    if ready == _last_progress[0]:
        return
    _last_progress[0] = ready
    bar = "#" * ready + "." * (total - ready)
    if sys.stdout.isatty():
        print(f"\r  agents ready {ready:>3}/{total} [{bar}]", end="" if ready < total else "\n", flush=True)
    else:
        print(f"  agents ready {ready:>3}/{total} [{bar}]", flush=True)


# -- commands --------------------------------------------------------------------

def _token(args: argparse.Namespace) -> str | None:
    """The API token for this command: $ORBITMESH_TOKEN, $ORBITMESH_TOKEN_FILE or the fleet directory's."""
    from agent.serve.auth import client_token
    return client_token(args.dir)


def _spec(args: argparse.Namespace):
    from agent.ops.fleet import FleetSpec
    return FleetSpec(directory=args.dir, preset=args.preset, n=args.n, host=args.host,
                     p2p_base_port=args.p2p_port, api_base_port=args.api_port, grpc_base_port=args.grpc_port,
                     time_scale=args.time_scale, models=args.models, ground=tuple(args.ground or ()),
                     handover=args.handover, auth=not args.no_auth, sats_per_process=args.sats_per_process)


def _start_fleet(args: argparse.Namespace):
    import trio

    from agent.ops import fleet
    spec = _spec(args)
    t0 = time.monotonic()
    cfg, peers, procs = fleet.start(spec)
    n_ground = len(peers.names()) - cfg.size
    print(f"starting {cfg.size} satellite{'' if not n_ground else f' and {n_ground} ground-station'} agents ({cfg.name}: "
          + ", ".join(f"{s.planes}×{s.sats_per_plane} at {s.altitude_km:.0f} km, {s.inclination_deg:.0f}°" for s in cfg.shells)
          + f"); logs in {spec.directory}/logs/")
    try:
        trio.run(partial(fleet.wait_ready, peers, args.ready_timeout, _progress, procs,
                         log_dir=spec.directory / "logs"))
    except BaseException:
        print()
        fleet.stop(spec.directory)
        raise
    print(f"  all {len(peers.names())} agents up with every link established in {time.monotonic() - t0:.1f} s")
    return spec, cfg, peers, procs


def cmd_up(args: argparse.Namespace) -> int:
    from agent.ops.fleet import FleetError
    try:
        spec, cfg, peers, _ = _start_fleet(args)
    except FleetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"API of sat-0: {peers['sat-0'].api}   stop with: orbitmesh down --dir {spec.directory}")
    print(f"control calls need the token in {spec.directory}/token (the CLI and SDK read it; curl: "
          f"-H \"Authorization: Bearer $(cat {spec.directory}/token)\")" if spec.auth else
          "WARNING: --no-auth: anyone who can reach these ports controls the fleet")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from agent.ops.fleet import stop
    n = stop(args.dir)
    print(f"stopped {n} agents" if n else f"no agents running from {args.dir}/")
    return 0


def _load_samples(models: Path, model: str) -> list[dict[str, Any]]:
    try:
        return json.loads((models / f"{model}.json").read_text()).get("samples", [])
    except (OSError, ValueError):
        return []


def cmd_submit(args: argparse.Namespace) -> int:
    import trio

    from agent.client import ApiError, Client
    from agent.ops.fleet import FleetError, load_peers
    expected = None
    if args.inputs:
        raw = Path(args.inputs[1:]).read_text() if args.inputs.startswith("@") else args.inputs
        try:
            inputs = json.loads(raw)
        except ValueError as exc:
            print(f"error: --inputs is not JSON: {exc}", file=sys.stderr)
            return 2
    else:
        samples = _load_samples(args.models, args.model)
        if not samples:
            print(f"error: no --inputs given and no sample inputs for {args.model!r} in {args.models}/", file=sys.stderr)
            return 2
        sample = samples[args.sample % len(samples)]
        inputs, expected = sample["inputs"], sample.get("label")
    try:
        url = args.url or load_peers(args.dir)[args.node].api
    except (FleetError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    try:
        token = _token(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def main() -> dict[str, Any]:
        async with Client(url, token=token) as c:
            accepted = await c.submit(args.model, inputs, args.target, replicas=args.replicas,
                                      agreement=args.agreement, cache=False if args.no_cache else None)
            return await c.wait(accepted["task_id"], timeout=args.timeout)

    try:
        rec = trio.run(main)
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(rec, indent=1) if args.json else format_task(rec, expected))
    return 0 if rec["status"] == "succeeded" else 1


def cmd_run(args: argparse.Namespace) -> int:
    """The main job: bring a fleet up, answer a batch of real tasks, stay up."""
    import trio

    from agent.ops.fleet import FleetError, stop
    try:
        spec, cfg, peers, procs = _start_fleet(args)
    except FleetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        return trio.run(_demo_batch, args, spec, peers, procs)
    except KeyboardInterrupt:
        print("\ninterrupted")
        return 130
    finally:
        print(f"stopping {len(procs)} agents …")
        stop(spec.directory)


async def _demo_batch(args: argparse.Namespace, spec: Any, peers: Any, procs: dict) -> int:
    import trio

    from agent.client import ApiError, Client
    from mesh.config import parse_config
    from mesh.world import World

    cfg = parse_config((spec.directory / "config.toml").read_text())
    snap = World.from_config(cfg).topology.snapshot(cfg.clock.orbit_t(time.time()))
    names = peers.names()
    sats = [n for n in names if peers[n].index < cfg.size]     # the world has the ground stations too
    entries = [names[i * len(names) // args.entries] for i in range(args.entries)]
    samples = _load_samples(spec.models, "digits")
    jobs = []
    for k in range(args.tasks):
        entry = entries[k % len(entries)]
        # the farthest node from this entry, so the task crosses the mesh
        far = max(sats, key=lambda n: (snap.shortest_path(peers[entry].index, peers[n].index) or ([], -1))[1])
        sample = samples[k % len(samples)]
        jobs.append((entry, far, sample))
    print(f"\nsubmitting {len(jobs)} digit-classification tasks to {len(entries)} entry nodes "
          f"({', '.join(entries)}), each to the farthest satellite:\n")
    results: list[tuple[dict, int]] = [None] * len(jobs)  # type: ignore[list-item]

    token = _token(args)

    async def one(i: int, entry: str, target: str, sample: dict) -> None:
        async with Client(peers[entry].api, token=token) as c:
            try:
                acc = await c.submit("digits", sample["inputs"], target)
                results[i] = (await c.wait(acc["task_id"], timeout=60), sample["label"])
            except ApiError as exc:
                results[i] = ({"task_id": "-" * 8, "entry": entry, "executor": target, "model": "digits",
                               "status": "failed", "error": str(exc)}, sample["label"])

    async with trio.open_nursery() as n:
        for i, (entry, far, sample) in enumerate(jobs):
            n.start_soon(one, i, entry, far, sample)
    ok = correct = 0
    overheads, totals = [], []
    for rec, label in results:
        print(format_task(rec, label) + "\n")
        if rec["status"] == "succeeded":
            ok += 1
            correct += rec["outputs"]["label"]["data"][0] == label
            overheads.append(rec["latency"]["overhead_ms"])
            totals.append(rec["latency"]["total_ms"])
    print(f"{ok}/{len(results)} tasks succeeded, {correct} classified correctly"
          + (f"; median end-to-end {statistics.median(totals):.1f} ms, median overhead beyond "
             f"physics+compute {statistics.median(overheads):.2f} ms" if totals else ""))
    print(f"\nfleet is up — try:  orbitmesh status   |   orbitmesh submit --node sat-3 --target sat-17   "
          f"|   curl {peers['sat-0'].api}/v1/node   (control calls: -H \"Authorization: Bearer $(cat "
          f"{spec.directory}/token)\")")
    if args.duration is not None:
        print(f"keeping it up for {args.duration:.0f} s (Ctrl-C stops it sooner)")
        await trio.sleep(args.duration)
    else:
        print("Ctrl-C stops it")
        await trio.sleep_forever()
    return 0 if ok == len(results) else 1


# -- parser ------------------------------------------------------------------------

def _fleet_args(p: argparse.ArgumentParser) -> None:
    from mesh.handover import HANDOVER_POLICIES
    p.add_argument("-n", type=int, default=None, help="number of satellites (default: the preset's)")
    p.add_argument("--preset", default="demo", help="constellation preset (default: demo, 4×6 at 550 km)")
    p.add_argument("--host", default="127.0.0.1", help="address agents listen on")
    p.add_argument("--p2p-port", type=int, default=4100, help="first libp2p port (one per agent)")
    p.add_argument("--api-port", type=int, default=8100, help="first HTTP API port (one per agent)")
    p.add_argument("--grpc-port", type=int, default=7100,
                   help="first gRPC inference port (Open Inference Protocol; one per agent)")
    p.add_argument("--time-scale", type=float, default=None, help="orbital seconds per wall second")
    p.add_argument("--ready-timeout", type=float, default=180.0, help="seconds to wait for every agent")
    p.add_argument("--ground", action="append", metavar="STATION",
                   help="also run a ground-station agent (a built-in name such as london, or lat,lon); repeatable")
    p.add_argument("--handover", choices=HANDOVER_POLICIES, default=None,
                   help="which satellites a ground station links to: all, or one by highest_elevation, "
                        "longest_visibility or sticky (default: the preset's, all); see docs/physics.md")
    p.add_argument("--no-auth", action="store_true",
                   help="an open lab: agents take control calls without a token (default: a token in DIR/token, "
                        "$ORBITMESH_TOKEN if set); see docs/security.md")
    p.add_argument("--sats-per-process", type=int, default=1, metavar="K",
                   help="host K satellites per agent process (default 1): links inside a process go over memory, "
                        "between processes over libp2p; docs/sat-hosts.md")


def parser() -> argparse.ArgumentParser:
    from agent import agent_cli
    ap = argparse.ArgumentParser(prog="orbitmesh", description="Emulate an orbital compute constellation.")
    agent_cli.add_common_args(ap)
    ap.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="fleet directory (default: .fleet)")
    sub = ap.add_subparsers(dest="command", required=True)

    agent_cli.register(sub)

    p = sub.add_parser("up", help="start a local fleet in the background")
    _fleet_args(p)
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop the local fleet")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("submit", help="submit a task to a node and print its result and trace")
    p.add_argument("--node", default="sat-0", help="entry node (default: sat-0)")
    p.add_argument("--url", help="entry node API URL (instead of --node)")
    p.add_argument("--model", default="digits")
    p.add_argument("--target", help="a node to run it on, or auto (the default), nearest or sunlit: placement decides")
    p.add_argument("--inputs", help="inputs as JSON, or @FILE (default: a sample from the model's manifest)")
    p.add_argument("--sample", type=int, default=0, help="which manifest sample to send")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--replicas", type=int, help="run on this many satellites, one per plane, and agree")
    p.add_argument("--agreement", choices=["majority", "first"], help="with --replicas (default: majority)")
    p.add_argument("--no-cache", action="store_true", help="compute even if the entry holds the answer")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("run", help="start a fleet, answer a batch of real tasks, stay up until Ctrl-C")
    _fleet_args(p)
    p.add_argument("--tasks", type=int, default=8, help="tasks in the demo batch")
    p.add_argument("--entries", type=int, default=4, help="distinct entry nodes")
    p.add_argument("--duration", type=float, default=None, help="stay up this many seconds, then stop")
    p.set_defaults(func=cmd_run)

    from agent.ops import (chaos_cli, check, compose, console_cli, job_cli, k8s, sim_cli, stack, status_cli, time_cli, topo_cli)
    from agent.links import roster
    status_cli.register(sub)
    console_cli.register(sub)
    job_cli.register(sub)
    roster.register(sub)
    chaos_cli.register(sub)
    time_cli.register(sub)
    check.register(sub)
    compose.register(sub)
    stack.register(sub)
    k8s.register(sub)
    topo_cli.register(sub)
    sim_cli.register(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.verbose)
    from agent.serve.auth import use_fleet_dir
    use_fleet_dir(args.dir)           # every client of this command finds the fleet's token there
    return args.func(args)
