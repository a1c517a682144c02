#!/usr/bin/env bash
# Ferry's functions against Ray and a process pool (bench/functions/bench_functions.py). Installs
# Ray into .venv when it is missing and builds the release binary when neither FERRY_BIN nor
# target/release/ferry is there. Arguments go to the script; `--coldstart` first runs the
# cold-start benchmark (bench/functions/bench_coldstart.py) instead.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
RAY=${RAY:-ray==2.60.0}

"$PY" -c 'import ray' 2>/dev/null || "$PY" -m pip install "$RAY"
if [[ -z "${FERRY_BIN:-}" && ! -x target/release/ferry ]]; then
    cargo build --release -p ferry
fi
export RAY_USAGE_STATS_ENABLED=0
if [[ "${1:-}" == "--coldstart" ]]; then
    shift
    exec "$PY" bench/functions/bench_coldstart.py "$@"
fi
exec "$PY" bench/functions/bench_functions.py "$@"
