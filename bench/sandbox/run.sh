#!/usr/bin/env bash
# Sandbox latency: Ferry through the modal client against bubblewrap (and podman where it runs)
# on the same root filesystem (bench/sandbox/bench_sandbox.py). Installs bubblewrap when it is
# missing; podman is measured only if already installed. Arguments go to the script.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
if ! command -v bwrap >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null
fi
if [[ -z "${FERRY_BIN:-}" && ! -x target/release/ferry ]]; then
    cargo build --release -p ferry
fi
exec "$PY" bench/sandbox/bench_sandbox.py "$@"
