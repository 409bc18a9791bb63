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
# Environment: STACK (orbitmesh-ci), KEEP_UP=1 (leave the stack running),
# METRICS (JSON file for the measurements), STRESS=1 (a CPU hog on one core),
# BUILD=0 (reuse an orbitmesh:latest image that is already there).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
STACK=${STACK:-orbitmesh-ci}
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

teardown() {
  local rc=$?
  set +e
  [ -n "$HOG_PID" ] && kill "$HOG_PID" 2>/dev/null
  if [ $rc -ne 0 ] && "$DOCKER" info >/dev/null 2>&1; then
    echo "---- FAILED — tasks of ${STACK}_sat and their last logs ----" >&2
    "$DOCKER" service ps --no-trunc "${STACK}_sat" 2>&1 | head -40 >&2
    "$DOCKER" service logs --tail 5 --no-task-ids "${STACK}_sat" 2>&1 | tail -60 >&2
  fi
  if [ "${KEEP_UP:-0}" = 1 ] && [ $rc -eq 0 ]; then
    step "KEEP_UP=1: leaving stack $STACK running (docker stack rm $STACK to stop)"
  elif "$DOCKER" info >/dev/null 2>&1; then
    step "removing stack $STACK"
    svc_id=$("$DOCKER" service inspect -f '{{.ID}}' "${STACK}_sat" 2>/dev/null)
    "$DOCKER" stack rm "$STACK" >/dev/null 2>&1
    for _ in $(seq 1 60); do
      [ -z "$("$DOCKER" ps -aq --filter "label=com.docker.stack.namespace=$STACK")" ] \
        && ! "$DOCKER" network inspect "${STACK}_constellation" >/dev/null 2>&1 && break
      sleep 1
    done
    # the per-slot journal volumes of this deployment (orbitmesh-<service id>-<slot>)
    [ -n "$svc_id" ] && "$DOCKER" volume ls -q | grep "^orbitmesh-${svc_id}-" | xargs -r "$DOCKER" volume rm >/dev/null 2>&1
    "$DOCKER" secret rm orbitmesh-api-token >/dev/null 2>&1
    if [ "$SWARM_INITED" = 1 ]; then
      step "leaving the swarm this script created"
      "$DOCKER" swarm leave --force >/dev/null 2>&1
    fi
  fi
  # the node keys and the authority key `orbitmesh stack` issued for this run
  [ "${KEEP_UP:-0}" = 1 ] || rm -rf "$WORK/stack-keys"
  [ "${KEEP_UP:-0}" = 1 ] || engine_stop
  [ $rc -eq 0 ] && step "docker swarm test passed" || step "docker swarm test FAILED (exit $rc)"
}
trap teardown EXIT

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
"$DOCKER" stack rm "$STACK" >/dev/null 2>&1 || true    # a previous run that was cut short
for _ in $(seq 1 60); do
  "$DOCKER" network inspect "${STACK}_constellation" >/dev/null 2>&1 || break
  sleep 1
done

# the API token: a swarm secret the stack names (docs/security.md); swarm_e2e.py sends it
export ORBITMESH_TOKEN=${ORBITMESH_TOKEN:-$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')}
"$DOCKER" secret rm orbitmesh-api-token >/dev/null 2>&1 || true
printf '%s' "$ORBITMESH_TOKEN" | "$DOCKER" secret create orbitmesh-api-token - >/dev/null \
  || die "docker secret create orbitmesh-api-token failed"

start_hog
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
