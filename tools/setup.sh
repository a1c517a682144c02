#!/usr/bin/env bash
# Installs what Ferry needs on a fresh Debian machine: system packages, the pinned modal
# client and test tools in .venv. Safe to run again. Each tools/setup.d/*.sh adds the
# pieces of one area (model serving, container runtime, ...).
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
for p in python3 python3-venv python3-pip pkg-config openssl redis-server; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if [ -n "${FERRY_EXTRA_PKGS:-}" ]; then need_pkgs+=($FERRY_EXTRA_PKGS); fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo is missing; install the Rust toolchain (https://rustup.rs) first" >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -r requirements-dev.txt

for part in tools/setup.d/*.sh; do
  [ -e "$part" ] || continue
  echo "setup: $part"
  bash "$part"
done
echo "setup: done"
