#!/usr/bin/env bash
# Build the orbitmesh agent image without any container registry:
#   1. a Debian 12 base image made locally: mmdebstrap | docker import
#      (skipped when it exists; REBUILD_BASE=1 forces it),
#   2. wheels of the project and every dependency built on the host (pip wheel),
#   3. the model zoo built on the host,
#   4. docker build --network none on that context (deploy/Dockerfile).
# Environment: IMAGE (orbitmesh:latest), BASE_IMAGE (orbitmesh-base:bookworm),
# PY (the host venv's python), DEBIAN_MIRROR, DOCKER (the docker client).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=${IMAGE:-orbitmesh:latest}
BASE_IMAGE=${BASE_IMAGE:-orbitmesh-base:bookworm}
PY=${PY:-$ROOT/.venv/bin/python}
CTX=${CTX:-$ROOT/build/image}
MODELS=${MODELS:-$ROOT/models}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Packages the agent imports that pyproject.toml does not list yet (mesh/topology.py
# imports scipy); installing a listed one again is a no-op.
EXTRA_PACKAGES=${EXTRA_PACKAGES-scipy}
# Debian's client matches Debian's engine; another docker on PATH may be newer.
if [ -z "${DOCKER:-}" ]; then
  if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; else DOCKER=docker; fi
fi

say() { printf '[build-image %(%H:%M:%S)T] %s\n' -1 "$*"; }
t0=$(date +%s.%N)
since() { python3 -c "import sys,time; print(f'{time.time()-float(sys.argv[1]):.1f}')" "$1"; }

"$DOCKER" info >/dev/null 2>&1 || { echo "error: no Docker engine answers ($DOCKER info failed); start dockerd first" >&2; exit 1; }

# -- 1. base -------------------------------------------------------------------
if [ "${REBUILD_BASE:-0}" = 1 ] || ! "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  command -v mmdebstrap >/dev/null || { echo "error: mmdebstrap is not installed (apt-get install mmdebstrap)" >&2; exit 1; }
  say "base: mmdebstrap bookworm (essential + python3, libgmp10, libstdc++6) | docker import $BASE_IMAGE"
  tb=$(date +%s.%N)
  # essential variant: no apt, no perl (the merged-usr hook avoids usrmerge and
  # its perl); no docs, man pages or translations.
  mmdebstrap --quiet --variant=essential \
      --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
      --include=python3,libgmp10,libstdc++6 \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
      --customize-hook='rm -rf "$1"/var/cache/* "$1"/var/log/*' \
      bookworm - "$DEBIAN_MIRROR" \
    | "$DOCKER" import --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
  say "base: done in $(since "$tb") s"
else
  say "base: $BASE_IMAGE exists (REBUILD_BASE=1 to rebuild)"
fi

# -- 2. wheels -----------------------------------------------------------------
say "wheels: pip wheel of the project and its dependencies into $CTX/wheels"
tw=$(date +%s.%N)
rm -rf "$CTX/pip" "$CTX/project"
mkdir -p "$CTX/wheels" "$CTX/pip" "$CTX/project"
rm -f "$CTX"/wheels/orbitmesh-*.whl
# pip runs from its own wheel inside the image
"$PY" -m pip download -q --no-deps --only-binary=:all: --dest "$CTX/pip" pip 2>&1 | grep -v "is ignored" || true
# shellcheck disable=SC2086
"$PY" -m pip wheel -q --wheel-dir "$CTX/wheels" "$ROOT" $EXTRA_PACKAGES 2>&1 | grep -v "is ignored" || true
# the project in its own layer, so that changing it does not reinstall every dependency
mv "$CTX"/wheels/orbitmesh-*.whl "$CTX/project/" 2>/dev/null || { echo "error: pip wheel did not produce the orbitmesh wheel" >&2; exit 1; }
rm -f "$CTX"/wheels/pip-*.whl
ls "$CTX"/pip/pip-*.whl >/dev/null 2>&1 || { echo "error: no pip wheel in $CTX/pip" >&2; exit 1; }
say "wheels: $(ls "$CTX"/wheels | wc -l) wheels, $(du -sh "$CTX/wheels" | cut -f1) in $(since "$tw") s"

# -- 3. models -----------------------------------------------------------------
if [ ! -f "$MODELS/digits.onnx" ]; then
  say "models: building the zoo into $MODELS"
  "$PY" -m agent.zoo build --out "$MODELS"
fi
rm -rf "$CTX/models"
cp -r "$MODELS" "$CTX/models"

# -- 4. image ------------------------------------------------------------------
cp "$ROOT/deploy/Dockerfile" "$CTX/Dockerfile"
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cp /etc/ssl/certs/ca-certificates.crt "$CTX/ca-certificates.crt"   # HTTPS from containers needs the host's CAs
else
  : > "$CTX/ca-certificates.crt"
fi
say "image: docker build --network none -t $IMAGE"
ti=$(date +%s.%N)
"$DOCKER" build --network none --build-arg "BASE=$BASE_IMAGE" -t "$IMAGE" -f "$CTX/Dockerfile" "$CTX" >"$CTX/build.log" 2>&1 || {
  tail -40 "$CTX/build.log" >&2; echo "error: docker build failed (log: $CTX/build.log)" >&2; exit 1; }
# the image this build replaced (untagged now); build-stage layers stay as cache
"$DOCKER" image prune -f --filter "label=org.opencontainers.image.title=orbitmesh" >/dev/null 2>&1 || true
size=$("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE")
say "image: $IMAGE built in $(since "$ti") s, $((size / 1000000)) MB; total $(since "$t0") s"
