"""Per-task overhead in containers against the local fleet, same preset, same tasks, one run.

overhead = a task's end-to-end latency − physics of the links it crossed −
inference (the agents' own split, ``latency.overhead_ms``).  The local fleet
(processes on this machine) is the baseline; the compose fleet (the committed
docker-compose.yml, image ``orbitmesh:latest`` built by ``make image``) runs
the same tasks after it, never beside it.  Also: idle CPU of each fleet
(cores, from /proc for the local processes and ``docker stats`` for the
containers) and memory per agent.

    python bench/compose_overhead.py [--tasks 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
PROJECT = "orbitmesh-bench"
PAIRS = [("sat-0", "sat-13"), ("sat-5", "sat-20"), ("sat-11", "sat-2"), ("sat-17", "sat-6")]


def run_tasks(base: int, n: int, sample: dict) -> list[float]:
    """``n`` tasks over PAIRS, one at a time; their overhead in ms."""
    out = []
    # the token both fleets take from $ORBITMESH_TOKEN (set in main)
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {os.environ['ORBITMESH_TOKEN']}"}) as http:
        for k in range(n):
            entry, target = PAIRS[k % len(PAIRS)]
            url = f"http://127.0.0.1:{base + int(entry.split('-')[1])}"
            r = http.post(url + "/v1/tasks", json={"model": "digits", "inputs": sample["inputs"], "target": target})
            r.raise_for_status()
            tid = r.json()["task_id"]
            rec = http.get(f"{url}/v1/tasks/{tid}", params={"wait": "30"}).json()
            if rec.get("status") == "succeeded":
                out.append(rec["latency"]["overhead_ms"])
    return out


def wait_ready(base: int, nodes: int, timeout: float) -> float:
    t0 = time.monotonic()
    with httpx.Client(timeout=2) as http:
        while time.monotonic() - t0 < timeout:
            ok = 0
            for i in range(nodes):
                try:
                    ok += bool(http.get(f"http://127.0.0.1:{base + i}/v1/health").json().get("ready"))
                except (httpx.HTTPError, ValueError):
                    pass
            if ok == nodes:
                return time.monotonic() - t0
            time.sleep(1)
    raise SystemExit(f"fleet on {base}+ not ready within {timeout:.0f} s")


def proc_cpu_cores(pids: list[int], seconds: float) -> float:
    def ticks() -> int:
        total = 0
        for pid in pids:
            try:
                f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(f[11]) + int(f[12])
            except OSError:
                pass
        return total
    a = ticks()
    time.sleep(seconds)
    return (ticks() - a) / os.sysconf("SC_CLK_TCK") / seconds


def docker_stats() -> tuple[float, float]:
    """(CPU cores, median MiB per container) of the compose project, from one ``docker stats`` sample."""
    ids = subprocess.run([DOCKER, "ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"],
                         capture_output=True, text=True, check=True).stdout.split()
    out = subprocess.run([DOCKER, "stats", "--no-stream", "--format", "{{.CPUPerc}} {{.MemUsage}}", *ids],
                         capture_output=True, text=True, check=True).stdout
    cpu, mem = 0.0, []
    for line in out.splitlines():
        m = re.match(r"([\d.]+)%\s+([\d.]+)(KiB|MiB|GiB)", line)
        if m:
            cpu += float(m.group(1)) / 100
            mem.append(float(m.group(2)) * {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024}[m.group(3)])
    return cpu, statistics.median(mem)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    # One token for both fleets: `up` and compose's init service take $ORBITMESH_TOKEN (docs/security.md).
    os.environ.setdefault("ORBITMESH_TOKEN", secrets.token_urlsafe(32))
    sample = json.loads((ROOT / "models" / "digits.json").read_text())["samples"][0]
    local: list[float] = []
    comp: list[float] = []

    # -- the baseline: a local fleet of the same preset -----------------------------------------
    d = Path("/tmp/orbitmesh-bench-local")
    subprocess.run([PY, "-m", "agent", "--dir", str(d), "down"], capture_output=True)
    subprocess.run([PY, "-m", "agent", "--dir", str(d), "--models", str(ROOT / "models"), "up", "--api-port", "8300",
                    "--p2p-port", "4300", "--ground", "london", "--ground", "tokyo"], check=True, cwd=ROOT,
                   capture_output=True)
    try:
        wait_ready(8300, 26, 120)
        pids = [int(x) for x in json.loads((d / "fleet.json").read_text()).get("pids", {}).values()] \
            if (d / "fleet.json").exists() else []
        time.sleep(10)
        local_cpu = proc_cpu_cores(pids, 10.0) if pids else float("nan")
        for _ in range(args.rounds):
            local += run_tasks(8300, args.tasks, sample)
    finally:
        subprocess.run([PY, "-m", "agent", "--dir", str(d), "down"], capture_output=True)

    # -- the same in containers ----------------------------------------------------------------------
    compose = ["docker-compose", "-p", PROJECT, "-f", str(ROOT / "docker-compose.yml")]
    subprocess.run(compose + ["up", "-d"], check=True, capture_output=True)
    try:
        ready_s = wait_ready(8100, 26, 600)
        time.sleep(10)
        comp_cpu, comp_mem = docker_stats()
        for _ in range(args.rounds):
            comp += run_tasks(8100, args.tasks, sample)
    finally:
        subprocess.run(compose + ["down", "-v", "-t", "5"], capture_output=True)

    ml, mc = statistics.median(local), statistics.median(comp)
    print(f"machine: {platform.node()} {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    print(f"tasks: {len(local)} local, {len(comp)} compose ({len(PAIRS)} entry→target pairs, 2–4 link hops each)")
    print(f"overhead per task, median: local {ml:.2f} ms, compose {mc:.2f} ms  → compose/local = {mc / ml:.2f}×")
    print(f"overhead p90: local {statistics.quantiles(local, n=10)[-1]:.2f} ms, "
          f"compose {statistics.quantiles(comp, n=10)[-1]:.2f} ms")
    print(f"idle fleet CPU: local {local_cpu:.2f} cores, compose {comp_cpu:.2f} cores (26 agents each); "
          f"compose up→ready {ready_s:.0f} s; memory per container {comp_mem:.0f} MiB median")
    return 0


if __name__ == "__main__":
    sys.exit(main())
