//! `hyperexport.v1.BandwidthService`: the configuration and the last allocation, both kept by the
//! scheduler (which persists a new configuration before it answers, so that changes are applied
//! and stored in the order they came).

use hyperexport_proto::v1::bandwidth_service_server::BandwidthService;
use hyperexport_proto::v1::{BandwidthConfig, BandwidthTree, GetBandwidthConfigRequest, ShowBandwidthRequest};
use tonic::{Request, Response, Status};

use super::config::compile;
use crate::scheduler::SchedulerHandle;

/// The service.
pub struct BandwidthApi {
    scheduler: SchedulerHandle,
}

impl BandwidthApi {
    /// Serves the bandwidth configuration and allocation kept by `scheduler`.
    pub fn new(scheduler: SchedulerHandle) -> Self {
        BandwidthApi { scheduler }
    }
}

#[tonic::async_trait]
impl BandwidthService for BandwidthApi {
    async fn get_config(&self, _: Request<GetBandwidthConfigRequest>) -> Result<Response<BandwidthConfig>, Status> {
        Ok(Response::new(self.scheduler.bandwidth_config().await?))
    }

    async fn set_config(&self, request: Request<BandwidthConfig>) -> Result<Response<BandwidthConfig>, Status> {
        let compiled = compile(request.into_inner())?;
        Ok(Response::new(self.scheduler.set_bandwidth(compiled).await?))
    }

    async fn show(&self, _: Request<ShowBandwidthRequest>) -> Result<Response<BandwidthTree>, Status> {
        Ok(Response::new(self.scheduler.bandwidth_tree().await?))
    }
}
