//! Sandbox records: identity, name, tags and outcome of each sandbox. The live container is
//! owned by `ferry-sandbox`; this table is what a client can ask about again, also after a
//! restart.

use std::collections::BTreeMap;

use sqlx::Row;

use crate::{now, Backend, Result, Store, StoreError};

/// A sandbox as recorded. `status` is 0 while it runs, then the protocol's result status.
#[derive(Clone, Debug, PartialEq)]
pub struct SandboxRecord {
    pub id: String,
    pub app_id: String,
    pub environment_id: String,
    pub name: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub image_id: String,
    pub task_id: String,
    pub timeout_secs: u32,
    pub idle_timeout_secs: Option<u32>,
    pub status: i32,
    pub exit_code: Option<i32>,
    pub exception: String,
    pub created_by: String,
    pub created_at: f64,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
}

impl SandboxRecord {
    pub fn is_running(&self) -> bool {
        self.finished_at.is_none()
    }
}

/// Which sandboxes to list.
#[derive(Clone, Debug, Default)]
pub struct SandboxFilter {
    /// One app's sandboxes; `None` lists the environment's.
    pub app_id: Option<String>,
    pub environment_id: Option<String>,
    /// Only sandboxes created strictly before this time (paging, newest first).
    pub before: Option<f64>,
    pub include_finished: bool,
    /// Every tag given must be present with that value.
    pub tags: BTreeMap<String, String>,
    pub limit: u32,
}

fn row(r: &sqlx::any::AnyRow) -> SandboxRecord {
    let tags: String = r.get("tags");
    SandboxRecord {
        id: r.get("id"),
        app_id: r.get("app_id"),
        environment_id: r.get("environment_id"),
        name: r.get("name"),
        tags: serde_json::from_str(&tags).unwrap_or_default(),
        image_id: r.get("image_id"),
        task_id: r.get("task_id"),
        timeout_secs: r.get::<i64, _>("timeout_secs") as u32,
        idle_timeout_secs: r.get::<Option<i64>, _>("idle_timeout_secs").map(|v| v as u32),
        status: r.get::<i64, _>("status") as i32,
        exit_code: r.get::<Option<i64>, _>("exit_code").map(|v| v as i32),
        exception: r.get("exception"),
        created_by: r.get("created_by"),
        created_at: r.get("created_at"),
        started_at: r.get("started_at"),
        finished_at: r.get("finished_at"),
    }
}

fn topic(id: &str) -> String {
    format!("sandbox:{id}")
}

impl Store {
    /// Records a new sandbox. A name already taken by a running sandbox of the same app is
    /// `AlreadyExists`.
    pub async fn create_sandbox(&self, rec: &SandboxRecord) -> Result<()> {
        let tags = serde_json::to_string(&rec.tags).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let done = sqlx::query(
            "INSERT INTO sandboxes (id, app_id, environment_id, name, tags, image_id, task_id, timeout_secs, idle_timeout_secs, \
             status, created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, $10, $11)",
        )
        .bind(&rec.id)
        .bind(&rec.app_id)
        .bind(&rec.environment_id)
        .bind(&rec.name)
        .bind(tags)
        .bind(&rec.image_id)
        .bind(&rec.task_id)
        .bind(rec.timeout_secs as i64)
        .bind(rec.idle_timeout_secs.map(|v| v as i64))
        .bind(&rec.created_by)
        .bind(rec.created_at)
        .execute(&self.pool)
        .await;
        match done {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(StoreError::AlreadyExists(format!(
                "a running Sandbox named '{}' already exists in this App",
                rec.name.as_deref().unwrap_or_default()
            ))),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn sandbox(&self, id: &str) -> Result<SandboxRecord> {
        let r = sqlx::query("SELECT * FROM sandboxes WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        r.map(|r| row(&r)).ok_or_else(|| StoreError::NotFound(format!("Sandbox {id} not found")))
    }

    pub async fn sandbox_by_task(&self, task_id: &str) -> Result<SandboxRecord> {
        let r = sqlx::query("SELECT * FROM sandboxes WHERE task_id = $1").bind(task_id).fetch_optional(&self.pool).await?;
        r.map(|r| row(&r)).ok_or_else(|| StoreError::NotFound(format!("no Sandbox runs as task {task_id}")))
    }

    /// The running sandbox of an app with this name, else (if asked) the last finished one.
    pub async fn sandbox_by_name(&self, app_id: &str, name: &str, include_finished: bool) -> Result<Option<SandboxRecord>> {
        let sql = if include_finished {
            "SELECT * FROM sandboxes WHERE app_id = $1 AND name = $2 ORDER BY finished_at IS NULL DESC, created_at DESC LIMIT 1"
        } else {
            "SELECT * FROM sandboxes WHERE app_id = $1 AND name = $2 AND finished_at IS NULL LIMIT 1"
        };
        let r = sqlx::query(sql).bind(app_id).bind(name).fetch_optional(&self.pool).await?;
        Ok(r.map(|r| row(&r)))
    }

    /// Sandboxes newest first.
    pub async fn list_sandboxes(&self, f: &SandboxFilter) -> Result<Vec<SandboxRecord>> {
        let mut sql = String::from("SELECT * FROM sandboxes WHERE 1 = 1");
        let mut n = 0;
        let mut param = || {
            n += 1;
            format!("${n}")
        };
        if f.app_id.is_some() {
            sql.push_str(&format!(" AND app_id = {}", param()));
        }
        if f.environment_id.is_some() {
            sql.push_str(&format!(" AND environment_id = {}", param()));
        }
        if f.before.is_some() {
            sql.push_str(&format!(" AND created_at < {}", param()));
        }
        if !f.include_finished {
            sql.push_str(" AND finished_at IS NULL");
        }
        for _ in &f.tags {
            // The tag's value in the JSON object `tags`: a path on SQLite, a key on PostgreSQL.
            let member = match self.backend {
                Backend::Sqlite => format!("json_extract(tags, {})", param()),
                Backend::Postgres => format!("(CAST(tags AS JSONB) ->> {})", param()),
            };
            sql.push_str(&format!(" AND {member} = {}", param()));
        }
        sql.push_str(&format!(" ORDER BY created_at DESC LIMIT {}", param()));
        let mut q = sqlx::query(&sql);
        if let Some(a) = &f.app_id {
            q = q.bind(a);
        }
        if let Some(e) = &f.environment_id {
            q = q.bind(e);
        }
        if let Some(b) = f.before {
            q = q.bind(b);
        }
        for (k, v) in &f.tags {
            let member = match self.backend {
                // A quoted JSON path member, so any key (dots included) names one member.
                Backend::Sqlite => format!("$.\"{}\"", k.replace('"', "\\\"")),
                Backend::Postgres => k.clone(),
            };
            q = q.bind(member).bind(v);
        }
        let limit = if f.limit == 0 { 100 } else { f.limit };
        let rows = q.bind(limit as i64).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(row).collect())
    }

    pub async fn set_sandbox_tags(&self, id: &str, tags: &BTreeMap<String, String>) -> Result<()> {
        self.replace_tags("sandboxes", "Sandbox", id, tags).await
    }

    /// Records that the sandbox's container is running.
    pub async fn start_sandbox(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE sandboxes SET started_at = $1 WHERE id = $2").bind(now()).bind(id).execute(&self.pool).await?;
        self.notify.fire(&topic(id));
        Ok(())
    }

    /// Records a sandbox's outcome once; later calls keep the first outcome and return false.
    pub async fn finish_sandbox(&self, id: &str, status: i32, exit_code: Option<i32>, exception: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE sandboxes SET status = $1, exit_code = $2, exception = $3, finished_at = $4 WHERE id = $5 AND finished_at IS NULL",
        )
        .bind(status as i64)
        .bind(exit_code.map(|c| c as i64))
        .bind(exception)
        .bind(now())
        .bind(id)
        .execute(&self.pool)
        .await?;
        self.notify.fire(&topic(id));
        Ok(done.rows_affected() > 0)
    }

    /// Waits up to `timeout` for the sandbox to finish; returns its record either way.
    pub async fn wait_sandbox(&self, id: &str, timeout: std::time::Duration) -> Result<SandboxRecord> {
        let deadline = tokio::time::Instant::now() + timeout;
        let notify = self.notify.topic(&topic(id));
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let rec = self.sandbox(id).await?;
            if !rec.is_running() {
                return Ok(rec);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(rec);
            }
        }
    }

    /// Marks every sandbox still recorded as running as failed: their containers ended with
    /// the previous server process. Returns how many there were.
    pub async fn fail_orphaned_sandboxes(&self, status: i32, message: &str) -> Result<u64> {
        let done = sqlx::query("UPDATE sandboxes SET status = $1, exception = $2, finished_at = $3 WHERE finished_at IS NULL")
            .bind(status as i64)
            .bind(message)
            .bind(now())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, name: Option<&str>, tags: &[(&str, &str)]) -> SandboxRecord {
        SandboxRecord {
            id: id.into(),
            app_id: "ap-1".into(),
            environment_id: "en-1".into(),
            name: name.map(Into::into),
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            image_id: "im-1".into(),
            task_id: format!("ta-{id}"),
            timeout_secs: 300,
            idle_timeout_secs: None,
            status: 0,
            exit_code: None,
            exception: String::new(),
            created_by: "tk".into(),
            created_at: now(),
            started_at: None,
            finished_at: None,
        }
    }

    async fn names_tags_and_outcomes(b: crate::testing::Backend) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::testing::TestDatabase::new(b).await.open(dir.path()).await;
        store.create_sandbox(&rec("sb-a", Some("web"), &[("team", "x"), ("a.b", "1")])).await.unwrap();
        // A running sandbox's name is taken; a finished one frees it.
        let e = store.create_sandbox(&rec("sb-b", Some("web"), &[])).await.unwrap_err();
        assert!(matches!(e, StoreError::AlreadyExists(_)), "{e}");
        store.create_sandbox(&rec("sb-c", None, &[("team", "y")])).await.unwrap();

        let mut f = SandboxFilter { app_id: Some("ap-1".into()), ..Default::default() };
        f.tags.insert("team".into(), "x".into());
        let found: Vec<_> = store.list_sandboxes(&f).await.unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(found, vec!["sb-a"]);
        f.tags.clear();
        f.tags.insert("a.b".into(), "1".into());
        assert_eq!(store.list_sandboxes(&f).await.unwrap().len(), 1);

        assert!(store.finish_sandbox("sb-a", 1, Some(0), "").await.unwrap());
        assert!(!store.finish_sandbox("sb-a", 3, None, "").await.unwrap(), "the first outcome stays");
        assert_eq!(store.sandbox("sb-a").await.unwrap().status, 1);
        assert!(store.sandbox_by_name("ap-1", "web", false).await.unwrap().is_none());
        assert_eq!(store.sandbox_by_name("ap-1", "web", true).await.unwrap().unwrap().id, "sb-a");
        store.create_sandbox(&rec("sb-b", Some("web"), &[])).await.unwrap();
        assert_eq!(store.sandbox_by_name("ap-1", "web", true).await.unwrap().unwrap().id, "sb-b");

        let all = store.list_sandboxes(&SandboxFilter { app_id: Some("ap-1".into()), ..Default::default() }).await.unwrap();
        assert_eq!(all.len(), 2, "finished sandboxes are left out by default");
        assert_eq!(store.fail_orphaned_sandboxes(6, "server restarted").await.unwrap(), 2);
        let w = store.wait_sandbox("sb-c", std::time::Duration::from_millis(10)).await.unwrap();
        assert_eq!(w.status, 6);
    }

    crate::backend_tests!(names_tags_and_outcomes);
}
