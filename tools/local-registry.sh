#!/usr/bin/env bash
# A registry server on this machine, for trying `make push` without an AWS account (or as a pull-through
# stand-in for a team registry): the CNCF distribution registry (Debian's docker-registry) on
# 127.0.0.1:$PORT, without authentication, its data kept under ~/.cache/smkit/registry between runs.
# Loopback only: Docker trusts plain-HTTP registries on 127.0.0.0/8, and nothing else can reach it.
#
#   tools/local-registry.sh start|stop|status      (make registry / make registry-stop)
set -euo pipefail

port=${PORT:-5000}
root=${SMKIT_REGISTRY_DIR:-$HOME/.cache/smkit/registry}
pidfile=$root/registry.pid
url=http://127.0.0.1:$port/v2/

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

case "${1:-start}" in
  start)
    if running; then
      echo "==> registry already running at 127.0.0.1:$port (pid $(cat "$pidfile"), data in $root)"
      exit 0
    fi
    if ! command -v docker-registry >/dev/null 2>&1; then
      echo "error: docker-registry is not installed." >&2
      echo "  fix: run \`make engine\` (installs Debian's docker-registry), or apt-get install docker-registry" >&2
      exit 1
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "error: something already listens on 127.0.0.1:$port." >&2
      echo "  fix: stop it, or choose another port: make registry PORT=5001" >&2
      exit 1
    fi
    mkdir -p "$root/data"
    # JSON is valid YAML, which is what the registry reads.
    cat >"$root/config.yml" <<EOF
{"version": 0.1, "log": {"level": "warn", "accesslog": {"disabled": true}},
 "storage": {"filesystem": {"rootdirectory": "$root/data"}, "delete": {"enabled": true}},
 "http": {"addr": "127.0.0.1:$port"}}
EOF
    setsid nohup docker-registry serve "$root/config.yml" >>"$root/registry.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    for _ in $(seq 1 50); do
      # python3, not curl: a fresh Debian machine has the one (make needs it anyway) but not always the other.
      if python3 -c "import urllib.request; urllib.request.urlopen('$url', timeout=1)" 2>/dev/null; then
        echo "==> registry running at 127.0.0.1:$port (data in $root; stop with \`make registry-stop\`)"
        echo "    push to it: make build push BASE=local REGISTRY=127.0.0.1:$port/smkit"
        exit 0
      fi
      sleep 0.2
    done
    echo "error: the registry did not answer at $url within 10 s; last lines of $root/registry.log:" >&2
    tail -n 20 "$root/registry.log" >&2 || true
    echo "  fix: read the log above" >&2
    exit 1
    ;;
  stop)
    if running; then
      kill "$(cat "$pidfile")" && rm -f "$pidfile"
      echo "==> registry stopped (data kept in $root)"
    else
      rm -f "$pidfile"
      echo "==> no registry running"
    fi
    ;;
  status)
    if running; then echo "running at 127.0.0.1:$port (pid $(cat "$pidfile"), data in $root)"; else echo "not running"; exit 1; fi
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
