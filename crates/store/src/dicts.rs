//! Dict contents: opaque (pickled) keys and values compared as bytes.

use sqlx::Row;

use crate::{ObjectKind, Result, Store, StoreError};

/// Largest key the store accepts.
pub const MAX_DICT_KEY_BYTES: usize = 64 * 1024;
/// `len()` is capped as on Modal.
const MAX_REPORTED_LEN: i64 = 100_000;

impl Store {
    pub(crate) async fn ensure_object(&self, kind: ObjectKind, id: &str) -> Result<()> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM objects WHERE id = ? AND kind = ?")
            .bind(id)
            .bind(kind.as_str())
            .fetch_optional(&self.pool)
            .await?;
        match found {
            Some(_) => Ok(()),
            None => Err(StoreError::NotFound(format!(
                "{} {id} not found: it was deleted, or it was ephemeral and its heartbeats stopped",
                kind.title()
            ))),
        }
    }

    /// Writes entries; with `if_not_exists` existing keys are kept. Returns whether any key was new.
    pub async fn dict_update(&self, dict_id: &str, entries: &[(Vec<u8>, Vec<u8>)], if_not_exists: bool) -> Result<bool> {
        for (k, _) in entries {
            if k.len() > MAX_DICT_KEY_BYTES {
                return Err(StoreError::Invalid(format!(
                    "Dict key of {} bytes is too large: keys may be at most {MAX_DICT_KEY_BYTES} bytes",
                    k.len()
                )));
            }
        }
        let _w = self.write_lock.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM objects WHERE id = ? AND kind = 'dict'")
            .bind(dict_id)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound(format!("Dict {dict_id} not found")));
        }
        let sql = if if_not_exists {
            "INSERT OR IGNORE INTO dict_entries (dict_id, key, value) VALUES (?, ?, ?)"
        } else {
            "INSERT OR REPLACE INTO dict_entries (dict_id, key, value) VALUES (?, ?, ?)"
        };
        let mut created = false;
        for (k, v) in entries {
            let done = sqlx::query(sql).bind(dict_id).bind(k).bind(v).execute(&mut *tx).await?;
            created |= done.rows_affected() > 0;
        }
        tx.commit().await?;
        Ok(created)
    }

    pub async fn dict_get(&self, dict_id: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.dict_value("SELECT value FROM dict_entries WHERE dict_id = ? AND key = ?", dict_id, key).await
    }

    pub async fn dict_pop(&self, dict_id: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.dict_value("DELETE FROM dict_entries WHERE dict_id = ? AND key = ? RETURNING value", dict_id, key).await
    }

    /// Runs a statement yielding one key's value; a miss checks that the Dict itself exists.
    async fn dict_value(&self, sql: &str, dict_id: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let v: Option<Vec<u8>> = sqlx::query_scalar(sql).bind(dict_id).bind(key).fetch_optional(&self.pool).await?;
        if v.is_none() {
            self.ensure_object(ObjectKind::Dict, dict_id).await?;
        }
        Ok(v)
    }

    pub async fn dict_len(&self, dict_id: &str) -> Result<i64> {
        self.ensure_object(ObjectKind::Dict, dict_id).await?;
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM (SELECT 1 FROM dict_entries WHERE dict_id = ? LIMIT ?)")
            .bind(dict_id)
            .bind(MAX_REPORTED_LEN)
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }

    pub async fn dict_clear(&self, dict_id: &str) -> Result<()> {
        self.ensure_object(ObjectKind::Dict, dict_id).await?;
        sqlx::query("DELETE FROM dict_entries WHERE dict_id = ?").bind(dict_id).execute(&self.pool).await?;
        Ok(())
    }

    /// One page of entries with keys greater than `after` (ordered by key bytes).
    pub async fn dict_page(&self, dict_id: &str, after: Option<&[u8]>, limit: i64) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if after.is_none() {
            self.ensure_object(ObjectKind::Dict, dict_id).await?;
        }
        let rows = match after {
            Some(k) => {
                sqlx::query("SELECT key, value FROM dict_entries WHERE dict_id = ? AND key > ? ORDER BY key LIMIT ?")
                    .bind(dict_id)
                    .bind(k)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT key, value FROM dict_entries WHERE dict_id = ? ORDER BY key LIMIT ?")
                    .bind(dict_id)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
