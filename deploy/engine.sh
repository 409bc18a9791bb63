# Shared by deploy/test-compose.sh and deploy/test-swarm.sh (sourced, not run):
# the Docker engine from Debian's packages, started by hand where no service
# manager runs it, and the host's tools (the project's venv with the docker
# extra).  Expects ROOT, WORK, PY and the functions step and die; sets DOCKER
# (Debian's client, which matches Debian's engine: another docker on PATH may
# be newer) and DOCKERD_PID (non-empty when this script started dockerd, so
# the caller's teardown stops it again).

engine_install() {
  local need=()
  command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
  command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
  command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
  if [ ${#need[@]} -gt 0 ]; then
    step "installing ${need[*]} from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >"$WORK/apt.log" 2>&1 || { tail -20 "$WORK/apt.log"; die "apt-get update failed"; }
    apt-get install -y -qq "${need[@]}" >>"$WORK/apt.log" 2>&1 || { tail -20 "$WORK/apt.log"; die "apt-get install failed"; }
  fi
  DOCKER=/usr/bin/docker
  [ -x "$DOCKER" ] || DOCKER=docker
  export DOCKER
}

engine_start() {
  DOCKERD_PID=""
  "$DOCKER" info >/dev/null 2>&1 && return 0
  step "starting dockerd (log: $WORK/dockerd.log)"
  dockerd --log-level=warn >"$WORK/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 1 60); do
    "$DOCKER" info >/dev/null 2>&1 && break
    kill -0 "$DOCKERD_PID" 2>/dev/null || { tail -20 "$WORK/dockerd.log" >&2; die "dockerd exited"; }
    sleep 1
  done
  "$DOCKER" info >/dev/null 2>&1 || { tail -20 "$WORK/dockerd.log" >&2; die "dockerd did not answer within 60 s"; }
}

engine_stop() {
  [ -n "${DOCKERD_PID:-}" ] || return 0
  step "stopping the dockerd this script started (pid $DOCKERD_PID)"
  kill "$DOCKERD_PID" 2>/dev/null
  for _ in $(seq 1 40); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
}

host_tools() {
  if [ ! -x "$PY" ]; then
    step "no venv yet: make models (creates .venv, builds the model zoo)"
    make --no-print-directory models >"$WORK/make.log" 2>&1 || { tail -30 "$WORK/make.log"; die "make models failed"; }
  fi
  if ! "$PY" -c "import docker, kubernetes_validate, yaml" 2>/dev/null; then
    step "installing the docker extra (Docker SDK, Kubernetes schemas) into .venv"
    "$PY" -m pip install -q -e "$ROOT[docker]" >"$WORK/pip.log" 2>&1 \
      || { grep -v "is ignored" "$WORK/pip.log" | tail -20; die "pip install .[docker] failed"; }
  fi
}

# One core's worth of CPU-bound work at normal priority until the caller kills
# HOG_PID: what a laptop or a shared CI runner has beside the constellation.
start_hog() {
  HOG_PID=""
  [ "${STRESS:-0}" = 1 ] || return 0
  python3 -c 'while True: pass' &
  HOG_PID=$!
  step "STRESS=1: a CPU hog (pid $HOG_PID) keeps one core busy until the end"
}
