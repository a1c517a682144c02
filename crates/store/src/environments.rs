use sqlx::Row;

use crate::{new_id, now, Result, Store, StoreError};

/// The environment a request addresses when it names none.
pub const DEFAULT_ENVIRONMENT: &str = "main";

#[derive(Clone, Debug)]
pub struct Environment {
    pub id: String,
    pub name: String,
    pub is_default: bool,
    pub webhook_suffix: String,
    pub created_at: f64,
}

fn from_row(r: &sqlx::sqlite::SqliteRow) -> Environment {
    Environment {
        id: r.get("id"),
        name: r.get("name"),
        is_default: r.get::<i64, _>("is_default") != 0,
        webhook_suffix: r.get("webhook_suffix"),
        created_at: r.get("created_at"),
    }
}

impl Store {
    /// The default environment, created on first use.
    pub async fn default_environment(&self) -> Result<Environment> {
        if let Some(r) = sqlx::query("SELECT * FROM environments WHERE is_default = 1").fetch_optional(&self.pool).await? {
            return Ok(from_row(&r));
        }
        sqlx::query("INSERT OR IGNORE INTO environments (id, name, is_default, created_at) VALUES (?, ?, 1, ?)")
            .bind(new_id("en"))
            .bind(DEFAULT_ENVIRONMENT)
            .bind(now())
            .execute(&self.pool)
            .await?;
        let r = sqlx::query("SELECT * FROM environments WHERE is_default = 1").fetch_one(&self.pool).await?;
        Ok(from_row(&r))
    }

    /// Resolves an environment by name; the empty name is the default environment.
    pub async fn environment(&self, name: &str) -> Result<Environment> {
        if name.is_empty() {
            return self.default_environment().await;
        }
        match sqlx::query("SELECT * FROM environments WHERE name = ?").bind(name).fetch_optional(&self.pool).await? {
            Some(r) => Ok(from_row(&r)),
            None => Err(StoreError::NotFound(format!(
                "Environment '{name}' not found. Create it with `modal environment create {name}` or use one of `modal environment list`."
            ))),
        }
    }

    pub async fn create_environment(&self, name: &str) -> Result<Environment> {
        crate::objects::check_name(name, "Environment")?;
        let res = sqlx::query("INSERT INTO environments (id, name, is_default, created_at) VALUES (?, ?, 0, ?)")
            .bind(new_id("en"))
            .bind(name)
            .bind(now())
            .execute(&self.pool)
            .await;
        match res {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::AlreadyExists(format!("Environment '{name}' already exists")))
            }
            Err(e) => Err(e.into()),
            Ok(_) => self.environment(name).await,
        }
    }

    pub async fn list_environments(&self) -> Result<Vec<Environment>> {
        let rows = sqlx::query("SELECT * FROM environments ORDER BY created_at").fetch_all(&self.pool).await?;
        Ok(rows.iter().map(from_row).collect())
    }

    pub async fn delete_environment(&self, name: &str) -> Result<()> {
        let env = self.environment(name).await?;
        if env.is_default {
            return Err(StoreError::FailedPrecondition(format!("Environment '{}' is the default and cannot be deleted", env.name)));
        }
        let _w = self.write_lock.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for table in ["objects", "apps"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE environment_id = ?")).bind(&env.id).execute(&mut *tx).await?;
        }
        sqlx::query("DELETE FROM environments WHERE id = ?").bind(&env.id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn rename_environment(&self, current: &str, new_name: Option<&str>, web_suffix: Option<&str>) -> Result<Environment> {
        let env = self.environment(current).await?;
        if let Some(n) = new_name {
            crate::objects::check_name(n, "Environment")?;
            sqlx::query("UPDATE environments SET name = ? WHERE id = ?").bind(n).bind(&env.id).execute(&self.pool).await
                .map_err(|e| match e {
                    sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::AlreadyExists(format!("Environment '{n}' already exists")),
                    e => e.into(),
                })?;
        }
        if let Some(s) = web_suffix {
            sqlx::query("UPDATE environments SET webhook_suffix = ? WHERE id = ?").bind(s).bind(&env.id).execute(&self.pool).await?;
        }
        self.environment(new_name.unwrap_or(current)).await
    }
}

impl Store {
    pub async fn environment_by_id(&self, id: &str) -> Result<Environment> {
        let r = sqlx::query("SELECT * FROM environments WHERE id = ?").bind(id).fetch_optional(&self.pool).await?;
        r.map(|r| from_row(&r)).ok_or_else(|| StoreError::NotFound(format!("Environment {id} not found")))
    }
}
