//! Wake-ups across replicas on PostgreSQL: every topic a write fires (a queue, an app's log, a
//! call's outputs, the schedules) is announced with `NOTIFY` on the channel [`CHANNEL`], and
//! one `LISTEN`ing connection per store fires the topics other replicas announce. Waiters
//! always read the database again when woken, so a notification carries no data, a duplicate
//! costs one read, and after the listening connection was lost every waiter is woken once
//! (a notification may have been missed meanwhile).

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::AnyPool;
use tokio::sync::{mpsc, oneshot};

use crate::util::{random_secret, Notifier};
use crate::{Result, StoreError};

/// The `LISTEN`/`NOTIFY` channel of Ferry's replicas (per database).
pub(crate) const CHANNEL: &str = "ferry_topics";

/// PostgreSQL's limit on a payload is 8000 bytes; topics are packed into payloads below it.
const MAX_PAYLOAD: usize = 7000;

/// Starts relaying `notifier`'s topics to and from the other replicas on the database at `url`.
/// Returns once this store listens, so a write on another replica after it is never missed.
/// Both tasks end when the notifier is dropped (the last clone of its store).
pub(crate) async fn relay(notifier: &Arc<Notifier>, pool: &AnyPool, url: &str, location: &str) -> Result<()> {
    // Tells this replica's own announcements from the others' (it fired its topics already).
    let me = random_secret(12);
    let mut listener = PgListener::connect(url)
        .await
        .map_err(|e| StoreError::Unavailable(format!("cannot listen for notifications on the database {location}: {e}")))?;
    listener.listen(CHANNEL).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = oneshot::channel();
    if notifier.outbox.set(tx).is_err() || notifier.relay_stop.set(stop_tx).is_err() {
        return Err(StoreError::Io("a store relays its notifications once".into()));
    }
    tokio::spawn(announce(rx, pool.clone(), me.clone(), location.to_string()));
    tokio::spawn(listen(listener, Arc::downgrade(notifier), stop_rx, me, location.to_string()));
    Ok(())
}

/// Sends fired topics with `pg_notify`, many per statement when they come in bursts.
async fn announce(mut rx: mpsc::UnboundedReceiver<String>, pool: AnyPool, me: String, location: String) {
    while let Some(first) = rx.recv().await {
        let mut topics = BTreeSet::from([first]);
        while let Ok(t) = rx.try_recv() {
            topics.insert(t);
        }
        for payload in payloads(&me, topics) {
            let sent = sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(&payload).execute(&pool).await;
            if let Err(e) = sent {
                // Other replicas' waiters read again at their own timeouts; nothing is lost.
                tracing::warn!("cannot notify the other replicas on {location}: {e}");
            }
        }
    }
}

/// `me` then the topics, one per line, cut into payloads PostgreSQL accepts.
fn payloads(me: &str, topics: BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = me.to_string();
    for t in topics {
        if cur.len() + 1 + t.len() > MAX_PAYLOAD && cur.len() > me.len() {
            out.push(std::mem::replace(&mut cur, me.to_string()));
        }
        cur.push('\n');
        cur.push_str(&t);
    }
    if cur.len() > me.len() {
        out.push(cur);
    }
    out
}

/// Fires the topics other replicas announce, until the notifier is dropped.
async fn listen(mut listener: PgListener, notifier: Weak<Notifier>, mut stop: oneshot::Receiver<()>, me: String, location: String) {
    loop {
        let next = tokio::select! {
            _ = &mut stop => return,
            next = listener.try_recv() => next,
        };
        let Some(notifier) = notifier.upgrade() else { return };
        match next {
            Ok(Some(n)) => {
                let mut lines = n.payload().split('\n');
                if lines.next() == Some(me.as_str()) {
                    continue;
                }
                for topic in lines {
                    notifier.fire_local(topic);
                }
            }
            // The connection was lost and is being made again: anything may have been missed.
            Ok(None) => {
                tracing::warn!("lost the notification connection to {location}; reconnecting");
                notifier.fire_all_local();
            }
            Err(e) => {
                tracing::warn!("cannot receive notifications from {location}: {e}");
                notifier.fire_all_local();
                drop(notifier);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn payloads_stay_under_the_limit() {
        let topics = (0..2000).map(|i| format!("qu-{i:022}")).collect();
        let p = super::payloads("me", topics);
        assert!(p.len() > 1);
        assert!(p.iter().all(|p| p.len() <= super::MAX_PAYLOAD && p.starts_with("me\n")));
        assert_eq!(p.iter().map(|p| p.lines().count() - 1).sum::<usize>(), 2000);
        assert!(super::payloads("me", Default::default()).is_empty());
    }
}
