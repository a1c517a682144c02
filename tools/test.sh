#!/usr/bin/env bash
# Runs every test: Rust unit tests, then the end-to-end suite that drives the real
# `ferry` binary with the real pinned clients.
set -euo pipefail
cd "$(dirname "$0")/.."
# Seconds each fuzz target runs (crates/fuzz under cargo test, the protocol fuzzer in
# tests/serve/test_security.py); FERRY_FUZZ_SEED replays a run.
export FERRY_FUZZ_SECS="${FERRY_FUZZ_SECS:-20}"
cargo test --release --workspace --no-fail-fast
export FERRY_BIN="$PWD/target/release/ferry"
# Built images are kept between runs here (shared with the runtime's own tests).
export FERRY_TEST_DATA_DIR="${FERRY_TEST_DATA_DIR:-/var/tmp/ferry-test}"
"$FERRY_BIN" images prepare --data-dir "$FERRY_TEST_DATA_DIR"
.venv/bin/python -m pytest tests -q -p no:cacheprovider "$@"
