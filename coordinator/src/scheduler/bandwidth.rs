//! The scheduler's bandwidth turn: allocate when due and queue each agent's changed rates.

use hyperexport_proto::v1::coordinator_message::Body as CoordinatorBody;

use super::Scheduler;
use crate::bandwidth::plan::AgentPlace;

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
        let jobs = &self.jobs;
        let work = self.loads.active().filter_map(|(agent, job)| jobs.get(job).map(|job| (agent, job)));
        let sends = self.bandwidth.run(&agents, work);
        for (agent, rates) in sends {
            self.send(&agent, CoordinatorBody::Rates(rates));
        }
    }
}
