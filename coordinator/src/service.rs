//! `hyperexport.v1.ExportService`: the job API. Submit and cancel go through the scheduler (the
//! only writer of jobs), which answers once the change is stored; reads come from the store on
//! tokio's blocking pool; watches follow the scheduler's stream of job changes. A standby of an
//! HA group serves the reads from etcd with no scheduler (see `follower.rs`).

use std::pin::Pin;

use hyperexport_proto::v1::export_service_server::ExportService;
use hyperexport_proto::v1::{
    CancelJobRequest, GetJobRequest, Job, ListJobsRequest, ListJobsResponse, SubmitRequest, SubmitResponse, WatchJobRequest,
};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::{CoordinatorError, Result};
use crate::jobs;
use crate::scheduler::SchedulerHandle;
use crate::server::stopped;
use crate::store::Store;

/// Jobs per `List` page when the client names no size, and the most it may ask for.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// The job API over a [`Store`].
pub struct ExportApi {
    store: Store,
    /// `None` on a standby, which serves reads only.
    scheduler: Option<SchedulerHandle>,
    /// Turns true when the server shuts down: open watches end so the server can stop.
    stopping: watch::Receiver<bool>,
}

impl ExportApi {
    /// The API over `store` and `scheduler`; `stopping` turns true when the server shuts down.
    pub fn new(store: Store, scheduler: SchedulerHandle, stopping: watch::Receiver<bool>) -> Self {
        ExportApi { store, scheduler: Some(scheduler), stopping }
    }

    /// The reads of the API over `store` alone (a standby's, from etcd): calls that change state
    /// or follow the scheduler are answered `UNAVAILABLE` (a standby routes them to the leader).
    pub fn reads(store: Store, stopping: watch::Receiver<bool>) -> Self {
        ExportApi { store, scheduler: None, stopping }
    }

    fn scheduler(&self) -> Result<&SchedulerHandle, Status> {
        self.scheduler.as_ref().ok_or_else(|| Status::unavailable("this coordinator stands by and answers reads only; ask the leader"))
    }

    async fn job(&self, id: String) -> Result<Job> {
        self.store.get(&id).await?.ok_or(CoordinatorError::NotFound(id))
    }
}

#[tonic::async_trait]
impl ExportService for ExportApi {
    async fn submit(&self, request: Request<SubmitRequest>) -> Result<Response<SubmitResponse>, Status> {
        let job = jobs::new_job(request.into_inner())?;
        let job_id = self.scheduler()?.submit(job).await?;
        Ok(Response::new(SubmitResponse { job_id }))
    }

    async fn get(&self, request: Request<GetJobRequest>) -> Result<Response<Job>, Status> {
        Ok(Response::new(self.job(request.into_inner().job_id).await?))
    }

    async fn list(&self, request: Request<ListJobsRequest>) -> Result<Response<ListJobsResponse>, Status> {
        let req = request.into_inner();
        let limit = match req.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let after = (!req.page_token.is_empty()).then_some(req.page_token);
        let (jobs, more) = self.store.page(limit, after).await?;
        let next_page_token = if more { jobs.last().map(|j| j.id.clone()).unwrap_or_default() } else { String::new() };
        Ok(Response::new(ListJobsResponse { jobs, next_page_token }))
    }

    async fn cancel(&self, request: Request<CancelJobRequest>) -> Result<Response<Job>, Status> {
        Ok(Response::new(self.scheduler()?.cancel(request.into_inner().job_id).await?))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<Job, Status>> + Send>>;

    async fn watch(&self, request: Request<WatchJobRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let id = request.into_inner().job_id;
        // Subscribe before reading, so no change between the read and the subscription is lost.
        let mut changes = self.scheduler()?.subscribe();
        let current = self.job(id.clone()).await?;
        let (tx, rx) = mpsc::channel(16);
        let stopping = self.stopping.clone();
        tokio::spawn(async move {
            let stop = stopped(stopping);
            tokio::pin!(stop);
            // Ends at the job's final state, when the client goes away, or when the server stops.
            let mut done = jobs::is_final(current.state());
            if tx.send(Ok(current)).await.is_err() || done {
                return;
            }
            while !done {
                tokio::select! {
                    change = changes.recv() => match change {
                        Ok(job) if job.id == id => {
                            done = jobs::is_final(job.state());
                            if tx.send(Ok(job)).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            let _ = tx.send(Err(Status::resource_exhausted(format!("watcher fell {n} changes behind; watch again")))).await;
                            return;
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    () = tx.closed() => return,
                    () = &mut stop => {
                        let _ = tx.send(Err(Status::unavailable("the coordinator is shutting down; watch again"))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
