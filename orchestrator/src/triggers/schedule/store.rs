//! [`ScheduleStore`]: where the scheduler keeps the state of each schedule, the orchestrator's
//! store in service.

use std::future::Future;

use crate::error::Result;
use crate::store::{ScheduleRecord, Store};

/// The schedules' state, by flow and trigger; writes resolve once they are durable.
pub trait ScheduleStore: Send + Sync + 'static {
    /// Every stored schedule.
    fn schedules(&self) -> Result<Vec<ScheduleRecord>>;

    /// Stores a schedule's state.
    fn put_schedule(&self, record: &ScheduleRecord) -> impl Future<Output = Result<()>> + Send;

    /// Forgets a schedule (its trigger left the flow).
    fn remove_schedule(&self, flow: &str, trigger: &str)
    -> impl Future<Output = Result<()>> + Send;
}

impl ScheduleStore for Store {
    fn schedules(&self) -> Result<Vec<ScheduleRecord>> {
        Store::schedules(self)
    }

    async fn put_schedule(&self, record: &ScheduleRecord) -> Result<()> {
        Store::put_schedule(self, record).await
    }

    async fn remove_schedule(&self, flow: &str, trigger: &str) -> Result<()> {
        Store::remove_schedule(self, flow, trigger).await
    }
}
