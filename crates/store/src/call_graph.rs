//! The call graph: which input made which function call, for `FunctionCall.get_call_graph()`.
//! The inputs themselves live in `function_inputs` (calls.rs); an edge also keeps the parent
//! input's call, function, task and final status, so the graph stays whole after the parent's
//! call was read and forgotten.

use std::collections::{HashSet, VecDeque};

use sqlx::Row;

use crate::{Result, Store};

/// A call in a graph.
#[derive(Clone, Debug)]
pub struct GraphCall {
    pub call_id: String,
    pub function_id: String,
    /// The input that made the call; None for the root.
    pub parent_input_id: Option<String>,
}

/// An input in a graph: its stored state ('queued', 'done', 'failed', 'cancelled') while its
/// row exists, else the final status its children's edges recorded (None while unknown).
#[derive(Clone, Debug)]
pub struct GraphInput {
    pub input_id: String,
    pub call_id: String,
    pub task_id: String,
    pub state: Option<String>,
    pub status: Option<i32>,
}

/// How many calls up the graph is walked to find its root.
const MAX_DEPTH: usize = 100;

impl Store {
    /// Records that `call_id` of `function_id` was made by input `parent_input_id`, running in
    /// `parent_task_id`. Nothing is written when the parent input is unknown.
    pub async fn record_call_edge(&self, call_id: &str, function_id: &str, parent_input_id: &str, parent_task_id: Option<&str>) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO function_call_edges (call_id, function_id, parent_input_id, parent_call_id, parent_function_id, parent_task_id, created_at) \
             SELECT $1, $2, id, call_id, function_id, $4, $5 FROM function_inputs WHERE id = $3 \
             ON CONFLICT (call_id) DO NOTHING",
        )
        .bind(call_id)
        .bind(function_id)
        .bind(parent_input_id)
        .bind(parent_task_id)
        .bind(crate::now())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Whether the call already has its edge (a retried `FunctionMap` records it once).
    pub async fn call_edge_exists(&self, call_id: &str) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM function_call_edges WHERE call_id = $1").bind(call_id).fetch_optional(&self.pool).await?;
        Ok(row.is_some())
    }

    /// Records the final status of an input that made calls.
    pub async fn set_parent_status(&self, parent_input_id: &str, status: i32) -> Result<()> {
        sqlx::query("UPDATE function_call_edges SET parent_status = $2 WHERE parent_input_id = $1")
            .bind(parent_input_id)
            .bind(status as i64)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The whole graph `call_id` belongs to, from its root down, at most `limit` inputs; the
    /// flag says whether it was cut.
    pub async fn call_graph(&self, call_id: &str, limit: usize) -> Result<(Vec<GraphCall>, Vec<GraphInput>, bool)> {
        // Up to the root.
        let mut root = call_id.to_string();
        for _ in 0..MAX_DEPTH {
            let parent: Option<String> = sqlx::query_scalar("SELECT parent_call_id FROM function_call_edges WHERE call_id = $1")
                .bind(&root)
                .fetch_optional(&self.pool)
                .await?;
            match parent {
                Some(p) if p != root => root = p,
                _ => break,
            }
        }
        let mut calls = Vec::new();
        let mut inputs = Vec::new();
        let mut seen = HashSet::new();
        let mut queue = VecDeque::from([root]);
        let mut truncated = false;
        while let Some(call) = queue.pop_front() {
            if !seen.insert(call.clone()) {
                continue;
            }
            if inputs.len() >= limit {
                truncated = true;
                break;
            }
            let edge = sqlx::query("SELECT function_id, parent_input_id FROM function_call_edges WHERE call_id = $1")
                .bind(&call)
                .fetch_optional(&self.pool)
                .await?;
            let mut function_id: Option<String> = edge.as_ref().map(|r| r.get(0));
            let parent_input_id: Option<String> = edge.as_ref().map(|r| r.get(1));
            if function_id.is_none() {
                function_id = sqlx::query_scalar("SELECT function_id FROM function_calls WHERE id = $1").bind(&call).fetch_optional(&self.pool).await?;
            }
            // The call's inputs as stored, then those only its children's edges remember.
            let rows = sqlx::query("SELECT id, state, task_id, function_id FROM function_inputs WHERE call_id = $1 ORDER BY idx LIMIT $2")
                .bind(&call)
                .bind((limit - inputs.len()) as i64)
                .fetch_all(&self.pool)
                .await?;
            let mut here = HashSet::new();
            for r in &rows {
                let id: String = r.get(0);
                here.insert(id.clone());
                function_id.get_or_insert_with(|| r.get(3));
                inputs.push(GraphInput { input_id: id, call_id: call.clone(), state: Some(r.get(1)), status: None, task_id: r.get::<Option<String>, _>(2).unwrap_or_default() });
            }
            let remembered = sqlx::query(
                "SELECT parent_input_id, MAX(parent_task_id), MAX(parent_status), MAX(parent_function_id) FROM function_call_edges \
                 WHERE parent_call_id = $1 GROUP BY parent_input_id",
            )
            .bind(&call)
            .fetch_all(&self.pool)
            .await?;
            for r in &remembered {
                let id: String = r.get(0);
                let (task_id, status, parent_function): (Option<String>, Option<i64>, Option<String>) = (r.get(1), r.get(2), r.get(3));
                let status = status.map(|s| s as i32);
                if let Some(f) = parent_function {
                    function_id.get_or_insert(f);
                }
                match inputs.iter_mut().find(|i| i.input_id == id && i.call_id == call) {
                    Some(i) => {
                        i.status = i.status.or(status);
                        if i.task_id.is_empty() {
                            i.task_id = task_id.unwrap_or_default();
                        }
                    }
                    None if !here.contains(&id) => {
                        inputs.push(GraphInput { input_id: id, call_id: call.clone(), state: None, status, task_id: task_id.unwrap_or_default() });
                    }
                    None => {}
                }
            }
            calls.push(GraphCall { call_id: call.clone(), function_id: function_id.unwrap_or_default(), parent_input_id });
            let children: Vec<String> = sqlx::query_scalar("SELECT call_id FROM function_call_edges WHERE parent_call_id = $1 ORDER BY created_at")
                .bind(&call)
                .fetch_all(&self.pool)
                .await?;
            queue.extend(children);
        }
        Ok((calls, inputs, truncated))
    }

    /// Deletes edges made before `before` (Unix seconds), with the calls' retention.
    pub async fn expire_call_edges(&self, before: f64) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM function_call_edges WHERE created_at < $1").bind(before).execute(&self.pool).await?.rows_affected())
    }
}
