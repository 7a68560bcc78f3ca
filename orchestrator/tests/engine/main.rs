//! The orchestrator in-process, on the in-process bus, with paused time: the scenarios that need
//! no real process (retries and attempt timeouts, approval deadlines, concurrency policies,
//! subflows, schedules, recovery from a store written by a previous instance). Each asserts what a user
//! would see: statuses, attempts, outputs, the order and timing of events.
//!
//! # Layout
//! - `harness`: the orchestrator, its scripted worker and the paused runtime.
//! - one file per subject.

mod approvals;
mod concurrency;
mod harness;
mod recovery;
mod retries;
mod schedules;
mod subflows;
mod watching;
