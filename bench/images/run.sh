#!/usr/bin/env bash
# Image build benchmarks (bench/images/bench_images.py): Ferry against raw uv and skopeo on the
# same machine. Needs the Debian base prepared in FERRY_TEST_DATA_DIR (or --seed DIR) and the
# packages of tools/setup.d/images.sh; arguments pass through.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tools/setup.d/images.sh
export FERRY_BIN="${FERRY_BIN:-$PWD/target/release/ferry}"
[ -x "$FERRY_BIN" ] || cargo build --release -p ferry
PY="${PY:-.venv/bin/python}"
seed="${FERRY_TEST_DATA_DIR:-/var/tmp/ferry-test}"
"$FERRY_BIN" images prepare --base-only --data-dir "$seed" >/dev/null
exec "$PY" bench/images/bench_images.py --seed "$seed" "$@"
