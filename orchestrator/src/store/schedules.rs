//! The state of the flows' schedule triggers, by `flow \0 trigger`.

use serde::{Deserialize, Serialize};

use super::{Store, decode, encode, storage};
use crate::error::Result;

/// The state of one schedule trigger of a flow (`schedules` tree, by `flow \0 trigger`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    pub flow: String,
    pub trigger: String,
    /// What the fire times were computed from (cron, zone, start, end); a new flow version that
    /// changes it makes the schedule start afresh from the present.
    pub spec: String,
    /// The next nominal fire time not yet handled; `None` once the schedule has ended.
    pub next_ms: Option<i64>,
    pub paused: bool,
    /// The nominal time of the last fire that started a run.
    pub last_fire_ms: Option<i64>,
}

fn schedule_key(flow: &str, trigger: &str) -> Vec<u8> {
    [flow.as_bytes(), &[0], trigger.as_bytes()].concat()
}

impl Store {
    /// Stores a schedule's state, durably.
    pub async fn put_schedule(&self, record: &ScheduleRecord) -> Result<()> {
        self.inner
            .schedules
            .insert(schedule_key(&record.flow, &record.trigger), encode(record)?)
            .map_err(storage("put schedule"))?;
        self.commit().await
    }

    /// Forgets a schedule (its trigger left the flow), durably.
    pub async fn remove_schedule(&self, flow: &str, trigger: &str) -> Result<()> {
        self.inner
            .schedules
            .remove(schedule_key(flow, trigger))
            .map_err(storage("remove schedule"))?;
        self.commit().await
    }

    /// Every stored schedule, by flow and trigger.
    pub fn schedules(&self) -> Result<Vec<ScheduleRecord>> {
        self.inner
            .schedules
            .iter()
            .values()
            .map(|value| decode(&value.map_err(storage("scan schedules"))?, "schedule"))
            .collect()
    }
}
