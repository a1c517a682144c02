//! GPU fallback lists of functions, kept beside their definitions.

use sqlx::Row;

use crate::{Result, Store};

impl Store {
    /// Records (or, with `None`, forgets) a function's GPU fallback list.
    pub async fn set_function_gpu_choices(&self, function_id: &str, choices: Option<&str>) -> Result<()> {
        match choices {
            Some(c) => {
                sqlx::query("INSERT INTO function_gpu_choices (function_id, choices) VALUES ($1, $2) ON CONFLICT(function_id) DO UPDATE SET choices = excluded.choices")
                    .bind(function_id)
                    .bind(c)
                    .execute(&self.pool)
                    .await?;
            }
            None => {
                sqlx::query("DELETE FROM function_gpu_choices WHERE function_id = $1").bind(function_id).execute(&self.pool).await?;
            }
        }
        Ok(())
    }

    pub async fn function_gpu_choices(&self, function_id: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT choices FROM function_gpu_choices WHERE function_id = $1").bind(function_id).fetch_optional(&self.pool).await?;
        Ok(row.map(|r| r.get(0)))
    }
}
