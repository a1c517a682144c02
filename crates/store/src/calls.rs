//! Function calls, their inputs and answers, and generator items: the durable half of
//! `ferry-scheduler`. Payloads and results are opaque bytes. Writes come in batches (the
//! scheduler's group commit): one transaction for many inputs and answers.

use sqlx::Row;

use crate::{Result, Store};

/// One change to calls, applied with others in one transaction by [`Store::calls_write`].
#[derive(Clone, Debug)]
pub enum CallWrite {
    /// A new call.
    Call { id: String, function_id: String, invocation_type: i32, created_at: f64 },
    /// A new input of a call. An input with the same `(call_id, idx)` already stored is kept
    /// (a retried request): its id comes back as [`WriteOutcome::Existing`].
    Input { id: String, call_id: String, function_id: String, idx: i32, payload: Vec<u8>, created_at: f64 },
    /// The answer to a queued input; ignored when the input was answered already.
    Answer(AnswerRecord),
    /// An input goes back to the queue for another attempt.
    Retry { input_id: String, retry_count: u32 },
    /// Marks a call cancelled (its inputs get `Answer`s of their own).
    Cancel { call_id: String, at: f64, reason: String },
    /// A generator item.
    DataOut { call_id: String, idx: u64, chunk: Vec<u8> },
    /// Forgets a call whose caller read its answers (read-once results).
    Forget { call_id: String },
}

/// What a [`CallWrite`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    Done,
    /// The input existed already under this id.
    Existing(String),
    /// The answer was not recorded: the input was answered already (or is gone).
    Ignored,
}

/// An answered input, as stored.
#[derive(Clone, Debug)]
pub struct AnswerRecord {
    pub input_id: String,
    pub call_id: String,
    pub idx: i32,
    /// `done`, `failed` or `cancelled`.
    pub state: String,
    pub retry_count: u32,
    pub task_id: String,
    pub result: Vec<u8>,
    pub data_format: i32,
    pub finished_at: f64,
    pub duration: Option<f64>,
    pub seq: i64,
}

/// See [`Store::call_progress`].
#[derive(Clone, Debug)]
pub struct CallProgress {
    pub function_id: String,
    pub created_at: f64,
    pub states: Vec<(String, i64)>,
}

/// A stored call.
#[derive(Clone, Debug)]
pub struct CallRecord {
    pub id: String,
    pub function_id: String,
    pub invocation_type: i32,
    pub created_at: f64,
    pub cancelled: bool,
    /// Inputs, and those not answered yet.
    pub num_inputs: usize,
    pub num_unfinished: usize,
    /// The highest answer sequence number of the call (0 when none).
    pub last_seq: i64,
    /// Whether it has generator items.
    pub has_data_out: bool,
}

/// An input waiting to run, as stored.
#[derive(Clone, Debug)]
pub struct QueuedRecord {
    pub input_id: String,
    pub call_id: String,
    pub function_id: String,
    pub idx: i32,
    pub payload: Vec<u8>,
    pub retry_count: u32,
    pub invocation_type: i32,
}

const ANSWER_COLUMNS: &str = "id, call_id, idx, state, retry_count, task_id, result, data_format, finished_at, duration, seq";

fn answer(r: &sqlx::any::AnyRow) -> AnswerRecord {
    AnswerRecord {
        input_id: r.get(0),
        call_id: r.get(1),
        idx: r.get(2),
        state: r.get(3),
        retry_count: r.get::<i64, _>(4) as u32,
        task_id: r.get::<Option<String>, _>(5).unwrap_or_default(),
        result: r.get::<Option<Vec<u8>>, _>(6).unwrap_or_default(),
        data_format: r.get::<Option<i32>, _>(7).unwrap_or_default(),
        finished_at: r.get::<Option<f64>, _>(8).unwrap_or_default(),
        duration: r.get(9),
        seq: r.get::<Option<i64>, _>(10).unwrap_or_default(),
    }
}

/// Most inputs one INSERT statement takes (6 parameters each).
const INPUTS_PER_INSERT: usize = 128;

/// Inserts a run of [`CallWrite::Input`]s with one statement; pushes one outcome per input.
async fn insert_inputs(tx: &mut sqlx::Transaction<'_, sqlx::Any>, inputs: &[CallWrite], outcomes: &mut Vec<WriteOutcome>) -> Result<()> {
    let mut sql = String::from("INSERT INTO function_inputs (id, call_id, function_id, idx, payload, state, created_at) VALUES ");
    for n in 0..inputs.len() {
        let b = n * 6;
        if n > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("(${}, ${}, ${}, ${}, ${}, 'queued', ${})", b + 1, b + 2, b + 3, b + 4, b + 5, b + 6));
    }
    sql.push_str(" ON CONFLICT (call_id, idx) DO NOTHING RETURNING id");
    let mut q = sqlx::query_scalar::<_, String>(&sql);
    for w in inputs {
        if let CallWrite::Input { id, call_id, function_id, idx, payload, created_at } = w {
            q = q.bind(id).bind(call_id).bind(function_id).bind(*idx as i64).bind(payload).bind(created_at);
        }
    }
    let inserted: std::collections::HashSet<String> = q.fetch_all(&mut **tx).await?.into_iter().collect();
    for w in inputs {
        if let CallWrite::Input { id, call_id, idx, .. } = w {
            if inserted.contains(id) {
                outcomes.push(WriteOutcome::Done);
            } else {
                // A retried request: the input is stored under its first id.
                let existing: String = sqlx::query_scalar("SELECT id FROM function_inputs WHERE call_id = $1 AND idx = $2")
                    .bind(call_id)
                    .bind(*idx as i64)
                    .fetch_one(&mut **tx)
                    .await?;
                outcomes.push(WriteOutcome::Existing(existing));
            }
        }
    }
    Ok(())
}

/// Most answers one UPDATE statement takes (9 parameters each).
const ANSWERS_PER_UPDATE: usize = 64;

/// How many writes from the start are answers to distinct inputs (at most a statement's worth).
fn answer_run(writes: &[CallWrite]) -> usize {
    let mut seen = std::collections::HashSet::new();
    writes
        .iter()
        .take(ANSWERS_PER_UPDATE)
        .take_while(|w| matches!(w, CallWrite::Answer(a) if seen.insert(a.input_id.as_str())))
        .count()
}

/// Records a run of [`CallWrite::Answer`]s (distinct inputs) with one statement; pushes one
/// outcome per answer: `Ignored` for an input that was answered already (or is gone).
async fn record_answers(tx: &mut sqlx::Transaction<'_, sqlx::Any>, answers: &[CallWrite], outcomes: &mut Vec<WriteOutcome>) -> Result<()> {
    let mut sql = String::from("WITH v (id, state, retry_count, task_id, result, data_format, finished_at, duration, seq) AS (VALUES ");
    for n in 0..answers.len() {
        let b = n * 9;
        if n > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for k in 1..=9 {
            if k > 1 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", b + k));
        }
        sql.push(')');
    }
    sql.push_str(") UPDATE function_inputs SET ");
    for (k, col) in ["state", "retry_count", "task_id", "result", "data_format", "finished_at", "duration", "seq"].iter().enumerate() {
        if k > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("{col} = (SELECT v.{col} FROM v WHERE v.id = function_inputs.id)"));
    }
    sql.push_str(", payload = NULL WHERE id IN (SELECT v.id FROM v) AND state = 'queued' RETURNING id");
    let mut q = sqlx::query_scalar::<_, String>(&sql);
    for w in answers {
        if let CallWrite::Answer(a) = w {
            q = q
                .bind(&a.input_id)
                .bind(&a.state)
                .bind(a.retry_count as i64)
                .bind(&a.task_id)
                .bind(&a.result)
                .bind(a.data_format as i64)
                .bind(a.finished_at)
                .bind(a.duration)
                .bind(a.seq);
        }
    }
    let updated: std::collections::HashSet<String> = q.fetch_all(&mut **tx).await?.into_iter().collect();
    for w in answers {
        if let CallWrite::Answer(a) = w {
            outcomes.push(if updated.contains(&a.input_id) { WriteOutcome::Done } else { WriteOutcome::Ignored });
        }
    }
    Ok(())
}

/// For each write, whether it is an answer or generator item of a call that a later write of
/// the batch forgets.
fn forgotten_after(writes: &[CallWrite]) -> Vec<bool> {
    let mut out = vec![false; writes.len()];
    if !writes.iter().any(|w| matches!(w, CallWrite::Forget { .. })) {
        return out;
    }
    let mut forgotten = std::collections::HashSet::new();
    for (i, w) in writes.iter().enumerate().rev() {
        match w {
            CallWrite::Forget { call_id } => {
                forgotten.insert(call_id.as_str());
            }
            CallWrite::Answer(a) => out[i] = forgotten.contains(&a.call_id.as_str()),
            CallWrite::DataOut { call_id, .. } => out[i] = forgotten.contains(&call_id.as_str()),
            _ => {}
        }
    }
    out
}

impl Store {
    /// Applies a batch of call changes in one transaction; one outcome per write, in order.
    pub async fn calls_write(&self, writes: &[CallWrite]) -> Result<Vec<WriteOutcome>> {
        let _w = self.write_lock.lock().await;
        let mut tx = self.begin_write().await?;
        let mut outcomes = Vec::with_capacity(writes.len());
        // Calls forgotten later in this batch: writes to them before their `Forget` would be
        // deleted by it in the same transaction, so they are not made (a warm `.remote()`'s
        // answer commits together with its call's `Forget`).
        let forgotten_after = forgotten_after(writes);
        let mut i = 0;
        while i < writes.len() {
            if forgotten_after[i] {
                outcomes.push(WriteOutcome::Done);
                i += 1;
                continue;
            }
            // A run of new inputs (a map's batch) goes in one statement.
            let run = writes[i..].iter().take(INPUTS_PER_INSERT).take_while(|w| matches!(w, CallWrite::Input { .. })).count();
            if run > 1 {
                insert_inputs(&mut tx, &writes[i..i + run], &mut outcomes).await?;
                i += run;
                continue;
            }
            // So does a run of answers to distinct inputs (the answers of one group commit).
            let run = answer_run(&writes[i..]);
            if run > 1 {
                record_answers(&mut tx, &writes[i..i + run], &mut outcomes).await?;
                i += run;
                continue;
            }
            let w = &writes[i];
            i += 1;
            let outcome = match w {
                CallWrite::Call { id, function_id, invocation_type, created_at } => {
                    sqlx::query("INSERT INTO function_calls (id, function_id, invocation_type, created_at, owner) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING")
                        .bind(id)
                        .bind(function_id)
                        .bind(*invocation_type as i64)
                        .bind(created_at)
                        .bind(self.replica())
                        .execute(&mut *tx)
                        .await?;
                    WriteOutcome::Done
                }
                CallWrite::Input { id, call_id, function_id, idx, payload, created_at } => {
                    let done = sqlx::query(
                        "INSERT INTO function_inputs (id, call_id, function_id, idx, payload, state, created_at) VALUES ($1, $2, $3, $4, $5, 'queued', $6) ON CONFLICT (call_id, idx) DO NOTHING",
                    )
                    .bind(id)
                    .bind(call_id)
                    .bind(function_id)
                    .bind(*idx as i64)
                    .bind(payload)
                    .bind(created_at)
                    .execute(&mut *tx)
                    .await?;
                    if done.rows_affected() == 0 {
                        let existing: String = sqlx::query_scalar("SELECT id FROM function_inputs WHERE call_id = $1 AND idx = $2")
                            .bind(call_id)
                            .bind(*idx as i64)
                            .fetch_one(&mut *tx)
                            .await?;
                        WriteOutcome::Existing(existing)
                    } else {
                        WriteOutcome::Done
                    }
                }
                CallWrite::Answer(a) => {
                    let done = sqlx::query(
                        "UPDATE function_inputs SET state = $2, retry_count = $3, task_id = $4, result = $5, data_format = $6, finished_at = $7, duration = $8, seq = $9, payload = NULL WHERE id = $1 AND state = 'queued'",
                    )
                    .bind(&a.input_id)
                    .bind(&a.state)
                    .bind(a.retry_count as i64)
                    .bind(&a.task_id)
                    .bind(&a.result)
                    .bind(a.data_format as i64)
                    .bind(a.finished_at)
                    .bind(a.duration)
                    .bind(a.seq)
                    .execute(&mut *tx)
                    .await?;
                    if done.rows_affected() == 0 { WriteOutcome::Ignored } else { WriteOutcome::Done }
                }
                CallWrite::Retry { input_id, retry_count } => {
                    sqlx::query("UPDATE function_inputs SET retry_count = $2 WHERE id = $1 AND state = 'queued'")
                        .bind(input_id)
                        .bind(*retry_count as i64)
                        .execute(&mut *tx)
                        .await?;
                    WriteOutcome::Done
                }
                CallWrite::Cancel { call_id, at, reason } => {
                    sqlx::query("UPDATE function_calls SET cancelled_at = $2, cancel_reason = $3 WHERE id = $1 AND cancelled_at IS NULL")
                        .bind(call_id)
                        .bind(at)
                        .bind(reason)
                        .execute(&mut *tx)
                        .await?;
                    WriteOutcome::Done
                }
                CallWrite::DataOut { call_id, idx, chunk } => {
                    sqlx::query("INSERT INTO function_call_data_out (call_id, idx, chunk) VALUES ($1, $2, $3) ON CONFLICT (call_id, idx) DO NOTHING")
                        .bind(call_id)
                        .bind(*idx as i64)
                        .bind(chunk)
                        .execute(&mut *tx)
                        .await?;
                    WriteOutcome::Done
                }
                CallWrite::Forget { call_id } => {
                    // Its inputs and generator items go with it (trigger, migration 0017).
                    sqlx::query("DELETE FROM function_calls WHERE id = $1").bind(call_id).execute(&mut *tx).await?;
                    WriteOutcome::Done
                }
            };
            outcomes.push(outcome);
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    /// A stored call with its input counts, or None.
    /// Whether any function of `app_id` has an input not answered yet (queued or running).
    pub async fn app_has_unfinished_inputs(&self, app_id: &str) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT CAST(1 AS BIGINT) FROM function_inputs i JOIN functions f ON f.id = i.function_id WHERE i.state = 'queued' AND f.app_id = $1 LIMIT 1",
        )
        .bind(app_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    pub async fn call(&self, call_id: &str) -> Result<Option<CallRecord>> {
        let Some(row) = sqlx::query("SELECT id, function_id, invocation_type, created_at, cancelled_at FROM function_calls WHERE id = $1")
            .bind(call_id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let counts = sqlx::query(
            "SELECT COUNT(*), CAST(COALESCE(SUM(CASE WHEN state = 'queued' THEN 1 ELSE 0 END), 0) AS BIGINT), COALESCE(MAX(seq), 0) FROM function_inputs WHERE call_id = $1",
        )
        .bind(call_id)
        .fetch_one(&self.pool)
        .await?;
        let items: Option<i64> = sqlx::query_scalar("SELECT 1 FROM function_call_data_out WHERE call_id = $1 LIMIT 1").bind(call_id).fetch_optional(&self.pool).await?;
        Ok(Some(CallRecord {
            id: row.get(0),
            function_id: row.get(1),
            invocation_type: row.get(2),
            created_at: row.get(3),
            cancelled: row.get::<Option<f64>, _>(4).is_some(),
            num_inputs: counts.get::<i64, _>(0) as usize,
            num_unfinished: counts.get::<i64, _>(1) as usize,
            last_seq: counts.get::<i64, _>(2),
            has_data_out: items.is_some(),
        }))
    }

    /// How a call's inputs stand, for `FunctionCallGetInfo`: the call's function and creation
    /// time, and its inputs by state ('queued', 'done', 'failed', 'timeout', 'cancelled').
    pub async fn call_progress(&self, call_id: &str) -> Result<Option<CallProgress>> {
        let Some(row) = sqlx::query("SELECT function_id, created_at FROM function_calls WHERE id = $1").bind(call_id).fetch_optional(&self.pool).await? else {
            return Ok(None);
        };
        let states = sqlx::query("SELECT state, COUNT(*) FROM function_inputs WHERE call_id = $1 GROUP BY state")
            .bind(call_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
            .collect();
        Ok(Some(CallProgress { function_id: row.get(0), created_at: row.get(1), states }))
    }

    /// Answers of a call after sequence number `after`, oldest first, at most `limit`.
    pub async fn call_answers_after(&self, call_id: &str, after: i64, limit: i64) -> Result<Vec<AnswerRecord>> {
        let sql = format!("SELECT {ANSWER_COLUMNS} FROM function_inputs WHERE call_id = $1 AND seq > $2 ORDER BY seq LIMIT $3");
        let rows = sqlx::query(&sql).bind(call_id).bind(after).bind(limit).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(answer).collect())
    }

    /// Answers of a call's inputs with index in `lo..=hi`.
    pub async fn call_answers_in_range(&self, call_id: &str, lo: i32, hi: i32) -> Result<Vec<AnswerRecord>> {
        let sql = format!("SELECT {ANSWER_COLUMNS} FROM function_inputs WHERE call_id = $1 AND idx >= $2 AND idx <= $3 AND seq IS NOT NULL ORDER BY idx");
        let rows = sqlx::query(&sql).bind(call_id).bind(lo as i64).bind(hi as i64).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(answer).collect())
    }

    /// Every input still waiting for an answer, oldest first (to queue them again at start).
    pub async fn queued_inputs(&self) -> Result<Vec<QueuedRecord>> {
        let rows = sqlx::query(
            "SELECT i.id, i.call_id, i.function_id, i.idx, i.payload, i.retry_count, c.invocation_type \
             FROM function_inputs i JOIN function_calls c ON c.id = i.call_id \
             WHERE i.state = 'queued' ORDER BY i.created_at, i.idx",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| QueuedRecord {
                input_id: r.get(0),
                call_id: r.get(1),
                function_id: r.get(2),
                idx: r.get(3),
                payload: r.get::<Option<Vec<u8>>, _>(4).unwrap_or_default(),
                retry_count: r.get::<i64, _>(5) as u32,
                invocation_type: r.get(6),
            })
            .collect())
    }

    /// The payload of a queued input.
    pub async fn input_payload(&self, input_id: &str) -> Result<Option<Vec<u8>>> {
        let p: Option<Option<Vec<u8>>> = sqlx::query_scalar("SELECT payload FROM function_inputs WHERE id = $1").bind(input_id).fetch_optional(&self.pool).await?;
        Ok(p.flatten())
    }

    /// The highest answer sequence number ever given (0 when none).
    pub async fn last_answer_seq(&self) -> Result<i64> {
        let n: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM function_inputs").fetch_one(&self.pool).await?;
        Ok(n.unwrap_or(0))
    }

    /// Generator items of a call with an index above `after`, at most `limit`.
    pub async fn call_data_out(&self, call_id: &str, after: u64, limit: i64) -> Result<Vec<(u64, Vec<u8>)>> {
        let rows = sqlx::query("SELECT idx, chunk FROM function_call_data_out WHERE call_id = $1 AND idx > $2 ORDER BY idx LIMIT $3")
            .bind(call_id)
            .bind(after as i64)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| (r.get::<i64, _>(0) as u64, r.get(1))).collect())
    }

    /// Deletes calls made before `before` whose inputs are all answered, with their answers
    /// and items, at most `limit` calls per round. Returns how many calls went.
    pub async fn expire_calls(&self, before: f64, limit: i64) -> Result<usize> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM function_calls c WHERE created_at < $1 \
             AND NOT EXISTS (SELECT 1 FROM function_inputs i WHERE i.call_id = c.id AND i.state = 'queued') \
             ORDER BY created_at LIMIT $2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        if ids.is_empty() {
            return Ok(0);
        }
        let writes: Vec<CallWrite> = ids.iter().map(|id| CallWrite::Forget { call_id: id.clone() }).collect();
        self.calls_write(&writes).await?;
        Ok(ids.len())
    }
}
