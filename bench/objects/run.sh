#!/usr/bin/env bash
# Ferry's Dict and Queue against Redis (bench/objects/bench_objects.py). Installs what the run needs
# when it is missing: the Debian package redis-server and the redis client in .venv; builds the
# release binary when neither FERRY_BIN nor target/release/ferry is there. Arguments go to the script.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
REDIS_PY=${REDIS_PY:-redis==8.1.0}

if ! command -v redis-server >/dev/null; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server
fi
"$PY" -c 'import redis' 2>/dev/null || "$PY" -m pip install "$REDIS_PY"
if [[ -z "${FERRY_BIN:-}" && ! -x target/release/ferry ]]; then
    cargo build --release -p ferry
fi
exec "$PY" bench/objects/bench_objects.py "$@"
