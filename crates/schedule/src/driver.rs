//! The loop that fires schedules. It owns no state: each round it reads the live schedules
//! from its [`Host`], fires what is due, and sleeps until the next tick, a change, or shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use crate::{Schedule, Spec};

/// Longest sleep between rounds, so a missed wake-up costs at most this much delay.
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// How long to wait before reading the schedules again after the host failed to list them.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(2);

/// One registered schedule, as the host keeps it.
#[derive(Clone, Debug)]
pub struct Entry {
    /// What the host fires (for Ferry, a function id).
    pub key: String,
    pub spec: Spec,
    /// When the schedule was registered; a period counts from here.
    pub anchor: DateTime<Utc>,
    /// The last tick fired, as recorded durably by the host.
    pub last_tick: Option<DateTime<Utc>>,
}

/// Where schedules live and what firing one means.
pub trait Host: Send + Sync + 'static {
    /// The schedules that may fire now.
    fn entries(&self) -> impl Future<Output = Result<Vec<Entry>, String>> + Send;

    /// Fires `tick` of `entry`. The host must record the tick durably *before* running anything
    /// and skip ticks not later than the recorded one, so that no tick fires twice.
    fn fire(&self, entry: &Entry, tick: DateTime<Utc>) -> impl Future<Output = ()> + Send;
}

/// Runs the schedules of `host` until `shutdown` resolves. `wake` is notified whenever the set
/// of schedules changes (a deploy, a stop), so a new schedule's first tick is not missed.
///
/// A spec the host hands over that does not validate is logged and skipped.
pub async fn run<H: Host>(host: H, wake: Arc<Notify>, shutdown: impl Future<Output = ()> + Send) {
    tokio::pin!(shutdown);
    loop {
        let changed = wake.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let sleep = match host.entries().await {
            Ok(entries) => fire_due(&host, entries).await,
            Err(e) => {
                tracing::warn!("cannot read schedules: {e}");
                RETRY_AFTER_ERROR
            }
        };
        tokio::select! {
            _ = &mut shutdown => return,
            _ = &mut changed => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// Fires every due tick; returns how long to sleep until the next one.
async fn fire_due<H: Host>(host: &H, entries: Vec<Entry>) -> Duration {
    let mut next: Option<DateTime<Utc>> = None;
    for entry in entries {
        let schedule = match Schedule::new(&entry.spec) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(key = entry.key, "skipping schedule: {e}");
                continue;
            }
        };
        let plan = schedule.plan(entry.anchor, entry.last_tick, Utc::now());
        if let Some(tick) = plan.fire {
            host.fire(&entry, tick).await;
        }
        if let Some(n) = plan.next {
            next = Some(next.map_or(n, |m| m.min(n)));
        }
    }
    match next {
        // A millisecond past the tick, so the next round finds it due.
        Some(n) => ((n - Utc::now()).to_std().unwrap_or(Duration::ZERO) + Duration::from_millis(1)).min(MAX_SLEEP),
        None => MAX_SLEEP,
    }
}
