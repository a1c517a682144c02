#!/usr/bin/env bash
# Requests/s and latency of a warm fastapi_endpoint through Ferry's gateway against the same
# FastAPI app under uvicorn (bench/web/bench_web.py). Builds the release binary when neither
# FERRY_BIN nor target/release/ferry is there. Arguments go to the script.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
"$PY" -c 'import fastapi, uvicorn' 2>/dev/null || "$PY" -m pip install -q -r requirements-dev.txt
if [[ -z "${FERRY_BIN:-}" && ! -x target/release/ferry ]]; then
    cargo build --release -p ferry
fi
exec "$PY" bench/web/bench_web.py "$@"
