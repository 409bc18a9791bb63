"""Per-node views inside swarm replicas, and the checks of a stack of hosts (deploy/swarm_e2e.py).

The overlay network is not reachable from the machine, so a node is read inside
its replica through the engine (``docker exec``, bash's /dev/tcp: no interpreter
per call).  A stack of hosts (``orbitmesh stack --sats-per-container K``) runs K
satellites per replica, each on its slot's ports
(:func:`agent.links.fleet_identity.slot_ports`), each key a secret of its own.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from agent.links.fleet_identity import slot_ports
from agent.links.roster import holds_key
from agent.ops.compose_hosts import KEY_SECRET_PREFIX
from agent.ops.engine_chaos import ChaosError, SwarmChaos

_GET = ("exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET {path} HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 "
        "&& cat <&3")


def node_get(container: Any, path: str, slot: int = 0) -> dict[str, Any] | None:
    """``GET path`` on the API of the node in ``slot`` of the replica (0: a replica's only node);
    None if it does not answer."""
    try:
        code, out = container.exec_run(["bash", "-c", _GET.format(path=path, port=slot_ports(slot)[1])],
                                       demux=False)
    except Exception:        # the container is gone or not running
        return None
    if code != 0 or not out:
        return None
    head, _, body = out.decode(errors="replace").partition("\r\n\r\n")
    if " 200 " not in head.split("\r\n", 1)[0]:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def get_at(chaos: SwarmChaos, node: str, path: str) -> dict[str, Any] | None:
    """``GET path`` on ``node``'s own API, wherever on this machine it runs; None if it does not answer."""
    c, slot = chaos.placements().get(node, (None, 0))
    return None if c is None else node_get(c, path, slot)


def wait_ready(chaos: SwarmChaos, nodes: list[str], timeout: float) -> list[str]:
    """The nodes of ``nodes`` not ready (every link up) within ``timeout``."""
    deadline, late = time.monotonic() + timeout, list(nodes)
    while late and time.monotonic() < deadline:
        late = [n for n in late if not (get_at(chaos, n, "/v1/health") or {}).get("ready")]
        if late:
            time.sleep(2.0)
    return late


def check_host_keys(chaos: SwarmChaos, ids: dict[str, str | None], keys_dir: Path | None, checks: Any) -> None:
    """Each replica holds its own nodes' keys and nothing else secret: a host the keys of its K
    satellites (one secret each), a ground station its own; no replica another's."""
    held: dict[str, dict[str, str]] = {}        # service → {node: key}
    extra: dict[str, list[str]] = {}
    for svc, c in chaos.nodes().items():
        group = chaos.groups[svc]
        code, out = c.exec_run(["bash", "-c", "ls -A /run/secrets; echo ---; for f in /run/secrets/node-key-*; do "
                                              "echo \"$f $(od -An -tx1 -v \"$f\" | tr -d ' \\n')\"; done"])
        listing, _, keys = out.decode(errors="replace").partition("---\n")
        want = sorted(["api-token", *(f"{KEY_SECRET_PREFIX}{n}" for n in group)])
        if sorted(listing.split()) != want:
            extra[svc] = sorted(listing.split())
        held[svc] = {}
        for line in keys.splitlines():
            path, _, hexkey = line.partition(" ")
            held[svc][path.rsplit("/", 1)[-1].removeprefix(KEY_SECRET_PREFIX)] = hexkey
    checks.check(not extra, f"every replica's /run/secrets holds only api-token and its own nodes' keys "
                            f"({len(held)} replicas)", "; ".join(f"{s}: {ls}" for s, ls in list(extra.items())[:3]))
    wrong = [n for keys in held.values() for n, k in keys.items() if not (ids.get(n) and holds_key(k, ids[n]))]
    checks.check(not wrong, "each node-key-<name> is the private key of that node's own peer id", ", ".join(wrong))
    foreign = [f"{svc}'s key for {n} signs as {m}" for svc, keys in held.items() for n, k in keys.items()
               for m, pid in ids.items() if m != n and pid and holds_key(k, pid)]
    total = sum(len(keys) for keys in held.values())
    distinct = len({k for keys in held.values() for k in keys.values()})
    checks.check(not foreign and distinct == total,
                 f"no replica holds another node's key ({distinct} different keys in {len(held)} replicas)",
                 "; ".join(foreign[:3]))
    if keys_dir is not None:
        roster = json.loads((keys_dir / "fleet" / "roster.json").read_text())["nodes"]
        checks.check(all(roster.get(n) == pid for n, pid in ids.items()),
                     "every node's peer id is the one the authority-signed roster lists")


def restart_hosted(chaos: SwarmChaos, victim: str, old_id: str | None, rejoin_timeout: float, checks: Any,
                   metrics: dict[str, Any]) -> bool:
    """After ``chaos.kill(victim)`` of a hosted satellite: its API is gone while its host runs on;
    started again in its host, it is ready with the same peer id.  Whether it came back."""
    host = chaos.host_of[victim]
    deadline = time.monotonic() + 15.0
    while get_at(chaos, victim, "/v1/health") is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    others = [n for n in chaos.groups[host] if n != victim]
    checks.check(get_at(chaos, victim, "/v1/health") is None and
                 (not others or get_at(chaos, others[0], "/v1/health") is not None),
                 f"{victim}'s API is gone, {host}'s other satellites answer")
    t0 = time.monotonic()
    try:
        state = chaos.start(victim)
    except ChaosError as exc:
        state = str(exc)
    checks.check(state == "running", f"starting {victim} again in {host} (its control socket)", f"state {state}")
    late = wait_ready(chaos, [victim], rejoin_timeout)
    checks.check(not late, f"{victim} ready again in {host}", f"{time.monotonic() - t0:.1f} s after the start")
    if late:
        return False
    metrics["hosted_restart_to_ready_s"] = time.monotonic() - t0
    checks.check((get_at(chaos, victim, "/v1/node") or {}).get("peer_id") == old_id,
                 f"the restarted {victim} has the same peer id", (old_id or "")[:16] + "…")
    return True


def host_kill(chaos: SwarmChaos, mesh: Any, ids: dict[str, str | None], samples: list[dict[str, Any]],
              label_of: Any, rejoin_timeout: float, checks: Any, metrics: dict[str, Any]) -> set[str]:
    """Kill the container of the host that does not run sat-0: every one of its satellites goes
    down at once (a lost plane), and a task to one of them ends failed with a reason (or right, if
    swarm's replacement came up in time); every one comes back with its own peer id.  The nodes
    this faulted."""
    host, group = next((h, g) for h, g in chaos.groups.items() if h != g[0] and "sat-0" not in g)
    old = chaos.nodes()[host]
    t0 = time.monotonic()
    state = chaos.kill(host)
    checks.check(state in ("exited", "dead"), f"docker kill {host}'s replica (satellites {group[0]} … {group[-1]})",
                 f"state {state}")
    # Swarm restarts the replica within seconds (restart policy "any"), so the task may outlive the
    # outage: it must end either failed with a reason or right, on the replacement; never lost or wrong.
    rec = mesh.run_task(group[-1], samples[1], timeout_s=8.0)
    failed = rec.get("status") == "failed" and bool(rec.get("error"))
    right = rec.get("status") == "succeeded" and label_of(rec) == samples[1]["label"]
    checks.check(failed or right, f"a task to {group[-1]} sent as its host died ends failed with a reason, or right "
                 "on the replacement",
                 f"{rec.get('status')}{': ' + str(rec.get('error')) if rec.get('error') else ''} after "
                 f"{rec.get('elapsed', 0):.1f} s, path {' → '.join(h.get('node', '?') for h in rec.get('trace') or [])}")
    replaced = None
    while time.monotonic() - t0 < rejoin_timeout + 60:
        c = chaos.nodes().get(host)
        if c is not None and c.id != old.id:
            replaced = c
            break
        time.sleep(2.0)
    checks.check(replaced is not None, f"swarm replaced {host}'s replica", f"{time.monotonic() - t0:.1f} s after the kill")
    if replaced is None:
        return set(group)
    late = wait_ready(chaos, group, max(10.0, rejoin_timeout - (time.monotonic() - t0)))
    checks.check(not late, f"all {len(group)} satellites of {host} ready again in the new replica",
                 f"{time.monotonic() - t0:.1f} s after the kill" if not late else f"not ready: {', '.join(late)}")
    metrics["host_replace_to_ready_s"] = time.monotonic() - t0
    same = [n for n in group if (get_at(chaos, n, "/v1/node") or {}).get("peer_id") == ids.get(n)]
    checks.check(same == group, f"every satellite of {host} kept its peer id (keys from its secrets)",
                 ", ".join(sorted(set(group) - set(same))))
    rec = mesh.run_task(group[-1], samples[2])
    checks.check(rec.get("status") == "succeeded" and label_of(rec) == samples[2]["label"],
                 f"a task to {group[-1]} after the replacement: {rec.get('status')}", str(rec.get("error") or ""))
    return set(group)
