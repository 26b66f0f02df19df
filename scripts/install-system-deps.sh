#!/usr/bin/env bash
# Install the Debian packages sipgw needs to run and to be tested, if any is missing.
# Idempotent, no prompts; run as root (or with sudo available).
set -euo pipefail

packages=(
  redis-server   # event streams and contact index; the tests start their own instances
  redis-tools    # redis-cli: the tests create their Redis Cluster with it (Sentinel is redis-server --sentinel)
  sip-tester     # sipp: scripted SIP peers and load
  kamailio       # reference proxy for the benchmark
  baresip        # real softphone in the tests
  linphone-cli   # linphonec: real softphone in the tests
  postgresql     # a real PostgreSQL contact source in the sync tests (server not started)
  chromium chromium-driver  # the web client's tests drive Debian's browser headless (Selenium)
  openssl ca-certificates
  gcc            # `make native`: mypyc's C output of the SIP core is compiled with it
)
# The compiled SIP core needs the headers of the Python that builds it (Debian's own
# python3 has them in python3-dev; a Python built from source carries its own).
if ! python3 -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' >/dev/null 2>&1; then
  packages+=(python3-dev)
fi
# A Debian python3 without venv/ensurepip cannot create .venv.
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  packages+=(python3-venv)
fi

missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if ((${#missing[@]} == 0)); then
  exit 0
fi

sudo=""
if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q "${missing[@]}"
# Debian's redis-server package starts a persistent system instance; sipgw's own
# instances are started on demand without persistence, so stop that one if it runs.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet redis-server 2>/dev/null; then
  $sudo systemctl stop redis-server || true
fi
