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
# The data dirs are caches, and a run must not fill the disk with what earlier runs left: the
# image store is trimmed to FERRY_TEST_IMAGE_BUDGET (least recently used layers first; the base
# layers stay), and a data dir still past FERRY_TEST_DATA_MAX_GB (volume blocks, mount files and
# images of earlier runs) starts over.
for dir in "$FERRY_TEST_DATA_DIR" "$FERRY_TEST_DATA_DIR-postgres"; do
  [ -d "$dir" ] || continue
  "$FERRY_BIN" images gc --data-dir "$dir" --budget "${FERRY_TEST_IMAGE_BUDGET:-6G}" | tail -n 1
  used_gb=$(( $(du -skx "$dir" | cut -f1) / 1024 / 1024 ))
  if [ "$used_gb" -ge "${FERRY_TEST_DATA_MAX_GB:-12}" ]; then
    echo "tools/test.sh: $dir holds $used_gb GiB (FERRY_TEST_DATA_MAX_GB=${FERRY_TEST_DATA_MAX_GB:-12}); starting it over"
    # Overlay mounts a killed server left behind go first, or they pin their directories.
    findmnt -rn -o TARGET | grep -F "$dir/" | sort -r | xargs -r umount -l || true
    rm -rf "$dir" || echo "tools/test.sh: could not remove all of $dir; the run goes on"
  fi
done
echo "tools/test.sh: $(df -h --output=avail "$(dirname "$FERRY_TEST_DATA_DIR")" | tail -n 1 | tr -d ' ') free for the run"
"$FERRY_BIN" images prepare --data-dir "$FERRY_TEST_DATA_DIR"
status=0
# Only failed tests keep their temporary directories.
.venv/bin/python -m pytest tests -q -p no:cacheprovider -o tmp_path_retention_policy=failed "$@" || status=$?

# The store on PostgreSQL (docs/cluster.md): after the full run, the end-to-end tests of the
# areas that lean on the store (functions and their durability across kill -9, Dicts, Queues,
# Secrets, images, web endpoints, volumes, worker hosts) again with every server on a throwaway cluster.
# The store crate's own tests ran on both backends under cargo test above.
if [ $# -eq 0 ] && [ -z "${FERRY_SKIP_POSTGRES:-}" ]; then
  pg_dir=$(mktemp -d "${TMPDIR:-/tmp}/ferry-pg.XXXXXX")
  trap 'bash tools/pg-test-cluster.sh stop "$pg_dir"' EXIT
  pg_url=$(bash tools/pg-test-cluster.sh start "$pg_dir" 2>/dev/null)
  echo "tools/test.sh: end-to-end tests with the store on PostgreSQL"
  # A data dir of its own: its files (volume blocks, mount files) belong to the PostgreSQL
  # database, and a server collects the files its database does not name. The base image is
  # copied from the SQLite run's data dir.
  pg_data="${FERRY_TEST_DATA_DIR}-postgres"
  FERRY_BASE_SEED="$FERRY_TEST_DATA_DIR" "$FERRY_BIN" images prepare --data-dir "$pg_data"
  FERRY_TEST_DATA_DIR="$pg_data" FERRY_BASE_SEED="$FERRY_TEST_DATA_DIR" \
  FERRY_TEST_DATABASE=postgres FERRY_TEST_POSTGRES_URL="$pg_url" \
    .venv/bin/python -m pytest -q -p no:cacheprovider -o tmp_path_retention_policy=failed -rfE \
      tests/serve/test_run_function.py tests/serve/test_functions.py tests/serve/test_durable.py \
      tests/serve/test_dict.py tests/serve/test_queue.py tests/serve/test_secret.py \
      tests/serve/test_images.py tests/serve/test_web.py tests/serve/test_volumes.py \
      tests/serve/test_workers.py \
      -k "not test_registry_image_runs_functions_and_private_registry and not test_images_list_and_gc \
          and not test_many_spawned_inputs_with_bounded_memory" || status=$?
fi
exit $status
