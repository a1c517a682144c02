//! Schedules of Modal functions: `modal.Period` and `modal.Cron`, when they fire next, and the
//! loop that fires them.
//!
//! A [`Schedule`] is built from a plain [`Spec`] (what the client put in `Function.schedule`,
//! translated by the protocol adapter) and answers one question: given when the schedule was
//! registered (its *anchor*) and the last tick it fired, which tick is due now and which comes
//! next ([`Schedule::plan`]). [`run`] drives any number of schedules through a [`Host`] that
//! owns their durable state.
//!
//! ```
//! use chrono::{TimeZone, Utc};
//! use ferry_schedule::{Schedule, Spec};
//!
//! let every_day_at_six = Schedule::new(&Spec::cron("0 6 * * *", "America/New_York")).unwrap();
//! let anchor = Utc.with_ymd_and_hms(2026, 1, 10, 12, 0, 0).unwrap();
//! // 06:00 in New York is 11:00 UTC in winter.
//! assert_eq!(every_day_at_six.next_after(anchor, anchor), Some(Utc.with_ymd_and_hms(2026, 1, 11, 11, 0, 0).unwrap()));
//! ```
//!
//! **The firing rule.** Ticks are instants on the schedule's grid: for a period, the anchor
//! plus whole multiples of the period; for a cron expression, the instants its fields match
//! in its time zone. A tick fires once: the host records it before running the function, and
//! a tick at or before the recorded one never fires again (not after a restart either). When
//! several ticks were missed (the server was down), only the latest of them fires, once, and
//! the schedule goes on from the grid.

mod driver;

use std::str::FromStr;

use chrono::{Months, TimeDelta, TimeZone};
use serde::{Deserialize, Serialize};

pub use chrono::{DateTime, Utc};
pub use driver::{run, Entry, Host};

/// Seconds since the UNIX epoch (how the store keeps times) as an instant.
pub fn from_unix(secs: f64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros((secs * 1e6).round() as i64).unwrap_or_default()
}

/// An instant as seconds since the UNIX epoch.
pub fn to_unix(t: DateTime<Utc>) -> f64 {
    t.timestamp_micros() as f64 / 1e6
}

/// A schedule as the user wrote it, in plain types.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Spec {
    /// `modal.Period(...)`: every so many calendar units after the anchor; like dateutil's
    /// `relativedelta`, months and years keep the day of the month (clamped to the month's end).
    Period {
        years: i32,
        months: i32,
        weeks: i32,
        days: i32,
        hours: i32,
        minutes: i32,
        seconds: f64,
    },
    /// `modal.Cron(cron_string, timezone=...)`: five cron fields in an IANA time zone.
    Cron { cron_string: String, timezone: String },
}

impl Spec {
    pub fn cron(cron_string: &str, timezone: &str) -> Spec {
        Spec::Cron { cron_string: cron_string.to_string(), timezone: timezone.to_string() }
    }

    pub fn seconds(seconds: f64) -> Spec {
        Spec::Period { years: 0, months: 0, weeks: 0, days: 0, hours: 0, minutes: 0, seconds }
    }

    /// The spec as stored text (JSON).
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("a schedule spec serialises")
    }

    pub fn from_text(text: &str) -> Result<Spec, ScheduleError> {
        serde_json::from_str(text).map_err(|e| ScheduleError::Corrupt(e.to_string()))
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScheduleError {
    #[error("invalid cron expression '{expr}': {reason} (use five fields: minute hour day-of-month month day-of-week)")]
    Cron { expr: String, reason: String },
    #[error("unknown time zone '{0}': use an IANA name such as 'UTC' or 'America/New_York'")]
    TimeZone(String),
    #[error("invalid Period: {0}")]
    Period(String),
    #[error("stored schedule is unreadable: {0}")]
    Corrupt(String),
}

/// The shortest period Ferry runs; shorter ones would only queue up calls.
pub const MIN_PERIOD_SECS: f64 = 1.0;

/// A validated schedule that computes its ticks.
#[derive(Clone, Debug)]
pub struct Schedule {
    spec: Spec,
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    Period(Period),
    Cron(Box<croner::Cron>, chrono_tz::Tz),
}

#[derive(Clone, Copy, Debug)]
struct Period {
    months: i64,
    days: i64,
    nanos: i64,
}

/// What is due for a schedule at a given moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The tick to fire now: the latest tick that is due and was not fired yet.
    pub fire: Option<DateTime<Utc>>,
    /// The tick after that (or after the last fired one), when there is one.
    pub next: Option<DateTime<Utc>>,
}

impl Schedule {
    /// Validates a spec: five cron fields and a known time zone, or a positive period of at
    /// least [`MIN_PERIOD_SECS`].
    pub fn new(spec: &Spec) -> Result<Schedule, ScheduleError> {
        let kind = match spec {
            Spec::Period { years, months, weeks, days, hours, minutes, seconds } => {
                let fields = [*years, *months, *weeks, *days, *hours, *minutes];
                if fields.iter().any(|v| *v < 0) || *seconds < 0.0 || !seconds.is_finite() {
                    return Err(ScheduleError::Period("every field must be zero or positive".into()));
                }
                let months = *years as i64 * 12 + *months as i64;
                let days = *weeks as i64 * 7 + *days as i64;
                let secs = *hours as f64 * 3600.0 + *minutes as f64 * 60.0 + seconds;
                if months == 0 && days == 0 && secs < MIN_PERIOD_SECS {
                    return Err(ScheduleError::Period(format!("the period must be at least {MIN_PERIOD_SECS} second")));
                }
                Kind::Period(Period { months, days, nanos: (secs * 1e9).round() as i64 })
            }
            Spec::Cron { cron_string, timezone } => {
                let fields = cron_string.split_whitespace().count();
                if fields != 5 && !cron_string.trim_start().starts_with('@') {
                    return Err(ScheduleError::Cron { expr: cron_string.clone(), reason: format!("it has {fields} fields") });
                }
                let cron = croner::Cron::new(cron_string)
                    .parse()
                    .map_err(|e| ScheduleError::Cron { expr: cron_string.clone(), reason: e.to_string() })?;
                let tz = if timezone.is_empty() {
                    chrono_tz::UTC
                } else {
                    chrono_tz::Tz::from_str(timezone).map_err(|_| ScheduleError::TimeZone(timezone.clone()))?
                };
                Kind::Cron(Box::new(cron), tz)
            }
        };
        Ok(Schedule { spec: spec.clone(), kind })
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The first tick strictly after `after` (and after `anchor`, the moment the schedule was
    /// registered, which a period counts from).
    pub fn next_after(&self, anchor: DateTime<Utc>, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let after = after.max(anchor);
        match &self.kind {
            Kind::Period(p) => p.first_after(anchor, after),
            Kind::Cron(cron, tz) => cron_next(cron, tz, after),
        }
    }

    /// The tick due at `now` given the last fired tick, coalescing missed ticks into the latest
    /// one, and the tick after it. See the crate docs for the rule.
    pub fn plan(&self, anchor: DateTime<Utc>, last_fired: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Plan {
        let from = last_fired.map_or(anchor, |l| l.max(anchor));
        let Some(first) = self.next_after(anchor, from) else { return Plan { fire: None, next: None } };
        if first > now {
            return Plan { fire: None, next: Some(first) };
        }
        let latest = self.latest_at_or_before(anchor, first, now);
        Plan { fire: Some(latest), next: self.next_after(anchor, latest) }
    }

    /// The latest tick `t` with `first <= t <= now`, given that `first` is a tick `<= now`.
    fn latest_at_or_before(&self, anchor: DateTime<Utc>, first: DateTime<Utc>, now: DateTime<Utc>) -> DateTime<Utc> {
        match &self.kind {
            Kind::Period(p) => {
                let k = p.first_index_after(anchor, now);
                p.tick(anchor, k - 1).filter(|t| *t >= first).unwrap_or(first)
            }
            Kind::Cron(cron, tz) => {
                // Search a recent window first, so a long outage does not walk every missed tick.
                for window in [TimeDelta::hours(1), TimeDelta::days(2), TimeDelta::days(40), TimeDelta::days(400), TimeDelta::days(3000)] {
                    let lo = (now - window).max(first);
                    let mut latest = None;
                    let mut t = lo - TimeDelta::seconds(1);
                    while let Some(next) = cron_next(cron, tz, t).filter(|n| *n <= now) {
                        latest = Some(next);
                        t = next;
                    }
                    if let Some(found) = latest {
                        return found;
                    }
                    if lo == first {
                        break;
                    }
                }
                first
            }
        }
    }
}

impl Period {
    /// The anchor plus `k` periods, each unit multiplied by `k` (so month ends do not drift).
    fn tick(&self, anchor: DateTime<Utc>, k: i64) -> Option<DateTime<Utc>> {
        let mut t = anchor;
        let months = self.months.checked_mul(k)?;
        if months > 0 {
            t = t.checked_add_months(Months::new(u32::try_from(months).ok()?))?;
        }
        t = t.checked_add_signed(TimeDelta::try_days(self.days.checked_mul(k)?)?)?;
        t.checked_add_signed(TimeDelta::nanoseconds(self.nanos.checked_mul(k)?))
    }

    fn approx_secs(&self) -> f64 {
        self.months as f64 * 30.436875 * 86400.0 + self.days as f64 * 86400.0 + self.nanos as f64 / 1e9
    }

    /// The smallest `k >= 1` whose tick is strictly after `t`.
    fn first_index_after(&self, anchor: DateTime<Utc>, t: DateTime<Utc>) -> i64 {
        let elapsed = (t - anchor).num_milliseconds() as f64 / 1000.0;
        let mut k = ((elapsed / self.approx_secs()).floor() as i64).max(1);
        while k > 1 && self.tick(anchor, k - 1).is_some_and(|x| x > t) {
            k -= 1;
        }
        while self.tick(anchor, k).is_some_and(|x| x <= t) {
            k += 1;
        }
        k
    }

    fn first_after(&self, anchor: DateTime<Utc>, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.tick(anchor, self.first_index_after(anchor, t))
    }
}

/// The first instant strictly after `after` that the cron fields match in `tz`. Wall-clock
/// times that a DST change repeats fire once (at their first occurrence); those it skips fire
/// at the first valid instant after the gap.
fn cron_next(cron: &croner::Cron, tz: &chrono_tz::Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let mut from = tz.from_utc_datetime(&after.naive_utc());
    // Matching works on local wall-clock time; an ambiguous local time can map to an instant
    // before `after`, so keep searching forward in wall-clock time until it is later.
    for _ in 0..4 {
        let found = cron.find_next_occurrence(&from, false).ok()?;
        let utc = found.with_timezone(&Utc);
        if utc > after {
            return Some(utc);
        }
        from = found;
    }
    None
}

#[cfg(test)]
mod tests;
