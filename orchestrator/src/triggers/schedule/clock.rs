//! What "now" is for the scheduler: the engine's clock (the wall clock in production, tokio's
//! paused clock for actors on [`ActorRuntime::Current`](crate::orchestrator::ActorRuntime)), or,
//! as a testing aid, a file.

use std::path::PathBuf;

use crate::orchestrator::EngineClock;

use rpaflow_core::flow::schedule::parse_instant;

/// The scheduler's clock.
#[derive(Debug, Clone)]
pub enum Clock {
    /// The time the run actors read: schedules fire when their runs' timers would.
    Engine(EngineClock),
    /// "Now" is the content of this file: Unix milliseconds or an RFC 3339 time. The scheduler
    /// reads it on every tick (every 100 ms), so a test moves time by rewriting the file. Only
    /// the scheduler follows it; run timers (retries, timeouts, `sleep`) keep real time.
    File(PathBuf),
    /// "Now" is what the test that holds the other end set last (Unix milliseconds).
    #[cfg(test)]
    Manual(std::sync::Arc<std::sync::atomic::AtomicI64>),
}

impl Clock {
    /// The file when one is given, else the engine's clock.
    pub fn new(file: Option<PathBuf>, engine: EngineClock) -> Self {
        file.map_or(Self::Engine(engine), Self::File)
    }

    /// The current time in Unix milliseconds; `Err` when the clock file cannot be read or parsed.
    pub fn now_ms(&self) -> Result<i64, String> {
        match self {
            Self::Engine(clock) => Ok(clock.now_ms()),
            Self::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read clock file {}: {e}", path.display()))?;
                parse_now(&text).map_err(|e| format!("bad clock file {}: {e}", path.display()))
            }
            #[cfg(test)]
            Self::Manual(now) => Ok(now.load(std::sync::atomic::Ordering::SeqCst)),
        }
    }
}

/// Unix milliseconds or an RFC 3339 time.
fn parse_now(text: &str) -> Result<i64, String> {
    let text = text.trim();
    match text.parse::<i64>() {
        Ok(ms) => Ok(ms),
        Err(_) => parse_instant(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_milliseconds_or_rfc3339() {
        assert_eq!(parse_now(" 1500\n"), Ok(1500));
        assert_eq!(parse_now("1970-01-01T00:00:01.5Z"), Ok(1500));
        assert_eq!(
            parse_now("2026-01-01T01:00:00+01:00"),
            Ok(1_767_225_600_000)
        );
        assert!(parse_now("soon").is_err());
    }
}
