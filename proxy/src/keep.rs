//! Which snapshots a schedule keeps, and until when: restic's `forget
//! --keep-*` semantics (docs/lifecycle.md has a worked example), with each
//! keeper given the date until which its rule keeps it, so its locks can
//! follow.
//!
//! Snapshots are taken newest first. `keep_last` keeps the N newest.
//! `keep_hourly`, `keep_daily`, `keep_weekly` (ISO weeks, from Monday),
//! `keep_monthly` and `keep_yearly` each keep the newest snapshot of each
//! of the N most recent periods (of that kind) that have a snapshot;
//! periods without one do not count. `keep_within` keeps every snapshot
//! committed within that long of the newest one. Periods are UTC. A
//! snapshot kept by several rules lists every reason and keeps the latest
//! date.
//!
//! Until when: a keeper of the period starting at `P`, under a rule that
//! keeps N periods, is kept until `P + N periods` (when, with a snapshot
//! in every later period, it would fall out of the rule); a `keep_within`
//! keeper until its time plus that duration; a `keep_last` keeper for no
//! fixed time (it falls out when N newer snapshots exist), so only the
//! minimum lock.

use coffer_proto::SnapshotId;
use serde::{Deserialize, Serialize};

use time::{Date, Month, OffsetDateTime};

/// A schedule that cannot be used as written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeepError(String);

/// A repository policy's schedule as written: `keep = { daily = 7,
/// weekly = 5, monthly = 12, yearly = 2, last = 3, within = "30d" }`
/// (restic's `--keep-daily` and so on).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeepConfig {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
    /// A duration back from the newest snapshot: "30d", "1y", "12h".
    pub within: Option<String>,
}

impl KeepConfig {
    pub fn rules(&self) -> Result<KeepRules, KeepError> {
        let within = match &self.within {
            None => 0,
            Some(text) => humantime::parse_duration(text)
                .map_err(|e| KeepError(format!("keep.within = {text:?}: {e} (e.g. \"30d\", \"1y\")")))?
                .as_secs(),
        };
        let rules = KeepRules {
            keep_last: self.last,
            keep_hourly: self.hourly,
            keep_daily: self.daily,
            keep_weekly: self.weekly,
            keep_monthly: self.monthly,
            keep_yearly: self.yearly,
            keep_within_secs: within,
        };
        if rules.is_empty() {
            return Err(KeepError(
                "keep: give at least one of last, hourly, daily, weekly, monthly, yearly, within".into(),
            ));
        }
        Ok(rules)
    }
}

/// A schedule, as [`select`] applies it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KeepRules {
    pub keep_last: u32,
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub keep_yearly: u32,
    /// Seconds, back from the newest snapshot.
    pub keep_within_secs: u64,
}

impl KeepRules {
    /// Whether the schedule keeps anything at all (no rule: none is set).
    pub fn is_empty(&self) -> bool {
        *self == KeepRules::default()
    }
}

/// A snapshot the schedule keeps, why, and until when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Keeper {
    pub id: SnapshotId,
    pub committed: u64,
    /// "last 3", "daily 2026-12-02", "weekly 2026-W49", "monthly 2026-12",
    /// "yearly 2026", "hourly 2026-12-02T14", "within 7d".
    pub reasons: Vec<String>,
    /// Unix seconds until which a rule keeps it (0: only `keep_last`).
    pub keep_until: u64,
}

#[derive(Clone, Copy)]
enum Period {
    Hour,
    Day,
    Week,
    Month,
    Year,
}

fn at(secs: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs.min(253_402_300_799) as i64).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn unix(date: Date) -> u64 {
    date.midnight().assume_utc().unix_timestamp().max(0) as u64
}

/// The first day of the month `months` after `year`-`month`.
fn month_start(year: i32, month: Month, months: i64) -> Date {
    let index = i64::from(year) * 12 + i64::from(month as u8 - 1) + months;
    let (y, m) = (index.div_euclid(12) as i32, index.rem_euclid(12) as u8 + 1);
    Date::from_calendar_date(y.clamp(-9999, 9999), Month::try_from(m).expect("1..=12"), 1).expect("the first exists")
}

impl Period {
    /// The period `secs` falls in: its name and its start.
    fn of(self, secs: u64) -> (String, u64) {
        let t = at(secs);
        match self {
            Period::Hour => (format!("{}T{:02}", t.date(), t.hour()), secs - secs % 3600),
            Period::Day => (t.date().to_string(), secs - secs % 86_400),
            Period::Week => {
                let (year, week, _) = t.to_iso_week_date();
                let monday =
                    t.date().saturating_sub(time::Duration::days(i64::from(t.weekday().number_days_from_monday())));
                (format!("{year}-W{week:02}"), unix(monday))
            }
            Period::Month => {
                (format!("{}-{:02}", t.year(), t.month() as u8), unix(month_start(t.year(), t.month(), 0)))
            }
            Period::Year => (t.year().to_string(), unix(month_start(t.year(), Month::January, 0))),
        }
    }

    /// The start of the period `n` periods after the one starting at `start`.
    fn after(self, start: u64, n: u32) -> u64 {
        let n64 = u64::from(n);
        match self {
            Period::Hour => start.saturating_add(3600 * n64),
            Period::Day => start.saturating_add(86_400 * n64),
            Period::Week => start.saturating_add(7 * 86_400 * n64),
            Period::Month => {
                let t = at(start);
                unix(month_start(t.year(), t.month(), i64::from(n)))
            }
            Period::Year => {
                let t = at(start);
                unix(month_start(t.year(), Month::January, 12 * i64::from(n)))
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            Period::Hour => "hourly",
            Period::Day => "daily",
            Period::Week => "weekly",
            Period::Month => "monthly",
            Period::Year => "yearly",
        }
    }
}

/// The snapshots `rules` keep among `snapshots` (id, commit time), newest
/// first. Those left out are the schedule's to let go (once their locks
/// end, and unless a legal hold keeps them).
pub fn select(snapshots: &[(SnapshotId, u64)], rules: &KeepRules) -> Vec<Keeper> {
    let mut sorted: Vec<(SnapshotId, u64)> = snapshots.to_vec();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
    let mut keepers: Vec<Keeper> = sorted
        .iter()
        .map(|(id, committed)| Keeper { id: *id, committed: *committed, reasons: Vec::new(), keep_until: 0 })
        .collect();
    for (i, k) in keepers.iter_mut().enumerate().take(rules.keep_last as usize) {
        k.reasons.push(format!("last {}", i + 1));
    }
    let periodic = [
        (Period::Hour, rules.keep_hourly),
        (Period::Day, rules.keep_daily),
        (Period::Week, rules.keep_weekly),
        (Period::Month, rules.keep_monthly),
        (Period::Year, rules.keep_yearly),
    ];
    for (period, count) in periodic {
        let mut seen = 0u32;
        let mut last_period: Option<String> = None;
        for k in keepers.iter_mut() {
            if seen == count {
                break;
            }
            let (name, start) = period.of(k.committed);
            if last_period.as_deref() == Some(name.as_str()) {
                continue;
            }
            // The newest snapshot of a period not seen yet.
            last_period = Some(name.clone());
            seen += 1;
            k.reasons.push(format!("{} {name}", period.name()));
            k.keep_until = k.keep_until.max(period.after(start, count));
        }
    }
    if rules.keep_within_secs > 0 {
        if let Some(newest) = keepers.first().map(|k| k.committed) {
            let from = newest.saturating_sub(rules.keep_within_secs);
            let days = rules.keep_within_secs / 86_400;
            for k in keepers.iter_mut().filter(|k| k.committed >= from) {
                k.reasons.push(format!("within {days}d"));
                k.keep_until = k.keep_until.max(k.committed.saturating_add(rules.keep_within_secs));
            }
        }
    }
    keepers.retain(|k| !k.reasons.is_empty());
    keepers
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;
    /// 2026-01-01T12:00:00Z, a Thursday.
    const NEW_YEAR_NOON: u64 = 1_767_268_800;

    fn snap(n: u64) -> SnapshotId {
        let mut b = [0u8; 16];
        b[8..].copy_from_slice(&n.to_be_bytes());
        SnapshotId::from_bytes(b)
    }

    /// One snapshot a day at noon for `days` days from 2026-01-01.
    fn daily(days: u64) -> Vec<(SnapshotId, u64)> {
        (0..days).map(|d| (snap(d), NEW_YEAR_NOON + d * DAY)).collect()
    }

    fn kept(k: &[Keeper]) -> Vec<u64> {
        let mut days: Vec<u64> = k.iter().map(|k| (k.committed - NEW_YEAR_NOON) / DAY).collect();
        days.sort();
        days
    }

    #[test]
    fn periods_are_utc_calendar_periods() {
        assert_eq!(Period::Day.of(NEW_YEAR_NOON), ("2026-01-01".into(), NEW_YEAR_NOON - 12 * 3600));
        assert_eq!(Period::Hour.of(NEW_YEAR_NOON).0, "2026-01-01T12");
        // 2026-01-01 is in ISO week 1 of 2026, which starts on Monday 2025-12-29.
        assert_eq!(Period::Week.of(NEW_YEAR_NOON), ("2026-W01".into(), NEW_YEAR_NOON - 12 * 3600 - 3 * DAY));
        assert_eq!(Period::Month.of(NEW_YEAR_NOON + 40 * DAY).0, "2026-02");
        let feb = Period::Month.of(NEW_YEAR_NOON + 40 * DAY).1;
        assert_eq!(Period::Month.after(feb, 12), unix(Date::from_calendar_date(2027, Month::February, 1).unwrap()));
        assert_eq!(Period::Year.after(Period::Year.of(NEW_YEAR_NOON).1, 2), 1_830_297_600, "2028-01-01");
    }

    #[test]
    fn restics_worked_example_a_year_of_dailies() {
        // 400 daily snapshots, from 2026-01-01 to 2027-02-04.
        let snaps = daily(400);
        let rules = KeepRules { keep_daily: 7, keep_weekly: 5, keep_monthly: 12, keep_yearly: 2, ..Default::default() };
        let k = select(&snaps, &rules);
        // The newest 7 days (393..=399); the newest of each of 5 ISO weeks:
        // the Sundays 2027-01-10, -17, -24, -31 (days 374, 381, 388, 395)
        // and the newest day, 2027-02-04 (399, in the week still running);
        // the last day of each of 12 months with snapshots (2026-03-31 …
        // 2027-01-31, and 2027-02-04); the newest of 2027 and of 2026
        // (2026-12-31, day 364).
        let mut want: Vec<u64> = (393..=399).collect();
        want.extend([374, 381, 388, 395]);
        want.extend([89, 119, 150, 180, 211, 242, 272, 303, 333, 364, 395]);
        want.sort();
        want.dedup();
        assert_eq!(kept(&k), want);
        let reasons = |day: u64| k.iter().find(|k| k.committed == NEW_YEAR_NOON + day * DAY).unwrap().reasons.clone();
        assert_eq!(reasons(364), ["monthly 2026-12", "yearly 2026"]);
        assert_eq!(reasons(399), ["daily 2027-02-04", "weekly 2027-W05", "monthly 2027-02", "yearly 2027"]);
        // Until when: 2026's yearly keeper, with keep_yearly 2, until 2028.
        let year_keeper = k.iter().find(|k| k.committed == NEW_YEAR_NOON + 364 * DAY).unwrap();
        assert_eq!(year_keeper.keep_until, 1_830_297_600, "2028-01-01");
    }

    #[test]
    fn gaps_do_not_count_and_last_and_within_keep_what_they_say() {
        // Snapshots on days 0, 1, 10 and 30 only.
        let snaps: Vec<_> = [0, 1, 10, 30].iter().map(|d| (snap(*d), NEW_YEAR_NOON + d * DAY)).collect();
        let k = select(&snaps, &KeepRules { keep_daily: 3, ..Default::default() });
        assert_eq!(kept(&k), [1, 10, 30], "three days with snapshots, however far apart");
        let k = select(&snaps, &KeepRules { keep_last: 2, ..Default::default() });
        assert_eq!(kept(&k), [10, 30]);
        assert!(k.iter().all(|k| k.keep_until == 0), "keep_last promises no date");
        let k = select(&snaps, &KeepRules { keep_within_secs: 21 * DAY, ..Default::default() });
        assert_eq!(kept(&k), [10, 30], "within 21 days of the newest, not of now");
        assert!(select(&snaps, &KeepRules::default()).is_empty());
        // Several a day: only the newest of the day is the daily keeper.
        let two: Vec<_> = vec![(snap(1), NEW_YEAR_NOON), (snap(2), NEW_YEAR_NOON + 3600)];
        let k = select(&two, &KeepRules { keep_daily: 5, ..Default::default() });
        assert_eq!(k.iter().map(|k| k.id).collect::<Vec<_>>(), [snap(2)]);
    }
}
