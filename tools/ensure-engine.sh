#!/usr/bin/env bash
# Make sure a Docker engine answers, and that the host tools the tests and the offline bases use are
# installed. On a fresh Debian/Ubuntu machine this installs Debian's docker.io and docker-compose (what
# SageMaker SDK local mode calls when `docker compose` v2 is absent), the CNCF registry server
# (docker-registry) and debootstrap, then starts dockerd in the background and waits for it.
# Does nothing when everything is already there.
set -euo pipefail

log=${SMKIT_DOCKERD_LOG:-/var/log/smkit-dockerd.log}
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi
fi

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || need+=(docker-compose)
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)

if [ ${#need[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: missing ${need[*]} and no apt-get to install them." >&2
    echo "  fix: install Docker Engine with compose, the CNCF distribution registry and debootstrap yourself" >&2
    exit 1
  fi
  echo "==> installing ${need[*]} (Debian packages)"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if docker info >/dev/null 2>&1; then
  exit 0
fi

if [ -n "${DOCKER_HOST:-}" ]; then
  echo "error: DOCKER_HOST=$DOCKER_HOST is set but no engine answers there." >&2
  echo "  fix: start that engine, or unset DOCKER_HOST to use a local one" >&2
  exit 1
fi

echo "==> starting dockerd (log: $log)"
if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
  $sudo systemctl start docker || true
fi
if ! docker info >/dev/null 2>&1; then
  $sudo sh -c "setsid nohup dockerd >>'$log' 2>&1 < /dev/null &"
fi
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    echo "==> Docker engine ready ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
    exit 0
  fi
  sleep 1
done
echo "error: dockerd did not answer within 60 s; last lines of $log:" >&2
tail -n 20 "$log" >&2 || true
echo "  fix: read the log above (a common cause is another dockerd or containerd already holding its socket)" >&2
exit 1
