"""TLS between Ferry and PostgreSQL: `--database 'postgres://…?sslmode=verify-full&sslrootcert=…'`
on a real PostgreSQL that refuses unencrypted connections (tools/pg-test-cluster.sh with
FERRY_PG_TLS=1: its own CA, a certificate for 127.0.0.1)."""

import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, Ferry, psql

PASSWORD = "ferry-test-password"


@pytest.fixture(scope="module")
def tls_cluster():
    proc = subprocess.Popen(
        ["bash", str(REPO / "tools" / "pg-test-cluster.sh"), "run"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "FERRY_PG_TLS": "1"},
    )
    url = proc.stdout.readline().strip()
    if not url.startswith("postgres://"):
        proc.kill()
        pytest.fail("tools/pg-test-cluster.sh did not start a TLS cluster (tools/setup.d/postgres.sh installs PostgreSQL and openssl)")
    base, query = url.split("?", 1)
    psql(url, "CREATE DATABASE ferry_tls")
    yield base.rsplit("/", 1)[0] + "/ferry_tls", query
    proc.stdin.close()
    proc.wait(60)


def start_failure(tmp_path: Path, name: str, url: str) -> str:
    server = Ferry(tmp_path / name, "--no-modal-profile", "--database", url)
    with pytest.raises(RuntimeError) as failed:
        server.start()
    server.stop()
    return str(failed.value)


def test_ferry_talks_to_postgresql_over_verified_tls(tls_cluster, tmp_path):
    base, query = tls_cluster
    url = f"{base}?{query}"
    server = Ferry(tmp_path / "data", "--no-modal-profile", "--database", url).start()
    try:
        out = server.python(
            "import modal\n"
            "d = modal.Dict.from_name('tls-dict', create_if_missing=True)\n"
            "d['k'] = 'over tls'\n"
            "print(modal.Dict.from_name('tls-dict')['k'])\n"
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "over tls"
        # Every connection of Ferry's pool to this database is encrypted.
        rows = psql(
            url,
            "SELECT s.ssl, count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
            "WHERE a.datname = 'ferry_tls' AND a.pid <> pg_backend_pid() GROUP BY s.ssl",
        )
        assert rows and all(ssl == "t" for ssl, _ in rows), rows
        # The value is in the database: a second server on the same database reads it.
        server.stop()
        again = Ferry(tmp_path / "data", "--no-modal-profile", "--database", url).start()
        try:
            read = again.python("import modal\nprint(modal.Dict.from_name('tls-dict')['k'])\n")
            assert read.returncode == 0 and read.stdout.strip() == "over tls", read.stderr
        finally:
            again.stop()
    finally:
        server.stop()


def test_a_certificate_from_another_authority_is_refused(tls_cluster, tmp_path):
    base, _ = tls_cluster
    other = tmp_path / "other-ca"
    other.mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=not-the-db-ca",
         "-keyout", str(other / "ca.key"), "-out", str(other / "ca.pem")],
        check=True, capture_output=True,
    )
    text = start_failure(tmp_path, "wrong-ca", f"{base}?sslmode=verify-full&sslrootcert={other / 'ca.pem'}")
    assert "database" in text.lower(), text
    assert "certificate" in text.lower() or "tls" in text.lower(), text
    assert PASSWORD not in text, text


def test_a_plain_connection_is_refused_by_the_server_and_the_reason_shown(tls_cluster, tmp_path):
    base, _ = tls_cluster
    text = start_failure(tmp_path, "plain", f"{base}?sslmode=disable")
    assert "no encryption" in text or "pg_hba" in text, text
    assert PASSWORD not in text, text
