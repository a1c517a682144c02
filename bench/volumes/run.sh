#!/usr/bin/env bash
# Volume transfers and mounts (bench/volumes/bench_volumes.py). Builds the release binary when
# neither FERRY_BIN nor target/release/ferry is there. Arguments go to the script.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
if [[ -z "${FERRY_BIN:-}" && ! -x target/release/ferry ]]; then
    cargo build --release -p ferry
fi
exec "$PY" bench/volumes/bench_volumes.py "$@"
