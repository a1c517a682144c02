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

impl Store {
    /// Creates a token and returns `(token_id, token_secret)`. Only the secret's hash is kept.
    pub async fn create_token(&self, label: &str) -> Result<(String, String)> {
        let id = format!("ak-{}", random_secret(22));
        let secret = format!("as-{}", random_secret(32));
        sqlx::query("INSERT INTO tokens (token_id, secret_sha256, label, created_at) VALUES (?, ?, ?, ?)")
            .bind(&id)
            .bind(digest(&secret))
            .bind(label)
            .bind(now())
            .execute(&self.pool)
            .await?;
        Ok((id, secret))
    }

    pub async fn verify_token(&self, token_id: &str, secret: &str) -> Result<bool> {
        let row = sqlx::query("SELECT secret_sha256 FROM tokens WHERE token_id = ? AND revoked_at IS NULL")
            .bind(token_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| same(&r.get::<String, _>(0), &digest(secret))).unwrap_or(false))
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>> {
        let rows = sqlx::query("SELECT * FROM tokens ORDER BY created_at").fetch_all(&self.pool).await?;
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

    pub async fn revoke_token(&self, token_id: &str) -> Result<()> {
        let done = sqlx::query("UPDATE tokens SET revoked_at = ? WHERE token_id = ? AND revoked_at IS NULL")
            .bind(now())
            .bind(token_id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("no active token '{token_id}'; see `ferry token list`")));
        }
        Ok(())
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
