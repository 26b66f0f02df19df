#!/usr/bin/env bash
# `make run`: a private Redis without persistence, then the gateway on the embedded demo
# settings (or $SIPGW_CONFIG). With the demo settings it also loads the demo contacts
# through `sipgw sync`, starts a simulated carrier (sipp) on the demo trunk and a
# simulated phone for extension 201 (`sipgw demo phone`, sipp: it rings, then answers),
# and prints the web client's address, its demo login, how to place a demo call
# (`sipgw demo call`) and how to click-to-dial, so a newcomer sees a screen pop and a
# connected click-to-dial call without any softphone.
# Ctrl-C stops everything.
#
# The demo's ports can be moved (the tests run it on free ones): DEMO_SIP_PORT (5060,
# UDP and TCP), DEMO_TLS_PORT (5061), DEMO_HTTP_PORT (8080), DEMO_TRUNK_PORT (5080: the
# simulated carrier), DEMO_CALLER_PORT (5081: where `sipgw demo call` calls from);
# DEMO_RUN_DIR (run/) holds the logs and state, DEMO_PHONE_EXPIRES (300) is the
# simulated phone's registration time, DEMO_PHONE=0 leaves the simulated phone out.
set -euo pipefail
cd "$(dirname "$0")/.."

run_dir=${DEMO_RUN_DIR:-run}
sip_port=${DEMO_SIP_PORT:-5060}
tls_port=${DEMO_TLS_PORT:-5061}
http_port=${DEMO_HTTP_PORT:-8080}
trunk_port=${DEMO_TRUNK_PORT:-5080}
caller_port=${DEMO_CALLER_PORT:-5081}
phone_expires=${DEMO_PHONE_EXPIRES:-300}
mkdir -p "$run_dir"

# The first port from $1 on whose UDP and TCP ports $1 .. $1+$2-1 are all free.
free_port() {
  .venv/bin/python - "$1" "${2:-1}" <<'PY'
import socket, sys
start, span = int(sys.argv[1]), int(sys.argv[2])

def free(port):
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True

for port in range(start, start + 100):
    if all(free(port + i) for i in range(span)):
        print(port)
        break
PY
}

pids=()
# Last started, first stopped, each by its PID: the peers, the gateway, then its Redis.
cleanup() {
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

redis_port=$(free_port 6379)
# No RDB, no AOF: recognition data and events are a cache, never written to disk here.
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
  --daemonize no --logfile "$run_dir/redis.log" &
pids+=($!)
for _ in $(seq 50); do
  redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
  sleep 0.1
done
echo "redis-server (no persistence) on 127.0.0.1:$redis_port"
export SIPGW_REDIS__URL="redis://127.0.0.1:$redis_port/0"

demo=0
if [[ -z "${SIPGW_CONFIG:-}" && $# -eq 0 ]]; then demo=1; fi

if ((demo)); then
  # The embedded demo on the chosen ports, and what the simulated peers need of it:
  # - the demo call comes from the carrier's second address, which the trunk trusts too
  #   (its first is taken by the simulated carrier answering the phones' outbound calls);
  # - user 201 (the first) gets the basic-md5 profile (sip_profiles/): sipp 3.6, the
  #   simulated phone, reads only the first digest challenge and knows only MD5, and it
  #   cannot follow a REFER, so click-to-dial bridges it (third-party call control).
  export SIPGW_SIP__LISTEN="[\"udp:127.0.0.1:$sip_port\", \"tcp:127.0.0.1:$sip_port\", \"tls:127.0.0.1:$tls_port\"]"
  export SIPGW_HTTP__LISTEN="127.0.0.1:$http_port"
  export SIPGW_TENANTS__0__TRUNKS__0__PORT="$trunk_port"
  export SIPGW_TENANTS__0__TRUNKS__0__MATCH="[\"127.0.0.1:$trunk_port\", \"127.0.0.1:$caller_port\"]"
  export SIPGW_TENANTS__0__USERS__0__PROFILE=basic-md5
fi

.venv/bin/sipgw run --state-dir "$run_dir" "$@" &
gateway_pid=$!
pids+=("$gateway_pid")

if ((demo)); then
  # Wait for the gateway's readiness (it prints its banner then), at most 30 s.
  .venv/bin/python - "$http_port" <<'PY' || { echo "sipgw did not become ready" >&2; exit 1; }
import sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/readyz"
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.2)
sys.exit(1)
PY
  # The demo contacts, sent the way a customer's CRM export is: a sync token of the
  # tenant and `sipgw sync` (a fresh Redis each run, hence --full). The mapping names
  # the gateway at 127.0.0.1:8080; on another port a copy says where it is.
  mapping=demo/contacts.sync.toml
  if [[ "$http_port" != 8080 ]]; then
    mapping="$run_dir/demo-contacts.sync.toml"
    sed -e "s|^url = .*|url = \"http://127.0.0.1:$http_port\"|" \
      -e "s|^path = .*|path = \"$PWD/demo/contacts.csv\"|" demo/contacts.sync.toml >"$mapping"
  fi
  SIPGW_SYNC_TOKEN=$(.venv/bin/sipgw token create --tenant demo --sync --ttl 86400)
  export SIPGW_SYNC_TOKEN
  if .venv/bin/sipgw sync "$mapping" --state "$run_dir/demo-contacts.state.db" --full; then
    echo "demo contacts loaded from demo/contacts.csv (5 contacts, e.g. Jane Example 0612345678)"
  else
    echo "demo contacts could not be loaded (see above); calls work, recognition misses" >&2
  fi
  if ! command -v sipp >/dev/null 2>&1; then
    echo "sipp is not installed: no simulated carrier or phone (Debian package sip-tester)" >&2
  else
    # A simulated carrier on the demo trunk: every number rings 2 s, answers, and hangs
    # up 10 s later (gateway/demo/carrier_answer.xml), so a phone dialling an outside
    # number, or click-to-dial, gets a connected call that ends by itself. Its control
    # and media ports are chosen free (sipp's defaults, 8888 and 6000, collide with any
    # other sipp).
    sipp -sf gateway/demo/carrier_answer.xml -aa -i 127.0.0.1 -p "$trunk_port" \
      -cp "$(free_port 8888)" -mp "$(free_port 6000 4)" -nostdin \
      -trace_logs -log_file "$run_dir/carrier-calls.log" >"$run_dir/carrier.log" 2>&1 &
    pids+=($!)
    echo "simulated carrier (sipp UAS) answering on the demo trunk 127.0.0.1:$trunk_port"
  fi
  if [[ "${DEMO_PHONE:-1}" != 0 ]] && command -v sipp >/dev/null 2>&1; then
    # A simulated phone registered as 201, the extension the demo DID rings.
    phone_log="$run_dir/demo-phone.log"
    : >"$phone_log"
    .venv/bin/sipgw demo phone --gateway "127.0.0.1:$sip_port" --expires "$phone_expires" \
      --log "$phone_log" >"$run_dir/demo-phone.out" 2>&1 &
    phone_pid=$!
    pids+=("$phone_pid")
    for _ in $(seq 100); do
      grep -q registered "$phone_log" && break
      kill -0 "$phone_pid" 2>/dev/null || break
      sleep 0.1
    done
    if grep -q registered "$phone_log"; then
      echo "simulated phone (sipp) registered as 201: each call rings 3 s, then is answered"
    else
      echo "the simulated phone did not register (see $run_dir/demo-phone.out)" >&2
    fi
  fi
  call="demo call"
  if [[ "$sip_port" != 5060 || "$caller_port" != 5081 ]]; then
    call+=" --gateway 127.0.0.1:$sip_port --source 127.0.0.1:$caller_port"
  fi
  cat <<EOF

The web client: http://127.0.0.1:$http_port/
  log in as 201 / Demo-Api-201!    (the user of extension 201: its calls and screen pops)
  or as     203 / Demo-Admin-203!  (an admin: every extension of the tenant)

Place a demo call, no softphone needed (phone 201 rings 3 s, then answers; 10 s later
the carrier hangs up), and watch its screen pop in the web client:
  .venv/bin/sipgw $call
      from 06 1234 5678: the pop names Jane Example (Example BV)
  .venv/bin/sipgw $call --unknown
      from a number no contact has: the new-contact pop

Try caller recognition with a softphone:
  register it as 201 (see above), dial 0612345678: the call goes out through the demo
  trunk, and its call.offered event names Jane Example (Example BV) with the screen pop
  https://crm.example.com/contacts/C-1001. Watch it with the \`sipgw watch\` line above.

Try click-to-dial, no softphone needed either: in the web client, as 201, dial
0612345678. Phone 201 rings 3 s and answers, then sipgw calls the number through the
demo trunk (the carrier rings 2 s, answers, and hangs up 10 s later) and connects the
two. Or from a terminal:
  SIPGW_PASSWORD='Demo-Api-201!' .venv/bin/sipgw dial 201 0612345678 --tenant demo --username 201 --url http://127.0.0.1:$http_port
EOF
fi

wait "$gateway_pid"
