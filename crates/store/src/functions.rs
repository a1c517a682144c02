//! Mounts, images, functions and classes. Definitions are kept as the opaque bytes the protocol
//! adapter hands over; the store only indexes them.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::{new_id, now, Result, Store, StoreError};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MountEntry {
    /// Absolute path in the container, e.g. `/root/app.py`.
    pub path: String,
    pub sha256: String,
    pub mode: Option<u32>,
}

#[derive(Clone, Debug)]
pub struct Mount {
    pub id: String,
    pub name: Option<String>,
    pub files: Vec<MountEntry>,
}

#[derive(Clone, Debug)]
pub struct ImageRecord {
    pub id: String,
    pub definition: Vec<u8>,
    pub layer_id: Option<String>,
    /// 0 pending, 1 built, 2 failed.
    pub status: i32,
    pub error: Option<String>,
}

#[derive(Clone, Debug)]
pub struct FunctionRecord {
    pub id: String,
    pub app_id: String,
    pub tag: String,
    pub definition: Option<Vec<u8>>,
    /// For a function bound to class parameters: the class service function it varies.
    pub base_id: Option<String>,
    pub params: Option<Vec<u8>>,
}

fn mount_row(r: &sqlx::any::AnyRow) -> Result<Mount> {
    let files: Vec<MountEntry> =
        serde_json::from_str(&r.get::<String, _>("files")).map_err(|e| StoreError::Io(format!("corrupt mount record: {e}")))?;
    Ok(Mount { id: r.get("id"), name: r.get("name"), files })
}

fn image_row(r: &sqlx::any::AnyRow) -> ImageRecord {
    ImageRecord {
        id: r.get("id"),
        definition: r.get("definition"),
        layer_id: r.get("layer_id"),
        status: r.get::<i64, _>("status") as i32,
        error: r.get("error"),
    }
}

fn function_row(r: &sqlx::any::AnyRow) -> FunctionRecord {
    FunctionRecord {
        id: r.get("id"),
        app_id: r.get("app_id"),
        tag: r.get("tag"),
        definition: r.get("definition"),
        base_id: r.get("base_id"),
        params: r.get("params"),
    }
}

impl Store {
    pub async fn create_mount(&self, name: Option<&str>, namespace: i32, environment_id: Option<&str>, app_id: Option<&str>, files: &[MountEntry]) -> Result<Mount> {
        let id = new_id("mo");
        let json = serde_json::to_string(files).expect("mount entries serialise");
        let res = sqlx::query("INSERT INTO mounts (id, name, namespace, environment_id, app_id, files, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(&id)
            .bind(name)
            .bind(namespace)
            .bind(environment_id)
            .bind(app_id)
            .bind(json)
            .bind(now())
            .execute(&self.pool)
            .await;
        match res {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::AlreadyExists(format!("Mount '{}' already exists", name.unwrap_or_default())))
            }
            Err(e) => Err(e.into()),
            Ok(_) => self.mount(&id).await,
        }
    }

    pub async fn mount(&self, id: &str) -> Result<Mount> {
        let r = sqlx::query("SELECT * FROM mounts WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        match r {
            Some(r) => mount_row(&r),
            None => Err(StoreError::NotFound(format!("Mount {id} not found"))),
        }
    }

    pub async fn mount_by_name(&self, name: &str, namespace: i32, environment_id: Option<&str>) -> Result<Option<Mount>> {
        let r = sqlx::query("SELECT * FROM mounts WHERE name = $1 AND namespace = $2 AND environment_id IS NOT DISTINCT FROM $3")
            .bind(name)
            .bind(namespace)
            .bind(environment_id)
            .fetch_optional(&self.pool)
            .await?;
        r.map(|r| mount_row(&r)).transpose()
    }

    /// Records an image definition under its id, or returns the existing record.
    pub async fn get_or_create_image(&self, id: &str, definition: &[u8]) -> Result<(ImageRecord, bool)> {
        let done = sqlx::query("INSERT INTO images (id, definition, status, created_at) VALUES ($1, $2, 0, $3) ON CONFLICT DO NOTHING")
            .bind(id)
            .bind(definition)
            .bind(now())
            .execute(&self.pool)
            .await?;
        Ok((self.image(id).await?, done.rows_affected() > 0))
    }

    pub async fn image(&self, id: &str) -> Result<ImageRecord> {
        let r = sqlx::query("SELECT * FROM images WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        r.map(|r| image_row(&r)).ok_or_else(|| StoreError::NotFound(format!("Image {id} not found")))
    }

    /// Records a build's outcome: a layer on success, an error message on failure.
    pub async fn finish_image(&self, id: &str, layer_id: Option<&str>, error: Option<&str>) -> Result<()> {
        let status = if error.is_some() { 2 } else { 1 };
        sqlx::query("UPDATE images SET layer_id = $1, status = $2, error = $3 WHERE id = $4")
            .bind(layer_id)
            .bind(status)
            .bind(error)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets a failed build so the next request for the same definition builds again.
    pub async fn reset_image(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE images SET status = 0, error = NULL, layer_id = NULL WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn create_function(&self, app_id: &str, tag: &str) -> Result<FunctionRecord> {
        let id = new_id("fu");
        sqlx::query("INSERT INTO functions (id, app_id, tag, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&id)
            .bind(app_id)
            .bind(tag)
            .bind(now())
            .execute(&self.pool)
            .await?;
        self.function(&id).await
    }

    pub async fn set_function_definition(&self, id: &str, definition: &[u8]) -> Result<()> {
        let done = sqlx::query("UPDATE functions SET definition = $1 WHERE id = $2").bind(definition).bind(id).execute(&self.pool).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("Function {id} not found")));
        }
        Ok(())
    }

    pub async fn function(&self, id: &str) -> Result<FunctionRecord> {
        let r = sqlx::query("SELECT * FROM functions WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        r.map(|r| function_row(&r)).ok_or_else(|| StoreError::NotFound(format!("Function {id} not found")))
    }

    /// The defined function with `tag` in an app, newest first.
    pub async fn function_by_tag(&self, app_id: &str, tag: &str) -> Result<Option<FunctionRecord>> {
        let r = sqlx::query("SELECT * FROM functions WHERE app_id = $1 AND tag = $2 AND definition IS NOT NULL AND base_id IS NULL ORDER BY created_at DESC LIMIT 1")
            .bind(app_id)
            .bind(tag)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.map(|r| function_row(&r)))
    }

    pub async fn functions_of_app(&self, app_id: &str) -> Result<Vec<FunctionRecord>> {
        let rows = sqlx::query("SELECT * FROM functions WHERE app_id = $1 AND definition IS NOT NULL AND base_id IS NULL ORDER BY created_at")
            .bind(app_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(function_row).collect())
    }

    /// A variant of `base` bound to serialized class parameters, with its own definition
    /// (the base's, with any options the caller overrides). The variant's id follows from
    /// `identity` (what the caller says makes the variant: base, options, parameters), so every
    /// caller binding the same variant gets the same function, its containers and its limits.
    pub async fn create_bound_function(&self, base: &FunctionRecord, definition: &[u8], params: &[u8], identity: &[u8]) -> Result<FunctionRecord> {
        use sha2::{Digest, Sha256};
        const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let digest = Sha256::new().chain_update(b"ferry bound function\0").chain_update(base.id.as_bytes()).chain_update([0]).chain_update(identity).finalize();
        let suffix: String = digest.iter().take(22).map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect();
        let id = format!("fu-{suffix}");
        sqlx::query(
            "INSERT INTO functions (id, app_id, tag, definition, created_at, base_id, params) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&id)
        .bind(&base.app_id)
        .bind(&base.tag)
        .bind(definition)
        .bind(now())
        .bind(&base.id)
        .bind(params)
        .execute(&self.pool)
        .await?;
        self.function(&id).await
    }

    /// Names a class when its app is published.
    pub async fn set_class_tag(&self, id: &str, app_id: &str, tag: &str) -> Result<()> {
        sqlx::query("UPDATE classes SET tag = $1, app_id = $2 WHERE id = $3").bind(tag).bind(app_id).bind(id).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn classes_of_app(&self, app_id: &str) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT id, tag FROM classes WHERE app_id = $1 AND tag != '' ORDER BY created_at").bind(app_id).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    pub async fn create_class(&self, app_id: &str, tag: &str) -> Result<String> {
        let id = new_id("cs");
        sqlx::query("INSERT INTO classes (id, app_id, tag, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&id)
            .bind(app_id)
            .bind(tag)
            .bind(now())
            .execute(&self.pool)
            .await?;
        Ok(id)
    }

    pub async fn class_by_tag(&self, app_id: &str, tag: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT id FROM classes WHERE app_id = $1 AND tag = $2 ORDER BY created_at DESC LIMIT 1")
            .bind(app_id)
            .bind(tag)
            .fetch_optional(&self.pool)
            .await?)
    }
}
