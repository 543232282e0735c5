//! The scheduler's bandwidth turn: allocate when due and queue each agent's changed rates.

use hyperexport_proto::v1::coordinator_message::Body as CoordinatorBody;

use super::Scheduler;
use crate::bandwidth::plan::AgentPlace;
use crate::task_state::is_active;

impl Scheduler {
    /// Runs the bandwidth allocation when it is due (every interval, or after work started or
    /// ended) and sends `Rates` to the agents whose rates changed. Runs after the turn's commit,
    /// so that the turn's assignments are not held up by it; rates need no durability.
    pub(super) fn allocate_bandwidth(&mut self) {
        if !self.bandwidth.due() {
            return;
        }
        let agents: Vec<AgentPlace> = self
            .agents
            .values()
            .map(|a| AgentPlace { id: &a.register.agent_id, region: &a.register.region, site: &a.register.site })
            .collect();
        let work = self
            .jobs
            .values()
            .flat_map(|job| job.tasks.iter().filter(|t| is_active(t) && !t.agent.is_empty()).map(move |t| (t.agent.as_str(), job)));
        let sends = self.bandwidth.run(&agents, work);
        for (agent, rates) in sends {
            self.send(&agent, CoordinatorBody::Rates(rates));
        }
    }
}
