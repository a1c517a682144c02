#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for tests and benchmarks: `initdb` in a temporary directory,
# a server on a free port of 127.0.0.1, a user `ferry` with a password (so that URLs carry one,
# as in production). PostgreSQL refuses to run as root: as root the cluster runs as the
# `postgres` system user (or `nobody`).
#
#   tools/pg-test-cluster.sh start [DIR]   starts one, prints its URL, prints DIR on stderr
#   tools/pg-test-cluster.sh stop DIR      stops it and removes DIR
#   tools/pg-test-cluster.sh run           starts one, prints its URL, and stops it when its
#                                          standard input closes (a test process's lifeline)
#
# FERRY_PG_DURABLE=1 keeps fsync on (benchmarks); tests run without it, which is faster and
# loses nothing a throwaway cluster needs. FERRY_PG_TLS=1 makes a CA and a server certificate
# for 127.0.0.1 (DIR/tls/ca.pem), refuses connections without TLS, and prints a URL with
# `sslmode=verify-full&sslrootcert=DIR/tls/ca.pem`.
set -euo pipefail

find_bin() {
    local d
    if command -v pg_ctl >/dev/null 2>&1; then dirname "$(command -v pg_ctl)"; return; fi
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/pg_ctl" ]; then echo "$d"; return; fi
    done
    echo "pg-test-cluster: PostgreSQL is not installed; run tools/setup.d/postgres.sh" >&2
    exit 1
}

as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u "$OWNER" -- "$@"
    else
        "$@"
    fi
}

start() {
    BIN=$(find_bin)
    DIR=${1:-$(mktemp -d "${TMPDIR:-/tmp}/ferry-pg.XXXXXX")}
    mkdir -p "$DIR"
    if [ "$(id -u)" = 0 ]; then
        OWNER=postgres
        id -u "$OWNER" >/dev/null 2>&1 || OWNER=nobody
        chown "$OWNER" "$DIR"
        chmod 700 "$DIR"
        if ! runuser -u "$OWNER" -- test -w /dev/null; then
            echo "pg-test-cluster: /dev/null is not writable by $OWNER (mode $(stat -c %a /dev/null)); initdb needs it: chmod 666 /dev/null" >&2
            exit 1
        fi
    fi
    local pw=ferry-test-password
    echo "$pw" > "$DIR/.pw.tmp"
    if [ "$(id -u)" = 0 ]; then chown "$OWNER" "$DIR/.pw.tmp"; fi
    as_owner "$BIN/initdb" -D "$DIR/data" -U ferry --pwfile="$DIR/.pw.tmp" -E UTF8 --locale=C \
        --auth-local=trust --auth-host=scram-sha-256 >"$DIR/initdb.log" 2>&1 \
        || { cat "$DIR/initdb.log" >&2; exit 1; }
    rm -f "$DIR/.pw.tmp"
    local port
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    local tls="" query=""
    if [ "${FERRY_PG_TLS:-0}" = 1 ]; then
        make_tls "$DIR"
        tls="-c ssl=on -c ssl_cert_file=$DIR/tls/server.pem -c ssl_key_file=$DIR/tls/server.key"
        # Only TLS connections over TCP: a plain one is refused before authentication.
        { echo "hostnossl all all 0.0.0.0/0 reject"; cat "$DIR/data/pg_hba.conf"; } > "$DIR/hba.tmp"
        cat "$DIR/hba.tmp" > "$DIR/data/pg_hba.conf"; rm -f "$DIR/hba.tmp"
        query="?sslmode=verify-full&sslrootcert=$DIR/tls/ca.pem"
    fi
    local fast="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    if [ "${FERRY_PG_DURABLE:-0}" = 1 ]; then fast=""; fi
    # shellcheck disable=SC2086
    as_owner "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 30 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $DIR -c max_connections=400 $fast $tls" start >/dev/null \
        || { cat "$DIR/server.log" >&2; exit 1; }
    echo "$DIR" >&2
    echo "postgres://ferry:$pw@127.0.0.1:$port/postgres$query"
}

# A throwaway CA and a server certificate for 127.0.0.1/localhost, readable by the cluster's owner.
make_tls() {
    local t=$1/tls
    mkdir -p "$t"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=ferry-test-pg-ca" \
        -keyout "$t/ca.key" -out "$t/ca.pem" >/dev/null 2>&1
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$t/server.key" -out "$t/server.csr" >/dev/null 2>&1
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' > "$t/ext.cnf"
    openssl x509 -req -in "$t/server.csr" -CA "$t/ca.pem" -CAkey "$t/ca.key" -CAcreateserial -days 2 \
        -extfile "$t/ext.cnf" -out "$t/server.pem" >/dev/null 2>&1
    chmod 600 "$t/server.key"
    if [ "$(id -u)" = 0 ]; then chown "$OWNER" "$t/server.key" "$t/server.pem"; chmod 755 "$t"; fi
}

stop() {
    BIN=$(find_bin)
    local dir=$1
    [ -d "$dir/data" ] || { rm -rf "$dir"; return; }
    OWNER=$(stat -c %U "$dir")
    as_owner "$BIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}

case "${1:-}" in
    start) shift; start "$@" ;;
    stop) shift; stop "$1" ;;
    run)
        dirfile=$(mktemp)
        url=$(start 2>"$dirfile") || { cat "$dirfile" >&2; rm -f "$dirfile"; exit 1; }
        dir=$(tail -n 1 "$dirfile"); rm -f "$dirfile"
        trap 'stop "$dir"' EXIT
        trap 'exit 1' INT TERM HUP
        echo "$url"
        cat >/dev/null || true
        ;;
    *) echo "usage: $0 start [DIR] | stop DIR | run" >&2; exit 2 ;;
esac
