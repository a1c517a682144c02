#!/usr/bin/env bash
# PostgreSQL (Debian's package) for the store's PostgreSQL backend: the tests and benchmarks
# make throwaway clusters with it (tools/pg-test-cluster.sh). The package's own cluster is
# not needed; Ferry's production database is whatever server `--database` names. `openssl`
# makes the certificates of the TLS test cluster (FERRY_PG_TLS=1). Idempotent.
set -euo pipefail
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1; then
  echo "setup.d/postgres: installing postgresql and openssl"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql openssl >/dev/null
fi
