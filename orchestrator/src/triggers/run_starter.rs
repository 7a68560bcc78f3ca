//! [`RunStarter`] for the orchestrator's handle: triggers start runs as StartRun does.

use super::RunStarter;
use crate::error::Result;
use crate::orchestrator::{FlowView, OrchestratorHandle, StartRun};
use crate::state::RunState;

impl RunStarter for OrchestratorHandle {
    async fn start_run(&self, req: StartRun) -> Result<(RunState, bool)> {
        OrchestratorHandle::start_run(self, req).await
    }

    fn latest_flows(&self) -> Result<Vec<FlowView>> {
        self.all_flows()
    }

    fn registrations(&self) -> tokio::sync::watch::Receiver<u64> {
        OrchestratorHandle::registrations(self)
    }

    async fn evaluate<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        OrchestratorHandle::evaluate(self, work).await
    }
}
