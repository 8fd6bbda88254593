//! Job schedules: cron patterns and the jitter added to each start.

use std::time::Duration;

use croner::parser::{CronParser, Seconds};
use croner::Cron;

/// Parses a job's schedule: a cron pattern of 5 fields (or 6, seconds
/// first), or an alias such as `@daily`.
pub fn parse_schedule(pattern: &str) -> Result<Cron, ScheduleError> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(pattern)
        .map_err(|e| ScheduleError { pattern: pattern.to_string(), reason: e.to_string() })
}

/// A schedule that is not a cron pattern.
#[derive(Debug, thiserror::Error)]
#[error("schedule {pattern:?} is not a cron pattern: {reason}")]
pub struct ScheduleError {
    pub pattern: String,
    pub reason: String,
}

/// Up to `max_secs` of random delay.
pub fn jitter(max_secs: u64) -> Duration {
    if max_secs == 0 {
        return Duration::ZERO;
    }
    let mut r = [0u8; 8];
    aws_lc_rs::rand::fill(&mut r).expect("the system RNG failed");
    Duration::from_millis(u64::from_le_bytes(r) % (max_secs * 1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        assert!(parse_schedule("0 2 * * *").is_ok());
        assert!(parse_schedule("*/2 * * * * *").is_ok(), "seconds first");
        assert!(parse_schedule("@daily").is_ok());
        assert!(parse_schedule("0 2 * *").unwrap_err().to_string().contains("not a cron pattern"));
        assert!(parse_schedule("61 * * * *").is_err());
    }

    #[test]
    fn jitter_stays_below_its_bound() {
        assert_eq!(jitter(0), Duration::ZERO);
        assert!((0..200).all(|_| jitter(3) < Duration::from_secs(3)));
    }
}
