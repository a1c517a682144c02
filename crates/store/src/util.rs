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

/// `YYYY-MM-DD HH:MM:SS` in UTC for a Unix time such as [`now`] returns; used by every
/// listing that shows a stored time.
pub fn format_utc(unix: f64) -> String {
    let secs = unix.floor() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod time_tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::format_utc(0.0), "1970-01-01 00:00:00");
        assert_eq!(super::format_utc(1_795_000_000.0), "2026-11-18 11:06:40");
        assert_eq!(super::format_utc(951_782_400.0), "2000-02-29 00:00:00");
        assert_eq!(super::format_utc(1_709_210_096.5), "2024-02-29 12:34:56");
    }
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

/// A database URL as logs and errors may show it: scheme, user, host, port and database name,
/// never the password or the query (which may carry one).
///
/// ```
/// assert_eq!(ferry_store::redact_database_url("postgres://ferry:s3cret@db:5432/ferry?sslmode=disable"), "postgres://ferry@db:5432/ferry");
/// ```
pub fn redact_database_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(a database URL that is not of the form scheme://…)".to_string();
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}@{host}{path}")
        }
        None => format!("{scheme}://{authority}{path}"),
    }
}

/// Wakes waiters blocked on a topic (a queue, an app's log) when a write lands on it.
#[derive(Default)]
pub(crate) struct Notifier {
    topics: Mutex<HashMap<String, Arc<Notify>>>,
    /// On PostgreSQL: where fired topics go to reach the other replicas (see `notify.rs`).
    pub(crate) outbox: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<String>>,
    /// Dropped with the notifier, which ends the relay's listening task.
    pub(crate) relay_stop: std::sync::OnceLock<tokio::sync::oneshot::Sender<()>>,
}

impl Notifier {
    pub(crate) fn topic(&self, key: &str) -> Arc<Notify> {
        let mut topics = self.topics.lock().unwrap();
        topics.entry(key.to_string()).or_default().clone()
    }

    /// Wakes this process's waiters on `key` and, on PostgreSQL, every other replica's.
    pub(crate) fn fire(&self, key: &str) {
        self.fire_local(key);
        if let Some(outbox) = self.outbox.get() {
            let _ = outbox.send(key.to_string());
        }
    }

    /// Wakes this process's waiters on `key` only.
    pub(crate) fn fire_local(&self, key: &str) {
        let topic = self.topics.lock().unwrap().get(key).cloned();
        if let Some(n) = topic {
            n.notify_waiters();
        }
    }

    /// Wakes every waiter of this process (after notifications may have been missed): each
    /// reads the database again and waits anew.
    pub(crate) fn fire_all_local(&self) {
        let topics: Vec<Arc<Notify>> = self.topics.lock().unwrap().values().cloned().collect();
        for n in topics {
            n.notify_waiters();
        }
    }

    pub(crate) fn forget(&self, key: &str) {
        self.topics.lock().unwrap().remove(key);
    }
}

#[cfg(test)]
mod redact_tests {
    use super::redact_database_url as r;

    #[test]
    fn passwords_never_show() {
        assert_eq!(r("postgres://u:pw@h:5432/d"), "postgres://u@h:5432/d");
        assert_eq!(r("postgres://u:p%40w@h/d?password=x"), "postgres://u@h/d");
        assert_eq!(r("postgresql://h/d"), "postgresql://h/d");
        assert_eq!(r("postgres://u:p@ss@h/d"), "postgres://u@h/d");
        assert!(!r("nonsense:pw").contains("pw"));
    }
}
