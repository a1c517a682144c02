//! FIFO queues with independent partitions, partition TTLs and Modal's size limits.
//! Item ids are monotonic, so they double as the `entry_id` cursor of `iterate()`.

use std::time::Duration;

use sqlx::Row;

use crate::{now, ObjectKind, Result, Store, StoreError};

/// Size limits per queue, as documented for Modal's queues.
#[derive(Clone, Copy, Debug)]
pub struct QueueLimits {
    pub max_partitions: i64,
    pub max_items_per_partition: i64,
    pub max_item_bytes: usize,
    pub max_partition_bytes: i64,
    pub max_partition_key_bytes: usize,
    pub max_partition_ttl_secs: i64,
}

pub const QUEUE_LIMITS: QueueLimits = QueueLimits {
    max_partitions: 100_000,
    max_items_per_partition: 5_000,
    max_item_bytes: 1024 * 1024,
    max_partition_bytes: 64 * 1024 * 1024,
    max_partition_key_bytes: 64,
    max_partition_ttl_secs: 24 * 3600,
};

#[derive(Clone, Debug)]
pub struct QueueItem {
    pub entry_id: String,
    pub value: Vec<u8>,
}

#[derive(Clone, Debug, Default)]
pub struct QueueSummary {
    pub num_partitions: i64,
    pub total_items: i64,
}

fn check_partition(key: &[u8]) -> Result<()> {
    if key.len() > QUEUE_LIMITS.max_partition_key_bytes {
        return Err(StoreError::Invalid(format!(
            "Queue partition key of {} bytes is too long: partition keys must be between 1 and {} bytes",
            key.len(),
            QUEUE_LIMITS.max_partition_key_bytes
        )));
    }
    Ok(())
}

fn describe(key: &[u8]) -> String {
    if key.is_empty() {
        "the default partition".to_string()
    } else {
        format!("partition '{}'", String::from_utf8_lossy(key))
    }
}

impl Store {
    /// Appends values to a partition, all or none. A full partition is `ResourceExhausted`.
    pub async fn queue_put(&self, queue_id: &str, partition: &[u8], values: &[Vec<u8>], ttl_secs: i64) -> Result<()> {
        check_partition(partition)?;
        let l = QUEUE_LIMITS;
        if ttl_secs <= 0 || ttl_secs > l.max_partition_ttl_secs {
            return Err(StoreError::Invalid(format!(
                "partition_ttl of {ttl_secs} seconds is out of range: it must be between 1 and {} seconds",
                l.max_partition_ttl_secs
            )));
        }
        if let Some(v) = values.iter().find(|v| v.len() > l.max_item_bytes) {
            return Err(StoreError::Invalid(format!(
                "Queue item of {} bytes is too large: items may be at most {} bytes (1 MiB)",
                v.len(),
                l.max_item_bytes
            )));
        }
        let added_bytes: i64 = values.iter().map(|v| v.len() as i64).sum();
        let t = now();
        {
            let _w = self.write_lock.lock().await;
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
            let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM objects WHERE id = ? AND kind = 'queue'")
                .bind(queue_id)
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_none() {
                return Err(StoreError::NotFound(format!("Queue {queue_id} not found")));
            }
            expire_partition(&mut tx, queue_id, partition, t).await?;
            let current = sqlx::query("SELECT item_count, byte_size FROM queue_partitions WHERE queue_id = ? AND partition_key = ?")
                .bind(queue_id)
                .bind(partition)
                .fetch_optional(&mut *tx)
                .await?;
            let (count, bytes) = match &current {
                Some(r) => (r.get::<i64, _>(0), r.get::<i64, _>(1)),
                None => {
                    let partitions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM queue_partitions WHERE queue_id = ?")
                        .bind(queue_id)
                        .fetch_one(&mut *tx)
                        .await?;
                    if partitions >= l.max_partitions {
                        return Err(StoreError::ResourceExhausted(format!(
                            "Queue {queue_id} already has {partitions} partitions, the most a queue may have"
                        )));
                    }
                    (0, 0)
                }
            };
            if count + values.len() as i64 > l.max_items_per_partition {
                return Err(StoreError::ResourceExhausted(format!(
                    "Queue {queue_id} is full: {} holds {count} of at most {} items",
                    describe(partition),
                    l.max_items_per_partition
                )));
            }
            if bytes + added_bytes > l.max_partition_bytes {
                return Err(StoreError::ResourceExhausted(format!(
                    "Queue {queue_id} is full: {} holds {bytes} bytes and may hold at most {} (64 MiB)",
                    describe(partition),
                    l.max_partition_bytes
                )));
            }
            sqlx::query(
                "INSERT INTO queue_partitions (queue_id, partition_key, ttl_seconds, last_put_at, item_count, byte_size) \
                 VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (queue_id, partition_key) DO UPDATE SET \
                 ttl_seconds = excluded.ttl_seconds, last_put_at = excluded.last_put_at, \
                 item_count = item_count + excluded.item_count, byte_size = byte_size + excluded.byte_size",
            )
            .bind(queue_id)
            .bind(partition)
            .bind(ttl_secs)
            .bind(t)
            .bind(values.len() as i64)
            .bind(added_bytes)
            .execute(&mut *tx)
            .await?;
            for v in values {
                sqlx::query("INSERT INTO queue_items (queue_id, partition_key, value) VALUES (?, ?, ?)")
                    .bind(queue_id)
                    .bind(partition)
                    .bind(v)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        }
        self.notify.fire(queue_id);
        Ok(())
    }

    /// Removes and returns up to `n` items from the head of a partition without waiting.
    pub async fn queue_take(&self, queue_id: &str, partition: &[u8], n: i64) -> Result<Vec<Vec<u8>>> {
        check_partition(partition)?;
        let _w = self.write_lock.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        expire_partition(&mut tx, queue_id, partition, now()).await?;
        let rows = sqlx::query(
            "DELETE FROM queue_items WHERE id IN \
             (SELECT id FROM queue_items WHERE queue_id = ? AND partition_key = ? ORDER BY id LIMIT ?) RETURNING id, value",
        )
        .bind(queue_id)
        .bind(partition)
        .bind(n.max(1))
        .fetch_all(&mut *tx)
        .await?;
        let mut items: Vec<(i64, Vec<u8>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        items.sort_by_key(|(id, _)| *id);
        if !items.is_empty() {
            let bytes: i64 = items.iter().map(|(_, v)| v.len() as i64).sum();
            sqlx::query(
                "UPDATE queue_partitions SET item_count = item_count - ?, byte_size = byte_size - ? \
                 WHERE queue_id = ? AND partition_key = ?",
            )
            .bind(items.len() as i64)
            .bind(bytes)
            .bind(queue_id)
            .bind(partition)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        if items.is_empty() {
            self.ensure_object(ObjectKind::Queue, queue_id).await?;
        }
        Ok(items.into_iter().map(|(_, v)| v).collect())
    }

    /// Removes up to `n` items, waiting up to `timeout` for the first to arrive.
    pub async fn queue_get(&self, queue_id: &str, partition: &[u8], n: i64, timeout: Duration) -> Result<Vec<Vec<u8>>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let topic = self.notify.topic(queue_id);
        loop {
            let notified = topic.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let got = self.queue_take(queue_id, partition, n).await?;
            if !got.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(got);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.queue_take(queue_id, partition, n).await;
            }
        }
    }

    /// Items of a live partition after the `after` cursor, without removing them; waits up to
    /// `timeout` for one to arrive when there are none.
    pub async fn queue_next_items(&self, queue_id: &str, partition: &[u8], after: &str, timeout: Duration) -> Result<Vec<QueueItem>> {
        check_partition(partition)?;
        let after: i64 = if after.is_empty() {
            0
        } else {
            after.parse().map_err(|_| StoreError::Invalid(format!("last_entry_id '{after}' is not a cursor this server issued")))?
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let topic = self.notify.topic(queue_id);
        loop {
            let notified = topic.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.ensure_object(ObjectKind::Queue, queue_id).await?;
            let rows = sqlx::query(
                "SELECT i.id, i.value FROM queue_items i JOIN queue_partitions p \
                 ON p.queue_id = i.queue_id AND p.partition_key = i.partition_key \
                 WHERE i.queue_id = ? AND i.partition_key = ? AND i.id > ? AND p.last_put_at + p.ttl_seconds >= ? \
                 ORDER BY i.id LIMIT 100",
            )
            .bind(queue_id)
            .bind(partition)
            .bind(after)
            .bind(now())
            .fetch_all(&self.pool)
            .await?;
            if !rows.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(rows
                    .iter()
                    .map(|r| QueueItem { entry_id: r.get::<i64, _>(0).to_string(), value: r.get(1) })
                    .collect());
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    /// Items in one partition, or in all live partitions with `total`.
    pub async fn queue_len(&self, queue_id: &str, partition: &[u8], total: bool) -> Result<i64> {
        check_partition(partition)?;
        self.ensure_object(ObjectKind::Queue, queue_id).await?;
        let q = if total {
            sqlx::query_scalar("SELECT COALESCE(SUM(item_count), 0) FROM queue_partitions WHERE queue_id = ? AND last_put_at + ttl_seconds >= ?")
                .bind(queue_id)
                .bind(now())
        } else {
            sqlx::query_scalar(
                "SELECT COALESCE(SUM(item_count), 0) FROM queue_partitions WHERE queue_id = ? AND partition_key = ? AND last_put_at + ttl_seconds >= ?",
            )
            .bind(queue_id)
            .bind(partition)
            .bind(now())
        };
        Ok(q.fetch_one(&self.pool).await?)
    }

    pub async fn queue_clear(&self, queue_id: &str, partition: &[u8], all: bool) -> Result<()> {
        check_partition(partition)?;
        self.ensure_object(ObjectKind::Queue, queue_id).await?;
        let _w = self.write_lock.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        if all {
            sqlx::query("DELETE FROM queue_items WHERE queue_id = ?").bind(queue_id).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM queue_partitions WHERE queue_id = ?").bind(queue_id).execute(&mut *tx).await?;
        } else {
            sqlx::query("DELETE FROM queue_items WHERE queue_id = ? AND partition_key = ?")
                .bind(queue_id)
                .bind(partition)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM queue_partitions WHERE queue_id = ? AND partition_key = ?")
                .bind(queue_id)
                .bind(partition)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Partition count and item total of a queue, for listings.
    pub async fn queue_summary(&self, queue_id: &str, total_limit: i64) -> Result<QueueSummary> {
        let r = sqlx::query(
            "SELECT COUNT(*), COALESCE(SUM(item_count), 0) FROM queue_partitions WHERE queue_id = ? AND item_count > 0 AND last_put_at + ttl_seconds >= ?",
        )
        .bind(queue_id)
        .bind(now())
        .fetch_one(&self.pool)
        .await?;
        let total: i64 = r.get(1);
        Ok(QueueSummary {
            num_partitions: r.get(0),
            total_items: if total_limit > 0 { total.min(total_limit) } else { total },
        })
    }

    /// Clears every partition whose TTL has run out since its last put.
    pub(crate) async fn expire_queue_partitions(&self) -> Result<()> {
        let t = now();
        let _w = self.write_lock.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "DELETE FROM queue_items WHERE (queue_id, partition_key) IN \
             (SELECT queue_id, partition_key FROM queue_partitions WHERE last_put_at + ttl_seconds < ?)",
        )
        .bind(t)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM queue_partitions WHERE last_put_at + ttl_seconds < ?").bind(t).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }
}

async fn expire_partition(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>, queue_id: &str, partition: &[u8], t: f64) -> Result<()> {
    let expired = sqlx::query("DELETE FROM queue_partitions WHERE queue_id = ? AND partition_key = ? AND last_put_at + ttl_seconds < ?")
        .bind(queue_id)
        .bind(partition)
        .bind(t)
        .execute(&mut **tx)
        .await?;
    if expired.rows_affected() > 0 {
        sqlx::query("DELETE FROM queue_items WHERE queue_id = ? AND partition_key = ?")
            .bind(queue_id)
            .bind(partition)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}
