//! Schedule arithmetic: cron expressions in a time zone, turned into fire instants, and the
//! policy for fire times that passed while nothing could fire them. Pure: no clock, no I/O.
//!
//! # Daylight-saving changes
//! A cron expression names wall-clock times in the schedule's zone. Each is mapped to an
//! instant with [`chrono_tz`]:
//! - a wall-clock time that does not exist (the hour skipped when clocks go forward) fires once,
//!   at the first instant after the gap (e.g. `30 2 * * *` in Europe/Berlin on the last Sunday of
//!   March fires at 03:00 CEST, 01:00 UTC); several skipped times collapse into that one fire;
//! - a wall-clock time that happens twice (the hour repeated when clocks go back) fires once, at
//!   its first occurrence (summer time). So a schedule that fires every hour or minute pauses
//!   for the repeated hour instead of firing twice for the same wall-clock time.
//!
//! Cron expressions have five fields (minute precision) or six (seconds first); the cron
//! library ([`croner`]) finds the next matching wall-clock time, this module the instant.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, LocalResult, NaiveDateTime, SubsecRound, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;
use sha2::{Digest, Sha256};

use super::model::{MissedPolicy, Schedule};

/// How late a fire may start and still count as on time rather than missed (a short restart,
/// a busy moment): on time, it runs whatever the missed-fire policy says.
pub const ON_TIME_GRACE: Duration = Duration::from_secs(60);

/// Parses a cron expression of five fields (minute precision) or six (with seconds first).
pub fn parse_cron(text: &str) -> Result<Cron, String> {
    let fields = text.split_whitespace().count();
    if !(5..=6).contains(&fields) {
        return Err(format!(
            "a cron expression has 5 fields (minute hour day-of-month month day-of-week) or 6 \
             (seconds first), `{text}` has {fields}"
        ));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(text)
        .map_err(|e| e.to_string())
}

/// Parses an IANA time zone name (`Europe/Berlin`, `UTC`).
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    Tz::from_str(name).map_err(|_| format!("unknown time zone `{name}`"))
}

/// Every IANA time zone name known, for suggestions.
pub fn timezone_names() -> impl Iterator<Item = &'static str> {
    chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name())
}

/// Parses an RFC 3339 instant (`2026-01-01T00:00:00Z`) into Unix milliseconds.
pub fn parse_instant(text: &str) -> Result<i64, String> {
    DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            format!("`{text}` is not an RFC 3339 time ({e}); write e.g. `2026-01-01T00:00:00Z`")
        })
}

/// A Unix-millisecond instant as RFC 3339 in UTC, for messages.
pub fn format_instant(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms).single().map_or_else(
        || ms.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

/// A schedule ready to compute fire times.
#[derive(Debug, Clone)]
pub struct CompiledSchedule {
    cron: Cron,
    tz: Tz,
    start_ms: Option<i64>,
    end_ms: Option<i64>,
    jitter: Duration,
}

impl Schedule {
    /// Parses the cron expression and time zone (both were validated with the flow).
    pub fn compile(&self) -> Result<CompiledSchedule, String> {
        Ok(CompiledSchedule {
            cron: parse_cron(&self.cron)?,
            tz: parse_timezone(&self.timezone)?,
            start_ms: self.start_ms,
            end_ms: self.end_ms,
            jitter: self.jitter,
        })
    }
}

impl CompiledSchedule {
    /// The first nominal fire time strictly after `after_ms`, within `start`..=`end`; `None`
    /// when the schedule has ended (or matches nothing for years).
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let after_ms = match self.start_ms {
            Some(start) if start > after_ms => start - 1,
            _ => after_ms,
        };
        let after = Utc.timestamp_millis_opt(after_ms).single()?;
        // Wall-clock times are searched as if they were UTC, where no time is skipped or repeated.
        let mut wall = after.with_timezone(&self.tz).naive_local().trunc_subsecs(0);
        for _ in 0..10_000 {
            let next_wall = self
                .cron
                .find_next_occurrence(&Utc.from_utc_datetime(&wall), false)
                .ok()?
                .naive_utc();
            let instant = match self.tz.from_local_datetime(&next_wall) {
                LocalResult::Single(t) => Some(t.timestamp_millis()),
                // Fires once, at the first occurrence.
                LocalResult::Ambiguous(first, _) => Some(first.timestamp_millis()),
                LocalResult::None => self.after_gap(next_wall),
            };
            wall = next_wall;
            let Some(instant) = instant else { continue };
            if instant <= after_ms {
                // The first occurrence of a repeated time, or the end of a gap, already passed.
                continue;
            }
            if self.end_ms.is_some_and(|end| instant > end) {
                return None;
            }
            return Some(instant);
        }
        None
    }

    /// The first instant after the daylight-saving gap that swallowed `wall`.
    fn after_gap(&self, wall: NaiveDateTime) -> Option<i64> {
        let mut probe = wall.trunc_subsecs(0).with_second(0).unwrap_or(wall);
        // Gaps last an hour, rarely two; minutes are the finest step zones use.
        for _ in 0..(24 * 60) {
            probe += chrono::Duration::minutes(1);
            match self.tz.from_local_datetime(&probe) {
                LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => {
                    return Some(t.timestamp_millis());
                }
                LocalResult::None => {}
            }
        }
        None
    }

    /// The next `n` nominal fire times after `after_ms`.
    pub fn upcoming(&self, after_ms: i64, n: usize) -> Vec<i64> {
        std::iter::successors(self.next_after(after_ms), |&at| self.next_after(at))
            .take(n)
            .collect()
    }

    /// The delay of the fire at nominal time `fire_ms`: pseudo-random up to the schedule's
    /// jitter, derived from `key` and the fire time (SHA-256, stable across builds) so that a
    /// restart, or an upgrade, keeps it.
    pub fn jitter_ms(&self, key: &str, fire_ms: i64) -> i64 {
        let max = i64::try_from(self.jitter.as_millis()).unwrap_or(i64::MAX);
        if max == 0 {
            return 0;
        }
        let digest = Sha256::digest(format!("{key}\n{fire_ms}"));
        let mut head = [0u8; 8];
        head.copy_from_slice(&digest[..8]);
        (u64::from_be_bytes(head) % (max as u64 + 1)) as i64
    }
}

/// What to do with the fire times that are due.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FirePlan {
    /// Nominal fire times to start runs for, oldest first.
    pub fire: Vec<i64>,
    /// Missed fire times the policy left out.
    pub skipped: u64,
}

/// Applies the missed-fire policy to due fire times: `due` yields `(nominal, effective)` pairs,
/// oldest first, each with `effective <= now_ms` (effective = nominal + jitter). A fire whose
/// effective time is at most [`ON_TIME_GRACE`] ago is on time and always runs; older ones were
/// missed: `skip` runs none of them, `run_once` the latest, `catch_up` the latest `max`.
pub fn plan_fires(
    policy: MissedPolicy,
    due: impl IntoIterator<Item = (i64, i64)>,
    now_ms: i64,
) -> FirePlan {
    let grace = ON_TIME_GRACE.as_millis() as i64;
    let keep = match policy {
        MissedPolicy::Skip => 0,
        MissedPolicy::RunOnce => 1,
        MissedPolicy::CatchUp { max } => max as usize,
    };
    let mut missed = std::collections::VecDeque::new();
    let mut on_time = Vec::new();
    let mut skipped = 0u64;
    for (nominal, effective) in due {
        if now_ms - effective <= grace {
            on_time.push(nominal);
        } else {
            missed.push_back(nominal);
            if missed.len() > keep {
                missed.pop_front();
                skipped += 1;
            }
        }
    }
    let mut fire: Vec<i64> = missed.into_iter().collect();
    fire.extend(on_time);
    FirePlan { fire, skipped }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn schedule(cron: &str, tz: &str) -> CompiledSchedule {
        Schedule {
            cron: cron.into(),
            timezone: tz.into(),
            start_ms: None,
            end_ms: None,
            jitter: Duration::ZERO,
            missed: MissedPolicy::RunOnce,
            inputs: Map::new(),
        }
        .compile()
        .unwrap()
    }

    fn at(text: &str) -> i64 {
        parse_instant(text).unwrap()
    }

    fn times(s: &CompiledSchedule, from: &str, n: usize) -> Vec<String> {
        s.upcoming(at(from), n)
            .into_iter()
            .map(format_instant)
            .collect()
    }

    #[test]
    fn five_and_six_fields() {
        let s = schedule("*/15 * * * *", "UTC");
        assert_eq!(
            times(&s, "2026-05-01T10:07:30Z", 2),
            ["2026-05-01T10:15:00Z", "2026-05-01T10:30:00Z"]
        );
        let s = schedule("10 0 12 * * *", "UTC");
        assert_eq!(
            times(&s, "2026-05-01T12:00:10Z", 1),
            ["2026-05-02T12:00:10Z"]
        );
        assert!(parse_cron("* * * *").is_err());
        assert!(parse_cron("0 0 0 * * * 2026").is_err());
        assert!(parse_cron("61 * * * *").is_err());
    }

    #[test]
    fn berlin_spring_forward_fires_once_after_the_gap() {
        // 2026-03-29: 02:00 CET becomes 03:00 CEST (01:00 UTC); 02:30 does not exist.
        let s = schedule("0 30 2 * * *", "Europe/Berlin");
        assert_eq!(
            times(&s, "2026-03-27T12:00:00Z", 4),
            [
                "2026-03-28T01:30:00Z", // 02:30 CET
                "2026-03-29T01:00:00Z", // 03:00 CEST, the first instant after the gap
                "2026-03-30T00:30:00Z", // 02:30 CEST
                "2026-03-31T00:30:00Z",
            ]
        );
        // Every 20 minutes: 02:00, 02:20, 02:40 collapse into one fire at the end of the gap.
        let s = schedule("*/20 * * * *", "Europe/Berlin");
        assert_eq!(
            times(&s, "2026-03-29T00:30:00Z", 4),
            [
                "2026-03-29T00:40:00Z", // 01:40 CET
                "2026-03-29T01:00:00Z", // 03:00 CEST (02:00, 02:20, 02:40 skipped)
                "2026-03-29T01:20:00Z",
                "2026-03-29T01:40:00Z",
            ]
        );
    }

    #[test]
    fn berlin_fall_back_fires_once_at_the_first_occurrence() {
        // 2026-10-25: 03:00 CEST becomes 02:00 CET (01:00 UTC); 02:30 happens twice.
        let s = schedule("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            times(&s, "2026-10-24T12:00:00Z", 3),
            [
                "2026-10-25T00:30:00Z", // 02:30 CEST, the first occurrence
                "2026-10-26T01:30:00Z", // 02:30 CET
                "2026-10-27T01:30:00Z",
            ]
        );
        // Asked from inside the repeated hour, the second 02:30 does not fire.
        assert_eq!(
            times(&s, "2026-10-25T01:10:00Z", 1),
            ["2026-10-26T01:30:00Z"]
        );
        // Hourly: 02:00 CEST fires, the repeated 02:00 CET does not, 03:00 CET does.
        let s = schedule("0 * * * *", "Europe/Berlin");
        assert_eq!(
            times(&s, "2026-10-24T23:30:00Z", 3),
            [
                "2026-10-25T00:00:00Z", // 02:00 CEST
                "2026-10-25T02:00:00Z", // 03:00 CET
                "2026-10-25T03:00:00Z",
            ]
        );
    }

    #[test]
    fn new_york_changes() {
        // 2026-03-08 02:00 EST -> 03:00 EDT; 2026-11-01 02:00 EDT -> 01:00 EST.
        let s = schedule("30 2 * * *", "America/New_York");
        assert_eq!(
            times(&s, "2026-03-07T12:00:00Z", 2),
            ["2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"]
        );
        let s = schedule("30 1 * * *", "America/New_York");
        assert_eq!(
            times(&s, "2026-10-31T12:00:00Z", 2),
            ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]
        );
    }

    #[test]
    fn start_and_end_bound_the_fires() {
        let mut s = schedule("0 * * * *", "UTC");
        s.start_ms = Some(at("2026-01-01T05:00:00Z"));
        s.end_ms = Some(at("2026-01-01T07:00:00Z"));
        assert_eq!(
            times(&s, "2026-01-01T00:00:00Z", 5),
            [
                "2026-01-01T05:00:00Z",
                "2026-01-01T06:00:00Z",
                "2026-01-01T07:00:00Z"
            ]
        );
    }

    #[test]
    fn jitter_is_bounded_and_stable() {
        let mut s = schedule("0 * * * *", "UTC");
        assert_eq!(s.jitter_ms("f:t", 1), 0);
        s.jitter = Duration::from_secs(30);
        let j = s.jitter_ms("f:t", 3_600_000);
        assert!((0..=30_000).contains(&j));
        assert_eq!(j, s.jitter_ms("f:t", 3_600_000));
    }

    #[test]
    fn missed_fire_policies() {
        let hour = 3_600_000;
        let now = 10 * hour;
        // Fires at hours 5..=9 were missed; the one at 10h (now) is on time.
        let due: Vec<(i64, i64)> = (5..=10).map(|h| (h * hour, h * hour)).collect();
        let plan = |policy| plan_fires(policy, due.clone(), now);
        assert_eq!(
            plan(MissedPolicy::Skip),
            FirePlan {
                fire: vec![10 * hour],
                skipped: 5
            }
        );
        assert_eq!(
            plan(MissedPolicy::RunOnce),
            FirePlan {
                fire: vec![9 * hour, 10 * hour],
                skipped: 4
            }
        );
        assert_eq!(
            plan(MissedPolicy::CatchUp { max: 3 }),
            FirePlan {
                fire: vec![7 * hour, 8 * hour, 9 * hour, 10 * hour],
                skipped: 2
            }
        );
        assert_eq!(
            plan(MissedPolicy::CatchUp { max: 10 }).fire.len(),
            6,
            "fewer missed than the bound: all of them"
        );
        // A fire late by less than the grace (a quick restart) is on time, whatever the policy.
        let late = plan_fires(MissedPolicy::Skip, [(now - 30_000, now - 30_000)], now);
        assert_eq!(late.fire, vec![now - 30_000]);
    }
}
