"""Drive a running swarm stack: identities from task slots, per-node keys, tasks through the routing mesh, a replica killed.

Run by deploy/test-swarm.sh after ``docker stack deploy``; a stack of hosts
(``orbitmesh stack --sats-per-container K``, found by its ``host-0`` service) gets
the same checks, with the victim killed and started alone inside its host, then
a host's replica killed (deploy/swarm_nodes.py).  Tasks go where a
user's go: port 8080 of the machine, which the routing mesh hands to some
replica.  Per-node views (health, identity, membership) are read inside each
replica through the engine (``docker exec``: the overlay network is not
reachable from the host).  The last line is "N passed, M failed".

    python deploy/swarm_e2e.py --stack orbitmesh-ci --models models --keys /tmp/…/stack-keys

``--keys``: the directory ``orbitmesh stack`` issued the keys into; its
signed roster is what every replica's peer id must match.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "deploy"))

from agent.ops.engine_chaos import ChaosError, SwarmChaos  # noqa: E402
from compose_e2e import Checks, api_token, label_of, path_of, reference_labels  # noqa: E402
from agent.serve.auth import bearer  # noqa: E402
from agent.links.roster import holds_key  # noqa: E402
from agent.links.fleet_identity import slot_ports  # noqa: E402
from swarm_nodes import check_host_keys, host_kill, node_get, restart_hosted  # noqa: E402

class Mesh:
    """The stack's API as a user sees it: one address, any replica behind it."""

    def __init__(self, url: str):
        self.url = url
        self.http = httpx.Client(timeout=httpx.Timeout(30.0, connect=3.0), headers=bearer(api_token()))

    def run_task(self, target: str, sample: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
        """Submit (idempotently: a replica that vanishes mid-request is asked again) and wait."""
        body = {"model": "digits", "inputs": sample["inputs"], "target": target, "timeout_s": timeout_s,
                "idempotency_key": uuid.uuid4().hex}
        start = time.monotonic()
        deadline = start + timeout_s + 30.0
        task_id, rec, last_err = None, {}, ""
        while time.monotonic() < deadline:
            try:
                if task_id is None:
                    r = self.http.post(self.url + "/v1/tasks", json=body)
                    if r.status_code not in (200, 202):
                        last_err = f"HTTP {r.status_code}: {r.text[:200]}"
                        if r.status_code < 500:
                            break
                        time.sleep(1.0)
                        continue
                    task_id = r.json()["task_id"]
                wait = max(0.1, min(10.0, deadline - time.monotonic()))
                r = self.http.get(f"{self.url}/v1/tasks/{task_id}", params={"wait": f"{wait:.1f}"}, timeout=wait + 8)
                if r.status_code == 200:
                    rec = r.json()
                    if rec.get("status") in ("succeeded", "failed"):
                        break
                else:
                    last_err = f"HTTP {r.status_code}: {r.text[:200]}"
                    time.sleep(0.5)
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                last_err = f"{type(exc).__name__}: {exc}"     # the replica behind the port went away
                time.sleep(0.5)
        rec = dict(rec) if rec else {"status": "error", "error": last_err or "no answer"}
        rec["elapsed"] = time.monotonic() - start
        return rec


def check_keys(nodes: dict[str, Any], ids: dict[str, str | None], keys_dir: Path | None, checks: Checks) -> None:
    """Each replica holds its own node's key and nothing else secret: not another node's key,
    not a fleet secret from which keys derive."""
    held: dict[str, tuple[list[str], str]] = {}
    for n, c in nodes.items():
        code, out = c.exec_run(["bash", "-c", "ls -A /run/secrets; echo ---; cat /run/secrets/node-key"])
        listing, _, key = out.decode(errors="replace").partition("---\n")
        held[n] = (sorted(listing.split()), key.strip() if code == 0 else "")
    extra = {n: ls for n, (ls, _) in held.items() if ls != ["api-token", "node-key"]}
    checks.check(not extra, f"every replica's /run/secrets holds only api-token and node-key ({len(held)} replicas)",
                 "; ".join(f"{n}: {ls}" for n, ls in list(extra.items())[:3]))
    wrong = [n for n, (_, k) in held.items() if not (ids.get(n) and holds_key(k, ids[n]))]
    checks.check(not wrong, "each replica's node-key is the private key of its own peer id", ", ".join(wrong))
    foreign = [f"{n} holds {m}'s key" for n, (_, k) in held.items() for m, pid in ids.items()
               if m != n and pid and holds_key(k, pid)]
    distinct = len({k for _, k in held.values()})
    checks.check(not foreign and distinct == len(held),
                 f"no replica holds another node's key ({distinct} different keys in {len(held)} replicas)",
                 "; ".join(foreign[:3]))
    if len(held) >= 2:
        (a, (_, ka)), (b, (_, kb)) = list(held.items())[:2]
        checks.check(ka != kb and not holds_key(ka, ids[b] or ""),
                     f"{a}'s /run/secrets/node-key differs from {b}'s and does not sign as {b}")
    if keys_dir is not None:
        roster = json.loads((keys_dir / "fleet" / "roster.json").read_text())["nodes"]
        checks.check(all(roster.get(n) == pid for n, pid in ids.items()),
                     "every replica's peer id is the one the authority-signed roster lists")


def wait_all_ready(chaos: SwarmChaos, names: list[str], timeout: float, checks: Checks) -> float | None:
    start, last = time.monotonic(), -1
    while time.monotonic() - start < timeout:
        where = chaos.placements()
        ready = sum(1 for n in names if n in where and (node_get(where[n][0], "/v1/health", where[n][1]) or {}).get("ready"))
        if ready != last:
            checks.note(f"replicas ready: {ready}/{len(names)}")
            last = ready
        if ready == len(names):
            return time.monotonic() - start
        time.sleep(3.0)
    return None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stack", required=True)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--models", type=Path, default=Path("models"))
    ap.add_argument("--victim", default="sat-9")
    ap.add_argument("--ready-timeout", type=float, default=600.0)
    ap.add_argument("--metrics", type=Path)
    ap.add_argument("--keys", type=Path, help="the keys directory `orbitmesh stack` wrote (its signed roster)")
    args = ap.parse_args()

    checks = Checks()
    metrics: dict[str, Any] = {}
    samples = json.loads((args.models / "digits.json").read_text())["samples"]
    for sample, label in zip(samples, reference_labels(args.models, samples)):
        sample["label"] = label
    t_deploy = time.monotonic()
    try:
        chaos = SwarmChaos(args.stack)
    except ChaosError as exc:
        checks.check(False, "the stack's service and fleet config", str(exc))
        print(f"{checks.passed} passed, {checks.failed} failed", flush=True)
        return 1
    names = chaos.names
    sats = [n for n in names if n.startswith("sat-")]
    hosts = bool(chaos.groups)          # a stack of hosts (--sats-per-container): K satellites per replica
    if hosts:
        checks.note(f"a stack of hosts: {', '.join(f'{h} ({len(g)})' for h, g in chaos.groups.items())}")

    # -- 1. every slot up and ready, each replica the node its slot names -------------------
    took = wait_all_ready(chaos, names, args.ready_timeout, checks)
    checks.check(took is not None, f"all {len(names)} replicas ready (every laser link up)",
                 f"{took:.1f} s after the e2e started" if took is not None else "timed out")
    if took is None:
        print(f"{checks.passed} passed, {checks.failed} failed", flush=True)
        return 1
    metrics["deploy_to_ready_s"] = time.monotonic() - t_deploy
    nodes = chaos.nodes()
    where = chaos.placements()
    info = {n: node_get(c, "/v1/node", slot) or {} for n, (c, slot) in where.items()}
    wrong = [f"{'its slot port' if hosts else f'slot {names.index(n) + 1}'} answers {info.get(n, {}).get('node')!r}"
             f" for {n}" for n in names if info.get(n, {}).get("node") != n]
    checks.check(not wrong, f"each host's satellites answer on their slots' ports ({names[0]} … {names[-1]})" if hosts
                 else f"replica slot k runs node k - 1 ({names[0]} … {names[-1]})", "; ".join(wrong))
    ids = {n: info.get(n, {}).get("peer_id") for n in names}
    checks.check(len(set(ids.values())) == len(names) and None not in ids.values(),
                 f"every node has its own peer id ({len(names)})")
    if hosts:
        check_host_keys(chaos, ids, args.keys, checks)
    else:
        check_keys(nodes, ids, args.keys, checks)

    # -- 2. tasks through the routing mesh to far targets ------------------------------------
    mesh = Mesh(args.url)
    targets = [sats[(k * 7 + 3) % len(sats)] for k in range(8)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda kt: mesh.run_task(kt[1], samples[kt[0] % len(samples)]), enumerate(targets)))
    for k, (target, rec) in enumerate(zip(targets, results)):
        want = samples[k % len(samples)]["label"]
        checks.check(rec.get("status") == "succeeded" and label_of(rec) == want and rec.get("executor") == target,
                     f"task via :8080 → {target}: {rec.get('status')}, label {label_of(rec)} (onnxruntime: {want})",
                     f"{' → '.join(path_of(rec))} {rec.get('latency', {}).get('total_ms', 0):.0f} ms"
                     if rec.get("status") == "succeeded" else str(rec.get("error")))
    totals = [r["latency"]["total_ms"] for r in results if r.get("status") == "succeeded"]
    if totals:
        metrics["task_total_ms_median"] = statistics.median(totals)
        metrics["task_overhead_ms_median"] = statistics.median(
            r["latency"]["overhead_ms"] for r in results if r.get("status") == "succeeded")

    # -- 3. kill a replica while tasks flow; swarm replaces it in its slot ------------------
    # (a stack of hosts: the hosted satellite alone, through its host's control socket, then
    # started again in its host)
    victim = args.victim
    old, victim_slot = where[victim]
    old_id = ids[victim]
    # a task accepted by the victim itself (entry = victim), in its journal when it dies
    code, out = old.exec_run(["python", "-c", (
        "import json,sys,urllib.request;"
        f"r=urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:{slot_ports(victim_slot)[1]}/v1/tasks',"
        "data=sys.argv[1].encode(),headers={'content-type':'application/json','authorization':'Bearer '+"
        "open('/run/secrets/api-token').read().strip()}));print(r.read().decode())"),
        json.dumps({"model": "digits", "inputs": samples[4]["inputs"], "target": sats[(sats.index(victim) + 12) % len(sats)],
                    "timeout_s": 120})])
    journaled = json.loads(out.decode()).get("task_id") if code == 0 else None
    checks.check(journaled is not None, f"a task accepted at {victim} before the kill", journaled or out.decode()[:200])
    stop = threading.Event()
    flow: list[tuple[str, dict[str, Any]]] = []
    others = [s for s in sats if s != victim]

    def flowing(k: int) -> None:
        i = 0
        while not stop.is_set():
            target = others[(k * 5 + i * 3) % len(others)]
            rec = mesh.run_task(target, samples[(k + i) % len(samples)])
            rec["expected_label"] = samples[(k + i) % len(samples)]["label"]
            flow.append((target, rec))
            i += 1

    threads = [threading.Thread(target=flowing, args=(k,), daemon=True) for k in range(3)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    t_kill = time.monotonic()
    state = chaos.kill(victim)
    checks.check(state in ("exited", "dead"), f"kill {victim} alone (in {chaos.host_of[victim]})" if hosts
                 else f"docker kill {victim}'s container", f"state {state}")
    replaced = None
    if hosts:
        replaced = old if restart_hosted(chaos, victim, old_id, 300.0, checks, metrics) else None
    else:
        while time.monotonic() - t_kill < 300:
            c = chaos.nodes().get(victim)
            if c is not None and c.id != old.id:
                c.reload()
                if c.status == "running" and (node_get(c, "/v1/health") or {}).get("ready"):
                    replaced = c
                    break
            time.sleep(2.0)
        checks.check(replaced is not None, f"swarm replaced {victim} in its slot and it is ready again",
                     f"{time.monotonic() - t_kill:.1f} s after the kill")
        if replaced is not None:
            metrics["replace_to_ready_s"] = time.monotonic() - t_kill
            checks.check((node_get(replaced, "/v1/node") or {}).get("peer_id") == old_id,
                         f"the new {victim} has the same peer id (slot identity)", old_id[:16] + "…")
    time.sleep(3.0)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    bad = [(t, r) for t, r in flow if r.get("status") != "succeeded" or label_of(r) != r["expected_label"]]
    checks.check(bool(flow) and not bad, f"{len(flow)} tasks through :8080 all succeeded while {victim} was "
                 + ("killed and restarted" if hosts else "replaced"),
                 "; ".join(f"→{t}: {r.get('status')} {r.get('error') or ''}" for t, r in bad[:3]))
    if journaled and replaced is not None:
        rec: dict[str, Any] = {}
        for _ in range(12):
            try:
                rec = mesh.http.get(f"{args.url}/v1/tasks/{journaled}", params={"wait": "10"}, timeout=20).json()
            except (httpx.HTTPError, ValueError):
                rec = {}
            if rec.get("status") in ("succeeded", "failed"):
                break
        checks.check(rec.get("status") == "succeeded" and label_of(rec) == samples[4]["label"],
                     f"the task {victim} had accepted finished after its "
                     + ("restart" if hosts else "replacement") + " recovered the journal",
                     f"{rec.get('status')} {rec.get('error') or ''}")

    # -- 3b. a stack of hosts: a host's replica killed, all its satellites at once ------------
    faulted = {victim}
    if hosts:
        faulted |= host_kill(chaos, mesh, ids, samples, label_of, 300.0, checks, metrics)

    # -- 4. the whole run: no dead verdict about any node but the faulted ones ----------------
    false_dead, suspicions = {}, 0
    for n, (c, slot) in chaos.placements().items():
        view = node_get(c, "/v1/membership", slot) or {}
        v = view.get("verdicts", {})
        suspicions += sum(k for s, k in v.get("suspect", {}).items() if s not in faulted)
        bad_dead = {s: k for s, k in v.get("dead", {}).items() if s not in faulted}
        if bad_dead:
            false_dead[n] = bad_dead
    what = victim if len(faulted) == 1 else f"{victim} and the killed host's satellites"
    checks.check(not false_dead, f"no node but {what} declared dead in any node's view",
                 "; ".join(f"{n} saw dead {d}" for n, d in false_dead.items()) + f" ({suspicions} suspicions refuted)")
    metrics["false_deaths"] = sum(sum(d.values()) for d in false_dead.values())

    if args.metrics:
        args.metrics.write_text(json.dumps(metrics, indent=1))
    print(f"{checks.passed} passed, {checks.failed} failed", flush=True)
    return 0 if checks.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
