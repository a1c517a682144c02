//! Versions of deployed apps and the schedules of published functions.
//!
//! A deployment keeps its function and class ids across versions (the client reuses them), so
//! a version records each function's definition as it was: a rollback writes those
//! definitions back and is itself recorded as a new version.

use std::collections::BTreeMap;
use std::sync::Arc;

use sqlx::Row;
use tokio::sync::Notify;

use crate::{now, Result, Store, StoreError};

const SCHEDULES_TOPIC: &str = "schedules";

/// Who deployed a version and with what, as the client reported it.
#[derive(Clone, Debug, Default)]
pub struct DeploymentInfo {
    pub deployed_by: String,
    pub client_version: String,
    pub tag: String,
    /// The client's commit information, opaque to the store.
    pub commit_info: Option<Vec<u8>>,
}

/// One version of a deployed app.
#[derive(Clone, Debug)]
pub struct Deployment {
    pub app_id: String,
    pub version: i64,
    pub deployed_at: f64,
    pub info: DeploymentInfo,
    /// For a rollback: the version it restored.
    pub rollback_version: Option<i64>,
}

/// What a new version changed, so callers can drop what they cached about it.
#[derive(Clone, Debug, Default)]
pub struct VersionChange {
    pub version: i64,
    pub deployed_at: f64,
    /// Functions whose definitions were rewritten or retired.
    pub function_ids: Vec<String>,
}

/// A scheduled function of a live app.
#[derive(Clone, Debug)]
pub struct ScheduleRecord {
    pub function_id: String,
    pub app_id: String,
    pub spec: String,
    pub anchor: f64,
    pub last_tick: Option<f64>,
}

/// App states whose schedules fire: ephemeral, detached, deployed, detached-disconnected.
const LIVE_STATES: &str = "(1, 2, 3, 8)";

fn deployment_row(r: &sqlx::sqlite::SqliteRow) -> Deployment {
    Deployment {
        app_id: r.get("app_id"),
        version: r.get("version"),
        deployed_at: r.get("deployed_at"),
        info: DeploymentInfo {
            deployed_by: r.get("deployed_by"),
            client_version: r.get("client_version"),
            tag: r.get("tag"),
            commit_info: r.get("commit_info"),
        },
        rollback_version: r.get("rollback_version"),
    }
}

impl Store {
    /// Records a new version of a deployed app made of these functions and classes (tag → id),
    /// with the functions' current definitions. Functions of the app that the version does not
    /// contain are retired: lookups no longer find them.
    pub async fn record_deployment(
        &self,
        app_id: &str,
        info: &DeploymentInfo,
        functions: &BTreeMap<String, String>,
        classes: &BTreeMap<String, String>,
    ) -> Result<VersionChange> {
        let _w = self.write_lock.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let version: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) + 1 FROM app_deployments WHERE app_id = ?")
            .bind(app_id)
            .fetch_one(&mut *tx)
            .await?;
        let deployed_at = now();
        insert_deployment(&mut tx, app_id, version, deployed_at, info, None).await?;
        for (tag, id) in functions {
            let definition: Option<Option<Vec<u8>>> =
                sqlx::query_scalar("SELECT definition FROM functions WHERE id = ? AND app_id = ?").bind(id).bind(app_id).fetch_optional(&mut *tx).await?;
            let Some(Some(definition)) = definition else {
                return Err(StoreError::FailedPrecondition(format!("function '{tag}' ({id}) of app {app_id} was never created")));
            };
            insert_object(&mut tx, app_id, version, id, tag, Some(&definition)).await?;
        }
        for (tag, id) in classes {
            insert_object(&mut tx, app_id, version, id, tag, None).await?;
        }
        let retired = retire_functions_outside(&mut tx, app_id, version).await?;
        tx.commit().await?;
        let mut function_ids: Vec<String> = functions.values().cloned().collect();
        function_ids.extend(retired);
        Ok(VersionChange { version, deployed_at, function_ids })
    }

    /// Restores `version` of a deployed app (its function definitions and class names) and
    /// records that as a new version.
    pub async fn rollback_deployment(&self, app_id: &str, version: i64, deployed_by: &str) -> Result<VersionChange> {
        self.redeploy_version(app_id, version, deployed_by, true).await
    }

    /// Records the current version again as a new one (`modal app rollover`: same code, fresh
    /// containers).
    pub async fn rollover_deployment(&self, app_id: &str, deployed_by: &str) -> Result<VersionChange> {
        let current: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM app_deployments WHERE app_id = ?").bind(app_id).fetch_one(&self.pool).await?;
        let current = current.ok_or_else(|| StoreError::FailedPrecondition(format!("App {app_id} has no deployed version")))?;
        self.redeploy_version(app_id, current, deployed_by, false).await
    }

    async fn redeploy_version(&self, app_id: &str, version: i64, deployed_by: &str, is_rollback: bool) -> Result<VersionChange> {
        let _w = self.write_lock.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let source: Option<(String, String)> =
            sqlx::query_as("SELECT client_version, tag FROM app_deployments WHERE app_id = ? AND version = ?")
                .bind(app_id)
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((client_version, tag)) = source else {
            return Err(StoreError::NotFound(format!("App {app_id} has no version v{version}")));
        };
        let new_version: i64 = sqlx::query_scalar("SELECT MAX(version) + 1 FROM app_deployments WHERE app_id = ?")
            .bind(app_id)
            .fetch_one(&mut *tx)
            .await?;
        let deployed_at = now();
        let info = DeploymentInfo { deployed_by: deployed_by.to_string(), client_version, tag, commit_info: None };
        insert_deployment(&mut tx, app_id, new_version, deployed_at, &info, is_rollback.then_some(version)).await?;
        let objects = sqlx::query("SELECT object_id, tag, definition FROM app_deployment_objects WHERE app_id = ? AND version = ?")
            .bind(app_id)
            .bind(version)
            .fetch_all(&mut *tx)
            .await?;
        let mut function_ids = Vec::new();
        for o in &objects {
            let (id, tag, definition): (String, String, Option<Vec<u8>>) = (o.get(0), o.get(1), o.get(2));
            match &definition {
                Some(def) => {
                    sqlx::query("UPDATE functions SET definition = ? WHERE id = ?").bind(def).bind(&id).execute(&mut *tx).await?;
                    function_ids.push(id.clone());
                }
                None => {
                    sqlx::query("UPDATE classes SET tag = ?, app_id = ? WHERE id = ?").bind(&tag).bind(app_id).bind(&id).execute(&mut *tx).await?;
                }
            }
            insert_object(&mut tx, app_id, new_version, &id, &tag, definition.as_deref()).await?;
        }
        function_ids.extend(retire_functions_outside(&mut tx, app_id, new_version).await?);
        tx.commit().await?;
        Ok(VersionChange { version: new_version, deployed_at, function_ids })
    }

    /// An app's versions, newest first.
    pub async fn deployments(&self, app_id: &str) -> Result<Vec<Deployment>> {
        let rows = sqlx::query("SELECT * FROM app_deployments WHERE app_id = ? ORDER BY version DESC")
            .bind(app_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(deployment_row).collect())
    }

    /// Every deployed app, in all environments (to bring their warm containers back at start).
    pub async fn deployed_app_ids(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT id FROM apps WHERE state = 3 ORDER BY created_at").fetch_all(&self.pool).await?)
    }

    /// Replaces the schedules of an app's functions (function id → spec). Each schedule counts
    /// from now; the last tick a function fired is kept, so a tick never fires twice.
    pub async fn set_schedules(&self, app_id: &str, schedules: &BTreeMap<String, String>) -> Result<()> {
        let _w = self.write_lock.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let existing: Vec<String> = sqlx::query_scalar("SELECT function_id FROM schedules WHERE app_id = ?").bind(app_id).fetch_all(&mut *tx).await?;
        for id in existing.iter().filter(|id| !schedules.contains_key(*id)) {
            sqlx::query("DELETE FROM schedules WHERE function_id = ?").bind(id).execute(&mut *tx).await?;
        }
        let anchor = now();
        for (function_id, spec) in schedules {
            sqlx::query(
                "INSERT INTO schedules (function_id, app_id, spec, anchor) VALUES (?, ?, ?, ?) \
                 ON CONFLICT(function_id) DO UPDATE SET app_id = excluded.app_id, spec = excluded.spec, anchor = excluded.anchor",
            )
            .bind(function_id)
            .bind(app_id)
            .bind(spec)
            .bind(anchor)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.notify.fire(SCHEDULES_TOPIC);
        Ok(())
    }

    /// The schedules of every live app.
    pub async fn live_schedules(&self) -> Result<Vec<ScheduleRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT s.* FROM schedules s JOIN apps a ON a.id = s.app_id WHERE a.state IN {LIVE_STATES} ORDER BY s.function_id"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| ScheduleRecord {
                function_id: r.get("function_id"),
                app_id: r.get("app_id"),
                spec: r.get("spec"),
                anchor: r.get("anchor"),
                last_tick: r.get("last_tick"),
            })
            .collect())
    }

    /// Records that a function's tick fired. False when that tick (or a later one) was already
    /// recorded or the app is no longer live: then it must not run.
    pub async fn record_schedule_tick(&self, function_id: &str, tick: f64) -> Result<bool> {
        let done = sqlx::query(&format!(
            "UPDATE schedules SET last_tick = ? WHERE function_id = ? AND (last_tick IS NULL OR last_tick < ?) \
             AND app_id IN (SELECT id FROM apps WHERE state IN {LIVE_STATES})"
        ))
        .bind(tick)
        .bind(function_id)
        .bind(tick)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Notified whenever schedules are set, so the loop that fires them looks again.
    pub fn schedules_changed(&self) -> Arc<Notify> {
        self.notify.topic(SCHEDULES_TOPIC)
    }
}

async fn insert_deployment(
    tx: &mut sqlx::SqliteConnection,
    app_id: &str,
    version: i64,
    deployed_at: f64,
    info: &DeploymentInfo,
    rollback_version: Option<i64>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO app_deployments (app_id, version, deployed_at, deployed_by, client_version, tag, commit_info, rollback_version) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(app_id)
    .bind(version)
    .bind(deployed_at)
    .bind(&info.deployed_by)
    .bind(&info.client_version)
    .bind(&info.tag)
    .bind(&info.commit_info)
    .bind(rollback_version)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn insert_object(tx: &mut sqlx::SqliteConnection, app_id: &str, version: i64, id: &str, tag: &str, definition: Option<&[u8]>) -> Result<()> {
    sqlx::query("INSERT INTO app_deployment_objects (app_id, version, object_id, tag, definition) VALUES (?, ?, ?, ?, ?)")
        .bind(app_id)
        .bind(version)
        .bind(id)
        .bind(tag)
        .bind(definition)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Clears the definition of the app's functions that `version` does not contain (a function
/// without a definition is not found by lookups) and unnames its classes likewise. Returns the
/// retired function ids.
async fn retire_functions_outside(tx: &mut sqlx::SqliteConnection, app_id: &str, version: i64) -> Result<Vec<String>> {
    let keep = "SELECT object_id FROM app_deployment_objects WHERE app_id = ?1 AND version = ?2";
    let retired: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT id FROM functions WHERE app_id = ?1 AND base_id IS NULL AND definition IS NOT NULL AND id NOT IN ({keep})"
    ))
    .bind(app_id)
    .bind(version)
    .fetch_all(&mut *tx)
    .await?;
    for id in &retired {
        sqlx::query("UPDATE functions SET definition = NULL WHERE id = ?").bind(id).execute(&mut *tx).await?;
    }
    sqlx::query(&format!("UPDATE classes SET tag = '' WHERE app_id = ?1 AND id NOT IN ({keep})"))
        .bind(app_id)
        .bind(version)
        .execute(&mut *tx)
        .await?;
    Ok(retired)
}
