//! Identities of Dicts, Queues and Secrets: named (per environment) or anonymous (ephemeral, or
//! owned by an app), with the lifecycle rules the client expects.

use sqlx::Row;

use crate::{new_id, now, Result, Store, StoreError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    Dict,
    Queue,
    Secret,
    Volume,
    /// A network file system (`modal.NetworkFileSystem`); its files live in a host directory.
    Nfs,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Dict => "dict",
            ObjectKind::Queue => "queue",
            ObjectKind::Secret => "secret",
            ObjectKind::Volume => "volume",
            ObjectKind::Nfs => "nfs",
        }
    }
    /// The id prefix the client recognises for the kind.
    pub fn id_prefix(self) -> &'static str {
        match self {
            ObjectKind::Dict => "di",
            ObjectKind::Queue => "qu",
            ObjectKind::Secret => "st",
            ObjectKind::Volume => "vo",
            ObjectKind::Nfs => "sv",
        }
    }
    pub fn title(self) -> &'static str {
        match self {
            ObjectKind::Dict => "Dict",
            ObjectKind::Queue => "Queue",
            ObjectKind::Secret => "Secret",
            ObjectKind::Volume => "Volume",
            ObjectKind::Nfs => "NetworkFileSystem",
        }
    }
}

/// What a `*GetOrCreate` asks for (the client's `object_creation_type`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreationMode {
    Lookup,
    CreateIfMissing,
    CreateFailIfExists,
    CreateOverwriteIfExists,
    OwnedByApp(String),
    Ephemeral,
}

#[derive(Clone, Debug)]
pub struct NamedObject {
    pub id: String,
    pub kind: ObjectKind,
    pub environment_id: String,
    pub environment_name: String,
    pub name: Option<String>,
    pub created_by: String,
    pub created_at: f64,
    pub ephemeral: bool,
    pub app_id: Option<String>,
}

/// Object names follow the client's own rule (`check_object_name`), so a name that works on
/// Modal works here and a bad one gets the same advice.
pub(crate) fn check_name(name: &str, what: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "Invalid {what} name: '{name}'. Names may contain only alphanumeric characters, dashes, periods, and underscores, and must be shorter than 64 characters."
        )))
    }
}

const SELECT: &str = "SELECT o.*, e.name AS environment_name FROM objects o JOIN environments e ON e.id = o.environment_id";

fn from_row(kind: ObjectKind, r: &sqlx::sqlite::SqliteRow) -> NamedObject {
    NamedObject {
        id: r.get("id"),
        kind,
        environment_id: r.get("environment_id"),
        environment_name: r.get("environment_name"),
        name: r.get("name"),
        created_by: r.get("created_by"),
        created_at: r.get("created_at"),
        ephemeral: r.get::<i64, _>("ephemeral") != 0,
        app_id: r.get("app_id"),
    }
}

impl Store {
    /// Looks up or creates an object per `mode`; returns it and whether this call created it.
    pub async fn get_or_create_object(
        &self,
        kind: ObjectKind,
        environment: &str,
        name: &str,
        mode: CreationMode,
        created_by: &str,
    ) -> Result<(NamedObject, bool)> {
        let env = self.environment(environment).await?;
        let anonymous = matches!(mode, CreationMode::OwnedByApp(_) | CreationMode::Ephemeral);
        if anonymous {
            let app_id = match &mode {
                CreationMode::OwnedByApp(a) => Some(a.clone()),
                _ => None,
            };
            let id = new_id(kind.id_prefix());
            let t = now();
            sqlx::query(
                "INSERT INTO objects (id, kind, environment_id, name, created_by, created_at, ephemeral, app_id, last_heartbeat) \
                 VALUES (?, ?, ?, NULL, ?, ?, ?, ?, ?)",
            )
            .bind(&id)
            .bind(kind.as_str())
            .bind(&env.id)
            .bind(created_by)
            .bind(t)
            .bind(app_id.is_none() as i64)
            .bind(&app_id)
            .bind(t)
            .execute(&self.pool)
            .await?;
            return Ok((self.object(kind, &id).await?, true));
        }

        check_name(name, kind.title())?;
        let existing = sqlx::query(&format!("{SELECT} WHERE o.kind = ? AND o.environment_id = ? AND o.name = ?"))
            .bind(kind.as_str())
            .bind(&env.id)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| from_row(kind, &r));
        match (mode, existing) {
            (CreationMode::CreateFailIfExists, Some(_)) => Err(StoreError::AlreadyExists(format!(
                "{} '{name}' already exists in environment '{}'",
                kind.title(),
                env.name
            ))),
            (_, Some(obj)) => Ok((obj, false)),
            (CreationMode::Lookup, None) => Err(StoreError::NotFound(format!(
                "{} '{name}' not found in environment '{}'",
                kind.title(),
                env.name
            ))),
            (_, None) => {
                let id = new_id(kind.id_prefix());
                let t = now();
                let res = sqlx::query(
                    "INSERT INTO objects (id, kind, environment_id, name, created_by, created_at, ephemeral, app_id, last_heartbeat) \
                     VALUES (?, ?, ?, ?, ?, ?, 0, NULL, ?)",
                )
                .bind(&id)
                .bind(kind.as_str())
                .bind(&env.id)
                .bind(name)
                .bind(created_by)
                .bind(t)
                .bind(t)
                .execute(&self.pool)
                .await;
                match res {
                    // Lost a race with a concurrent create of the same name: the winner's object is the answer.
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                        let r = sqlx::query(&format!("{SELECT} WHERE o.kind = ? AND o.environment_id = ? AND o.name = ?"))
                            .bind(kind.as_str())
                            .bind(&env.id)
                            .bind(name)
                            .fetch_one(&self.pool)
                            .await?;
                        Ok((from_row(kind, &r), false))
                    }
                    Err(e) => Err(e.into()),
                    Ok(_) => Ok((self.object(kind, &id).await?, true)),
                }
            }
        }
    }

    /// The object with this id, which must be of `kind`.
    pub async fn object(&self, kind: ObjectKind, id: &str) -> Result<NamedObject> {
        let row = sqlx::query(&format!("{SELECT} WHERE o.id = ? AND o.kind = ?"))
            .bind(id)
            .bind(kind.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| from_row(kind, &r)).ok_or_else(|| {
            StoreError::NotFound(format!(
                "{} {id} not found: it was deleted, or it was ephemeral and its heartbeats stopped",
                kind.title()
            ))
        })
    }

    /// The ids of every object of a kind, named or not (to sweep what they left behind).
    pub async fn object_ids(&self, kind: ObjectKind) -> Result<std::collections::HashSet<String>> {
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM objects WHERE kind = ?").bind(kind.as_str()).fetch_all(&self.pool).await?;
        Ok(ids.into_iter().collect())
    }

    /// Named objects of a kind, newest first, created strictly before `created_before` (0: no bound).
    pub async fn list_objects(
        &self,
        kind: ObjectKind,
        environment: &str,
        created_before: f64,
        limit: i64,
    ) -> Result<Vec<NamedObject>> {
        let env = self.environment(environment).await?;
        let before = if created_before > 0.0 { created_before } else { f64::MAX };
        let limit = if limit <= 0 { i64::MAX } else { limit };
        let rows = sqlx::query(&format!(
            "{SELECT} WHERE o.kind = ? AND o.environment_id = ? AND o.name IS NOT NULL AND o.created_at < ? \
             ORDER BY o.created_at DESC LIMIT ?"
        ))
        .bind(kind.as_str())
        .bind(&env.id)
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| from_row(kind, r)).collect())
    }

    /// Deletes an object and everything it holds.
    pub async fn delete_object(&self, kind: ObjectKind, id: &str) -> Result<()> {
        self.object(kind, id).await?;
        let _w = self.write_lock.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        delete_contents(&mut tx, id).await?;
        tx.commit().await?;
        self.notify.fire(id);
        self.notify.forget(id);
        Ok(())
    }

    /// Records a heartbeat of an ephemeral object, keeping it alive.
    pub async fn heartbeat_object(&self, kind: ObjectKind, id: &str) -> Result<()> {
        let done = sqlx::query("UPDATE objects SET last_heartbeat = ? WHERE id = ? AND kind = ?")
            .bind(now())
            .bind(id)
            .bind(kind.as_str())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("{} {id} not found", kind.title())));
        }
        Ok(())
    }

    /// Reclaims ephemeral objects whose heartbeats stopped more than `ttl_secs` ago, objects owned
    /// by stopped apps, and queue partitions past their TTL. Returns how many objects went.
    pub async fn reap(&self, ttl_secs: f64) -> Result<usize> {
        let cutoff = now() - ttl_secs;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM objects WHERE (ephemeral = 1 AND last_heartbeat < ?) \
             OR (app_id IS NOT NULL AND app_id IN (SELECT id FROM apps WHERE state = 5))",
        )
        .bind(cutoff)
        .fetch_all(&self.pool)
        .await?;
        for id in &ids {
            let _w = self.write_lock.lock().await;
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
            delete_contents(&mut tx, id).await?;
            tx.commit().await?;
            self.notify.fire(id);
            self.notify.forget(id);
        }
        self.expire_queue_partitions().await?;
        Ok(ids.len())
    }
}

async fn delete_contents(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>, id: &str) -> Result<()> {
    for sql in [
        "DELETE FROM dict_entries WHERE dict_id = ?",
        "DELETE FROM queue_items WHERE queue_id = ?",
        "DELETE FROM queue_partitions WHERE queue_id = ?",
        "DELETE FROM secrets WHERE secret_id = ?",
        "DELETE FROM volume_entries WHERE volume_id = ?",
        "DELETE FROM volume_state WHERE volume_id = ?",
        "DELETE FROM objects WHERE id = ?",
    ] {
        sqlx::query(sql).bind(id).execute(&mut **tx).await?;
    }
    Ok(())
}
