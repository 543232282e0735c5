//! `hyperexport.v1.ExportService`: the job API. Store calls (each an fsynced transaction) run on
//! tokio's blocking pool; every change is persisted before it is answered or broadcast.

use std::pin::Pin;
use std::sync::Arc;

use hyperexport_proto::v1::export_service_server::ExportService;
use hyperexport_proto::v1::{
    CancelJobRequest, GetJobRequest, Job, JobState, ListJobsRequest, ListJobsResponse, SubmitRequest, SubmitResponse, WatchJobRequest,
};
use tokio::sync::{Mutex, broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::{CoordinatorError, Result};
use crate::jobs;
use crate::store::JobStore;

/// How many job changes a slow watcher may fall behind before it is told to resubscribe.
const WATCH_BACKLOG: usize = 1024;

/// The job API over a [`JobStore`].
pub struct ExportApi {
    store: Arc<JobStore>,
    changes: broadcast::Sender<Job>,
    /// Serialises read-modify-write of jobs (cancel against cancel).
    writes: Mutex<()>,
}

impl ExportApi {
    /// The API over `store`.
    pub fn new(store: JobStore) -> Self {
        ExportApi { store: Arc::new(store), changes: broadcast::channel(WATCH_BACKLOG).0, writes: Mutex::new(()) }
    }

    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&JobStore) -> Result<T> + Send + 'static) -> Result<T> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(&store)).await.map_err(|e| CoordinatorError::Store { op: "run", detail: e.to_string() })?
    }

    async fn job(&self, id: String) -> Result<Job> {
        let lookup = id.clone();
        self.blocking(move |s| s.get(&lookup)).await?.ok_or(CoordinatorError::NotFound(id))
    }
}

fn state_of(job: &Job) -> JobState {
    JobState::try_from(job.state).unwrap_or(JobState::Unspecified)
}

#[tonic::async_trait]
impl ExportService for ExportApi {
    async fn submit(&self, request: Request<SubmitRequest>) -> Result<Response<SubmitResponse>, Status> {
        let job = jobs::new_job(request.into_inner())?;
        let stored = job.clone();
        self.blocking(move |s| s.put(&stored)).await?;
        tracing::info!(job = %job.id, tasks = job.tasks.len(), target = %job.target, "job accepted");
        let _ = self.changes.send(job.clone());
        Ok(Response::new(SubmitResponse { job_id: job.id }))
    }

    async fn get(&self, request: Request<GetJobRequest>) -> Result<Response<Job>, Status> {
        Ok(Response::new(self.job(request.into_inner().job_id).await?))
    }

    async fn list(&self, _request: Request<ListJobsRequest>) -> Result<Response<ListJobsResponse>, Status> {
        let jobs = self.blocking(|s| s.list()).await?;
        Ok(Response::new(ListJobsResponse { jobs }))
    }

    async fn cancel(&self, request: Request<CancelJobRequest>) -> Result<Response<Job>, Status> {
        let _guard = self.writes.lock().await;
        let mut job = self.job(request.into_inner().job_id).await?;
        jobs::cancel(&mut job)?;
        let stored = job.clone();
        self.blocking(move |s| s.put(&stored)).await?;
        tracing::info!(job = %job.id, "job cancelled");
        let _ = self.changes.send(job.clone());
        Ok(Response::new(job))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<Job, Status>> + Send>>;

    async fn watch(&self, request: Request<WatchJobRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let id = request.into_inner().job_id;
        // Subscribe before reading, so no change between the read and the subscription is lost.
        let mut changes = self.changes.subscribe();
        let current = self.job(id.clone()).await?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let mut last = state_of(&current);
            if tx.send(Ok(current)).await.is_err() || jobs::is_final(last) {
                return;
            }
            loop {
                match changes.recv().await {
                    Ok(job) if job.id == id => {
                        last = state_of(&job);
                        if tx.send(Ok(job)).await.is_err() || jobs::is_final(last) {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let _ = tx.send(Err(Status::resource_exhausted(format!("watcher fell {n} changes behind; watch again")))).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
