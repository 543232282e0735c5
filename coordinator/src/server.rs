//! Serving the coordinator's gRPC API (with server reflection) on a listener.

use std::future::Future;
use std::time::Duration;

use hyperexport_proto::v1::FILE_DESCRIPTOR_SET;
use hyperexport_proto::v1::agent_service_server::AgentServiceServer;
use hyperexport_proto::v1::bandwidth_service_server::BandwidthServiceServer;
use hyperexport_proto::v1::dr_service_server::DrServiceServer;
use hyperexport_proto::v1::export_service_server::ExportServiceServer;
use hyperexport_proto::v1::inventory_service_server::InventoryServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;

use crate::agents::AgentApi;
use crate::error::{CoordinatorError, Result};
use crate::scheduler;
use crate::service::ExportApi;
use crate::store::Store;

/// How long a stopping coordinator waits for clients to close their connections.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Completes once `stopping` is true, or its sender is gone.
pub(crate) async fn stopped(mut stopping: watch::Receiver<bool>) {
    while !*stopping.borrow_and_update() {
        // The sender goes with the server: a server that ended (its scheduler failed) stops
        // everything that waits on it, open watches included.
        if stopping.changed().await.is_err() {
            return;
        }
    }
}

/// Accepted connections with Nagle's algorithm off: the API's messages are small and latency
/// matters (tonic leaves socket options alone for a caller's listener).
pub(crate) fn incoming(listener: TcpListener) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    TcpListenerStream::new(listener).map(|accepted| {
        if let Ok(stream) = &accepted
            && let Err(e) = stream.set_nodelay(true)
        {
            tracing::warn!(error = %e, "cannot turn off Nagle's algorithm on a connection");
        }
        accepted
    })
}

/// How the coordinator serves.
pub struct ServeOptions {
    /// How often agents must send a heartbeat.
    pub heartbeat: Duration,
    /// Mutual TLS for every client, or plaintext.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// How often replication policies are evaluated (RPO, breaches, due runs).
    pub dr_interval: Duration,
}

/// Serves the API on `listener` over `store` until `shutdown` completes; then open watches are
/// ended so that the server can stop. With `tls`, every client must present a certificate from
/// its CA (mutual TLS); without, the API is plaintext.
pub async fn serve(listener: TcpListener, store: Store, options: ServeOptions, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
    let ServeOptions { heartbeat, tls, dr_interval } = options;
    let (stop, stopping) = watch::channel(false);
    let (scheduler, scheduling) = scheduler::start(store.clone(), heartbeat, stopping.clone()).await?;
    let agents = AgentApi::new(scheduler.clone(), stopping.clone());
    let dr_view = crate::dr::runner::spawn(store.clone(), scheduler.clone(), dr_interval, stopping.clone());
    let dr = DrServiceServer::new(crate::dr::service::DrApi::new(store.clone(), dr_view, scheduler.clone()));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| CoordinatorError::Serve(format!("reflection descriptor: {e}")))?;
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).map_err(|e| CoordinatorError::Serve(format!("TLS configuration: {e}")))?;
    }
    let server = builder
        .add_service(BandwidthServiceServer::new(crate::bandwidth::service::BandwidthApi::new(scheduler.clone())))
        .add_service(ExportServiceServer::new(ExportApi::new(store, scheduler, stopping)))
        .add_service(AgentServiceServer::new(agents.clone()))
        .add_service(InventoryServiceServer::new(agents))
        .add_service(dr)
        .add_service(reflection)
        .serve_with_incoming_shutdown(incoming(listener), async move {
            shutdown.await;
            let _ = stop.send(true);
            let _ = stopped_tx.send(());
        });
    // Streams end when `stopping` turns true; a client that keeps an idle connection open does
    // not hold the coordinator up for longer than the grace period.
    tokio::select! {
        served = server => served.map_err(|e| CoordinatorError::Serve(e.to_string())),
        // The scheduler ends on its own only when the store failed: the coordinator stops with it.
        failed = async move {
            match scheduling.await {
                Ok(Err(e)) => e,
                Ok(Ok(())) => std::future::pending().await,
                Err(_) => CoordinatorError::Serve("the scheduler thread ended without a result".into()),
            }
        } => Err(failed),
        () = async {
            if stopped_rx.await.is_ok() {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!(grace_s = SHUTDOWN_GRACE.as_secs(), "connections still open after the grace period; stopping anyway");
            Ok(())
        }
    }
}
