//! Apps and their log streams.

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::Row;

use crate::{Backend, new_id, now, Result, Store, StoreError};

/// App lifecycle states; the numbers are those of the Modal protocol's `AppState`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppState {
    Ephemeral = 1,
    Detached = 2,
    Deployed = 3,
    Stopping = 4,
    Stopped = 5,
    Initializing = 6,
    DetachedDisconnected = 8,
}

impl AppState {
    pub fn from_i32(v: i32) -> Option<AppState> {
        Some(match v {
            1 => AppState::Ephemeral,
            2 => AppState::Detached,
            3 => AppState::Deployed,
            4 => AppState::Stopping,
            5 => AppState::Stopped,
            6 => AppState::Initializing,
            8 => AppState::DetachedDisconnected,
            _ => return None,
        })
    }
    pub fn is_live(self) -> bool {
        !matches!(self, AppState::Stopping | AppState::Stopped)
    }
}

#[derive(Clone, Debug)]
pub struct App {
    pub id: String,
    pub environment_id: String,
    pub name: Option<String>,
    pub description: String,
    pub state: AppState,
    pub created_by: String,
    pub created_at: f64,
    pub stopped_at: Option<f64>,
}

#[derive(Clone, Debug)]
pub struct LogEntry {
    pub id: i64,
    pub task_id: String,
    pub function_id: String,
    /// The call and input the line was written under; empty when not known.
    pub function_call_id: String,
    pub input_id: String,
    pub fd: i32,
    pub data: String,
    pub timestamp: f64,
}

/// A log line to append (see [`Store::append_logs`]).
#[derive(Clone, Debug, Default)]
pub struct NewLog {
    pub task_id: String,
    pub function_id: String,
    pub function_call_id: String,
    pub input_id: String,
    pub fd: i32,
    pub data: String,
    /// When the line was written; None: now.
    pub timestamp: Option<f64>,
}

/// Which lines of an app's log to read; an empty field (or `fd` 0) matches every line.
#[derive(Clone, Debug, Default)]
pub struct LogFilter {
    pub function_id: String,
    pub task_id: String,
    pub function_call_id: String,
    pub input_id: String,
    pub fd: i32,
    /// Lines containing this text (case-sensitive).
    pub search_text: String,
}

impl LogFilter {
    /// Whether `e` passes the filter.
    pub fn matches(&self, e: &LogEntry) -> bool {
        (self.function_id.is_empty() || e.function_id == self.function_id)
            && (self.task_id.is_empty() || e.task_id == self.task_id)
            && (self.function_call_id.is_empty() || e.function_call_id == self.function_call_id)
            && (self.input_id.is_empty() || e.input_id == self.input_id)
            && (self.fd == 0 || e.fd == self.fd)
            && (self.search_text.is_empty() || e.data.contains(&self.search_text))
    }
}

fn from_row(r: &sqlx::any::AnyRow) -> App {
    App {
        id: r.get("id"),
        environment_id: r.get("environment_id"),
        name: r.get("name"),
        description: r.get("description"),
        state: AppState::from_i32(r.get::<i64, _>("state") as i32).unwrap_or(AppState::Stopped),
        created_by: r.get("created_by"),
        created_at: r.get("created_at"),
        stopped_at: r.get("stopped_at"),
    }
}

fn log_from_row(r: &sqlx::any::AnyRow) -> LogEntry {
    LogEntry {
        id: r.get("id"),
        task_id: r.get("task_id"),
        function_id: r.get("function_id"),
        function_call_id: r.get("function_call_id"),
        input_id: r.get("input_id"),
        fd: r.get::<i64, _>("fd") as i32,
        data: r.get("data"),
        timestamp: r.get("timestamp"),
    }
}

fn log_topic(app_id: &str) -> String {
    format!("logs:{app_id}")
}

impl Store {
    pub async fn create_app(
        &self,
        environment: &str,
        name: Option<&str>,
        description: &str,
        state: AppState,
        client_id: &str,
        created_by: &str,
    ) -> Result<App> {
        let env = self.environment(environment).await?;
        let id = new_id("ap");
        let t = now();
        sqlx::query(
            "INSERT INTO apps (id, environment_id, name, description, state, client_id, created_by, created_at, last_heartbeat) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&id)
        .bind(&env.id)
        .bind(name)
        .bind(description)
        .bind(state as i64)
        .bind(client_id)
        .bind(created_by)
        .bind(t)
        .bind(t)
        .execute(&self.pool)
        .await?;
        self.app(&id).await
    }

    pub async fn app(&self, id: &str) -> Result<App> {
        let row = sqlx::query("SELECT * FROM apps WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        row.map(|r| from_row(&r)).ok_or_else(|| StoreError::NotFound(format!("App {id} not found")))
    }

    /// The live app deployed under `name` in an environment, if any.
    pub async fn app_by_name(&self, environment: &str, name: &str) -> Result<Option<App>> {
        let env = self.environment(environment).await?;
        let row = sqlx::query(
            "SELECT * FROM apps WHERE environment_id = $1 AND name = $2 AND state NOT IN (4, 5) ORDER BY created_at DESC LIMIT 1",
        )
        .bind(&env.id)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| from_row(&r)))
    }

    /// The most recent app ever deployed under `name`, live or stopped.
    pub async fn last_app_by_name(&self, environment: &str, name: &str) -> Result<Option<App>> {
        let env = self.environment(environment).await?;
        let row = sqlx::query("SELECT * FROM apps WHERE environment_id = $1 AND name = $2 ORDER BY created_at DESC LIMIT 1")
            .bind(&env.id)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| from_row(&r)))
    }

    pub async fn list_apps(&self, environment: &str) -> Result<Vec<App>> {
        let env = self.environment(environment).await?;
        let rows = sqlx::query("SELECT * FROM apps WHERE environment_id = $1 ORDER BY created_at DESC LIMIT 1000")
            .bind(&env.id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(from_row).collect())
    }

    pub async fn heartbeat_app(&self, id: &str) -> Result<App> {
        sqlx::query("UPDATE apps SET last_heartbeat = $1 WHERE id = $2").bind(now()).bind(id).execute(&self.pool).await?;
        self.app(id).await
    }

    /// Moves an app to a new state; stopping records the time and wakes log followers.
    pub async fn set_app_state(&self, id: &str, state: AppState) -> Result<App> {
        let app = self.app(id).await?;
        if app.state == AppState::Stopped {
            return Ok(app);
        }
        // Two statements rather than a NULL parameter: a prepared statement keeps the type of
        // its first parameters, and a NULL there has none PostgreSQL would match to a float later.
        if state == AppState::Stopped {
            sqlx::query("UPDATE apps SET state = $1, stopped_at = $2 WHERE id = $3")
                .bind(state as i64)
                .bind(now())
                .bind(id)
                .execute(&self.pool)
                .await?;
        } else {
            sqlx::query("UPDATE apps SET state = $1 WHERE id = $2").bind(state as i64).bind(id).execute(&self.pool).await?;
        }
        self.notify.fire(&log_topic(id));
        self.app(id).await
    }

    pub async fn set_app_name(&self, id: &str, name: &str) -> Result<()> {
        sqlx::query("UPDATE apps SET name = $1 WHERE id = $2").bind(name).bind(id).execute(&self.pool).await?;
        Ok(())
    }

    /// Stops ephemeral apps whose client stopped sending heartbeats `ttl_secs` ago.
    /// An app's tags (`App(tags=...)`, `App.set_tags`).
    pub async fn app_tags(&self, id: &str) -> Result<BTreeMap<String, String>> {
        let text: Option<String> = sqlx::query_scalar("SELECT tags FROM apps WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        let text = text.ok_or_else(|| StoreError::NotFound(format!("App {id} not found")))?;
        serde_json::from_str(&text).map_err(|e| StoreError::Io(format!("corrupt tags of app {id}: {e}")))
    }

    /// Replaces an app's tags.
    pub async fn set_app_tags(&self, id: &str, tags: &BTreeMap<String, String>) -> Result<()> {
        self.replace_tags("apps", "App", id, tags).await
    }

    /// The ids of the apps in `state`.
    pub async fn apps_in_state(&self, state: AppState) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT id FROM apps WHERE state = $1").bind(state as i32).fetch_all(&self.pool).await?)
    }

    pub async fn reap_apps(&self, ttl_secs: f64) -> Result<Vec<String>> {
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM apps WHERE state IN (1, 6) AND last_heartbeat < $1")
            .bind(now() - ttl_secs)
            .fetch_all(&self.pool)
            .await?;
        for id in &ids {
            self.set_app_state(id, AppState::Stopped).await?;
        }
        Ok(ids)
    }

    /// The last `limit` log entries with `since <= timestamp < until`, oldest first.
    pub async fn logs_in_range(&self, app_id: &str, since: f64, until: f64, limit: i64) -> Result<Vec<LogEntry>> {
        self.logs_matching(app_id, since, until, limit, &LogFilter::default()).await
    }

    /// The last `limit` log entries with `since <= timestamp < until` that pass `filter`,
    /// oldest first.
    pub async fn logs_matching(&self, app_id: &str, since: f64, until: f64, limit: i64, filter: &LogFilter) -> Result<Vec<LogEntry>> {
        let mut sql = String::from("SELECT * FROM (SELECT * FROM app_logs WHERE app_id = $1 AND timestamp >= $2 AND timestamp < $3");
        let mut texts: Vec<&str> = Vec::new();
        for (column, value) in [
            ("function_id", &filter.function_id),
            ("task_id", &filter.task_id),
            ("function_call_id", &filter.function_call_id),
            ("input_id", &filter.input_id),
        ] {
            if !value.is_empty() {
                texts.push(value);
                sql.push_str(&format!(" AND {column} = ${}", 4 + texts.len()));
            }
        }
        if !filter.search_text.is_empty() {
            texts.push(&filter.search_text);
            let n = 4 + texts.len();
            sql.push_str(&match self.backend {
                Backend::Postgres => format!(" AND strpos(data, ${n}) > 0"),
                _ => format!(" AND instr(data, ${n}) > 0"),
            });
        }
        if filter.fd != 0 {
            sql.push_str(&format!(" AND fd = {}", filter.fd));
        }
        sql.push_str(" ORDER BY id DESC LIMIT $4) AS recent ORDER BY id");
        let mut q = sqlx::query(&sql).bind(app_id).bind(since).bind(until).bind(limit);
        for t in texts {
            q = q.bind(t);
        }
        let rows = q.fetch_all(&self.pool).await?;
        Ok(rows.iter().map(log_from_row).collect())
    }

    pub async fn append_log(&self, app_id: &str, task_id: &str, function_id: &str, fd: i32, data: &str) -> Result<i64> {
        let line = NewLog { task_id: task_id.into(), function_id: function_id.into(), fd, data: data.into(), ..Default::default() };
        Ok(self.append_logs(app_id, std::slice::from_ref(&line)).await?.unwrap_or(0))
    }

    /// The app a container wrote log lines for, with its first and last line's time.
    pub async fn task_log_span(&self, task_id: &str) -> Result<Option<(String, f64, f64)>> {
        let row = sqlx::query("SELECT app_id, MIN(timestamp), MAX(timestamp) FROM app_logs WHERE task_id = $1 GROUP BY app_id LIMIT 1")
            .bind(task_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
    }

    /// Appends lines to an app's log in one transaction; returns the last line's id.
    pub async fn append_logs(&self, app_id: &str, lines: &[NewLog]) -> Result<Option<i64>> {
        if lines.is_empty() {
            return Ok(None);
        }
        // Followers read `id > after`: on PostgreSQL, where replicas append at once, an app's
        // lines commit in id order (one writer per app at a time), so none is skipped.
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))").bind(app_id).execute(&mut *tx).await?;
        }
        let at = now();
        let mut last = 0;
        for l in lines {
            last = sqlx::query_scalar(
                "INSERT INTO app_logs (app_id, task_id, function_id, function_call_id, input_id, fd, data, timestamp) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            )
            .bind(app_id)
            .bind(&l.task_id)
            .bind(&l.function_id)
            .bind(&l.function_call_id)
            .bind(&l.input_id)
            .bind(l.fd)
            .bind(&l.data)
            .bind(l.timestamp.unwrap_or(at))
            .fetch_one(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.notify.fire(&log_topic(app_id));
        Ok(Some(last))
    }

    /// Log entries after `after`; waits up to `timeout` for one when there are none and the app
    /// is still live. Returns the entries and the app as of the read.
    pub async fn follow_logs(&self, app_id: &str, after: i64, timeout: Duration) -> Result<(Vec<LogEntry>, App)> {
        let deadline = tokio::time::Instant::now() + timeout;
        let topic = self.notify.topic(&log_topic(app_id));
        loop {
            let notified = topic.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let app = self.app(app_id).await?;
            let rows = sqlx::query("SELECT * FROM app_logs WHERE app_id = $1 AND id > $2 ORDER BY id LIMIT 1000")
                .bind(app_id)
                .bind(after)
                .fetch_all(&self.pool)
                .await?;
            let entries: Vec<LogEntry> = rows.iter().map(log_from_row).collect();
            if !entries.is_empty() || !app.state.is_live() || tokio::time::Instant::now() >= deadline {
                return Ok((entries, app));
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }
}
