#!/usr/bin/env bash
# Container isolation costs (crates/runtime/examples/isolation.rs), as root:
#   bench/isolation/run.sh [DATA_DIR]
# Cold start with and without the user namespace (host and private network each), then TCP
# connect latency and throughput from containers against the host. Results: README.md here.
set -euo pipefail
data=${1:-${FERRY_TEST_DATA_DIR:-/var/tmp/ferry-test}}
cd "$(dirname "$0")/../.."
cargo build --release -p ferry-runtime --example isolation
bin=${CARGO_TARGET_DIR:-target}/release/examples/isolation
for round in 1 2; do  # (each round: without, then with the user namespace)
  FERRY_USERNS=0 "$bin" cold "$data" 30
  "$bin" cold "$data" 30
done
"$bin" network "$data"
