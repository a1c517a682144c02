//! Replicas of `ferry serve` on one database (migration 0016): each registers itself with a
//! lease it renews, owns the calls it creates, and adopts the calls of a replica whose lease
//! ran out. Adoption is a conditional update under the write lock every replica shares, so
//! exactly one replica adopts a given replica, and its calls' unanswered inputs are queued
//! again there only.

use std::sync::Arc;

use sqlx::Row;
use tokio::sync::Notify;

use crate::{Backend, QueuedRecord, Result, Store};

/// A registered replica, as `ferry status` and the dashboard may list it.
#[derive(Clone, Debug)]
pub struct ReplicaRecord {
    pub id: String,
    pub name: String,
    pub address: String,
    pub started_at: f64,
    pub heartbeat_at: f64,
    pub expires_at: f64,
    pub adopted_by: Option<String>,
}

/// What [`Store::adopt_replicas`] took over.
#[derive(Clone, Debug, Default)]
pub struct Adoption {
    /// The replicas adopted.
    pub replicas: Vec<String>,
    /// The unanswered inputs of the calls they owned (now owned by the adopter), oldest first.
    pub inputs: Vec<QueuedRecord>,
    /// Containers they had placed on worker hosts, now declared lost (their workers kill them).
    pub worker_tasks: usize,
}

/// Who runs a call's inputs, as [`Store::hand_off_inputs`] found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallOwner {
    /// The asking replica (it owned the call, or took a call nobody owned).
    Me,
    /// Another replica: the inputs were handed to it.
    Other(String),
    /// No such call.
    Missing,
}

const QUEUED_COLUMNS: &str = "i.id, i.call_id, i.function_id, i.idx, i.payload, i.retry_count, c.invocation_type";

fn queued(r: &sqlx::any::AnyRow) -> QueuedRecord {
    QueuedRecord {
        input_id: r.get(0),
        call_id: r.get(1),
        function_id: r.get(2),
        idx: r.get(3),
        payload: r.get::<Option<Vec<u8>>, _>(4).unwrap_or_default(),
        retry_count: r.get::<i64, _>(5) as u32,
        invocation_type: r.get(6),
    }
}

/// Fired when a replica stops gracefully.
const REPLICAS_TOPIC: &str = "replicas";

fn topic_of(replica_id: &str) -> String {
    format!("replica:{replica_id}")
}

impl Store {
    /// Makes `id` the owner of the calls this store creates from now on (once per store).
    pub fn set_replica(&self, id: &str) {
        let _ = self.replica.set(id.to_string());
    }

    /// The replica this store creates calls for, once set.
    pub fn replica(&self) -> Option<&str> {
        self.replica.get().map(String::as_str)
    }

    /// Whether several processes may share this database (PostgreSQL); SQLite's belongs to one.
    pub fn is_shared(&self) -> bool {
        self.backend == Backend::Postgres
    }

    /// Records a starting replica with a lease of `lease` seconds.
    pub async fn register_replica(&self, id: &str, name: &str, address: &str, lease: f64) -> Result<()> {
        let now = crate::now();
        sqlx::query("INSERT INTO replicas (id, name, address, started_at, heartbeat_at, expires_at) VALUES ($1, $2, $3, $4, $4, $5)")
            .bind(id)
            .bind(name)
            .bind(address)
            .bind(now)
            .bind(now + lease)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Renews a replica's lease for `lease` seconds from now. False when another replica
    /// adopted it meanwhile: it lost its calls and must stop serving them.
    pub async fn renew_replica(&self, id: &str, lease: f64) -> Result<bool> {
        let now = crate::now();
        let done = sqlx::query("UPDATE replicas SET heartbeat_at = $2, expires_at = $3 WHERE id = $1 AND adopted_by IS NULL")
            .bind(id)
            .bind(now)
            .bind(now + lease)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Ends a replica's lease now (a graceful stop): the others adopt its calls at once.
    pub async fn retire_replica(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE replicas SET expires_at = 0 WHERE id = $1 AND adopted_by IS NULL").bind(id).execute(&self.pool).await?;
        self.notify.fire(REPLICAS_TOPIC);
        Ok(())
    }

    /// Replicas not adopted yet, oldest first.
    pub async fn replicas(&self) -> Result<Vec<ReplicaRecord>> {
        let rows = sqlx::query("SELECT id, name, address, started_at, heartbeat_at, expires_at, adopted_by FROM replicas WHERE adopted_by IS NULL ORDER BY started_at")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| ReplicaRecord {
                id: r.get(0),
                name: r.get(1),
                address: r.get(2),
                started_at: r.get(3),
                heartbeat_at: r.get(4),
                expires_at: r.get(5),
                adopted_by: r.get(6),
            })
            .collect())
    }

    /// Whether some replica other than `me` has a lease that ran out (cheap: no lock).
    pub async fn replicas_to_adopt(&self, me: &str) -> Result<bool> {
        let n: Option<String> = sqlx::query_scalar("SELECT id FROM replicas WHERE id <> $1 AND adopted_by IS NULL AND expires_at < $2 LIMIT 1")
            .bind(me)
            .bind(crate::now())
            .fetch_optional(&self.pool)
            .await?;
        Ok(n.is_some())
    }

    /// Adopts, as replica `me`, every replica whose lease ran out and every earlier replica of
    /// the same `name` (the same host and data dir: it is gone), with their calls and the
    /// handoffs waiting for them. With `at_start`, also calls that no replica owns (made
    /// before replicas were recorded) and, on SQLite (one process per database), every other
    /// replica. Returns the replicas adopted and the unanswered inputs to queue again.
    pub async fn adopt_replicas(&self, me: &str, name: &str, at_start: bool) -> Result<Adoption> {
        let _w = self.write_lock.lock().await;
        let mut tx = self.begin_write().await?;
        let now = crate::now();
        let everyone = at_start && self.backend == Backend::Sqlite;
        let candidates: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM replicas WHERE id <> $1 AND adopted_by IS NULL AND (expires_at < $2 OR name = $3 OR $4 = 1) ORDER BY started_at",
        )
        .bind(me)
        .bind(now)
        .bind(name)
        .bind(everyone as i64)
        .fetch_all(&mut *tx)
        .await?;
        let mut out = Adoption::default();
        let mut lost_on = std::collections::BTreeSet::new();
        let sql = format!(
            "SELECT {QUEUED_COLUMNS} FROM function_inputs i JOIN function_calls c ON c.id = i.call_id \
             WHERE c.owner = $1 AND i.state = 'queued' ORDER BY i.created_at, i.idx"
        );
        for id in candidates {
            // The conditional update: a replica is adopted once.
            let won = sqlx::query("UPDATE replicas SET adopted_by = $2, adopted_at = $3 WHERE id = $1 AND adopted_by IS NULL")
                .bind(&id)
                .bind(me)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            if won.rows_affected() != 1 {
                continue;
            }
            let rows = sqlx::query(&sql).bind(&id).fetch_all(&mut *tx).await?;
            out.inputs.extend(rows.iter().map(queued));
            sqlx::query("UPDATE function_calls SET owner = $2 WHERE owner = $1").bind(&id).bind(me).execute(&mut *tx).await?;
            // Its handoffs are queued rows of its calls: adopted with them.
            sqlx::query("DELETE FROM call_handoffs WHERE owner = $1").bind(&id).execute(&mut *tx).await?;
            // Its containers on worker hosts talked to it alone and held inputs in its memory
            // (queued here again above): their credentials end, and their workers, told at
            // their next poll that the tasks are no longer theirs, kill them.
            sqlx::query(
                "UPDATE task_credentials SET revoked_at = $2 WHERE revoked_at IS NULL AND task_id IN \
                 (SELECT task_id FROM worker_tasks WHERE replica = $1 AND state IN ('assigned', 'running'))",
            )
            .bind(&id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let workers: Vec<String> = sqlx::query_scalar(
                "UPDATE worker_tasks SET state = 'lost', updated_at = $2 WHERE replica = $1 AND state IN ('assigned', 'running') RETURNING worker_id",
            )
            .bind(&id)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
            out.worker_tasks += workers.len();
            lost_on.extend(workers);
            out.replicas.push(id);
        }
        if at_start {
            let unowned = format!(
                "SELECT {QUEUED_COLUMNS} FROM function_inputs i JOIN function_calls c ON c.id = i.call_id \
                 WHERE c.owner IS NULL AND i.state = 'queued' ORDER BY i.created_at, i.idx"
            );
            let rows = sqlx::query(&unowned).fetch_all(&mut *tx).await?;
            out.inputs.extend(rows.iter().map(queued));
            sqlx::query("UPDATE function_calls SET owner = $1 WHERE owner IS NULL").bind(me).execute(&mut *tx).await?;
        }
        // Adopted replicas are kept a day for operators, then forgotten.
        sqlx::query("DELETE FROM replicas WHERE adopted_by IS NOT NULL AND adopted_at < $1").bind(now - 86_400.0).execute(&mut *tx).await?;
        tx.commit().await?;
        for worker in lost_on {
            self.notify.fire(&crate::workers::worker_topic(&worker));
        }
        Ok(out)
    }

    /// The replica that owns a call, when it has one.
    pub async fn call_owner(&self, call_id: &str) -> Result<Option<String>> {
        let owner: Option<Option<String>> =
            sqlx::query_scalar("SELECT owner FROM function_calls WHERE id = $1").bind(call_id).fetch_optional(&self.pool).await?;
        Ok(owner.flatten())
    }

    /// Hands inputs that replica `me` added to a call to the call's owner, which queues them
    /// (it hears of them through [`Store::replica_topic`]). A call without an owner becomes
    /// `me`'s. Decided under the shared write lock, so an adoption of the owner either
    /// happened before (the adopter is the owner now) or takes the handoff with the call.
    pub async fn hand_off_inputs(&self, me: &str, call_id: &str, input_ids: &[String]) -> Result<CallOwner> {
        let owner = {
            let _w = self.write_lock.lock().await;
            let mut tx = self.begin_write().await?;
            let owner: Option<Option<String>> =
                sqlx::query_scalar("SELECT owner FROM function_calls WHERE id = $1").bind(call_id).fetch_optional(&mut *tx).await?;
            let owner = match owner {
                None => return Ok(CallOwner::Missing),
                Some(Some(o)) if o != me => o,
                Some(None) => {
                    sqlx::query("UPDATE function_calls SET owner = $2 WHERE id = $1").bind(call_id).bind(me).execute(&mut *tx).await?;
                    tx.commit().await?;
                    return Ok(CallOwner::Me);
                }
                Some(Some(_)) => return Ok(CallOwner::Me),
            };
            for id in input_ids {
                sqlx::query("INSERT INTO call_handoffs (input_id, owner) VALUES ($1, $2) ON CONFLICT (input_id) DO NOTHING")
                    .bind(id)
                    .bind(&owner)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            owner
        };
        self.notify.fire(&topic_of(&owner));
        Ok(CallOwner::Other(owner))
    }

    /// Takes the inputs other replicas handed to replica `me` that still wait for an answer;
    /// an input handed over again after it was taken is not taken twice.
    pub async fn take_handoffs(&self, me: &str) -> Result<Vec<QueuedRecord>> {
        // Most rounds find none: look before taking the write lock.
        let any: Option<String> =
            sqlx::query_scalar("SELECT input_id FROM call_handoffs WHERE owner = $1 AND taken_at IS NULL LIMIT 1").bind(me).fetch_optional(&self.pool).await?;
        if any.is_none() {
            return Ok(Vec::new());
        }
        let _w = self.write_lock.lock().await;
        let mut tx = self.begin_write().await?;
        let now = crate::now();
        let ids: Vec<String> = sqlx::query_scalar("UPDATE call_handoffs SET taken_at = $2 WHERE owner = $1 AND taken_at IS NULL RETURNING input_id")
            .bind(me)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
        // Taken an hour ago: a request retried that late is not expected.
        sqlx::query("DELETE FROM call_handoffs WHERE taken_at < $1").bind(now - 3600.0).execute(&mut *tx).await?;
        let sql = format!("SELECT {QUEUED_COLUMNS} FROM function_inputs i JOIN function_calls c ON c.id = i.call_id WHERE i.id = $1 AND i.state = 'queued'");
        let mut out = Vec::with_capacity(ids.len());
        for id in &ids {
            if let Some(r) = sqlx::query(&sql).bind(id).fetch_optional(&mut *tx).await? {
                out.push(queued(&r));
            }
        }
        tx.commit().await?;
        out.sort_by(|a, b| (a.call_id.as_str(), a.idx).cmp(&(b.call_id.as_str(), b.idx)));
        Ok(out)
    }

    /// Calls owned by `owner` that were cancelled at or after `since` (by any replica), with
    /// the reason recorded.
    pub async fn calls_cancelled_since(&self, owner: &str, since: f64) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT id, cancel_reason FROM function_calls WHERE cancelled_at >= $2 AND owner = $1")
            .bind(owner)
            .bind(since)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get::<Option<String>, _>(1).unwrap_or_default())).collect())
    }

    /// Fired when inputs are handed to replica `id` (on every replica of the database).
    pub fn replica_topic(&self, id: &str) -> Arc<Notify> {
        self.notify.topic(&topic_of(id))
    }

    /// Fired when a replica stops gracefully (its calls can be adopted at once).
    pub fn replicas_changed(&self) -> Arc<Notify> {
        self.notify.topic(REPLICAS_TOPIC)
    }
}

#[cfg(test)]
mod tests {
    use super::CallOwner;
    use crate::testing::{Backend, TestDatabase};
    use crate::CallWrite;

    async fn call(s: &crate::Store, id: &str, inputs: usize) -> Vec<String> {
        let mut writes = vec![CallWrite::Call { id: id.into(), function_id: "fu-1".into(), invocation_type: 4, created_at: crate::now() }];
        let ids: Vec<String> = (0..inputs).map(|i| format!("in-{id}-{i}")).collect();
        for (i, input) in ids.iter().enumerate() {
            writes.push(CallWrite::Input {
                id: input.clone(),
                call_id: id.into(),
                function_id: "fu-1".into(),
                idx: i as i32,
                payload: vec![i as u8],
                created_at: crate::now(),
            });
        }
        s.calls_write(&writes).await.unwrap();
        ids
    }

    async fn a_dead_replica_is_adopted_once_with_its_calls(b: Backend) {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDatabase::new(b).await;
        let (a, c) = (db.open(dir.path()).await, db.open(dir.path()).await);
        // A call from before replicas were recorded has no owner: the first to start takes it.
        call(&a, "fc-old", 1).await;
        a.set_replica("rp-a");
        c.set_replica("rp-c");
        a.register_replica("rp-a", "host:/a", "http://127.0.0.1:1", 0.3).await.unwrap();
        let first = a.adopt_replicas("rp-a", "host:/a", true).await.unwrap();
        assert_eq!(first.inputs.len(), 1);
        assert_eq!(a.call_owner("fc-old").await.unwrap().as_deref(), Some("rp-a"));
        c.register_replica("rp-c", "host:/c", "http://127.0.0.1:2", 30.0).await.unwrap();
        // New calls belong to the replica that made them.
        call(&a, "fc-a", 3).await;
        call(&c, "fc-c", 2).await;
        assert_eq!(a.call_owner("fc-a").await.unwrap().as_deref(), Some("rp-a"));
        assert_eq!(c.call_owner("fc-c").await.unwrap().as_deref(), Some("rp-c"));
        // One input of fc-a is answered; the others are still queued (or were running).
        let answer = crate::AnswerRecord {
            input_id: "in-fc-a-0".into(),
            call_id: "fc-a".into(),
            idx: 0,
            state: "done".into(),
            retry_count: 0,
            task_id: "ta-1".into(),
            result: vec![1],
            data_format: 1,
            finished_at: crate::now(),
            duration: None,
            seq: 7,
        };
        a.calls_write(&[CallWrite::Answer(answer)]).await.unwrap();
        // Containers rp-a placed on a worker host, and one rp-c placed there.
        let worker = a
            .register_worker(&crate::NewWorker { name: "w".into(), labels: "{}".into(), cpu: 4.0, memory_mib: 8192, ..Default::default() })
            .await
            .unwrap();
        let mut secrets = Vec::new();
        for (task, replica) in [("ta-a", "rp-a"), ("ta-a2", "rp-a"), ("ta-c", "rp-c")] {
            let placed = crate::NewWorkerTask {
                task_id: task.into(),
                worker_id: worker.clone(),
                app_id: "ap-1".into(),
                function_id: "fu-1".into(),
                cpu: 1.0,
                memory_mib: 0,
                replica: Some(replica.into()),
                gpus: 0,
            };
            a.assign_worker_task(&placed, b"{}").await.unwrap();
            secrets.push((task, a.create_task_credential(task, "ap-1").await.unwrap()));
        }
        assert_eq!(a.take_worker_assignments(&worker).await.unwrap().len(), 3);
        // While its lease runs, nobody adopts rp-a.
        assert!(!c.replicas_to_adopt("rp-c").await.unwrap());
        assert!(c.adopt_replicas("rp-c", "host:/c", false).await.unwrap().replicas.is_empty());
        assert!(a.renew_replica("rp-a", 0.3).await.unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert!(c.replicas_to_adopt("rp-c").await.unwrap());
        // Two adopters at once: one wins, the other gets nothing.
        let (x, y) = tokio::join!(c.adopt_replicas("rp-c", "host:/c", false), a.adopt_replicas("rp-c2", "host:/c2", false));
        let (x, y) = (x.unwrap(), y.unwrap());
        let (won, lost) = if x.replicas.is_empty() { (y, x) } else { (x, y) };
        assert!(lost.replicas.is_empty() && lost.inputs.is_empty());
        assert_eq!(won.replicas, vec!["rp-a".to_string()]);
        // rp-a's containers on the worker are lost with it (the worker kills them at its next
        // poll) and their credentials end; rp-c's container runs on.
        assert_eq!(won.worker_tasks, 2);
        assert_eq!(c.worker_task("ta-a").await.unwrap().unwrap().state, "lost");
        assert_eq!(c.worker_task("ta-c").await.unwrap().unwrap().state, "running");
        assert_eq!(c.worker_tasks_running(&worker).await.unwrap(), vec!["ta-c".to_string()]);
        for (task, secret) in &secrets {
            assert_eq!(c.verify_task(task, secret).await.unwrap().is_some(), *task == "ta-c", "{task}");
        }
        let mut ids: Vec<String> = won.inputs.iter().map(|i| i.input_id.clone()).collect();
        ids.sort();
        // fc-old became rp-a's at its start, so its input moves too.
        assert_eq!(ids, vec!["in-fc-a-1".to_string(), "in-fc-a-2".to_string(), "in-fc-old-0".to_string()]);
        assert_eq!(won.inputs.iter().find(|i| i.input_id == "in-fc-a-1").unwrap().payload, vec![1]);
        // The adopted replica learns it lost its lease; its calls moved.
        assert!(!a.renew_replica("rp-a", 30.0).await.unwrap());
        assert_ne!(c.call_owner("fc-a").await.unwrap().as_deref(), Some("rp-a"));
        assert!(c.replicas().await.unwrap().iter().all(|r| r.id != "rp-a"));
    }

    async fn inputs_added_on_another_replica_are_handed_to_the_owner(b: Backend) {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDatabase::new(b).await;
        let (a, c) = (db.open(dir.path()).await, db.open(dir.path()).await);
        a.set_replica("rp-a");
        c.set_replica("rp-c");
        a.register_replica("rp-a", "host:/a", "", 30.0).await.unwrap();
        c.register_replica("rp-c", "host:/c", "", 30.0).await.unwrap();
        call(&a, "fc-1", 1).await;
        // rp-c adds inputs 1 and 2 to rp-a's call and hands them over.
        let writes: Vec<CallWrite> = (1..3)
            .map(|i| CallWrite::Input { id: format!("in-x{i}"), call_id: "fc-1".into(), function_id: "fu-1".into(), idx: i, payload: vec![9], created_at: crate::now() })
            .collect();
        c.calls_write(&writes).await.unwrap();
        let woken = a.replica_topic("rp-a");
        let notified = woken.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let ids = vec!["in-x1".to_string(), "in-x2".to_string()];
        assert_eq!(c.hand_off_inputs("rp-c", "fc-1", &ids).await.unwrap(), CallOwner::Other("rp-a".into()));
        if b == Backend::Postgres {
            // Another process on PostgreSQL hears of it through NOTIFY.
            tokio::time::timeout(std::time::Duration::from_secs(5), notified).await.expect("the owner hears of the handoff");
        }
        let got = a.take_handoffs("rp-a").await.unwrap();
        assert_eq!(got.iter().map(|q| q.input_id.as_str()).collect::<Vec<_>>(), vec!["in-x1", "in-x2"]);
        assert!(a.take_handoffs("rp-a").await.unwrap().is_empty(), "taken once");
        // A retried request hands them over again: still taken once.
        assert_eq!(c.hand_off_inputs("rp-c", "fc-1", &ids).await.unwrap(), CallOwner::Other("rp-a".into()));
        assert!(a.take_handoffs("rp-a").await.unwrap().is_empty(), "taken once, also when handed over again");
        assert_eq!(a.hand_off_inputs("rp-a", "fc-1", &ids).await.unwrap(), CallOwner::Me);
        assert_eq!(c.hand_off_inputs("rp-c", "fc-none", &ids).await.unwrap(), CallOwner::Missing);
        // A cancellation recorded by rp-c is found by the owner.
        let t = crate::now();
        assert!(a.calls_cancelled_since("rp-a", t - 1.0).await.unwrap().is_empty());
        c.calls_write(&[CallWrite::Cancel { call_id: "fc-1".into(), at: t, reason: "FunctionCall.cancel()".into() }]).await.unwrap();
        assert_eq!(a.calls_cancelled_since("rp-a", t - 1.0).await.unwrap(), vec![("fc-1".to_string(), "FunctionCall.cancel()".to_string())]);
        assert!(a.calls_cancelled_since("rp-c", t - 1.0).await.unwrap().is_empty());
    }

    crate::backend_tests!(a_dead_replica_is_adopted_once_with_its_calls, inputs_added_on_another_replica_are_handed_to_the_owner);
}
