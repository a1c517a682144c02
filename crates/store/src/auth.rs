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
}

impl TokenKind {
    fn table(self) -> &'static str {
        match self {
            TokenKind::Client => "tokens",
            TokenKind::Proxy => "proxy_tokens",
        }
    }

    /// Id and secret prefixes, as Modal's tokens have them.
    fn prefixes(self) -> (&'static str, &'static str) {
        match self {
            TokenKind::Client => ("ak-", "as-"),
            TokenKind::Proxy => ("wk-", "ws-"),
        }
    }

    fn not_found(self, token_id: &str) -> StoreError {
        StoreError::NotFound(match self {
            TokenKind::Client => format!("no active token '{token_id}'; see `ferry token list`"),
            TokenKind::Proxy => format!("no active proxy token '{token_id}'; see `ferry proxy-token list`"),
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
        sqlx::query(&format!("INSERT INTO {} (token_id, secret_sha256, label, created_at) VALUES (?, ?, ?, ?)", kind.table()))
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
        let row = sqlx::query(&format!("SELECT secret_sha256 FROM {} WHERE token_id = ? AND revoked_at IS NULL", kind.table()))
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
            })
            .collect())
    }

    pub(crate) async fn revoke_token_of(&self, kind: TokenKind, token_id: &str) -> Result<()> {
        let done = sqlx::query(&format!("UPDATE {} SET revoked_at = ? WHERE token_id = ? AND revoked_at IS NULL", kind.table()))
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

    pub async fn verify_token(&self, token_id: &str, secret: &str) -> Result<bool> {
        self.verify_token_of(TokenKind::Client, token_id, secret).await
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>> {
        self.list_tokens_of(TokenKind::Client).await
    }

    pub async fn revoke_token(&self, token_id: &str) -> Result<()> {
        self.revoke_token_of(TokenKind::Client, token_id).await
    }

    /// Issues the credential a task's container presents on every RPC; returns its secret.
    pub async fn create_task_credential(&self, task_id: &str, app_id: &str) -> Result<String> {
        let secret = random_secret(40);
        sqlx::query("INSERT INTO task_credentials (task_id, app_id, secret_sha256, created_at) VALUES (?, ?, ?, ?)")
            .bind(task_id)
            .bind(app_id)
            .bind(digest(&secret))
            .bind(now())
            .execute(&self.pool)
            .await?;
        Ok(secret)
    }

    pub async fn verify_task(&self, task_id: &str, secret: &str) -> Result<Option<Principal>> {
        let row = sqlx::query("SELECT app_id, secret_sha256 FROM task_credentials WHERE task_id = ? AND revoked_at IS NULL")
            .bind(task_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.and_then(|r| {
            same(&r.get::<String, _>(1), &digest(secret))
                .then(|| Principal::Task { task_id: task_id.to_string(), app_id: r.get(0) })
        }))
    }

    pub async fn revoke_task_credential(&self, task_id: &str) -> Result<()> {
        sqlx::query("UPDATE task_credentials SET revoked_at = ? WHERE task_id = ?").bind(now()).bind(task_id).execute(&self.pool).await?;
        Ok(())
    }
}
