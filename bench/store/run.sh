#!/usr/bin/env bash
# Dict and Queue ops/s with Ferry's state on PostgreSQL against the embedded SQLite
# (bench/store/bench_store.py). Needs PostgreSQL (tools/setup.d/postgres.sh installs it); builds
# the release binary when neither FERRY_BIN nor target/release/ferry is there. Arguments go
# to the script.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || bash tools/setup.d/postgres.sh
if [[ -z "${FERRY_BIN:-}" && ! -x target/release/ferry ]]; then
    cargo build --release -p ferry
fi
exec "$PY" bench/store/bench_store.py "$@"
