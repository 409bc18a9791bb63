#!/usr/bin/env bash
# The docker compose constellation, tested for real (`make test-docker`, and CI after `make test`):
#   engine from Debian's packages (dockerd started by hand when none runs), the
#   image built offline (deploy/build-image.sh), the committed docker-compose.yml
#   checked against the generator and by Compose itself, the Kubernetes
#   manifests validated against the Kubernetes schemas, the 24-satellite
#   constellation and its 2 ground stations brought up, real tasks to several
#   containers, a link on a task's path cut through the agents' chaos API, a
#   container killed while tasks flow, started again (same peer id), paused
#   and resumed with `orbitmesh chaos`; numbers measured; everything torn
#   down, whatever happens.
# Only loopback and compose-internal traffic.  Environment: PROJECT
# (orbitmesh-ci), READY_TIMEOUT (s, 600), KEEP_UP=1 (leave the fleet running),
# METRICS (JSON file to write the measurements to), STRESS=1 (contention mode:
# a CPU hog keeps one full core busy from before `up` to the end, as a laptop
# or a shared CI runner has; every check must still pass).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PROJECT=${PROJECT:-orbitmesh-ci}
READY_TIMEOUT=${READY_TIMEOUT:-600}
PY=${PY:-$ROOT/.venv/bin/python}
COMPOSE_FILE_PATH=$ROOT/docker-compose.yml
API_BASE=8100
SIZE=24
GROUND=london,tokyo            # the committed file's ground stations: nodes SIZE, SIZE+1
NODES=$(( SIZE + $(tr ',' '\n' <<<"$GROUND" | grep -c .) ))
WORK=$(mktemp -d /tmp/orbitmesh-compose.XXXXXX)
METRICS=${METRICS:-$WORK/metrics.json}
T0=$(date +%s)
DOCKERD_PID=""
HOG_PID=""
FAILED_STEP=""

step() { printf '[test-docker +%4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
die() { FAILED_STEP="$*"; echo "error: $*" >&2; exit 1; }
# Until every node's API answers ready: satellites sat-i on API_BASE+i, then the ground
# stations (a station with no satellite in view has no links, and is ready once its API answers).
wait_all_ready() {
  local project=$1 ready=0 last=-1 exited deadline=$(( $(date +%s) + READY_TIMEOUT ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    ready=0
    for i in $(seq 0 $((NODES - 1))); do
      curl -s -m 2 "http://127.0.0.1:$((API_BASE + i))/v1/health" 2>/dev/null | grep -q '"ready":true' && ready=$((ready + 1))
    done
    [ "$ready" != "$last" ] && step "agents ready: $ready/$NODES"
    last=$ready
    [ "$ready" -eq "$NODES" ] && return 0
    exited=$("$DOCKER" ps -a --filter "label=com.docker.compose.project=$project" --filter "label=org.orbitmesh.node" --filter status=exited -q | wc -l)
    [ "$exited" -eq 0 ] || die "$exited node containers exited during start-up"
    sleep 2
  done
  die "only $ready/$NODES agents ready after ${READY_TIMEOUT} s"
}

# -- 1. engine (deploy/engine.sh: Debian's packages, dockerd started by hand) ----------
# shellcheck source=deploy/engine.sh
. "$ROOT/deploy/engine.sh"
engine_install
COMPOSE=(docker-compose -p "$PROJECT" -f "$COMPOSE_FILE_PATH")
step "$("$DOCKER" --version); $(docker-compose version --short 2>/dev/null | sed 's/^/docker-compose /')"

teardown() {
  local rc=$?
  set +e
  [ -n "$HOG_PID" ] && kill "$HOG_PID" 2>/dev/null
  if [ $rc -ne 0 ]; then
    echo "---- FAILED${FAILED_STEP:+: $FAILED_STEP} — container states and logs ----" >&2
    "${COMPOSE[@]}" ps >&2 2>/dev/null
    for svc in init sat-0 sat-2 sat-9 sat-15 gs-london host-0 host-1; do
      echo "---- logs of $svc (last 40 lines) ----" >&2
      "${COMPOSE[@]}" logs --no-color --tail=40 "$svc" >&2 2>/dev/null
    done
    [ -n "$DOCKERD_PID" ] && { echo "---- dockerd log (last 20 lines) ----" >&2; tail -20 "$WORK/dockerd.log" >&2; }
  fi
  if [ "${KEEP_UP:-0}" = 1 ] && [ $rc -eq 0 ]; then
    step "KEEP_UP=1: leaving project $PROJECT running (docker-compose -p $PROJECT down -v to stop)"
  elif "$DOCKER" info >/dev/null 2>&1; then
    step "tearing down project $PROJECT"
    timeout 120 "${COMPOSE[@]}" --profile monitoring down -v -t 5 --remove-orphans >"$WORK/down.log" 2>&1 \
      || { echo "compose down failed:" >&2; tail -5 "$WORK/down.log" >&2; }
  fi
  [ "${KEEP_UP:-0}" = 1 ] || engine_stop
  if [ $rc -eq 0 ]; then step "docker compose test passed"; else step "docker compose test FAILED (exit $rc)"; fi
  exit $rc
}
trap teardown EXIT
trap 'exit 130' INT TERM

engine_start
# a previous run that was cut short
"${COMPOSE[@]}" down -v -t 2 --remove-orphans >/dev/null 2>&1 || true

# -- 2. host tools: the project's venv with the docker extra ---------------------------
host_tools

# -- 3. static checks: generator, committed compose file, Compose, Kubernetes schemas --------
step "unit tests of the generators and manifests (tests/test_compose.py, tests/test_stack.py)"
if ! "$PY" -m pytest -q -p no:cacheprovider tests/test_compose.py tests/test_stack.py >"$WORK/pytest.log" 2>&1; then
  tail -40 "$WORK/pytest.log"; die "tests/test_compose.py or tests/test_stack.py failed"
fi
tail -1 "$WORK/pytest.log"
step "docker-compose config: Compose 1.29 accepts docker-compose.yml"
docker-compose -f "$COMPOSE_FILE_PATH" config -q || die "docker-compose config rejected docker-compose.yml"
if "$DOCKER" compose version >/dev/null 2>&1; then
  "$DOCKER" compose -f "$COMPOSE_FILE_PATH" config -q || die "docker compose (v2) config rejected docker-compose.yml"
  step "docker compose (v2) config accepts it too"
fi
step "Kubernetes manifests against the Kubernetes 1.30 schemas (strict)"
"$ROOT/.venv/bin/kubernetes-validate" --strict --quiet -k 1.30.0 deploy/k8s/service.yaml deploy/k8s/statefulset.yaml deploy/k8s/networkpolicy.yaml \
  || die "deploy/k8s manifests are not valid Kubernetes resources"

# -- 4. image ------------------------------------------------------------------------
step "building the image offline (deploy/build-image.sh)"
tb=$(date +%s)
"$ROOT/deploy/build-image.sh" || die "image build failed"
BUILD_S=$(( $(date +%s) - tb ))
IMAGE_MB=$(( $("$DOCKER" image inspect -f '{{.Size}}' orbitmesh:latest) / 1000000 ))

# -- 5. up ---------------------------------------------------------------------------
# the fleet's API token: compose hands it to the init service, compose_e2e.py sends it (docs/security.md)
export ORBITMESH_TOKEN=${ORBITMESH_TOKEN:-$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')}
start_hog
step "docker-compose up -d: init + $SIZE satellites + ground stations $GROUND (project $PROJECT)"
tu=$(date +%s.%N)
timeout 300 "${COMPOSE[@]}" up -d >"$WORK/up.log" 2>&1 || { tail -30 "$WORK/up.log"; die "docker-compose up failed"; }
UP_RETURNED_S=$(python3 -c "import sys,time; print(f'{time.time()-float(sys.argv[1]):.1f}')" "$tu")
step "up returned after ${UP_RETURNED_S} s; waiting for every agent's links (at most ${READY_TIMEOUT} s)"
wait_all_ready "$PROJECT"
READY_S=$(python3 -c "import sys,time; print(f'{time.time()-float(sys.argv[1]):.1f}')" "$tu")
step "all $NODES agents ($SIZE satellites, ground stations $GROUND) ready ${READY_S} s after up"
"$DOCKER" stats --no-stream --format '{{.Name}} {{.MemUsage}}' \
  $("$DOCKER" ps -q --filter "label=com.docker.compose.project=$PROJECT" --filter "label=org.orbitmesh.role=satellite") \
  >"$WORK/mem-ready.txt"
"$DOCKER" stats --no-stream --format '{{.Name}} {{.MemUsage}}' \
  $("$DOCKER" ps -q --filter "label=com.docker.compose.project=$PROJECT" --filter "label=org.orbitmesh.role=ground") \
  >"$WORK/mem-ground.txt"

# -- 6. tasks and chaos --------------------------------------------------------------------
step "tasks to several containers; a link cut; kill/start, pause/resume through the engine (deploy/compose_e2e.py)"
"$PY" deploy/compose_e2e.py --project "$PROJECT" --size "$SIZE" --ground "$GROUND" --api-base "$API_BASE" --models models \
  --metrics "$WORK/e2e.json" || die "end-to-end checks failed"
"$DOCKER" stats --no-stream --format '{{.Name}} {{.MemUsage}}' \
  $("$DOCKER" ps -q --filter "label=com.docker.compose.project=$PROJECT" --filter "label=org.orbitmesh.role=satellite") \
  >"$WORK/mem-after.txt"

# -- 6b. the monitoring profile: Prometheus scraping every node ---------------------------------
step "monitoring profile: Debian's Prometheus (deploy/build-monitoring-image.sh), scraping every node"
tm=$(date +%s)
"$ROOT/deploy/build-monitoring-image.sh" >"$WORK/monitoring-build.log" 2>&1 \
  || { tail -20 "$WORK/monitoring-build.log"; die "monitoring image build failed"; }
tail -1 "$WORK/monitoring-build.log"
timeout 120 "${COMPOSE[@]}" --profile monitoring up -d prometheus >"$WORK/prom-up.log" 2>&1 \
  || { tail -20 "$WORK/prom-up.log"; die "docker-compose --profile monitoring up failed"; }
"$PY" deploy/monitoring_check.py --nodes "$NODES" || die "Prometheus did not scrape every node"
step "monitoring profile checked in $(( $(date +%s) - tm )) s"

# -- 7. numbers ------------------------------------------------------------------------------
"$PY" - "$WORK" "$METRICS" "$BUILD_S" "$IMAGE_MB" "$UP_RETURNED_S" "$READY_S" <<'EOF'
import json, re, statistics, sys
from pathlib import Path
work, out, build_s, image_mb, up_s, ready_s = sys.argv[1:]
def mem(path):
    vals = []
    for line in Path(path).read_text().splitlines():
        m = re.search(r"\s([\d.]+)(KiB|MiB|GiB) /", line)
        if m:
            vals.append(float(m.group(1)) * {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024}[m.group(2)])
    return {"n": len(vals), "min": min(vals), "median": statistics.median(vals), "max": max(vals)} if vals else {}
e2e = json.loads((Path(work) / "e2e.json").read_text()) if (Path(work) / "e2e.json").exists() else {}
m = {"build_s": int(build_s), "image_mb": int(image_mb), "up_returned_s": float(up_s), "up_to_ready_s": float(ready_s),
     "mem_mib_ready": mem(Path(work) / "mem-ready.txt"), "mem_mib_after_tasks": mem(Path(work) / "mem-after.txt"),
     "mem_mib_ground_ready": mem(Path(work) / "mem-ground.txt"), **e2e}
Path(out).write_text(json.dumps(m, indent=1))
r, a = m["mem_mib_ready"], m["mem_mib_after_tasks"]
print(f"measured: build {m['build_s']} s, image {m['image_mb']} MB, up→ready {m['up_to_ready_s']} s, "
      f"memory per agent container {r.get('median', 0):.0f} MiB median ({r.get('min', 0):.0f}–{r.get('max', 0):.0f}) "
      f"at ready, {a.get('median', 0):.0f} MiB after tasks; ground stations "
      f"{m['mem_mib_ground_ready'].get('median', 0):.0f} MiB; written to {out}")
EOF

# -- 8. satellites sharing containers (orbitmesh compose --sats-per-container 12) -------------
# The same constellation as 2 host containers of 12 satellites beside the 2 ground stations:
# the same end-to-end checks (a hosted satellite killed, started, paused and resumed alone,
# through the host's control socket), then a host container killed: all its satellites at once.
step "tearing down $PROJECT; the same fleet in host containers of 12 (--sats-per-container 12)"
timeout 120 "${COMPOSE[@]}" --profile monitoring down -v -t 5 --remove-orphans >"$WORK/down.log" 2>&1 \
  || { tail -5 "$WORK/down.log"; die "compose down of $PROJECT failed"; }
HOSTS_FILE=$WORK/hosts-compose.yml
"$PY" -m agent compose --sats-per-container 12 -o "$HOSTS_FILE" || die "orbitmesh compose --sats-per-container failed"
PROJECT=$PROJECT-hosts
COMPOSE=(docker-compose -p "$PROJECT" -f "$HOSTS_FILE")
docker-compose -f "$HOSTS_FILE" config -q || die "docker-compose config rejected the --sats-per-container file"
"${COMPOSE[@]}" down -v -t 2 --remove-orphans >/dev/null 2>&1 || true
tu=$(date +%s.%N)
timeout 300 "${COMPOSE[@]}" up -d >"$WORK/up-hosts.log" 2>&1 || { tail -30 "$WORK/up-hosts.log"; die "docker-compose up (hosts) failed"; }
wait_all_ready "$PROJECT"
HOSTS_READY_S=$(python3 -c "import sys,time; print(f'{time.time()-float(sys.argv[1]):.1f}')" "$tu")
step "all $NODES agents ready ${HOSTS_READY_S} s after up, in $("$DOCKER" ps -q --filter "label=com.docker.compose.project=$PROJECT" --filter "label=org.orbitmesh.sats" | wc -l) host containers"
"$DOCKER" stats --no-stream --format '{{.Name}} {{.MemUsage}} {{.CPUPerc}}' \
  $("$DOCKER" ps -q --filter "label=com.docker.compose.project=$PROJECT" --filter "label=org.orbitmesh.sats")
"$PY" deploy/compose_e2e.py --project "$PROJECT" --size "$SIZE" --ground "$GROUND" --api-base "$API_BASE" --models models \
  --sats-per-container 12 --metrics "$WORK/e2e-hosts.json" || die "end-to-end checks with host containers failed"
