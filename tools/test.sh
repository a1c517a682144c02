#!/usr/bin/env bash
# Runs every test: Rust unit tests, then the end-to-end suite that drives the real
# `ferry` binary with the real pinned clients.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --workspace
export FERRY_BIN="$PWD/target/release/ferry"
.venv/bin/python -m pytest tests -q -p no:cacheprovider "$@"
