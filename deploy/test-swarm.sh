#!/usr/bin/env bash
# Docker Swarm, tested for real (`make test-swarm`, and CI after `make test-docker`):
#   the engine as test-compose.sh gets it (deploy/engine.sh), the committed
#   deploy/stack.yml checked against `orbitmesh stack` (which also issues the
#   per-node keys, into this run's own directory), the image built offline,
#   `docker swarm init` (left again afterwards if this script did it),
#   `docker stack deploy` of that stack, then deploy/swarm_e2e.py: every
#   slot's replica ready and running the node its slot names, each holding only
#   its own key (no other node's, no fleet secret), tasks through
#   port 8080 (the routing mesh) to far satellites, a replica's container killed
#   while tasks flow (swarm replaces it; same identity, journal recovered), no
#   false death anywhere; the stack removed, whatever happens.
#   Then the same fleet as a stack of hosts (`orbitmesh stack --sats-per-container 12`,
#   stack orbitmesh-ci-hosts: host-0, host-1 and the ground stations, a service each):
#   the same checks, each host holding only its satellites' keys, sat-9 killed and
#   started alone inside its host, then host-1's replica killed (all 12 at once;
#   swarm replaces it, every satellite keeps its peer id).
# Environment: STACK (orbitmesh-ci), STACK_HOSTS (orbitmesh-ci-hosts), ONLY=hosts
# (only the stack of hosts), HOSTS=0 (without it), KEEP_UP=1 (leave the last
# stack running), METRICS (JSON file for the measurements), STRESS=1 (a CPU hog
# on one core), BUILD=0 (reuse an orbitmesh:latest image that is already there).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
STACK=${STACK:-orbitmesh-ci}
STACK_HOSTS=${STACK_HOSTS:-orbitmesh-ci-hosts}
ONLY=${ONLY:-}
HOSTS=${HOSTS:-1}
case "$ONLY" in ""|hosts) ;; *) echo "error: ONLY must be empty or hosts, not '$ONLY'" >&2; exit 2 ;; esac
[ "$ONLY" = hosts ] && [ "$HOSTS" = 0 ] && { echo "error: ONLY=hosts and HOSTS=0 leave nothing to run" >&2; exit 2; }
CURRENT=$STACK          # the stack under test (its tasks and logs are printed on failure)
PY=${PY:-$ROOT/.venv/bin/python}
WORK=$(mktemp -d /tmp/orbitmesh-swarm.XXXXXX)
METRICS=${METRICS:-$WORK/metrics.json}
T0=$(date +%s)
SWARM_INITED=0
HOG_PID=""
DOCKERD_PID=""

step() { printf '[test-swarm +%4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
die() { echo "error: $*" >&2; exit 1; }
# shellcheck source=deploy/engine.sh
. "$ROOT/deploy/engine.sh"

engine_install
step "$("$DOCKER" --version)"

# Remove stack $1, wait until its containers and network are gone (a host-mode port is free
# again), then its journal volumes (orbitmesh-<service id>-<slot>, one set per service).
remove_stack() {
  local name=$1 ids id
  ids=$("$DOCKER" service ls -q --no-trunc --filter "label=com.docker.stack.namespace=$name" 2>/dev/null || true)
  "$DOCKER" stack rm "$name" >/dev/null 2>&1 || true
  for _ in $(seq 1 60); do
    [ -z "$("$DOCKER" ps -aq --filter "label=com.docker.stack.namespace=$name")" ] \
      && ! "$DOCKER" network inspect "${name}_constellation" >/dev/null 2>&1 && break
    sleep 1
  done
  for id in $ids; do
    "$DOCKER" volume ls -q | grep "^orbitmesh-${id}-" | xargs -r "$DOCKER" volume rm >/dev/null 2>&1 || true
  done
  return 0
}

teardown() {
  local rc=$?
  set +e
  [ -n "$HOG_PID" ] && kill "$HOG_PID" 2>/dev/null
  if [ $rc -ne 0 ] && "$DOCKER" info >/dev/null 2>&1; then
    echo "---- FAILED — tasks of stack $CURRENT and their last logs ----" >&2
    "$DOCKER" stack ps --no-trunc "$CURRENT" 2>&1 | head -40 >&2
    for svc in $("$DOCKER" service ls -q --filter "label=com.docker.stack.namespace=$CURRENT" 2>/dev/null); do
      "$DOCKER" service logs --tail 5 --no-task-ids "$svc" 2>&1 | tail -30 >&2
    done
  fi
  if [ "${KEEP_UP:-0}" = 1 ] && [ $rc -eq 0 ]; then
    step "KEEP_UP=1: leaving stack $CURRENT running (docker stack rm $CURRENT to stop)"
  elif "$DOCKER" info >/dev/null 2>&1; then
    for name in "$STACK" "$STACK_HOSTS"; do
      if "$DOCKER" service ls -q --filter "label=com.docker.stack.namespace=$name" 2>/dev/null | grep -q .; then
        step "removing stack $name"
        remove_stack "$name"
      fi
    done
    "$DOCKER" secret rm orbitmesh-api-token >/dev/null 2>&1
    if [ "$SWARM_INITED" = 1 ]; then
      step "leaving the swarm this script created"
      "$DOCKER" swarm leave --force >/dev/null 2>&1
    fi
  fi
  # the node keys and the authority key `orbitmesh stack` issued for this run
  [ "${KEEP_UP:-0}" = 1 ] || rm -rf "$WORK/stack-keys" "$WORK/hosts/stack-keys"
  [ "${KEEP_UP:-0}" = 1 ] || engine_stop
  [ $rc -eq 0 ] && step "docker swarm test passed" || step "docker swarm test FAILED (exit $rc)"
}
trap teardown EXIT
trap 'exit 130' INT TERM

engine_start
host_tools

# -- static: the committed stack is what the generator writes ---------------------------
step "deploy/stack.yml and its config are what \`orbitmesh stack --preset demo\` writes (node keys: $WORK/stack-keys)"
"$PY" -m agent stack --preset demo --out "$WORK/stack.yml" 2>/dev/null || die "orbitmesh stack failed"
for f in stack.yml stack-fleet.toml; do
  diff -u "deploy/$f" "$WORK/$f" >&2 || die "deploy/$f differs from the generator's output: regenerate it (orbitmesh stack --out deploy/stack.yml)"
done

# -- image ------------------------------------------------------------------------------
if [ "${BUILD:-1}" = 1 ] || ! "$DOCKER" image inspect orbitmesh:latest >/dev/null 2>&1; then
  step "building the image offline (deploy/build-image.sh)"
  "$ROOT/deploy/build-image.sh" || die "image build failed"
fi

# -- swarm --------------------------------------------------------------------------------
if [ "$("$DOCKER" info -f '{{.Swarm.LocalNodeState}}')" != active ]; then
  step "docker swarm init (a one-machine swarm; docs/deploy.md joins more)"
  if ! "$DOCKER" swarm init >"$WORK/swarm.log" 2>&1; then
    # several interfaces: advertise the one the default route uses
    addr=$(ip -4 route get 1.1.1.1 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "src") print $(i + 1)}')
    [ -n "$addr" ] || addr=$(hostname -I | awk '{print $1}')
    "$DOCKER" swarm init --advertise-addr "$addr" >"$WORK/swarm.log" 2>&1 || { cat "$WORK/swarm.log"; die "docker swarm init failed"; }
  fi
  SWARM_INITED=1
fi
for name in "$STACK" "$STACK_HOSTS"; do    # a previous run that was cut short
  remove_stack "$name"
done

# the API token: a swarm secret the stack names (docs/security.md); swarm_e2e.py sends it
export ORBITMESH_TOKEN=${ORBITMESH_TOKEN:-$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')}
"$DOCKER" secret rm orbitmesh-api-token >/dev/null 2>&1 || true
printf '%s' "$ORBITMESH_TOKEN" | "$DOCKER" secret create orbitmesh-api-token - >/dev/null \
  || die "docker secret create orbitmesh-api-token failed"

start_hog
if [ "$ONLY" != hosts ]; then
# the stack as a user deploys it: deploy/stack.yml (identical, checked above) beside the keys `orbitmesh stack` issued
step "docker stack deploy -c stack.yml $STACK (in $WORK, beside stack-keys/)"
td=$(date +%s)
(cd "$WORK" && "$DOCKER" stack deploy -c stack.yml "$STACK") >"$WORK/deploy.log" 2>&1 || { cat "$WORK/deploy.log"; die "docker stack deploy failed"; }
grep -i "ignoring\|unsupported" "$WORK/deploy.log" >&2 && die "docker stack deploy ignored part of deploy/stack.yml"

step "tasks through :8080, a replica killed and replaced, verdicts (deploy/swarm_e2e.py)"
"$PY" deploy/swarm_e2e.py --stack "$STACK" --models models --keys "$WORK/stack-keys" --metrics "$WORK/e2e.json" \
  || die "swarm end-to-end checks failed"

# -- numbers ------------------------------------------------------------------------------
"$DOCKER" stats --no-stream --format '{{.Name}} {{.CPUPerc}} {{.MemUsage}}' \
  $("$DOCKER" ps -q --filter "label=com.docker.stack.namespace=$STACK") >"$WORK/stats.txt"
"$PY" - "$WORK" "$METRICS" "$td" <<'EOF'
import json, re, statistics, sys, time
from pathlib import Path
work, out, td = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
cpu, mem = [], []
for line in (work / "stats.txt").read_text().splitlines():
    m = re.search(r"\s([\d.]+)%\s+([\d.]+)(KiB|MiB|GiB) /", line)
    if m:
        cpu.append(float(m.group(1)))
        mem.append(float(m.group(2)) * {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024}[m.group(3)])
m = json.loads((work / "e2e.json").read_text())
m.update({"replicas": len(mem), "mem_mib_median": statistics.median(mem) if mem else None,
          "fleet_cpu_cores_after_tasks": sum(cpu) / 100})
Path(out).write_text(json.dumps(m, indent=1))
print(f"measured: deploy→ready {m.get('deploy_to_ready_s', 0):.1f} s, replace→ready {m.get('replace_to_ready_s', 0):.1f} s, "
      f"task median {m.get('task_total_ms_median', 0):.0f} ms (overhead {m.get('task_overhead_ms_median', 0):.1f} ms), "
      f"memory per replica {m['mem_mib_median'] or 0:.0f} MiB, fleet CPU {m['fleet_cpu_cores_after_tasks']:.2f} cores")
EOF
fi

# -- satellites sharing replicas (orbitmesh stack --sats-per-container 12) -------------------
# The same constellation as services host-0, host-1 of 12 satellites each beside the two ground
# stations: the same end-to-end checks (sat-9 killed and started alone, through its host's control
# socket), then host-1's replica killed: all its satellites at once, and swarm replaces it.
if [ "$HOSTS" = 1 ]; then
  if [ "$ONLY" != hosts ]; then
    step "removing stack $STACK; the same fleet in replicas of 12 (--sats-per-container 12)"
    remove_stack "$STACK"
  fi
  CURRENT=$STACK_HOSTS
  mkdir -p "$WORK/hosts"
  "$PY" -m agent stack --preset demo --sats-per-container 12 --out "$WORK/hosts/stack.yml" 2>/dev/null \
    || die "orbitmesh stack --sats-per-container 12 failed"
  step "docker stack deploy -c stack.yml $STACK_HOSTS (in $WORK/hosts, beside stack-keys/)"
  (cd "$WORK/hosts" && "$DOCKER" stack deploy -c stack.yml "$STACK_HOSTS") >"$WORK/deploy-hosts.log" 2>&1 \
    || { cat "$WORK/deploy-hosts.log"; die "docker stack deploy (hosts) failed"; }
  grep -i "ignoring\|unsupported" "$WORK/deploy-hosts.log" >&2 && die "docker stack deploy ignored part of the stack of hosts"
  step "tasks through :8080, sat-9 killed and started in its host, host-1's replica killed (deploy/swarm_e2e.py)"
  "$PY" deploy/swarm_e2e.py --stack "$STACK_HOSTS" --models models --keys "$WORK/hosts/stack-keys" \
    --metrics "$WORK/e2e-hosts.json" || die "swarm end-to-end checks with a stack of hosts failed"
  "$DOCKER" stats --no-stream --format '{{.Name}} {{.CPUPerc}} {{.MemUsage}}' \
    $("$DOCKER" ps -q --filter "label=com.docker.stack.namespace=$STACK_HOSTS" --filter "label=org.orbitmesh.sats")
  "$PY" - "$WORK/e2e-hosts.json" <<'EOF'
import json, sys
m = json.loads(open(sys.argv[1]).read())
print(f"measured (hosts of 12): deploy→ready {m.get('deploy_to_ready_s', 0):.1f} s, hosted restart→ready "
      f"{m.get('hosted_restart_to_ready_s', 0):.1f} s, host replica replaced→ready "
      f"{m.get('host_replace_to_ready_s', 0):.1f} s, task median {m.get('task_total_ms_median', 0):.0f} ms")
EOF
fi
