//! A standby's server in an HA group on etcd: it answers job reads (`Get`, `List`) itself from
//! etcd, and forwards every other call, as it came (any service, streams included), to the
//! coordinator that leads, so that a client or an agent given any coordinator's address is
//! answered. What it forwards are writes and views of the leader's live state (attached agents,
//! bandwidth allocation, job watches). While no coordinator leads, it does not listen, and a
//! client given the whole group tries the next address.

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::codegen::{BoxFuture, Bytes, Service, http};
use tonic::transport::{Channel, ClientTlsConfig, ServerTlsConfig};
use tonic::{Status, body::Body};

use hyperexport_proto::v1::export_service_server::ExportServiceServer;

use crate::error::{CoordinatorError, Result};
use crate::service::ExportApi;
use crate::store::Store;

/// Forwards calls to the leader named by a watch (its `HOST:PORT`; `None` while none leads).
#[derive(Clone)]
pub struct Forward {
    leader: watch::Receiver<Option<String>>,
    tls: Option<ClientTlsConfig>,
    /// The channel to the current leader, by its address.
    channel: Arc<Mutex<Option<(String, Channel)>>>,
}

impl Forward {
    /// Forwards to whichever coordinator `leader` names, with `tls` when the group uses it.
    pub fn new(leader: watch::Receiver<Option<String>>, tls: Option<ClientTlsConfig>) -> Self {
        Forward { leader, tls, channel: Arc::new(Mutex::new(None)) }
    }

    /// A channel to the leader now (connecting lazily), or why there is none.
    fn channel(&self) -> Result<(String, Channel), Status> {
        let addr = self.leader.borrow().clone().ok_or_else(|| Status::unavailable("no coordinator leads at the moment; try again"))?;
        let mut cached = self.channel.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((a, c)) = cached.as_ref().filter(|(a, _)| *a == addr) {
            return Ok((a.clone(), c.clone()));
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint =
            Channel::from_shared(format!("{scheme}://{addr}")).map_err(|e| Status::internal(format!("leader address {addr:?}: {e}")))?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(|e| Status::internal(format!("TLS to the leader: {e}")))?;
        }
        let channel = endpoint.connect_lazy();
        *cached = Some((addr.clone(), channel.clone()));
        Ok((addr, channel))
    }
}

impl<B> Service<http::Request<B>> for Forward
where
    B: tonic::codegen::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let target = self.channel();
        Box::pin(async move {
            let (addr, mut channel) = match target {
                Ok(t) => t,
                Err(status) => return Ok(status.into_http()),
            };
            let request = request.map(Body::new);
            let forwarded = async {
                std::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
                channel.call(request).await
            };
            Ok(forwarded.await.unwrap_or_else(|e| Status::unavailable(format!("the leader at {addr} is unreachable: {e}")).into_http()))
        })
    }
}

/// The job reads a standby answers itself.
const READS: [&str; 2] = ["/hyperexport.v1.ExportService/Get", "/hyperexport.v1.ExportService/List"];

/// Serves on `listener` until `shutdown` completes: job reads from `reads` (when given), every
/// other call through `forward`.
pub async fn serve(
    listener: TcpListener,
    forward: Forward,
    reads: Option<Store>,
    tls: Option<ServerTlsConfig>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let mut router = tonic::service::Routes::default().into_axum_router();
    if let Some(store) = reads {
        // The reads end no stream: nothing needs telling when the server stops.
        let api = ExportServiceServer::new(ExportApi::reads(store, watch::channel(false).1));
        for path in READS {
            router = router.route_service(path, api.clone());
        }
    }
    let router = router.fallback_service(forward);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).map_err(|e| CoordinatorError::Serve(format!("TLS configuration: {e}")))?;
    }
    builder
        .add_routes(tonic::service::Routes::from(router))
        .serve_with_incoming_shutdown(crate::server::incoming(listener), shutdown)
        .await
        .map_err(|e| CoordinatorError::Serve(e.to_string()))
}
