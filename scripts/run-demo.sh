#!/usr/bin/env bash
# `make run`: a private Redis without persistence, then the gateway on the embedded demo
# settings (or $SIPGW_CONFIG). With the demo settings it also loads the demo contacts
# through `sipgw sync` and starts a simulated carrier (sipp) on the demo trunk, so the
# first call a newcomer makes is recognized. Ctrl-C stops everything.
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

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

redis_port=$(free_port 6379)
# No RDB, no AOF: recognition data and events are a cache, never written to disk here.
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
  --daemonize no --logfile run/redis.log &
pids+=($!)
for _ in $(seq 50); do
  redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
  sleep 0.1
done
echo "redis-server (no persistence) on 127.0.0.1:$redis_port"
export SIPGW_REDIS__URL="redis://127.0.0.1:$redis_port/0"

demo=0
if [[ -z "${SIPGW_CONFIG:-}" && $# -eq 0 ]]; then demo=1; fi

.venv/bin/sipgw run --state-dir run "$@" &
gateway_pid=$!
pids+=("$gateway_pid")

if ((demo)); then
  # Wait for the gateway's readiness (it prints its banner then), at most 30 s.
  .venv/bin/python - <<'PY' || { echo "sipgw did not become ready" >&2; exit 1; }
import sys, time, urllib.request
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen("http://127.0.0.1:8080/readyz", timeout=1) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.2)
sys.exit(1)
PY
  # The demo contacts, sent the way a customer's CRM export is: a sync token of the
  # tenant and `sipgw sync` (a fresh Redis each run, hence --full).
  SIPGW_SYNC_TOKEN=$(.venv/bin/sipgw token create --tenant demo --sync --ttl 86400)
  export SIPGW_SYNC_TOKEN
  if .venv/bin/sipgw sync demo/contacts.sync.toml --state run/demo-contacts.state.db --full; then
    echo "demo contacts loaded from demo/contacts.csv (5 contacts, e.g. Jane Example 0612345678)"
  else
    echo "demo contacts could not be loaded (see above); calls work, recognition misses" >&2
  fi
  # A simulated carrier on the demo trunk (127.0.0.1:5080): it answers every call, so a
  # demo phone dialling an outside number gets a connected call.
  if command -v sipp >/dev/null 2>&1; then
    sipp -sn uas -aa -i 127.0.0.1 -p 5080 -nostdin >run/carrier.log 2>&1 &
    pids+=($!)
    echo "simulated carrier (sipp UAS) answering on the demo trunk 127.0.0.1:5080"
  fi
  cat <<'EOF'

Try caller recognition:
  register a softphone as 201 (see above), dial 0612345678: the call goes out through the
  demo trunk, and its call.offered event names Jane Example (Example BV) with the screen
  pop https://crm.example.com/contacts/C-1001. Watch it with the `sipgw watch` line above.

Try click-to-dial (your phone rings first, then it is connected to the number):
  with a softphone registered as 201 (answer it, or turn its auto-answer on):
  SIPGW_PASSWORD='Demo-Api-201!' .venv/bin/sipgw dial 201 0612345678 --tenant demo --username 201
EOF
fi

wait "$gateway_pid"
