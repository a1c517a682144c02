//! Named images: `name:tag` in an environment points at an image id; each publish is kept as a
//! revision (`modal image names history`). Also the build times of images (for their logs).

use sqlx::Row;

use crate::{new_id, now, Result, Store, StoreError};

/// One `name:tag` of an environment and the image it points at now.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageName {
    pub name: String,
    pub image_id: String,
    pub revision_id: String,
    pub created_at: f64,
    pub updated_at: f64,
    pub published_by: String,
}

/// One publish of a name.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageNameRevision {
    pub revision_id: String,
    pub image_id: String,
    pub published_at: f64,
    pub published_by: String,
}

/// When an image's last build started and ended (None while it runs or if never recorded).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ImageBuildTimes {
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
}

fn name_row(r: &sqlx::sqlite::SqliteRow) -> ImageName {
    ImageName {
        name: r.get("name"),
        image_id: r.get("image_id"),
        revision_id: r.get("revision_id"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
        published_by: r.get("published_by"),
    }
}

impl Store {
    /// Points `name` (`name:tag`) of the environment at `image_id`, recording a revision.
    pub async fn publish_image(&self, environment_id: &str, name: &str, image_id: &str, by: &str) -> Result<ImageName> {
        let _w = self.write_lock.lock().await;
        let revision = new_id("ir");
        let t = now();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO image_names (environment_id, name, image_id, revision_id, created_at, updated_at, published_by)
             VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (environment_id, name) DO UPDATE SET image_id = excluded.image_id,
                 revision_id = excluded.revision_id, updated_at = excluded.updated_at, published_by = excluded.published_by",
        )
        .bind(environment_id)
        .bind(name)
        .bind(image_id)
        .bind(&revision)
        .bind(t)
        .bind(t)
        .bind(by)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO image_name_revisions (revision_id, environment_id, name, image_id, published_at, published_by) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(&revision)
            .bind(environment_id)
            .bind(name)
            .bind(image_id)
            .bind(t)
            .bind(by)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        drop(_w);
        self.image_name(environment_id, name).await?.ok_or_else(|| StoreError::Io(format!("image name {name} vanished")))
    }

    pub async fn image_name(&self, environment_id: &str, name: &str) -> Result<Option<ImageName>> {
        let r = sqlx::query("SELECT * FROM image_names WHERE environment_id = ? AND name = ?")
            .bind(environment_id)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.as_ref().map(name_row))
    }

    /// Names of the environment starting with `prefix` (and pointing at `image_id` when given),
    /// in name order, after `after` (a name; empty for the first page), at most `limit`.
    pub async fn image_names(&self, environment_id: &str, prefix: &str, image_id: Option<&str>, after: &str, limit: i64) -> Result<Vec<ImageName>> {
        let rows = sqlx::query(
            "SELECT * FROM image_names WHERE environment_id = ? AND substr(name, 1, length(?)) = ? AND name > ?
             AND (? IS NULL OR image_id = ?) ORDER BY name LIMIT ?",
        )
        .bind(environment_id)
        .bind(prefix)
        .bind(prefix)
        .bind(after)
        .bind(image_id)
        .bind(image_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(name_row).collect())
    }

    /// The publishes of `name`, newest first, starting `offset` entries in, at most `limit`.
    pub async fn image_name_revisions(&self, environment_id: &str, name: &str, offset: i64, limit: i64) -> Result<Vec<ImageNameRevision>> {
        let rows = sqlx::query(
            "SELECT * FROM image_name_revisions WHERE environment_id = ? AND name = ?
             ORDER BY published_at DESC, rowid DESC LIMIT ? OFFSET ?",
        )
        .bind(environment_id)
        .bind(name)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| ImageNameRevision {
                revision_id: r.get("revision_id"),
                image_id: r.get("image_id"),
                published_at: r.get("published_at"),
                published_by: r.get("published_by"),
            })
            .collect())
    }

    /// Deletes a name and its history; NotFound when the environment has no such name.
    pub async fn delete_image_name(&self, environment_id: &str, name: &str) -> Result<()> {
        let _w = self.write_lock.lock().await;
        let mut tx = self.pool.begin().await?;
        let gone = sqlx::query("DELETE FROM image_names WHERE environment_id = ? AND name = ?")
            .bind(environment_id)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM image_name_revisions WHERE environment_id = ? AND name = ?")
            .bind(environment_id)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if gone.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("Image name '{name}' not found")));
        }
        Ok(())
    }

    /// Records that a build of `image_id` starts now (and has not finished).
    pub async fn image_build_started(&self, image_id: &str) -> Result<()> {
        sqlx::query("UPDATE images SET build_started_at = ?, build_finished_at = NULL WHERE id = ?")
            .bind(now())
            .bind(image_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records that the build of `image_id` ended now.
    pub async fn image_build_finished(&self, image_id: &str) -> Result<()> {
        sqlx::query("UPDATE images SET build_finished_at = ? WHERE id = ?").bind(now()).bind(image_id).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn image_build_times(&self, image_id: &str) -> Result<ImageBuildTimes> {
        let r = sqlx::query("SELECT build_started_at, build_finished_at FROM images WHERE id = ?")
            .bind(image_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("Image {image_id} not found")))?;
        Ok(ImageBuildTimes { started_at: r.get("build_started_at"), finished_at: r.get("build_finished_at") })
    }
}

#[cfg(test)]
mod tests {
    use crate::Store;

    #[tokio::test]
    async fn publish_list_history_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).await.unwrap();
        let env = store.default_environment().await.unwrap();
        store.publish_image(&env.id, "web:v1", "im-a", "tok").await.unwrap();
        let second = store.publish_image(&env.id, "web:v1", "im-b", "tok").await.unwrap();
        store.publish_image(&env.id, "worker:latest", "im-a", "tok").await.unwrap();
        assert_eq!(second.image_id, "im-b");
        assert_eq!(store.image_name(&env.id, "web:v1").await.unwrap().unwrap().image_id, "im-b");
        let all = store.image_names(&env.id, "", None, "", 10).await.unwrap();
        assert_eq!(all.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["web:v1", "worker:latest"]);
        assert_eq!(store.image_names(&env.id, "wo", None, "", 10).await.unwrap().len(), 1);
        assert_eq!(store.image_names(&env.id, "", Some("im-a"), "", 10).await.unwrap().len(), 1);
        assert_eq!(store.image_names(&env.id, "", None, "web:v1", 10).await.unwrap().len(), 1);
        let history = store.image_name_revisions(&env.id, "web:v1", 0, 10).await.unwrap();
        assert_eq!(history.iter().map(|r| r.image_id.as_str()).collect::<Vec<_>>(), ["im-b", "im-a"]);
        store.delete_image_name(&env.id, "web:v1").await.unwrap();
        assert!(store.image_name(&env.id, "web:v1").await.unwrap().is_none());
        assert!(store.image_name_revisions(&env.id, "web:v1", 0, 10).await.unwrap().is_empty());
        assert!(store.delete_image_name(&env.id, "web:v1").await.is_err());
    }
}
