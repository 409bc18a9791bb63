"""Drive a running compose constellation: real tasks, a link cut, a container killed while tasks flow.

Run by deploy/test-compose.sh once every agent is ready; talks only to the
APIs published on the host's loopback and to the local Docker engine.  Every
check prints one line; the last line is "N passed, M failed"; the exit status
is 0 only if nothing failed.

    python deploy/compose_e2e.py --project orbitmesh-ci --api-base 8100 --models models
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.serve.auth import bearer, client_token  # noqa: E402
from agent.ops.compose_hosts import container_groups  # noqa: E402
from agent.ops.engine_chaos import EngineChaos  # noqa: E402


def api_token() -> str:
    """The fleet's API token: test-compose.sh exports $ORBITMESH_TOKEN before `up` (init takes it)."""
    token = client_token()
    if not token:
        raise SystemExit("error: set ORBITMESH_TOKEN to the fleet's API token "
                         "(docker compose exec sat-0 cat /fleet/api-token)")
    return token

T0 = time.monotonic()


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0
        self.lock = threading.Lock()

    def check(self, ok: bool, what: str, detail: str = "") -> bool:
        with self.lock:
            if ok:
                self.passed += 1
            else:
                self.failed += 1
        print(f"[e2e +{time.monotonic() - T0:5.1f}s] {'PASS' if ok else 'FAIL'}  {what}"
              + (f"  ({detail})" if detail else ""), flush=True)
        return ok

    def note(self, text: str) -> None:
        print(f"[e2e +{time.monotonic() - T0:5.1f}s] ....  {text}", flush=True)


class Fleet:
    def __init__(self, size: int, api_host: str, api_base: int, ground: list[str] = ()):
        self.size = size
        self.urls = {f"sat-{i}": f"http://{api_host}:{api_base + i}" for i in range(size)}
        # ground station k is node size + k, published on api_base + size + k
        self.urls.update({f"gs-{g}": f"http://{api_host}:{api_base + size + k}" for k, g in enumerate(ground)})
        self.http = httpx.Client(timeout=httpx.Timeout(10.0, connect=3.0), headers=bearer(api_token()))

    def post(self, node: str, path: str, body: dict[str, Any], timeout: float = 5.0) -> httpx.Response:
        return self.http.post(self.urls[node] + path, json=body, timeout=timeout)

    def link(self, node: str, peer: str) -> dict[str, Any]:
        return next(row for row in self.get(node, "/v1/links")["links"] if row["peer"] == peer)

    def faults(self, node: str) -> list[dict[str, Any]]:
        return self.get(node, "/v1/chaos")["faults"]

    def get(self, node: str, path: str, timeout: float = 5.0) -> dict[str, Any]:
        r = self.http.get(self.urls[node] + path, timeout=timeout)
        r.raise_for_status()
        return r.json()

    def ready(self, node: str) -> bool:
        try:
            return bool(self.get(node, "/v1/health", timeout=2.0).get("ready"))
        except (httpx.HTTPError, ValueError):
            return False

    def wait_alive_at(self, watcher: str, node: str, timeout: float) -> float | None:
        """Until ``watcher``'s membership holds ``node`` alive (a restarted node is taken back
        by gossip: its own "ready" does not mean every other view has heard yet); seconds, or None."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            try:
                rows = self.get(watcher, "/v1/membership", timeout=2.0)["members"]
                if any(m.get("node") == node and m.get("status") == "alive" for m in rows):
                    return time.monotonic() - start
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        return None

    def wait_ready(self, node: str, timeout: float) -> float | None:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.ready(node):
                return time.monotonic() - start
            time.sleep(0.5)
        return None

    def run_task(self, entry: str, target: str | None, sample: dict[str, Any], timeout_s: float = 20.0,
                 wait_margin: float = 15.0) -> dict[str, Any]:
        """Submit and wait; a record (``status`` is "error" when the API itself failed)."""
        body: dict[str, Any] = {"model": "digits", "inputs": sample["inputs"], "timeout_s": timeout_s}
        if target:
            body["target"] = target
        start = time.monotonic()
        try:
            r = self.http.post(self.urls[entry] + "/v1/tasks", json=body, timeout=10.0)
            if r.status_code != 202:
                return {"status": "error", "error": f"HTTP {r.status_code}: {r.text[:200]}",
                        "elapsed": time.monotonic() - start}
            task_id = r.json()["task_id"]
            deadline = start + timeout_s + wait_margin
            rec: dict[str, Any] = {}
            while time.monotonic() < deadline:
                wait = max(0.1, min(10.0, deadline - time.monotonic()))
                rec = self.http.get(f"{self.urls[entry]}/v1/tasks/{task_id}", params={"wait": f"{wait:.1f}"},
                                    timeout=wait + 5.0).json()
                if rec.get("status") in ("succeeded", "failed"):
                    break
            rec["elapsed"] = time.monotonic() - start
            return rec
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            return {"status": "error", "error": f"{type(exc).__name__}: {exc}", "elapsed": time.monotonic() - start}


def label_of(rec: dict[str, Any]) -> int | None:
    try:
        return int(rec["outputs"]["label"]["data"][0])
    except (KeyError, TypeError, IndexError, ValueError):
        return None


def reference_labels(models: Path, samples: list[dict[str, Any]]) -> list[int]:
    """What the model itself says for each sample (onnxruntime here, on the host).

    The model is ~97% accurate, so a satellite's answer is checked against
    this, not against the sample's true label.
    """
    import numpy as np
    import onnxruntime as ort
    manifest = json.loads((models / "digits.json").read_text())
    sess = ort.InferenceSession(str(models / manifest.get("file", "digits.onnx")), providers=["CPUExecutionProvider"])
    out = []
    for sample in samples:
        feeds = {spec["name"]: np.asarray(sample["inputs"][spec["name"]], dtype=spec["dtype"])
                 for spec in manifest["inputs"]}
        out.append(int(sess.run(["label"], feeds)[0][0]))
    return out


def path_of(rec: dict[str, Any]) -> list[str]:
    return [h["node"] for h in rec.get("trace") or []]


def routes(fleet: Fleet, chaos: EngineChaos) -> Any:
    """A function (src, dst) -> node path (or None), from the fleet's own config and physics."""
    sat0 = chaos.hosting("sat-0") or chaos.container("sat-0")     # a host container, or sat-0's own
    code, out = sat0.exec_run(["cat", "/fleet/config.toml"])
    if code != 0:
        return None
    try:
        from mesh.config import parse_config
        from mesh.orbit import Constellation, iso_to_jd
        from mesh.topology import Topology
        cfg = parse_config(out.decode())
        topo = Topology(Constellation(list(cfg.shells), iso_to_jd(cfg.epoch)), max_range_km=cfg.links.max_range_km)
    except Exception as exc:  # the mesh API moves; fall back to neighbour targets
        print(f"(no physics routes: {exc})")
        return None

    def route(src: str, dst: str) -> list[str] | None:
        snap = topo.snapshot(cfg.clock.orbit_t(time.time()))
        found = snap.shortest_path(int(src.split("-")[1]), int(dst.split("-")[1]))
        return None if found is None else [f"sat-{i}" for i in found[0]]
    return route


def ground_checks(checks: Checks, fleet: Fleet, gs_names: list[str], names: list[str],
                  samples: list[dict[str, Any]]) -> None:
    """Each station is a healthy ground agent; one with a satellite in view carries a task up."""
    for gs in gs_names:
        info = fleet.get(gs, "/v1/node")
        up = [nb["node"] for nb in info["neighbours"] if nb.get("link_up")]
        checks.check(info.get("kind") == "ground" and fleet.ready(gs) and all(n.startswith("sat-") for n in up),
                     f"{gs} is a ground agent, healthy, linked to {', '.join(up) or 'no satellite (none in view)'}",
                     "lat {lat_deg:.1f}°, lon {lon_deg:.1f}°".format(**info["position"]) if not up else "")
        if not up:
            continue
        target = names[(int(up[0].split("-")[1]) + len(names) // 2) % len(names)]
        rec = fleet.run_task(gs, target, samples[4])
        if rec.get("status") == "error" and "no route" in str(rec.get("error")):
            checks.note(f"{gs}: its satellite set before the task left ({rec['error'][:80]})")
            continue
        checks.check(rec.get("status") == "succeeded" and label_of(rec) == samples[4]["label"],
                     f"task {gs} → {target} through the station's link: {rec.get('status')}",
                     " → ".join(path_of(rec)) if rec.get("status") == "succeeded" else str(rec.get("error")))


def grpc_checks(checks: Checks, samples: list[dict[str, Any]], grpc_base: int, target: str) -> None:
    """A real tritonclient against sat-0's published gRPC port: live, and a digits inference routed to ``target``."""
    import numpy as np
    import tritonclient.grpc as tg
    try:
        client = tg.InferenceServerClient(f"127.0.0.1:{grpc_base}")
        live = client.is_server_live()
        x = np.asarray(samples[5]["inputs"]["input"], dtype=np.float32)
        inp = tg.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        r = client.infer("digits", [inp], parameters={"target": target}, client_timeout=30,
                         headers={"authorization": f"Bearer {api_token()}"})
        label = int(r.as_numpy("label")[0])
        route = r.get_response().parameters["route"].string_param
    except Exception as exc:   # tritonclient raises its own InferenceServerException and grpc errors
        checks.check(False, f"gRPC on 127.0.0.1:{grpc_base} (sat-0)", f"{type(exc).__name__}: {exc}")
        return
    checks.check(live and label == samples[5]["label"],
                 f"gRPC (tritonclient) on 127.0.0.1:{grpc_base}: sat-0 live, digits routed to {target}: label {label} "
                 f"(onnxruntime here: {samples[5]['label']})", route)


def verdict_checks(checks: Checks, fleet: Fleet, nodes: list[str], faulted: set[str], when: str) -> dict[str, Any]:
    """Zero "dead" verdicts about nodes nobody faulted, in every node's view, for the whole run.

    Each agent tallies every suspect and dead verdict its view has held since
    it started (``verdicts`` in GET /v1/membership).  A node that was killed
    or paused may rightly be declared dead; any other verdict is a false
    death: the failure detector accused a healthy node.
    """
    false_dead: dict[str, dict[str, int]] = {}
    suspicions = 0
    unreachable = []
    for n in nodes:
        try:
            view = fleet.get(n, "/v1/membership")
        except (httpx.HTTPError, ValueError):
            unreachable.append(n)
            continue
        v = view.get("verdicts", {})
        suspicions += sum(c for s, c in v.get("suspect", {}).items() if s not in faulted)
        bad = {s: c for s, c in v.get("dead", {}).items() if s not in faulted}
        if bad:
            false_dead[n] = bad
            for ev in view.get("events", []):
                if ev.get("event") == "NodeDead" and ev.get("node") in bad:
                    checks.note(f"{n}: {ev}")
    checks.check(not false_dead and not unreachable,
                 f"{when}: no node declared dead by any of {len(nodes) - len(unreachable)} views "
                 f"except the faulted ({', '.join(sorted(faulted)) or 'none'})",
                 "; ".join(f"{n} saw dead {d}" for n, d in false_dead.items())
                 + (f" unreachable: {', '.join(unreachable)}" if unreachable else "")
                 + f" ({suspicions} suspicions of healthy nodes, refuted)")
    return {"false_deaths": sum(sum(d.values()) for d in false_dead.values()), "false_suspicions": suspicions}


def cut_link(checks: Checks, fleet: Fleet, names: list[str], entry: str, target: str,
             samples: list[dict[str, Any]], metrics: dict[str, Any]) -> None:
    """Cut a link on the path of an entry → target task, issued at a third container.

    Tasks on the same pair must still succeed around the cut; both endpoints
    count the frames the cut drops (probes sent across it, and whatever else
    tries the link) in GET /v1/links; DELETE heals it.
    """
    rec = fleet.run_task(entry, target, samples[0])
    path = path_of(rec)
    if not checks.check(rec.get("status") == "succeeded" and len(path) >= 2,
                        f"task {entry} → {target} before the cut", " → ".join(path) or str(rec.get("error"))):
        return
    i = (len(path) - 2) // 2                        # a link in the middle of the path
    a, b = path[i], path[i + 1]
    issuer = next(n for n in names if n not in path)  # neither endpoint, not even on the route
    before = {(a, b): fleet.link(a, b)["dropped"]["cut"], (b, a): fleet.link(b, a)["dropped"]["cut"]}
    r = fleet.post(issuer, "/v1/chaos", {"kind": "cut", "a": a, "b": b})
    if not checks.check(r.status_code == 201, f"POST /v1/chaos cut {a}–{b} at {issuer} (on {entry} → {target}'s "
                                              f"path)", f"HTTP {r.status_code} {r.text[:200]}"):
        return
    fid = r.json()["fault"]["id"]
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10.0:
        if all(any(f["id"] == fid and f["active"] for f in fleet.faults(n)) for n in (a, b)):
            break
        time.sleep(0.1)
    took = time.monotonic() - t0
    checks.check(took < 10.0, f"the cut reached {a} and {b} (flooded from {issuer})", f"in force after {took:.1f} s")
    metrics["cut_in_force_s"] = took
    # frames across the cut: probes both ways, 50 Hz for 1 s
    for src, dst in ((a, b), (b, a)):
        fleet.post(src, "/v1/probe", {"peer": dst, "rate_hz": 50, "size": 256, "duration_s": 1.0})
    pairs = [(entry, target), (target, entry)] * 3
    with ThreadPoolExecutor(len(pairs)) as pool:
        recs = list(pool.map(lambda j: fleet.run_task(j[0], j[1], samples[5]), pairs))
    crossed = [p for p in map(path_of, recs) if any({x, y} == {a, b} for x, y in zip(p, p[1:]))]
    ok = [r for r in recs if r.get("status") == "succeeded" and label_of(r) == samples[5]["label"]]
    checks.check(len(ok) == len(recs) and not crossed,
                 f"{len(ok)}/{len(recs)} tasks {entry} ⇄ {target} succeeded around the cut, none across it",
                 "; ".join(" → ".join(path_of(r)) or str(r.get("error")) for r in recs[:2]))
    time.sleep(max(0.0, 1.5 - (time.monotonic() - t0 - took)))
    after = {(a, b): fleet.link(a, b)["dropped"]["cut"], (b, a): fleet.link(b, a)["dropped"]["cut"]}
    checks.check(all(after[k] > before[k] for k in before),
                 "GET /v1/links at both ends counts dropped[\"cut\"] rising",
                 ", ".join(f"{x}→{y}: {before[(x, y)]} → {after[(x, y)]}" for x, y in before))
    r = fleet.http.delete(f"{fleet.urls[issuer]}/v1/chaos/{fid}", timeout=5.0)
    checks.check(r.status_code == 200 and r.json().get("cleared") == [fid], f"DELETE /v1/chaos/{fid} at {issuer}",
                 r.text[:200])
    t1 = time.monotonic()
    while time.monotonic() - t1 < 10.0 and any(any(f["id"] == fid for f in fleet.faults(n)) for n in (a, b)):
        time.sleep(0.1)
    got = fleet.link(b, a)["probes_received"]
    fleet.post(a, "/v1/probe", {"peer": b, "rate_hz": 50, "size": 256, "duration_s": 0.5})
    time.sleep(1.0)
    got = fleet.link(b, a)["probes_received"] - got
    checks.check(got >= 20, f"{a}–{b} carries frames again after the clear", f"{got}/25 probes arrived")


def host_kill(checks: Checks, fleet: Fleet, chaos: EngineChaos, services: dict[str, list[str]],
              ids: dict[str, str], samples: list[dict[str, Any]], rejoin_timeout: float,
              metrics: dict[str, Any]) -> None:
    """Kill the host container that does not run sat-0: every one of its satellites goes down at
    once (a lost plane); started again, every one comes back with its own peer id."""
    host, group = next((h, g) for h, g in services.items() if len(g) > 1 and "sat-0" not in g)
    state = chaos.kill(host)
    checks.check(state in ("exited", "dead"), f"docker kill {host} (satellites {group[0]} … {group[-1]})",
                 f"state {state}")
    gone = []
    for n in group:
        try:
            fleet.get(n, "/v1/health", timeout=2.0)
        except httpx.HTTPError:
            gone.append(n)
    checks.check(gone == group, f"all {len(group)} satellites of {host} are down with it",
                 ", ".join(sorted(set(group) - set(gone))))
    rec = fleet.run_task("sat-0", group[-1], samples[1], timeout_s=8.0, wait_margin=10.0)
    checks.check(rec.get("status") == "failed" and bool(rec.get("error")),
                 f"task sat-0 → {group[-1]} in the dead host fails with a reason", str(rec.get("error")))
    t0 = time.monotonic()
    state = chaos.start(group[0])          # any of its satellites names the host to start
    checks.check(state == "running", f"starting {group[0]} starts {host}", f"state {state}")
    late = [n for n in group if fleet.wait_ready(n, max(10.0, rejoin_timeout - (time.monotonic() - t0))) is None]
    checks.check(not late, f"all {len(group)} satellites of {host} rejoined with every link up",
                 f"{time.monotonic() - t0:.1f} s after start" if not late else f"not ready: {', '.join(late)}")
    metrics["host_rejoin_s"] = time.monotonic() - t0
    seen = fleet.wait_alive_at("sat-0", group[-1], 15.0)
    checks.check(seen is not None, f"sat-0 holds {group[-1]} alive again",
                 f"{time.monotonic() - t0:.1f} s after start" if seen is not None else "not in 15 s")
    checks.check(all(fleet.get(n, "/v1/node")["peer_id"] == ids[n] for n in group),
                 f"every satellite of {host} kept its peer id")
    rec = fleet.run_task("sat-0", group[-1], samples[2])
    checks.check(rec.get("status") == "succeeded" and label_of(rec) == samples[2]["label"],
                 f"task sat-0 → {group[-1]} after the restart: {rec.get('status')}", str(rec.get("error") or ""))


def engine_health(checks: Checks, containers: dict[str, Any], timeout_s: float = 75.0) -> None:
    """What Docker itself reports: every container's health check passes (a host container's
    asks each of its satellites).  The first check runs one interval (30 s) after start."""
    t0 = time.monotonic()
    status: dict[str, str] = {}
    while time.monotonic() - t0 < timeout_s:
        for c in containers.values():
            c.reload()
        status = {n: ((c.attrs.get("State") or {}).get("Health") or {}).get("Status", "none")
                  for n, c in containers.items()}
        if all(v == "healthy" for v in status.values()):
            break
        time.sleep(2.0)
    bad = {n: v for n, v in status.items() if v != "healthy"}
    checks.check(not bad, f"Docker reports all {len(containers)} containers healthy",
                 f"after {time.monotonic() - t0:.0f} s" + (f"; not: {bad}" if bad else ""))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--project", required=True, help="compose project name")
    ap.add_argument("--size", type=int, default=24)
    ap.add_argument("--api-host", default="127.0.0.1")
    ap.add_argument("--api-base", type=int, default=8100)
    ap.add_argument("--models", type=Path, default=Path("models"))
    ap.add_argument("--ground", default="london,tokyo", help="ground stations of the file, comma-separated")
    ap.add_argument("--victim", default="sat-9")
    ap.add_argument("--rejoin-timeout", type=float, default=150.0)
    ap.add_argument("--metrics", type=Path, help="write measured numbers here (JSON)")
    ap.add_argument("--sats-per-container", type=int, default=1, metavar="K",
                    help="the file runs K satellites per container (orbitmesh compose --sats-per-container)")
    args = ap.parse_args()

    checks = Checks()
    grounds = [g for g in args.ground.split(",") if g]
    fleet = Fleet(args.size, args.api_host, args.api_base, grounds)
    chaos = EngineChaos(args.project)
    samples = json.loads((args.models / "digits.json").read_text())["samples"]
    for sample, label in zip(samples, reference_labels(args.models, samples)):
        sample["label"] = label   # the model's answer, which every satellite must give
    names = [f"sat-{i}" for i in range(args.size)]
    gs_names = [f"gs-{g}" for g in grounds]
    victim = args.victim
    metrics: dict[str, Any] = {}

    # -- 0. the engine sees every node; each answers with its identity -----------------
    nodes = chaos.nodes()
    services = container_groups(names + gs_names, args.sats_per_container)
    checks.check(sorted(nodes) == sorted(services), f"Docker engine lists {len(nodes)} node containers",
                 ", ".join(sorted(set(services) - set(nodes))) or "")
    ids = {n: fleet.get(n, "/v1/node")["peer_id"] for n in names + gs_names}
    checks.check(len(set(ids.values())) == len(ids), f"every node has its own peer id ({len(ids)} nodes)")
    engine_health(checks, nodes)
    route = routes(fleet, chaos)
    verdict_checks(checks, fleet, names + gs_names, set(), "after start-up")

    # -- 0a. the Open Inference Protocol over gRPC, published per container (sat-i on 8200+i) ----
    grpc_checks(checks, samples, grpc_base=args.api_base + 100, target=names[len(names) // 2])

    # -- 0b. ground stations: agents of their own, linked only to satellites in view ----------
    ground_checks(checks, fleet, gs_names, names, samples)

    # -- 1. tasks entering at several containers, each to the farthest satellite ------------
    entries = ["sat-0", "sat-5", "sat-11", "sat-17", "sat-22"]
    jobs = []
    for k, entry in enumerate(entries):
        if route:
            far = max((n for n in names if n != entry), key=lambda n: len(route(entry, n) or []))
        else:
            far = names[(names.index(entry) + len(names) // 2) % len(names)]
        for j in range(2):
            jobs.append((entry, far, samples[(2 * k + j) % len(samples)]))
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda job: fleet.run_task(job[0], job[1], job[2]), jobs))
    totals = []
    for (entry, far, sample), rec in zip(jobs, results):
        ok = rec.get("status") == "succeeded" and label_of(rec) == sample["label"] and rec.get("executor") == far
        checks.check(ok, f"task {entry} → {far}: {rec.get('status')}, label {label_of(rec)} "
                         f"(onnxruntime here: {sample['label']})",
                     f"{len(path_of(rec)) - 1} hops, {rec.get('latency', {}).get('total_ms', 0):.1f} ms"
                     if ok else str(rec.get("error")))
        if ok:
            totals.append(rec["latency"]["total_ms"])
    if totals:
        metrics["task_total_ms_median"] = statistics.median(totals)
        metrics["task_overhead_ms_median"] = statistics.median(
            r["latency"]["overhead_ms"] for r in results if r.get("status") == "succeeded")
    rec = fleet.run_task("sat-3", None, samples[0])
    checks.check(rec.get("status") == "succeeded" and label_of(rec) == samples[0]["label"],
                 f"task at sat-3 placed by the fleet ran on {rec.get('executor')}", str(rec.get("error") or ""))

    # -- 1b. cut a link on a task's path through the agents' chaos API -------------------
    cut_link(checks, fleet, names, jobs[0][0], jobs[0][1], samples, metrics)

    # -- 2. kill a container while tasks flow --------------------------------------------
    # Pairs whose route avoids the victim: they must keep succeeding.  Tasks
    # aimed at the victim must fail with a reason within their timeout.
    pairs = []
    for entry in ["sat-0", "sat-4", "sat-14", "sat-20", "sat-23"]:
        if entry == victim:
            continue
        targets = [n for n in names if n not in (entry, victim)]
        if route:
            ok_targets = [n for n in targets if (p := route(entry, n)) and victim not in p]
            ok_targets.sort(key=lambda n: -len(route(entry, n) or []))
        else:
            node = fleet.get(entry, "/v1/node")
            ok_targets = [nb["node"] for nb in node["neighbours"] if nb["node"] != victim]
        pairs.append((entry, ok_targets[0] if ok_targets else entry))
    checks.note(f"flows during the kill: {', '.join(f'{a}→{b}' for a, b in pairs)}; victim {victim}")
    victim_id = ids[victim]
    # entering next to the victim: the task's first hop is the dead link itself
    victim_neighbour = fleet.get(victim, "/v1/node")["neighbours"][0]["node"]
    stop = threading.Event()
    flow_results: list[tuple[str, str, dict[str, Any]]] = []

    def flow(entry: str, target: str, k: int) -> None:
        i = 0
        while not stop.is_set():
            sample = samples[(k + i) % len(samples)]
            rec = fleet.run_task(entry, target, sample, timeout_s=20.0)
            rec["expected_label"] = sample["label"]
            flow_results.append((entry, target, rec))
            i += 1

    threads = [threading.Thread(target=flow, args=(a, b, k), daemon=True) for k, (a, b) in enumerate(pairs)]
    for t in threads:
        t.start()
    time.sleep(3.0)
    state = chaos.kill(victim)
    checks.check(state in ("exited", "dead"), f"docker kill {victim} through the engine", f"state {state}")
    # tasks aimed at the dead node: a clear failure, bounded by their timeout
    dead_jobs = [("sat-0", victim), ("sat-15", victim), (victim_neighbour, victim)]
    with ThreadPoolExecutor(len(dead_jobs)) as pool:
        dead = list(pool.map(lambda j: fleet.run_task(j[0], j[1], samples[1], timeout_s=8.0, wait_margin=10.0),
                             dead_jobs))
    for (entry, _), rec in zip(dead_jobs, dead):
        checks.check(rec.get("status") == "failed" and bool(rec.get("error")) and rec["elapsed"] < 8.0 + 8.0,
                     f"task {entry} → dead {victim} fails in {rec['elapsed']:.1f} s (timeout 8 s)",
                     str(rec.get("error")))
    try:
        fleet.get(victim, "/v1/health", timeout=2.0)
        checks.check(False, f"{victim}'s API is gone after the kill")
    except httpx.HTTPError:
        checks.check(True, f"{victim}'s API is gone after the kill")
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    bad = [(a, b, r) for a, b, r in flow_results
           if r.get("status") != "succeeded" or label_of(r) != r["expected_label"]]
    checks.check(bool(flow_results) and not bad and not any(t.is_alive() for t in threads),
                 f"{len(flow_results)} tasks on routes around {victim} all succeeded while it died",
                 "; ".join(f"{a}→{b}: {r.get('status')} label {label_of(r)} (expected {r['expected_label']}) "
                           f"{r.get('error') or ''} via {path_of(r)}" for a, b, r in bad[:3]))
    checks.check(all(victim not in path_of(r) for _, _, r in flow_results), f"no task passed through {victim}")

    # -- 3. start it again: same peer id, links back, serves tasks -----------------------
    t_start = time.monotonic()
    state = chaos.start(victim)
    checks.check(state == "running", f"docker start {victim} through the engine", f"state {state}")
    took = fleet.wait_ready(victim, args.rejoin_timeout)
    checks.check(took is not None, f"{victim} rejoined with every link up",
                 f"{time.monotonic() - t_start:.1f} s after start" if took is not None else "timed out")
    if took is not None:
        metrics["rejoin_s"] = time.monotonic() - t_start
        checks.check(fleet.get(victim, "/v1/node")["peer_id"] == victim_id, f"{victim} kept its peer id",
                     victim_id[:16] + "…")
        for entry in ["sat-0", "sat-15"]:
            seen = fleet.wait_alive_at(entry, victim, 15.0)
            checks.check(seen is not None, f"{entry} holds {victim} alive again",
                         f"{time.monotonic() - t_start:.1f} s after start" if seen is not None else "not in 15 s")
            metrics[f"alive_at_{entry}_s"] = time.monotonic() - t_start
            rec = fleet.run_task(entry, victim, samples[2])
            checks.check(rec.get("status") == "succeeded" and label_of(rec) == samples[2]["label"],
                         f"task {entry} → restarted {victim}: {rec.get('status')}", str(rec.get("error") or ""))

    # -- 4. pause and resume (cgroup freezer), with `orbitmesh chaos pause|resume --compose` ------
    other = "sat-2"

    def orbitmesh_chaos(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "agent", "--dir", "/nonexistent", "chaos", *argv,
                               "--compose", args.project], cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))

    r = orbitmesh_chaos("pause", other)
    checks.check(r.returncode == 0 and chaos.state(other) == "paused",
                 f"orbitmesh chaos pause {other} --compose {args.project}", (r.stdout + r.stderr).strip())
    r = orbitmesh_chaos("pause", other)
    checks.check(r.returncode == 1 and "already paused" in r.stderr, f"pausing {other} again is refused",
                 r.stderr.strip())
    time.sleep(2.0)
    r = orbitmesh_chaos("resume", other)
    checks.check(r.returncode == 0 and chaos.state(other) == "running",
                 f"orbitmesh chaos resume {other} --compose {args.project}", (r.stdout + r.stderr).strip())
    took = fleet.wait_ready(other, 60.0)
    took = took if took is None else fleet.wait_alive_at("sat-0", other, 15.0)
    rec = fleet.run_task("sat-0", other, samples[3]) if took is not None else {"status": "not ready"}
    checks.check(rec.get("status") == "succeeded", f"task sat-0 → resumed {other}: {rec.get('status')}",
                 str(rec.get("error") or ""))

    # -- 5. for the whole run: no verdict about a node that no fault touched -------------------
    metrics.update(verdict_checks(checks, fleet, names + gs_names, {victim, other}, "whole run"))

    # -- 6. satellites sharing a container: the container killed is a correlated failure ---------
    if args.sats_per_container > 1:
        host_kill(checks, fleet, chaos, services, ids, samples, args.rejoin_timeout, metrics)

    if args.metrics:
        args.metrics.write_text(json.dumps(metrics, indent=1))
    print(f"{checks.passed} passed, {checks.failed} failed", flush=True)
    return 0 if checks.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
