use chrono::{DateTime, TimeZone, Utc};

use super::*;

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
}

fn cron(expr: &str, tz: &str) -> Schedule {
    Schedule::new(&Spec::cron(expr, tz)).unwrap()
}

fn period(months: i32, days: i32, seconds: f64) -> Schedule {
    Schedule::new(&Spec::Period { years: 0, months, weeks: 0, days, hours: 0, minutes: 0, seconds }).unwrap()
}

/// The next `n` ticks after `from`.
fn ticks(s: &Schedule, anchor: DateTime<Utc>, from: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
    let mut out = Vec::new();
    let mut t = from;
    for _ in 0..n {
        t = s.next_after(anchor, t).unwrap();
        out.push(t);
    }
    out
}

#[test]
fn period_counts_from_the_anchor() {
    let s = period(0, 0, 2.0);
    let a = utc(2026, 3, 1, 0, 0, 0);
    assert_eq!(ticks(&s, a, a, 3), vec![utc(2026, 3, 1, 0, 0, 2), utc(2026, 3, 1, 0, 0, 4), utc(2026, 3, 1, 0, 0, 6)]);
    // A query far later lands back on the grid.
    assert_eq!(s.next_after(a, utc(2026, 3, 2, 0, 0, 1)), Some(utc(2026, 3, 2, 0, 0, 2)));
    assert_eq!(s.next_after(a, utc(2026, 3, 2, 0, 0, 2)), Some(utc(2026, 3, 2, 0, 0, 4)));
}

#[test]
fn period_of_months_keeps_the_day_and_clamps_month_ends() {
    let s = period(1, 0, 0.0);
    let a = utc(2026, 1, 31, 9, 0, 0);
    assert_eq!(ticks(&s, a, a, 3), vec![utc(2026, 2, 28, 9, 0, 0), utc(2026, 3, 31, 9, 0, 0), utc(2026, 4, 30, 9, 0, 0)]);
    let yearly = Schedule::new(&Spec::Period { years: 1, months: 0, weeks: 0, days: 0, hours: 0, minutes: 0, seconds: 0.0 }).unwrap();
    let leap = utc(2028, 2, 29, 0, 0, 0);
    assert_eq!(yearly.next_after(leap, leap), Some(utc(2029, 2, 28, 0, 0, 0)));
    assert_eq!(yearly.next_after(leap, utc(2031, 6, 1, 0, 0, 0)), Some(utc(2032, 2, 29, 0, 0, 0)));
}

#[test]
fn fractional_and_mixed_periods() {
    let s = Schedule::new(&Spec::Period { years: 0, months: 0, weeks: 1, days: 1, hours: 1, minutes: 1, seconds: 1.5 }).unwrap();
    let a = utc(2026, 1, 1, 0, 0, 0);
    let t = s.next_after(a, a).unwrap();
    assert_eq!(t, a + TimeDelta::days(8) + TimeDelta::seconds(3661) + TimeDelta::milliseconds(500));
}

#[test]
fn invalid_specs_are_refused_with_a_reason() {
    assert!(matches!(Schedule::new(&Spec::seconds(0.0)), Err(ScheduleError::Period(_))));
    assert!(matches!(Schedule::new(&Spec::seconds(0.2)), Err(ScheduleError::Period(_))));
    assert!(matches!(
        Schedule::new(&Spec::Period { years: 0, months: -1, weeks: 0, days: 0, hours: 0, minutes: 0, seconds: 5.0 }),
        Err(ScheduleError::Period(_))
    ));
    assert!(matches!(Schedule::new(&Spec::cron("* * * *", "UTC")), Err(ScheduleError::Cron { .. })));
    assert!(matches!(Schedule::new(&Spec::cron("0 * * * * *", "UTC")), Err(ScheduleError::Cron { .. })));
    assert!(matches!(Schedule::new(&Spec::cron("61 * * * *", "UTC")), Err(ScheduleError::Cron { .. })));
    assert!(matches!(Schedule::new(&Spec::cron("0 6 * * *", "Mars/Olympus")), Err(ScheduleError::TimeZone(_))));
    let msg = Schedule::new(&Spec::cron("0 6 * * *", "Mars/Olympus")).unwrap_err().to_string();
    assert!(msg.contains("Mars/Olympus") && msg.contains("IANA"), "{msg}");
    // The client's default time zone is "UTC"; an empty one means UTC too.
    assert!(Schedule::new(&Spec::cron("0 6 * * *", "")).is_ok());
}

#[test]
fn cron_fields_ranges_steps_lists_and_names() {
    let a = utc(2026, 6, 1, 0, 0, 0); // a Monday
    let s = cron("*/15 9-10 * * *", "UTC");
    assert_eq!(
        ticks(&s, a, a, 9),
        vec![
            utc(2026, 6, 1, 9, 0, 0),
            utc(2026, 6, 1, 9, 15, 0),
            utc(2026, 6, 1, 9, 30, 0),
            utc(2026, 6, 1, 9, 45, 0),
            utc(2026, 6, 1, 10, 0, 0),
            utc(2026, 6, 1, 10, 15, 0),
            utc(2026, 6, 1, 10, 30, 0),
            utc(2026, 6, 1, 10, 45, 0),
            utc(2026, 6, 2, 9, 0, 0),
        ]
    );
    let s = cron("0 12 * * MON,FRI", "UTC");
    assert_eq!(ticks(&s, a, a, 3), vec![utc(2026, 6, 1, 12, 0, 0), utc(2026, 6, 5, 12, 0, 0), utc(2026, 6, 8, 12, 0, 0)]);
    let s = cron("30 4 1 JAN,JUL *", "UTC");
    assert_eq!(ticks(&s, a, a, 2), vec![utc(2026, 7, 1, 4, 30, 0), utc(2027, 1, 1, 4, 30, 0)]);
    // Day of month and day of week both restricted: either matches, as in cron.
    let s = cron("0 0 13 * 5", "UTC");
    assert_eq!(ticks(&s, a, a, 3), vec![utc(2026, 6, 5, 0, 0, 0), utc(2026, 6, 12, 0, 0, 0), utc(2026, 6, 13, 0, 0, 0)]);
}

#[test]
fn cron_in_a_time_zone_follows_its_daylight_saving() {
    let s = cron("0 6 * * *", "America/New_York");
    // Winter: UTC-5; summer: UTC-4.
    assert_eq!(s.next_after(utc(2026, 1, 10, 0, 0, 0), utc(2026, 1, 10, 0, 0, 0)), Some(utc(2026, 1, 10, 11, 0, 0)));
    assert_eq!(s.next_after(utc(2026, 7, 10, 0, 0, 0), utc(2026, 7, 10, 0, 0, 0)), Some(utc(2026, 7, 10, 10, 0, 0)));
    // Across the spring change (2026-03-08) the UTC time moves by an hour.
    let a = utc(2026, 3, 7, 0, 0, 0);
    assert_eq!(ticks(&s, a, a, 2), vec![utc(2026, 3, 7, 11, 0, 0), utc(2026, 3, 8, 10, 0, 0)]);
    let tokyo = cron("0 9 * * *", "Asia/Tokyo");
    assert_eq!(tokyo.next_after(a, a), Some(utc(2026, 3, 8, 0, 0, 0)));
}

#[test]
fn a_time_skipped_by_spring_forward_fires_once_after_the_gap() {
    // 02:30 does not exist in New York on 2026-03-08 (02:00 EST -> 03:00 EDT).
    let s = cron("30 2 * * *", "America/New_York");
    let a = utc(2026, 3, 7, 12, 0, 0);
    let t = ticks(&s, a, a, 2);
    assert_eq!(t[0], utc(2026, 3, 8, 7, 0, 0)); // 03:00 EDT, the first instant after the gap
    assert_eq!(t[1], utc(2026, 3, 9, 6, 30, 0)); // 02:30 EDT the next day
}

#[test]
fn a_time_repeated_by_fall_back_fires_once() {
    // 01:30 happens twice in New York on 2026-11-01 (EDT, then EST).
    let s = cron("30 1 * * *", "America/New_York");
    let a = utc(2026, 10, 31, 12, 0, 0);
    let t = ticks(&s, a, a, 2);
    assert_eq!(t[0], utc(2026, 11, 1, 5, 30, 0)); // 01:30 EDT
    assert_eq!(t[1], utc(2026, 11, 2, 6, 30, 0)); // 01:30 EST the next day, not 01:30 EST on the 1st
    // Asked from inside the repeated hour, it does not go back to the first 01:30.
    assert_eq!(s.next_after(a, utc(2026, 11, 1, 6, 0, 0)), Some(utc(2026, 11, 2, 6, 30, 0)));
}

#[test]
fn plan_fires_each_tick_once_and_coalesces_missed_ticks() {
    let s = period(0, 0, 10.0);
    let a = utc(2026, 1, 1, 0, 0, 0);
    // Before the first tick: nothing to fire.
    assert_eq!(s.plan(a, None, utc(2026, 1, 1, 0, 0, 5)), Plan { fire: None, next: Some(utc(2026, 1, 1, 0, 0, 10)) });
    // On the tick: fire it.
    let p = s.plan(a, None, utc(2026, 1, 1, 0, 0, 10));
    assert_eq!(p, Plan { fire: Some(utc(2026, 1, 1, 0, 0, 10)), next: Some(utc(2026, 1, 1, 0, 0, 20)) });
    // Once recorded, the same moment fires nothing (a restart right after a fire).
    assert_eq!(s.plan(a, p.fire, utc(2026, 1, 1, 0, 0, 12)).fire, None);
    // Down for a minute: the six missed ticks fire once, as the latest of them.
    let p = s.plan(a, Some(utc(2026, 1, 1, 0, 0, 10)), utc(2026, 1, 1, 0, 1, 15));
    assert_eq!(p, Plan { fire: Some(utc(2026, 1, 1, 0, 1, 10)), next: Some(utc(2026, 1, 1, 0, 1, 20)) });
    assert_eq!(s.plan(a, p.fire, utc(2026, 1, 1, 0, 1, 15)).fire, None);

    let c = cron("* * * * *", "UTC");
    let p = c.plan(a, Some(utc(2026, 1, 1, 0, 1, 0)), utc(2026, 1, 3, 7, 42, 30));
    assert_eq!(p, Plan { fire: Some(utc(2026, 1, 3, 7, 42, 0)), next: Some(utc(2026, 1, 3, 7, 43, 0)) });
    let yearly = cron("0 0 1 1 *", "UTC");
    let p = yearly.plan(a, None, utc(2029, 6, 1, 0, 0, 0));
    assert_eq!(p.fire, Some(utc(2029, 1, 1, 0, 0, 0)));
}

#[test]
fn a_rescheduled_function_counts_from_its_new_anchor() {
    let s = period(0, 0, 60.0);
    let redeployed = utc(2026, 1, 1, 0, 10, 30);
    // The old last tick is before the new anchor: the next tick is a period after the anchor.
    let p = s.plan(redeployed, Some(utc(2026, 1, 1, 0, 10, 0)), utc(2026, 1, 1, 0, 11, 0));
    assert_eq!(p, Plan { fire: None, next: Some(utc(2026, 1, 1, 0, 11, 30)) });
}

#[test]
fn spec_text_round_trips() {
    for spec in [Spec::seconds(2.5), Spec::cron("0 6 * * MON-FRI", "Europe/Paris")] {
        assert_eq!(Spec::from_text(&spec.to_text()).unwrap(), spec);
    }
    assert!(Spec::from_text("{").is_err());
}

struct FakeHost {
    entries: std::sync::Mutex<Vec<Entry>>,
    fired: std::sync::Mutex<Vec<(String, DateTime<Utc>)>>,
}

impl Host for std::sync::Arc<FakeHost> {
    async fn entries(&self) -> Result<Vec<Entry>, String> {
        Ok(self.entries.lock().unwrap().clone())
    }
    async fn fire(&self, entry: &Entry, tick: DateTime<Utc>) {
        let mut entries = self.entries.lock().unwrap();
        let e = entries.iter_mut().find(|e| e.key == entry.key).unwrap();
        if e.last_tick.is_some_and(|l| l >= tick) {
            return;
        }
        e.last_tick = Some(tick);
        self.fired.lock().unwrap().push((entry.key.clone(), tick));
    }
}

#[tokio::test]
async fn the_loop_fires_on_time_wakes_on_change_and_stops() {
    let now = Utc::now();
    let host = std::sync::Arc::new(FakeHost {
        entries: std::sync::Mutex::new(vec![Entry { key: "a".into(), spec: Spec::seconds(1.0), anchor: now, last_tick: None }]),
        fired: Default::default(),
    });
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(run(host.clone(), wake.clone(), async {
        let _ = stop_rx.await;
    }));
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    // A schedule added later (with a wake) fires without waiting for the loop's long sleep.
    host.entries.lock().unwrap().push(Entry { key: "b".into(), spec: Spec::seconds(1.0), anchor: Utc::now(), last_tick: None });
    wake.notify_waiters();
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    stop_tx.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(1), handle).await.expect("the loop stops on shutdown").unwrap();
    let fired = host.fired.lock().unwrap().clone();
    let a: Vec<_> = fired.iter().filter(|(k, _)| k == "a").map(|(_, t)| *t).collect();
    let b: Vec<_> = fired.iter().filter(|(k, _)| k == "b").collect();
    assert_eq!(a, vec![now + TimeDelta::seconds(1), now + TimeDelta::seconds(2)], "{fired:?}");
    assert_eq!(b.len(), 1, "{fired:?}");
}
