//! Worker hosts (`ferry worker`), their tokens and the tasks placed on them (migration 0015).
//!
//! Every row is the truth any control-plane replica acts on: a replica places a task by
//! inserting it, the worker takes it through whichever replica it polls, and its exit or loss
//! is read back by the replica that waits for it. Assignments carry the task's credential and
//! its Secrets, so they are sealed like Secret values.

use sqlx::Row;

use crate::auth::TokenKind;
use crate::{now, Result, Store, StoreError, TokenInfo};

/// A registered worker host.
#[derive(Clone, Debug)]
pub struct WorkerRecord {
    pub id: String,
    pub name: String,
    pub address: String,
    /// A JSON object of labels.
    pub labels: String,
    pub cpu: f64,
    pub memory_mib: i64,
    pub gpus: i64,
    pub disk_mib: i64,
    /// `ready`, `draining`, `lost` or `removed`.
    pub state: String,
    pub registered_at: f64,
    pub last_seen: f64,
    /// Tasks placed on it and not finished, with the CPU and memory they asked for.
    pub tasks: i64,
    pub cpu_used: f64,
    pub memory_used_mib: i64,
    /// The type of each of its cards (a JSON list of strings; "" for an unknown model).
    pub gpu_types: String,
    /// Cards its unfinished tasks asked for.
    pub gpus_used: i64,
}

/// What a worker announces when it registers.
#[derive(Clone, Debug, Default)]
pub struct NewWorker {
    pub name: String,
    pub address: String,
    pub labels: String,
    pub cpu: f64,
    pub memory_mib: i64,
    pub gpus: i64,
    pub disk_mib: i64,
    /// The type of each card, a JSON list of strings.
    pub gpu_types: String,
}

/// A task placed on a worker.
#[derive(Clone, Debug, Default)]
pub struct NewWorkerTask {
    pub task_id: String,
    pub worker_id: String,
    pub app_id: String,
    pub function_id: String,
    pub cpu: f64,
    pub memory_mib: i64,
    /// The replica that placed it (adopting that replica declares the task lost).
    pub replica: Option<String>,
    /// Whole GPUs it asked for.
    pub gpus: i64,
}

/// Where a placed task stands: `assigned`, `running`, `exited` (with the worker's report) or
/// `lost` (its worker stopped answering).
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerTaskState {
    pub worker_id: String,
    pub app_id: String,
    pub function_id: String,
    pub state: String,
    pub exit: Option<String>,
}

const LIVE: &str = "('ready', 'draining')";
const UNFINISHED: &str = "('assigned', 'running')";

impl Store {
    /// Creates a worker token and returns `(token_id, token_secret)`; only the secret's hash is kept.
    pub async fn create_worker_token(&self, label: &str) -> Result<(String, String)> {
        self.create_token_of(TokenKind::Worker, label).await
    }

    pub async fn verify_worker_token(&self, token_id: &str, secret: &str) -> Result<bool> {
        self.verify_token_of(TokenKind::Worker, token_id, secret).await
    }

    pub async fn list_worker_tokens(&self) -> Result<Vec<TokenInfo>> {
        self.list_tokens_of(TokenKind::Worker).await
    }

    pub async fn revoke_worker_token(&self, token_id: &str) -> Result<()> {
        self.revoke_token_of(TokenKind::Worker, token_id).await
    }

    /// Records a worker that just registered (as `ready`) and returns its id.
    pub async fn register_worker(&self, w: &NewWorker) -> Result<String> {
        let id = crate::new_id("wo");
        let t = now();
        sqlx::query(
            "INSERT INTO workers (id, name, address, labels, cpu, memory_mib, gpus, disk_mib, state, registered_at, last_seen, gpu_types) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'ready', $9, $9, $10)",
        )
        .bind(&id)
        .bind(&w.name)
        .bind(&w.address)
        .bind(&w.labels)
        .bind(w.cpu)
        .bind(w.memory_mib)
        .bind(w.gpus)
        .bind(w.disk_mib)
        .bind(t)
        .bind(if w.gpu_types.is_empty() { "[]" } else { w.gpu_types.as_str() })
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    /// Records a heartbeat of a live worker; returns the worker's state (a lost or removed
    /// worker's heartbeat changes nothing), or NotFound.
    pub async fn worker_heartbeat(&self, worker_id: &str) -> Result<String> {
        sqlx::query(&format!("UPDATE workers SET last_seen = $1 WHERE id = $2 AND state IN {LIVE}"))
            .bind(now())
            .bind(worker_id)
            .execute(&self.pool)
            .await?;
        let state: Option<String> = sqlx::query_scalar("SELECT state FROM workers WHERE id = $1").bind(worker_id).fetch_optional(&self.pool).await?;
        state.ok_or_else(|| StoreError::NotFound(format!("no worker '{worker_id}'")))
    }

    /// Every worker not removed, with the load of its unfinished tasks, oldest first.
    pub async fn workers(&self) -> Result<Vec<WorkerRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT w.id, w.name, w.address, w.labels, w.cpu, w.memory_mib, w.gpus, w.disk_mib, w.state, w.registered_at, w.last_seen, \
             CAST(COUNT(t.task_id) AS BIGINT), CAST(COALESCE(SUM(t.cpu), 0) AS DOUBLE PRECISION), CAST(COALESCE(SUM(t.memory_mib), 0) AS BIGINT), \
             w.gpu_types, CAST(COALESCE(SUM(t.gpus), 0) AS BIGINT) \
             FROM workers w LEFT JOIN worker_tasks t ON t.worker_id = w.id AND t.state IN {UNFINISHED} \
             WHERE w.state <> 'removed' \
             GROUP BY w.id, w.name, w.address, w.labels, w.cpu, w.memory_mib, w.gpus, w.disk_mib, w.state, w.registered_at, w.last_seen, w.gpu_types \
             ORDER BY w.registered_at"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| WorkerRecord {
                id: r.get(0),
                name: r.get(1),
                address: r.get(2),
                labels: r.get(3),
                cpu: r.get(4),
                memory_mib: r.get(5),
                gpus: r.get(6),
                disk_mib: r.get(7),
                state: r.get(8),
                registered_at: r.get(9),
                last_seen: r.get(10),
                tasks: r.get(11),
                cpu_used: r.get(12),
                memory_used_mib: r.get(13),
                gpu_types: r.get(14),
                gpus_used: r.get(15),
            })
            .collect())
    }

    /// Sets the state of the workers named `name_or_id` (an id, or every live worker of that
    /// name); returns how many changed. `ready` and `draining` apply to live workers only.
    pub async fn set_worker_state(&self, name_or_id: &str, state: &str) -> Result<u64> {
        let only_live = if state == "removed" { "state <> 'removed'".to_string() } else { format!("state IN {LIVE}") };
        let done = sqlx::query(&format!("UPDATE workers SET state = $1 WHERE (id = $2 OR name = $2) AND {only_live}"))
            .bind(state)
            .bind(name_or_id)
            .execute(&self.pool)
            .await?;
        if state == "removed" {
            self.lose_tasks_of_gone_workers().await?;
        }
        Ok(done.rows_affected())
    }

    /// Declares lost every live worker not seen for `timeout_secs`, and the unfinished tasks of
    /// every lost or removed worker. Idempotent: every replica may run it. Returns the ids of
    /// the workers it declared lost.
    pub async fn mark_lost_workers(&self, timeout_secs: f64) -> Result<Vec<String>> {
        let t = now();
        let lost: Vec<String> = sqlx::query_scalar(&format!("UPDATE workers SET state = 'lost' WHERE state IN {LIVE} AND last_seen < $1 RETURNING id"))
            .bind(t - timeout_secs)
            .fetch_all(&self.pool)
            .await?;
        self.lose_tasks_of_gone_workers().await?;
        Ok(lost)
    }

    async fn lose_tasks_of_gone_workers(&self) -> Result<()> {
        sqlx::query(&format!(
            "UPDATE worker_tasks SET state = 'lost', updated_at = $1 WHERE state IN {UNFINISHED} \
             AND worker_id IN (SELECT id FROM workers WHERE state IN ('lost', 'removed'))"
        ))
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Places a task on a live worker. The assignment is stored sealed. Fails with
    /// Precondition when the worker is no longer ready.
    pub async fn assign_worker_task(&self, task: &NewWorkerTask, assignment: &[u8]) -> Result<()> {
        let t = now();
        let sealed = self.sealer().seal(assignment);
        let done = sqlx::query(
            "INSERT INTO worker_tasks (task_id, worker_id, app_id, function_id, cpu, memory_mib, assignment, state, created_at, updated_at, replica, gpus) \
             SELECT $1, $2, $3, $4, $5, $6, $7, 'assigned', $8, $8, $9, $10 WHERE EXISTS (SELECT 1 FROM workers WHERE id = $2 AND state = 'ready')",
        )
        .bind(&task.task_id)
        .bind(&task.worker_id)
        .bind(&task.app_id)
        .bind(&task.function_id)
        .bind(task.cpu)
        .bind(task.memory_mib)
        .bind(sealed)
        .bind(t)
        .bind(&task.replica)
        .bind(task.gpus)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::FailedPrecondition(format!("worker {} is not ready for tasks", task.worker_id)));
        }
        self.notify.fire(&worker_topic(&task.worker_id));
        Ok(())
    }

    /// Notified when a task is placed on the worker or one of its tasks is signalled (on any
    /// replica), so a held poll answers at once.
    pub fn worker_work(&self, worker_id: &str) -> std::sync::Arc<tokio::sync::Notify> {
        self.notify.topic(&worker_topic(worker_id))
    }

    /// The tasks placed on a live worker since it last asked, now `running`, with their
    /// (unsealed) assignments.
    pub async fn take_worker_assignments(&self, worker_id: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let rows = sqlx::query(&format!(
            "UPDATE worker_tasks SET state = 'running', updated_at = $1 WHERE worker_id = $2 AND state = 'assigned' \
             AND EXISTS (SELECT 1 FROM workers WHERE id = $2 AND state IN {LIVE}) RETURNING task_id, assignment"
        ))
        .bind(now())
        .bind(worker_id)
        .fetch_all(&self.pool)
        .await?;
        let sealer = self.sealer();
        rows.iter().map(|r| Ok((r.get::<String, _>(0), sealer.open(&r.get::<Vec<u8>, _>(1))?))).collect()
    }

    /// Signals asked for the worker's tasks since it last asked (each handed out once).
    pub async fn take_worker_kills(&self, worker_id: &str) -> Result<Vec<(String, String)>> {
        // RETURNING would give the cleared value: read, then clear what was read.
        let rows = sqlx::query("SELECT task_id, kill_signal FROM worker_tasks WHERE worker_id = $1 AND kill_signal IS NOT NULL")
            .bind(worker_id)
            .fetch_all(&self.pool)
            .await?;
        let mut taken = Vec::new();
        for r in rows {
            let (task_id, signal): (String, String) = (r.get(0), r.get(1));
            let done = sqlx::query("UPDATE worker_tasks SET kill_signal = NULL WHERE task_id = $1 AND kill_signal = $2")
                .bind(&task_id)
                .bind(&signal)
                .execute(&self.pool)
                .await?;
            if done.rows_affected() > 0 {
                taken.push((task_id, signal));
            }
        }
        Ok(taken)
    }

    /// Of `task_ids` the worker says it runs, those it should run: placed on it and unfinished.
    pub async fn worker_tasks_running(&self, worker_id: &str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(&format!("SELECT task_id FROM worker_tasks WHERE worker_id = $1 AND state IN {UNFINISHED}"))
            .bind(worker_id)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Asks the worker running `task_id` to send it `signal`.
    pub async fn signal_worker_task(&self, task_id: &str, signal: &str) -> Result<()> {
        let worker: Option<String> =
            sqlx::query_scalar(&format!("UPDATE worker_tasks SET kill_signal = $1 WHERE task_id = $2 AND state IN {UNFINISHED} RETURNING worker_id"))
                .bind(signal)
                .bind(task_id)
                .fetch_optional(&self.pool)
                .await?;
        if let Some(worker) = worker {
            self.notify.fire(&worker_topic(&worker));
        }
        Ok(())
    }

    /// Records the exit a worker reported for its task; false when the task is not (or no
    /// longer) that worker's to report.
    pub async fn finish_worker_task(&self, worker_id: &str, task_id: &str, exit: &str) -> Result<bool> {
        let done = sqlx::query(&format!(
            "UPDATE worker_tasks SET state = 'exited', exit = $1, updated_at = $2 WHERE task_id = $3 AND worker_id = $4 AND state IN {UNFINISHED}"
        ))
        .bind(exit)
        .bind(now())
        .bind(task_id)
        .bind(worker_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn worker_task(&self, task_id: &str) -> Result<Option<WorkerTaskState>> {
        let row = sqlx::query("SELECT worker_id, app_id, function_id, state, exit FROM worker_tasks WHERE task_id = $1")
            .bind(task_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| WorkerTaskState { worker_id: r.get(0), app_id: r.get(1), function_id: r.get(2), state: r.get(3), exit: r.get(4) }))
    }

    /// Deletes finished tasks nobody read within `older_than_secs` (their replica died), and
    /// lost or removed workers silent that long with no task rows left.
    pub async fn prune_workers(&self, older_than_secs: f64) -> Result<()> {
        let before = now() - older_than_secs;
        sqlx::query("DELETE FROM worker_tasks WHERE state IN ('exited', 'lost') AND updated_at < $1").bind(before).execute(&self.pool).await?;
        sqlx::query(
            "DELETE FROM workers WHERE state IN ('lost', 'removed') AND last_seen < $1 \
             AND NOT EXISTS (SELECT 1 FROM worker_tasks t WHERE t.worker_id = workers.id)",
        )
        .bind(before)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets a task once its exit or loss was handled.
    pub async fn forget_worker_task(&self, task_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM worker_tasks WHERE task_id = $1").bind(task_id).execute(&self.pool).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn workers_take_tasks_and_lose_them_when_silent(b: crate::testing::Backend) {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::testing::TestDatabase::new(b).await.open(dir.path()).await;
        let (tid, secret) = s.create_worker_token("w").await.unwrap();
        assert!(s.verify_worker_token(&tid, &secret).await.unwrap());
        assert!(!s.verify_worker_token(&tid, "fws-wrong").await.unwrap());
        assert!(!s.verify_token(&tid, &secret).await.unwrap(), "a worker token is no client token");

        let w = s.register_worker(&NewWorker { name: "a".into(), labels: "{}".into(), cpu: 4.0, memory_mib: 8192, ..Default::default() }).await.unwrap();
        assert_eq!(s.worker_heartbeat(&w).await.unwrap(), "ready");
        let task = NewWorkerTask { task_id: "ta-1".into(), worker_id: w.clone(), app_id: "ap-1".into(), function_id: "fu-1".into(), cpu: 1.0, memory_mib: 512, replica: None, gpus: 0 };
        s.assign_worker_task(&task, b"secret assignment").await.unwrap();
        let listed = s.workers().await.unwrap();
        assert_eq!((listed[0].tasks, listed[0].cpu_used, listed[0].memory_used_mib), (1, 1.0, 512));
        assert_eq!(s.take_worker_assignments(&w).await.unwrap(), vec![("ta-1".to_string(), b"secret assignment".to_vec())]);
        assert!(s.take_worker_assignments(&w).await.unwrap().is_empty());
        s.signal_worker_task("ta-1", "kill").await.unwrap();
        assert_eq!(s.take_worker_kills(&w).await.unwrap(), vec![("ta-1".to_string(), "kill".to_string())]);
        assert!(s.take_worker_kills(&w).await.unwrap().is_empty());

        // Draining: no new tasks.
        assert_eq!(s.set_worker_state("a", "draining").await.unwrap(), 1);
        let t2 = NewWorkerTask { task_id: "ta-2".into(), ..task.clone() };
        assert!(matches!(s.assign_worker_task(&t2, b"x").await, Err(StoreError::FailedPrecondition(_))));

        // Silent past the timeout: lost, and so are its tasks; its heartbeat revives nothing.
        assert!(s.mark_lost_workers(3600.0).await.unwrap().is_empty());
        assert_eq!(s.mark_lost_workers(-1.0).await.unwrap(), vec![w.clone()]);
        assert_eq!(s.worker_task("ta-1").await.unwrap().unwrap().state, "lost");
        assert_eq!(s.worker_heartbeat(&w).await.unwrap(), "lost");
        assert!(!s.finish_worker_task(&w, "ta-1", "{}").await.unwrap());
        s.prune_workers(3600.0).await.unwrap();
        assert!(s.worker_task("ta-1").await.unwrap().is_some(), "recent rows stay");
        s.forget_worker_task("ta-1").await.unwrap();
        assert!(s.worker_task("ta-1").await.unwrap().is_none());
        assert_eq!(s.set_worker_state(&w, "removed").await.unwrap(), 1);
        assert!(s.workers().await.unwrap().is_empty());
        s.prune_workers(-1.0).await.unwrap();
        assert!(matches!(s.worker_heartbeat(&w).await, Err(StoreError::NotFound(_))));
    }

    crate::backend_tests!(workers_take_tasks_and_lose_them_when_silent);
}

pub(crate) fn worker_topic(worker_id: &str) -> String {
    format!("worker:{worker_id}")
}
