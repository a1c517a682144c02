//! The committed trees of Volumes: entries (files, directories, symlinks) with the block
//! lists of their contents. The rules (paths, overwrites, copies) live in `ferry-volumes`; this
//! module only reads and writes rows, and applies a batch of changes in one transaction.

use sqlx::Row;

use crate::{Result, Store, StoreError};

/// What an entry is. The numbers are stored values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File = 1,
    Directory = 2,
    Symlink = 3,
}

impl EntryKind {
    fn from_i64(v: i64) -> EntryKind {
        match v {
            2 => EntryKind::Directory,
            3 => EntryKind::Symlink,
            _ => EntryKind::File,
        }
    }
}

/// One entry of a volume's tree.
#[derive(Clone, Debug, PartialEq)]
pub struct VolumeEntry {
    /// Relative to the volume's root, without a leading slash ("a/b.txt").
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits (the low 12 bits of `st_mode`).
    pub mode: u32,
    pub size: u64,
    /// Seconds since the UNIX epoch.
    pub mtime: i64,
    /// SHA-256 of each block of a file's content, in order.
    pub blocks: Vec<[u8; 32]>,
    /// A symlink's target.
    pub target: Option<String>,
}

/// One change of a batch applied by [`Store::volume_apply`].
#[derive(Clone, Debug)]
pub enum VolumeChange {
    /// Inserts or replaces the entry at its path.
    Put(VolumeEntry),
    /// Removes the entry at the path and, with `recursive`, everything below it.
    Remove { path: String, recursive: bool },
}

fn from_row(r: &sqlx::sqlite::SqliteRow) -> VolumeEntry {
    let raw: Vec<u8> = r.get("blocks");
    VolumeEntry {
        path: r.get("path"),
        kind: EntryKind::from_i64(r.get("kind")),
        mode: r.get::<i64, _>("mode") as u32,
        size: r.get::<i64, _>("size") as u64,
        mtime: r.get("mtime"),
        blocks: raw.chunks_exact(32).map(|c| c.try_into().expect("32 bytes")).collect(),
        target: r.get("target"),
    }
}

/// `path` and the upper bound of the paths below it: every path under "a" starts with "a/",
/// and '0' is the byte after '/'.
fn subtree_bounds(path: &str) -> (String, String) {
    if path.is_empty() {
        (String::new(), "\u{10FFFF}".to_string())
    } else {
        (format!("{path}/"), format!("{path}0"))
    }
}

impl Store {
    /// Records a new volume's filesystem version (idempotent).
    pub async fn volume_init(&self, volume_id: &str, fs_version: i32) -> Result<()> {
        sqlx::query("INSERT OR IGNORE INTO volume_state (volume_id, fs_version, version) VALUES (?, ?, 0)")
            .bind(volume_id)
            .bind(fs_version)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// `(filesystem version, change counter)` of a volume.
    pub async fn volume_state(&self, volume_id: &str) -> Result<(i32, i64)> {
        let row = sqlx::query("SELECT fs_version, version FROM volume_state WHERE volume_id = ?")
            .bind(volume_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("Volume {volume_id} not found")))?;
        Ok((row.get::<i64, _>("fs_version") as i32, row.get("version")))
    }

    /// The entry at `path`, if any.
    pub async fn volume_entry(&self, volume_id: &str, path: &str) -> Result<Option<VolumeEntry>> {
        let row = sqlx::query("SELECT * FROM volume_entries WHERE volume_id = ? AND path = ?")
            .bind(volume_id)
            .bind(path)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(from_row))
    }

    /// Up to `limit` entries below directory `path` ("" is the root) with paths after `after`,
    /// in path order: all descendants with `recursive`, else the direct children.
    pub async fn volume_list(&self, volume_id: &str, path: &str, recursive: bool, after: &str, limit: i64) -> Result<Vec<VolumeEntry>> {
        let (low, high) = subtree_bounds(path);
        let low = if after > low.as_str() { after.to_string() } else { low };
        let depth_filter = if recursive { "" } else { " AND instr(substr(path, ?), '/') = 0" };
        let sql = format!(
            "SELECT * FROM volume_entries WHERE volume_id = ? AND path > ? AND path < ?{depth_filter} ORDER BY path LIMIT ?"
        );
        let mut q = sqlx::query(&sql).bind(volume_id).bind(&low).bind(&high);
        if !recursive {
            // substr is 1-based: skip "<path>/".
            let skip = if path.is_empty() { 1 } else { path.len() as i64 + 2 };
            q = q.bind(skip);
        }
        let rows = q.bind(limit).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(from_row).collect())
    }

    /// Whether anything lies below directory `path`.
    pub async fn volume_has_children(&self, volume_id: &str, path: &str) -> Result<bool> {
        let (low, high) = subtree_bounds(path);
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM (SELECT 1 FROM volume_entries WHERE volume_id = ? AND path > ? AND path < ? LIMIT 1)")
            .bind(volume_id)
            .bind(&low)
            .bind(&high)
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    /// Applies `changes` in order, in one transaction, and bumps the volume's change counter;
    /// returns the new counter. Nothing is applied if any change fails.
    pub async fn volume_apply(&self, volume_id: &str, changes: &[VolumeChange]) -> Result<i64> {
        let _w = self.write_lock.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for change in changes {
            match change {
                VolumeChange::Put(e) => {
                    let blocks: Vec<u8> = e.blocks.iter().flatten().copied().collect();
                    sqlx::query(
                        "INSERT OR REPLACE INTO volume_entries (volume_id, path, kind, mode, size, mtime, blocks, target) \
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    )
                    .bind(volume_id)
                    .bind(&e.path)
                    .bind(e.kind as i64)
                    .bind(e.mode as i64)
                    .bind(e.size as i64)
                    .bind(e.mtime)
                    .bind(blocks)
                    .bind(&e.target)
                    .execute(&mut *tx)
                    .await?;
                }
                VolumeChange::Remove { path, recursive } => {
                    sqlx::query("DELETE FROM volume_entries WHERE volume_id = ? AND path = ?")
                        .bind(volume_id)
                        .bind(path)
                        .execute(&mut *tx)
                        .await?;
                    if *recursive {
                        let (low, high) = subtree_bounds(path);
                        sqlx::query("DELETE FROM volume_entries WHERE volume_id = ? AND path > ? AND path < ?")
                            .bind(volume_id)
                            .bind(&low)
                            .bind(&high)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
            }
        }
        let version: i64 = sqlx::query_scalar("UPDATE volume_state SET version = version + 1 WHERE volume_id = ? RETURNING version")
            .bind(volume_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("Volume {volume_id} not found")))?;
        tx.commit().await?;
        Ok(version)
    }

    /// Every block any volume still refers to (for reclaiming unreferenced blocks).
    pub async fn volume_referenced_blocks(&self) -> Result<std::collections::HashSet<[u8; 32]>> {
        let rows: Vec<Vec<u8>> = sqlx::query_scalar("SELECT blocks FROM volume_entries WHERE kind = 1").fetch_all(&self.pool).await?;
        Ok(rows.iter().flat_map(|b| b.chunks_exact(32).map(|c| <[u8; 32]>::try_from(c).expect("32 bytes"))).collect())
    }

    /// Renames a named object; the new name must be free in its environment.
    pub async fn rename_object(&self, kind: crate::ObjectKind, id: &str, new_name: &str) -> Result<()> {
        crate::objects::check_name(new_name, kind.title())?;
        let obj = self.object(kind, id).await?;
        let res = sqlx::query("UPDATE objects SET name = ? WHERE id = ? AND name IS NOT NULL")
            .bind(new_name)
            .bind(id)
            .execute(&self.pool)
            .await;
        match res {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(StoreError::AlreadyExists(format!(
                "{} '{new_name}' already exists in environment '{}'",
                kind.title(),
                obj.environment_name
            ))),
            Err(e) => Err(e.into()),
            Ok(r) if r.rows_affected() == 0 => Err(StoreError::Invalid(format!("{} {id} has no name to change", kind.title()))),
            Ok(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> VolumeEntry {
        VolumeEntry { path: path.into(), kind: EntryKind::File, mode: 0o644, size: 3, mtime: 1, blocks: vec![[7; 32]], target: None }
    }

    #[tokio::test]
    async fn lists_children_or_subtrees_and_removes_recursively() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).await.unwrap();
        store.volume_init("vo-1", 2).await.unwrap();
        let mut d = file("a");
        d.kind = EntryKind::Directory;
        let changes: Vec<VolumeChange> =
            vec![VolumeChange::Put(d), VolumeChange::Put(file("a/b")), VolumeChange::Put(file("a/c/d")), VolumeChange::Put(file("a0")), VolumeChange::Put(file("z"))];
        assert_eq!(store.volume_apply("vo-1", &changes).await.unwrap(), 1);
        let names = |v: Vec<VolumeEntry>| v.into_iter().map(|e| e.path).collect::<Vec<_>>();
        assert_eq!(names(store.volume_list("vo-1", "", false, "", 100).await.unwrap()), ["a", "a0", "z"]);
        assert_eq!(names(store.volume_list("vo-1", "a", false, "", 100).await.unwrap()), ["a/b"]);
        assert_eq!(names(store.volume_list("vo-1", "a", true, "", 100).await.unwrap()), ["a/b", "a/c/d"]);
        assert_eq!(names(store.volume_list("vo-1", "a", true, "a/b", 100).await.unwrap()), ["a/c/d"]);
        assert_eq!(store.volume_entry("vo-1", "a/b").await.unwrap().unwrap().blocks, vec![[7; 32]]);
        store.volume_apply("vo-1", &[VolumeChange::Remove { path: "a".into(), recursive: true }]).await.unwrap();
        assert_eq!(names(store.volume_list("vo-1", "", true, "", 100).await.unwrap()), ["a0", "z"]);
        assert_eq!(store.volume_state("vo-1").await.unwrap(), (2, 2));
    }
}
