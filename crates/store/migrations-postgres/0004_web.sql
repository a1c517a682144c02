-- Web endpoints: which function answers each URL label, and the proxy tokens that
-- `requires_proxy_auth` endpoints accept (`Modal-Key`/`Modal-Secret`; only the secret's hash).

CREATE TABLE web_routes (
    label               TEXT PRIMARY KEY,
    app_id              TEXT NOT NULL,
    function_id         TEXT NOT NULL,
    method_name         TEXT NOT NULL DEFAULT '',
    requires_proxy_auth BIGINT NOT NULL DEFAULT 0,
    created_at          DOUBLE PRECISION NOT NULL
);
CREATE INDEX web_routes_by_function ON web_routes(function_id);

CREATE TABLE proxy_tokens (
    token_id      TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL,
    label         TEXT NOT NULL DEFAULT '',
    created_at    DOUBLE PRECISION NOT NULL,
    revoked_at    DOUBLE PRECISION
);
