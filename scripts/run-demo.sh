#!/usr/bin/env bash
# `make run`: a private Redis without persistence, then the gateway on the embedded demo
# settings (or $SIPGW_CONFIG). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p run

free_port() {
  .venv/bin/python - "$1" <<'PY'
import socket, sys
start = int(sys.argv[1])
for port in range(start, start + 100):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(port)
        break
PY
}

redis_port=$(free_port 6379)
# No RDB, no AOF: recognition data and events are a cache, never written to disk here.
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
  --daemonize no --logfile run/redis.log &
redis_pid=$!
trap 'kill "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
  sleep 0.1
done
echo "redis-server (no persistence) on 127.0.0.1:$redis_port"

export SIPGW_REDIS__URL="redis://127.0.0.1:$redis_port/0"
.venv/bin/sipgw run --state-dir run "$@"
