//! Client tokens and per-task container credentials.

use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::util::random_secret;
use crate::{now, Result, Store, StoreError};

/// Who is calling: a user holding a token, or a container acting for exactly one task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    User { token_id: String },
    Task { task_id: String, app_id: String },
}

#[derive(Clone, Debug)]
pub struct TokenInfo {
    pub token_id: String,
    pub label: String,
    pub created_at: f64,
    pub revoked_at: Option<f64>,
    /// What the token may do (client tokens only; proxy tokens are never scoped).
    pub scope: TokenScope,
    /// When the server last verified the token (client tokens only).
    pub last_used_at: Option<f64>,
}

/// What a client token may do. The default is everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenScope {
    /// Only RPCs that change nothing.
    pub read_only: bool,
    /// Only this environment (by name, as of the check); `None` for every environment.
    pub environment: Option<String>,
}

impl TokenScope {
    pub fn is_unrestricted(&self) -> bool {
        !self.read_only && self.environment.is_none()
    }

    /// `read-only, environment dev`, or `full` for an unrestricted token.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.read_only {
            parts.push("read-only".to_string());
        }
        if let Some(env) = &self.environment {
            parts.push(format!("environment {env}"));
        }
        if parts.is_empty() {
            "full".to_string()
        } else {
            parts.join(", ")
        }
    }
}

/// A deleted environment leaves its tokens limited to an environment that no longer exists:
/// they match no request.
fn scope_of_row(read_only: i64, environment_id: Option<String>, environment_name: Option<String>) -> TokenScope {
    let environment = environment_id.map(|id| environment_name.unwrap_or_else(|| format!("<deleted environment {id}>")));
    TokenScope { read_only: read_only != 0, environment }
}

fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Constant-time comparison of two hex digests.
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The two kinds of id-and-secret tokens: the client tokens every RPC presents, and the proxy
/// tokens web endpoints with `requires_proxy_auth` accept. Same life cycle, separate tables.
#[derive(Clone, Copy)]
pub(crate) enum TokenKind {
    Client,
    Proxy,
    /// Tokens `ferry worker` hosts present to the control plane (never valid for RPCs).
    Worker,
}

impl TokenKind {
    fn table(self) -> &'static str {
        match self {
            TokenKind::Client => "tokens",
            TokenKind::Proxy => "proxy_tokens",
            TokenKind::Worker => "worker_tokens",
        }
    }

    /// Id and secret prefixes, as Modal's tokens have them.
    fn prefixes(self) -> (&'static str, &'static str) {
        match self {
            TokenKind::Client => ("ak-", "as-"),
            TokenKind::Proxy => ("wk-", "ws-"),
            TokenKind::Worker => ("fw-", "fws-"),
        }
    }

    fn not_found(self, token_id: &str) -> StoreError {
        StoreError::NotFound(match self {
            TokenKind::Client => format!("no active token '{token_id}'; see `ferry token list`"),
            TokenKind::Proxy => format!("no active proxy token '{token_id}'; see `ferry proxy-token list`"),
            TokenKind::Worker => format!("no active worker token '{token_id}'; see `ferry token list --worker`"),
        })
    }
}

impl Store {
    /// Creates a token of `kind` and returns `(token_id, token_secret)`; only the secret's hash
    /// is kept.
    pub(crate) async fn create_token_of(&self, kind: TokenKind, label: &str) -> Result<(String, String)> {
        let (id_prefix, secret_prefix) = kind.prefixes();
        let id = format!("{id_prefix}{}", random_secret(22));
        let secret = format!("{secret_prefix}{}", random_secret(32));
        sqlx::query(&format!("INSERT INTO {} (token_id, secret_sha256, label, created_at) VALUES ($1, $2, $3, $4)", kind.table()))
            .bind(&id)
            .bind(digest(&secret))
            .bind(label)
            .bind(now())
            .execute(&self.pool)
            .await?;
        Ok((id, secret))
    }

    /// Whether `secret` is the secret of an active token `token_id` of `kind`.
    pub(crate) async fn verify_token_of(&self, kind: TokenKind, token_id: &str, secret: &str) -> Result<bool> {
        let row = sqlx::query(&format!("SELECT secret_sha256 FROM {} WHERE token_id = $1 AND revoked_at IS NULL", kind.table()))
            .bind(token_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some_and(|r| same(&r.get::<String, _>(0), &digest(secret))))
    }

    pub(crate) async fn list_tokens_of(&self, kind: TokenKind) -> Result<Vec<TokenInfo>> {
        let rows = sqlx::query(&format!("SELECT * FROM {} ORDER BY created_at", kind.table())).fetch_all(&self.pool).await?;
        Ok(rows
            .iter()
            .map(|r| TokenInfo {
                token_id: r.get("token_id"),
                label: r.get("label"),
                created_at: r.get("created_at"),
                revoked_at: r.get("revoked_at"),
                scope: TokenScope::default(),
                last_used_at: r.try_get("last_used_at").ok().flatten(),
            })
            .collect())
    }

    pub(crate) async fn revoke_token_of(&self, kind: TokenKind, token_id: &str) -> Result<()> {
        let done = sqlx::query(&format!("UPDATE {} SET revoked_at = $1 WHERE token_id = $2 AND revoked_at IS NULL", kind.table()))
            .bind(now())
            .bind(token_id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(kind.not_found(token_id));
        }
        Ok(())
    }

    /// Creates a token and returns `(token_id, token_secret)`. Only the secret's hash is kept.
    pub async fn create_token(&self, label: &str) -> Result<(String, String)> {
        self.create_token_of(TokenKind::Client, label).await
    }

    /// Whether `secret` opens an active token with full access. Scoped tokens (read-only, one
    /// environment) are valid for RPCs only, through [`Store::verify_token_scope`]: the places
    /// that ask this (the dashboard's sign-in, `/metrics`) act on the whole workspace.
    pub async fn verify_token(&self, token_id: &str, secret: &str) -> Result<bool> {
        Ok(self.verify_token_scope(token_id, secret).await?.is_some_and(|s| s.is_unrestricted()))
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>> {
        let mut tokens = self.list_tokens_of(TokenKind::Client).await?;
        let scopes: std::collections::HashMap<String, TokenScope> = sqlx::query(
            "SELECT t.token_id, t.read_only, t.environment_id, e.name FROM tokens t LEFT JOIN environments e ON e.id = t.environment_id",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| (r.get::<String, _>(0), scope_of_row(r.get(1), r.get(2), r.get(3))))
        .collect();
        for t in &mut tokens {
            t.scope = scopes.get(&t.token_id).cloned().unwrap_or_default();
        }
        Ok(tokens)
    }

    /// Creates a client token limited by `scope` (an environment must exist) and returns
    /// `(token_id, token_secret)`.
    pub async fn create_scoped_token(&self, label: &str, scope: &TokenScope) -> Result<(String, String)> {
        let environment_id = match &scope.environment {
            Some(name) if name.is_empty() => return Err(StoreError::Invalid("the environment name is empty".into())),
            Some(name) => Some(self.environment(name).await?.id),
            None => None,
        };
        let (id, secret) = self.create_token_of(TokenKind::Client, label).await?;
        sqlx::query("UPDATE tokens SET read_only = $1, environment_id = $2 WHERE token_id = $3")
            .bind(scope.read_only as i64)
            .bind(environment_id)
            .bind(&id)
            .execute(&self.pool)
            .await?;
        Ok((id, secret))
    }

    /// The scope of an active token `token_id` whose secret is `secret`; `None` when the token
    /// is unknown, revoked or the secret is wrong.
    pub async fn verify_token_scope(&self, token_id: &str, secret: &str) -> Result<Option<TokenScope>> {
        let row = sqlx::query(
            "SELECT t.secret_sha256, t.read_only, t.environment_id, e.name FROM tokens t \
             LEFT JOIN environments e ON e.id = t.environment_id WHERE t.token_id = $1 AND t.revoked_at IS NULL",
        )
        .bind(token_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|r| same(&r.get::<String, _>(0), &digest(secret)).then(|| scope_of_row(r.get(1), r.get(2), r.get(3)))))
    }

    /// Records that a token was just used.
    pub async fn mark_token_used(&self, token_id: &str) -> Result<()> {
        sqlx::query("UPDATE tokens SET last_used_at = $1 WHERE token_id = $2").bind(now()).bind(token_id).execute(&self.pool).await?;
        Ok(())
    }

    /// The name of the environment an app, function, class, sandbox or named object (Dict,
    /// Queue, Secret, Volume) with this id belongs to; `None` for an id of nothing
    /// environment-bound.
    pub async fn environment_of(&self, id: &str) -> Result<Option<String>> {
        let name = sqlx::query_scalar(
            "SELECT e.name FROM apps a JOIN environments e ON e.id = a.environment_id WHERE a.id = $1 \
             UNION ALL SELECT e.name FROM objects o JOIN environments e ON e.id = o.environment_id WHERE o.id = $1 \
             UNION ALL SELECT e.name FROM functions f JOIN apps a ON a.id = f.app_id JOIN environments e ON e.id = a.environment_id WHERE f.id = $1 \
             UNION ALL SELECT e.name FROM classes c JOIN apps a ON a.id = c.app_id JOIN environments e ON e.id = a.environment_id WHERE c.id = $1 \
             UNION ALL SELECT e.name FROM sandboxes s JOIN environments e ON e.id = s.environment_id WHERE s.id = $1 \
             LIMIT 1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(name)
    }

    pub async fn revoke_token(&self, token_id: &str) -> Result<()> {
        self.revoke_token_of(TokenKind::Client, token_id).await
    }

    /// Issues the credential a task's container presents on every RPC; returns its secret.
    pub async fn create_task_credential(&self, task_id: &str, app_id: &str) -> Result<String> {
        let secret = random_secret(40);
        sqlx::query("INSERT INTO task_credentials (task_id, app_id, secret_sha256, created_at) VALUES ($1, $2, $3, $4)")
            .bind(task_id)
            .bind(app_id)
            .bind(digest(&secret))
            .bind(now())
            .execute(&self.pool)
            .await?;
        Ok(secret)
    }

    pub async fn verify_task(&self, task_id: &str, secret: &str) -> Result<Option<Principal>> {
        let row = sqlx::query("SELECT app_id, secret_sha256 FROM task_credentials WHERE task_id = $1 AND revoked_at IS NULL")
            .bind(task_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.and_then(|r| {
            same(&r.get::<String, _>(1), &digest(secret))
                .then(|| Principal::Task { task_id: task_id.to_string(), app_id: r.get(0) })
        }))
    }

    pub async fn revoke_task_credential(&self, task_id: &str) -> Result<()> {
        sqlx::query("UPDATE task_credentials SET revoked_at = $1 WHERE task_id = $2").bind(now()).bind(task_id).execute(&self.pool).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CreationMode, ObjectKind};

    async fn scoped_tokens_keep_their_scope_and_never_pass_as_full_ones(b: crate::testing::Backend) {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::testing::TestDatabase::new(b).await.open(dir.path()).await;
        s.create_environment("dev").await.unwrap();
        let scope = TokenScope { read_only: true, environment: Some("dev".into()) };
        let (id, secret) = s.create_scoped_token("ci", &scope).await.unwrap();
        assert_eq!(s.verify_token_scope(&id, &secret).await.unwrap(), Some(scope.clone()));
        assert_eq!(s.verify_token_scope(&id, "as-wrong").await.unwrap(), None);
        assert!(!s.verify_token(&id, &secret).await.unwrap());
        let (full, full_secret) = s.create_token("all").await.unwrap();
        assert!(s.verify_token(&full, &full_secret).await.unwrap());
        assert!(s.create_scoped_token("x", &TokenScope { read_only: false, environment: Some("nope".into()) }).await.is_err());

        s.mark_token_used(&id).await.unwrap();
        let listed = s.list_tokens().await.unwrap();
        let t = listed.iter().find(|t| t.token_id == id).unwrap();
        assert_eq!(t.scope, scope);
        assert!(t.last_used_at.is_some());
        assert_eq!(t.scope.describe(), "read-only, environment dev");

        let (obj, _) = s.get_or_create_object(ObjectKind::Dict, "dev", "d", CreationMode::CreateIfMissing, "t").await.unwrap();
        assert_eq!(s.environment_of(&obj.id).await.unwrap().as_deref(), Some("dev"));
        assert_eq!(s.environment_of("di-unknown").await.unwrap(), None);
    }

    crate::backend_tests!(scoped_tokens_keep_their_scope_and_never_pass_as_full_ones);
}
