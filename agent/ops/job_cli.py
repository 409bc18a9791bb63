"""``orbitmesh job submit|status|list|result|cancel``: long jobs from the command line (docs/jobs.md).

A job's id names its home node; the commands go to that node's API (from
``.fleet/peers.json``) whatever ``--node`` says, so status and results are
one call away from any shell.  When the home does not answer, or answers
that its job was handed over, they find the node that took it over (its
keeper, named in the last status seen, first) and go on there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

BAR = 30


def progress_line(info: dict[str, Any]) -> str:
    """One line: a bar, inputs done, where the shards run, moves so far."""
    n, done = info["inputs"], info["done"]
    filled = int(BAR * done / max(1, n))
    nodes = sorted({s["node"] for s in info["shards"] if s["node"]}, key=lambda x: (len(x), x))
    where = ", ".join(nodes[:6]) + (f" +{len(nodes) - 6}" if len(nodes) > 6 else "")
    return (f"[{'#' * filled}{'.' * (BAR - filled)}] {done}/{n} inputs  {info['status']}  "
            f"{len(info['shards'])} shards on {where or '(placing)'}  {info['moves']} moves, {info['resent']} resent")


def format_job(info: dict[str, Any]) -> str:
    took = (info["finished"] or time.time()) - info["created"]
    lines = [f"job {info['job_id']}: {info['status']}" + (f" ({info['error']})" if info.get("error") else ""),
             f"  model {info['model']}, {info['inputs']} inputs, chunks of {info['chunk']}, {info['window']} in flight"
             f" per shard{', stateful' if info['stateful'] else ''}, placement {info['target']}",
             f"  {info['done']}/{info['inputs']} done in {took:.1f} s; {info['moves']} moves, {info['resent']} inputs "
             f"sent again, onnxruntime {info['compute_ms']:.0f} ms"
             + (f"; {info['replicas']} replicas a chunk, {len(info['disagreements'])} chunks with a dissenter"
                if info.get("replicas", 1) > 1 else ""),
             "  shard  inputs        node      done   moves  last placement"]
    for s in info["shards"]:
        lo, hi = s["inputs"]
        last = s["moves"][-1]["why"] if s["moves"] else ""
        lines.append(f"  {s['shard']:>5}  {lo:>5}–{hi - 1:<6} {s['node'] or '-':<9} {s['done']:>4}/{hi - lo:<4} "
                     f"{max(0, len(s['moves']) - 1):>5}  {last[:70]}")
    for d in info.get("disagreements", [])[:10]:
        lines.append(f"  inputs {d['inputs'][0]}–{d['inputs'][1]}: {d['decision'] or 'undecided'}; dissenters "
                     f"{', '.join(d['dissenters']) or '-'}, failed {', '.join(d['failed']) or '-'}")
    return "\n".join(lines)


def _inputs(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.inputs:
        raw = Path(args.inputs[1:]).read_text() if args.inputs.startswith("@") else args.inputs
        items = json.loads(raw)
        if not isinstance(items, list):
            raise ValueError("--inputs must be a JSON list of input objects")
        return items
    manifest = json.loads((Path(args.models) / f"{args.model}.json").read_text())
    samples = [s["inputs"] for s in manifest.get("samples") or []]
    if not samples:
        raise ValueError(f"no --inputs given and no samples for {args.model!r} in {args.models}/")
    carried = {pair.split("=", 1)[1] for pair in args.carry or []}
    samples = [{k: v for k, v in s.items() if k not in carried} for s in samples]
    return [samples[i % len(samples)] for i in range(args.samples)]


def _url(args: argparse.Namespace, job_id: str | None = None) -> str:
    from agent.ops.fleet import load_peers
    from agent.serve.jobs_api import home_of
    if args.url:
        return args.url
    peers = load_peers(args.dir)
    home = home_of(job_id) if job_id else ""
    return peers[home].api if home in peers else peers[args.node].api


LOCATE_TIMEOUT_S = 3.0


async def locate(job_id: str, apis: dict[str, str], hint: str | None = None) -> tuple[str, dict[str, Any]]:
    """The API of the node that drives ``job_id`` now, and the job's status there: its home, or the
    keeper that took it over (``hint`` first, then the home, then every other node)."""
    from agent.client import ApiError, Client
    from agent.serve.jobs_api import home_of
    home = home_of(job_id)
    order = [n for n in dict.fromkeys([hint or "", home, *sorted(apis)]) if n in apis]
    seen: dict[str, Any] | None = None
    tried: set[str] = set()
    while order:
        name = order.pop(0)
        if name in tried:
            continue
        tried.add(name)
        try:
            async with Client(apis[name], timeout=LOCATE_TIMEOUT_S) as c:
                info = await c.job(job_id)
        except ApiError:
            continue
        if info["status"] != "handed_over":
            return apis[name], info
        seen = seen or info
        if info.get("handed_to") in apis:
            order.insert(0, info["handed_to"])
    if seen is not None:
        return apis[home], seen
    raise ApiError(404, f"no node of the fleet answers for job {job_id}")


async def _follow(url: str, job_id: str, timeout: float, show: bool,
                  apis: dict[str, str] | None = None) -> dict[str, Any]:
    """Poll until the job ends, with a progress bar; if its home stops answering (or hands the job over)
    and ``apis`` names the fleet, go on at the node that took it over."""
    import trio

    from agent.client import ApiError, Client
    tty = sys.stdout.isatty()
    deadline = time.monotonic() + timeout
    last_print, keeper = 0.0, None
    while True:
        try:
            async with Client(url, timeout=30) as c:
                info = await c.job(job_id, wait=1.0)
        except ApiError as exc:
            if not apis or exc.status not in (0, 502, 503, 504) or time.monotonic() > deadline:
                raise
            info = None
        if info is None or (info["status"] == "handed_over" and apis):
            try:
                url, info = await locate(job_id, apis, (info or {}).get("handed_to") or keeper)
            except ApiError:
                await trio.sleep(1.0)     # nobody drives it yet: its keeper takes it over once the home is dead
                continue
            if show:
                print(("\n" if tty else "") + f"job {job_id} now followed at {url}"
                      + (f" (taken over from {info['taken_from']})" if info.get("taken_from") else ""), flush=True)
        keeper = (info.get("copy") or {}).get("keeper") or keeper
        if show and (tty or time.monotonic() - last_print > 5 or info["status"] != "running"):
            print(("\r" if tty else "") + progress_line(info), end="" if tty else "\n", flush=True)
            last_print = time.monotonic()
        if info["status"] != "running" or time.monotonic() > deadline:
            if show and tty:
                print()
            return info
        await trio.sleep(0.5 if info["status"] == "running" else 0)


def _apis(args: argparse.Namespace) -> dict[str, str] | None:
    from agent.ops.fleet import FleetError, load_peers
    if args.url:
        return None
    try:
        peers = load_peers(args.dir)
        return {name: peers[name].api for name in peers.names()}
    except (FleetError, OSError):
        return None


def cmd_job(args: argparse.Namespace) -> int:
    import trio

    from agent.client import ApiError, Client
    from agent.ops.fleet import FleetError
    try:
        if args.action == "submit":
            items = _inputs(args)
            state = {"carry": dict(p.split("=", 1) for p in args.carry)} if args.carry else None
        url = _url(args, getattr(args, "job_id", None))
    except (FleetError, KeyError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    apis = _apis(args)

    async def main() -> tuple[dict[str, Any], str]:
        nonlocal url
        if args.action in ("status", "result", "cancel") and apis:
            try:
                async with Client(url, timeout=LOCATE_TIMEOUT_S) as c:
                    here = await c.job(args.job_id)
                if here["status"] == "handed_over":
                    url = (await locate(args.job_id, apis, here.get("handed_to")))[0]
            except ApiError as exc:
                if exc.status != 0:
                    raise
                url = (await locate(args.job_id, apis))[0]    # the home does not answer: who took it over?
        async with Client(url, timeout=30) as c:
            if args.action == "submit":
                info = await c.submit_job(args.model, items, shards=args.shards, chunk=args.chunk, window=args.window,
                                          target=args.policy, timeout_s=args.timeout, state=state,
                                          replicas=args.replicas, agreement=args.agreement)
                if not args.json:
                    print(f"job {info['job_id']} accepted at {url}: {info['inputs']} inputs in "
                          f"{len(info['shards'])} shards")
                if args.no_wait:
                    return info, "status"
                return await _follow(url, info["job_id"], args.timeout + 5, not args.json, apis), "status"
            if args.action == "status":
                if args.watch:
                    return await _follow(url, args.job_id, 24 * 3600, not args.json, apis), "status"
                return await c.job(args.job_id), "status"
            if args.action == "list":
                return await c.jobs(), "list"
            if args.action == "cancel":
                return await c.cancel_job(args.job_id), "status"
            return await c.job_result(args.job_id, arrays=False), "result"

    try:
        body, kind = trio.run(main)
    except ApiError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    if kind == "result":
        if args.out:
            Path(args.out).write_text(json.dumps(body))
            print(f"{len(body['outputs'])} outputs of job {body['job_id']} written to {args.out}")
        else:
            print(json.dumps(body))
        return 0
    if args.json:
        print(json.dumps(body, indent=1))
    elif kind == "list":
        for j in body["jobs"]:
            print(f"{j['job_id']}  {j['status']:<9} {j['done']}/{j['inputs']} inputs  {j['model']}  "
                  f"{j['moves']} moves")
        if not body["jobs"]:
            print(f"no jobs at {body['node']}")
        for k in body.get("kept", []):
            print(f"{k['job_id']}  copy kept for {k['home']}: {k['checkpointed']}/{k['inputs']} inputs checkpointed"
                  + (", taken over" if k["taken"] else ""))
    else:
        print(format_job(body))
    return 0 if kind != "status" or body["status"] in ("running", "succeeded", "cancelled", "handed_over") else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("job", help="submit a long job (many inputs, sharded, checkpointed); follow, fetch, cancel it")
    p.add_argument("--node", default="sat-0", help="the node to submit to: the job's home (default sat-0)")
    p.add_argument("--url", help="API URL instead of --node")
    p.add_argument("--json", action="store_true")
    act = p.add_subparsers(dest="action", required=True)
    s = act.add_parser("submit", help="submit a job and show its progress until it ends")
    s.add_argument("model")
    src = s.add_mutually_exclusive_group()
    src.add_argument("--inputs", help="JSON list of input objects, or @FILE")
    src.add_argument("--samples", type=int, default=100, help="without --inputs: the model's sample inputs, "
                     "repeated to this many (default 100)")
    s.add_argument("--shards", type=int, help="shards, each on its own satellite (default 8; 1 if stateful)")
    s.add_argument("--chunk", type=int, help="inputs per chunk, i.e. per checkpoint (default 8)")
    s.add_argument("--window", type=int, help="chunks in flight per shard (default 2; 1 if stateful)")
    s.add_argument("--policy", default=None, help="placement: auto, nearest or sunlit (default auto)")
    s.add_argument("--carry", action="append", metavar="OUTPUT=INPUT",
                   help="a stateful step: OUTPUT of each input feeds INPUT of the next (initial state zeros)")
    s.add_argument("--replicas", type=int, help="run every chunk on this many satellites, one per plane, and vote")
    s.add_argument("--agreement", choices=("first", "majority"), help="with --replicas: the vote (default majority)")
    s.add_argument("--timeout", type=float, default=600.0, help="the job's deadline in seconds (default 600)")
    s.add_argument("--no-wait", action="store_true", help="print the job id and return")
    for name, what in (("status", "a job's shards, where they run, moves and progress"),
                       ("result", "every input's outputs, in order (JSON)"), ("cancel", "stop a job")):
        a = act.add_parser(name, help=what)
        a.add_argument("job_id")
        if name == "status":
            a.add_argument("--watch", action="store_true", help="follow it with a progress bar until it ends")
        if name == "result":
            a.add_argument("--out", help="write the result JSON to this file")
    act.add_parser("list", help="the jobs this node is home to")
    p.set_defaults(func=cmd_job)
