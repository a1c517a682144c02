use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::distributions::Alphanumeric;
use rand::Rng;
use tokio::sync::Notify;

/// Seconds since the UNIX epoch, as the Modal protocol's timestamps are.
pub fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// A fresh object id with the client's type prefix, e.g. `di-` for Dicts.
/// The client dispatches `from_id` on the prefix, so it must match the object's kind.
pub fn new_id(prefix: &str) -> String {
    let suffix: String = rand::thread_rng().sample_iter(&Alphanumeric).take(22).map(char::from).collect();
    format!("{prefix}-{suffix}")
}

pub(crate) fn random_secret(len: usize) -> String {
    rand::thread_rng().sample_iter(&Alphanumeric).take(len).map(char::from).collect()
}

/// Wakes waiters blocked on a topic (a queue, an app's log) when a write lands on it.
#[derive(Default)]
pub(crate) struct Notifier {
    topics: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Notifier {
    pub(crate) fn topic(&self, key: &str) -> Arc<Notify> {
        let mut topics = self.topics.lock().unwrap();
        topics.entry(key.to_string()).or_default().clone()
    }

    pub(crate) fn fire(&self, key: &str) {
        let topic = self.topics.lock().unwrap().get(key).cloned();
        if let Some(n) = topic {
            n.notify_waiters();
        }
    }

    pub(crate) fn forget(&self, key: &str) {
        self.topics.lock().unwrap().remove(key);
    }
}
