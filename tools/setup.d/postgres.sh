#!/usr/bin/env bash
# PostgreSQL (Debian's package) for the store's PostgreSQL backend: the tests and benchmarks
# make throwaway clusters with it (tools/pg-test-cluster.sh). The package's own cluster is
# not needed; Ferry's production database is whatever server `--database` names. Idempotent.
set -euo pipefail
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "setup.d/postgres: installing postgresql"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql >/dev/null
fi
