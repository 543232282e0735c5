//! Serving the coordinator's gRPC API (with server reflection) on a listener.

use std::future::Future;

use hyperexport_proto::v1::FILE_DESCRIPTOR_SET;
use hyperexport_proto::v1::export_service_server::ExportServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::error::{CoordinatorError, Result};
use crate::service::ExportApi;
use crate::store::JobStore;

/// Serves the API on `listener` over `store` until `shutdown` completes; then open watches are
/// ended so that the server can stop.
pub async fn serve(listener: TcpListener, store: JobStore, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
    let (stop, stopping) = watch::channel(false);
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| CoordinatorError::Serve(format!("reflection descriptor: {e}")))?;
    tonic::transport::Server::builder()
        .add_service(ExportServiceServer::new(ExportApi::new(store, stopping)))
        .add_service(reflection)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            shutdown.await;
            let _ = stop.send(true);
        })
        .await
        .map_err(|e| CoordinatorError::Serve(e.to_string()))
}
