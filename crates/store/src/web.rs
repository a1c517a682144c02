//! Web endpoints: the route from a URL label to the function (and class method) that answers
//! it, and the proxy tokens that endpoints with `requires_proxy_auth` accept.

use sqlx::Row;

use crate::apps::AppState;
use crate::auth::TokenKind;
use crate::{now, Result, Store};

/// Where requests for one label go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebRoute {
    pub label: String,
    pub app_id: String,
    pub function_id: String,
    /// The class method that answers, empty for a plain function.
    pub method_name: String,
    pub requires_proxy_auth: bool,
    /// Whether the owning app still runs (a stopped app's routes answer 404).
    pub app_live: bool,
}

/// A proxy token as listed: the same fields as a client token.
pub type ProxyTokenInfo = crate::TokenInfo;

impl Store {
    /// Points `label` at a function (the last app to claim a label gets it) and drops the
    /// function's routes under other labels (a renamed endpoint or a changed `label=`).
    pub async fn set_web_routes(&self, app_id: &str, function_id: &str, routes: &[(String, String, bool)]) -> Result<()> {
        let _turn = self.write_lock.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("DELETE FROM web_routes WHERE function_id = ?").bind(function_id).execute(&mut *tx).await?;
        for (label, method_name, requires_proxy_auth) in routes {
            sqlx::query(
                "INSERT OR REPLACE INTO web_routes (label, app_id, function_id, method_name, requires_proxy_auth, created_at)
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(label)
            .bind(app_id)
            .bind(function_id)
            .bind(method_name)
            .bind(*requires_proxy_auth)
            .bind(now())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Drops the routes of an app's functions that are not in `functions` (endpoints removed
    /// from the app's code by a redeploy).
    pub async fn retain_web_routes(&self, app_id: &str, functions: &[String]) -> Result<()> {
        let placeholders = vec!["?"; functions.len()].join(", ");
        let sql = if functions.is_empty() {
            "DELETE FROM web_routes WHERE app_id = ?".to_string()
        } else {
            format!("DELETE FROM web_routes WHERE app_id = ? AND function_id NOT IN ({placeholders})")
        };
        let mut query = sqlx::query(&sql).bind(app_id);
        for f in functions {
            query = query.bind(f);
        }
        query.execute(&self.pool).await?;
        Ok(())
    }

    /// The route of a label, if any function claimed it.
    pub async fn web_route(&self, label: &str) -> Result<Option<WebRoute>> {
        let row = sqlx::query(
            "SELECT r.label, r.app_id, r.function_id, r.method_name, r.requires_proxy_auth, a.state
             FROM web_routes r JOIN apps a ON a.id = r.app_id WHERE r.label = ?",
        )
        .bind(label)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| WebRoute {
            label: r.get(0),
            app_id: r.get(1),
            function_id: r.get(2),
            method_name: r.get(3),
            requires_proxy_auth: r.get(4),
            app_live: AppState::from_i32(r.get(5)).is_some_and(AppState::is_live),
        }))
    }

    /// Creates a proxy token and returns `(token_id, token_secret)`; only the secret's hash is kept.
    pub async fn create_proxy_token(&self, label: &str) -> Result<(String, String)> {
        self.create_token_of(TokenKind::Proxy, label).await
    }

    /// Whether `secret` is the secret of an active proxy token `token_id`.
    pub async fn verify_proxy_token(&self, token_id: &str, secret: &str) -> Result<bool> {
        self.verify_token_of(TokenKind::Proxy, token_id, secret).await
    }

    pub async fn list_proxy_tokens(&self) -> Result<Vec<ProxyTokenInfo>> {
        self.list_tokens_of(TokenKind::Proxy).await
    }

    pub async fn revoke_proxy_token(&self, token_id: &str) -> Result<()> {
        self.revoke_token_of(TokenKind::Proxy, token_id).await
    }
}
