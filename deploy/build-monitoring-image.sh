#!/usr/bin/env bash
# The compose `monitoring` profile's image, without any container registry:
# Debian 12's own Prometheus package, installed by mmdebstrap into a minimal
# root file system and imported (`docker import`).  Skipped when the image
# exists; REBUILD=1 forces it.  Environment: IMAGE (orbitmesh-prometheus:bookworm),
# DEBIAN_MIRROR, DOCKER (the docker client).
set -euo pipefail
IMAGE=${IMAGE:-orbitmesh-prometheus:bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if [ -z "${DOCKER:-}" ]; then
  if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; else DOCKER=docker; fi
fi
say() { printf '[build-monitoring-image %(%H:%M:%S)T] %s\n' -1 "$*"; }

"$DOCKER" info >/dev/null 2>&1 || { echo "error: no Docker engine answers ($DOCKER info failed); start dockerd first" >&2; exit 1; }
if [ "${REBUILD:-0}" != 1 ] && "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
  say "$IMAGE exists (REBUILD=1 to rebuild)"
  exit 0
fi
command -v mmdebstrap >/dev/null || { echo "error: mmdebstrap is not installed (apt-get install mmdebstrap)" >&2; exit 1; }
t0=$(date +%s)
say "mmdebstrap bookworm (essential + prometheus) | docker import $IMAGE"
# The package's web assets come with it; docs, man pages and translations do not.
mmdebstrap --quiet --variant=essential \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --include=prometheus \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='rm -rf "$1"/var/cache/* "$1"/var/log/*' \
    bookworm - "$DEBIAN_MIRROR" \
  | "$DOCKER" import --change 'ENV LANG=C.UTF-8' --change 'WORKDIR /prometheus' \
      --change 'ENTRYPOINT []' --change 'CMD ["prometheus", "--version"]' - "$IMAGE" >/dev/null
say "$IMAGE built in $(( $(date +%s) - t0 )) s: $("$DOCKER" run --rm "$IMAGE" prometheus --version 2>&1 | head -1)"
