//! The dialing side's common steps: connect with mutual TLS, open a greeted stream, read the
//! receiver's answers.

use std::net::SocketAddr;

use hyperexport_shared::wire::{self, Frame, RepoFiles};

use super::tls::NodeTls;
use super::{ReplicationError, frames, transport};

/// How long a receiver may take to complete the handshake.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A stream of a session, both ways.
pub(super) type Stream = (quinn::SendStream, quinn::RecvStream);

pub(super) fn connection_error(peer: SocketAddr, e: impl std::fmt::Display) -> ReplicationError {
    ReplicationError::Connection { peer: peer.to_string(), reason: e.to_string() }
}

/// Connects to the receiver at `to`, whose certificate must carry `server_name`.
pub(super) async fn connect(
    to: SocketAddr,
    server_name: &str,
    tls: &NodeTls,
) -> Result<(quinn::Endpoint, quinn::Connection), ReplicationError> {
    let bind: SocketAddr = if to.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|source| ReplicationError::Bind { addr: bind, source })?;
    let mut client = tls.quic_client()?;
    client.transport_config(transport());
    endpoint.set_default_client_config(client);
    let connecting = endpoint.connect(to, server_name).map_err(|e| connection_error(to, e))?;
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| connection_error(to, format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())))?
        .map_err(|e| connection_error(to, e))?;
    Ok((endpoint, conn))
}

/// Opens a stream and greets the receiver.
pub(super) async fn open(conn: &quinn::Connection, files: &RepoFiles) -> Result<Stream, ReplicationError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| connection_error(conn.remote_address(), e))?;
    frames::write(&mut send, &Frame::Hello { versions: wire::VERSIONS.to_vec(), repo: files.clone() }).await?;
    match answer(&mut recv).await? {
        Frame::Welcome { version } if wire::VERSIONS.contains(&version) => Ok((send, recv)),
        other => Err(ReplicationError::Protocol(format!("expected welcome, got {}", other.name()))),
    }
}

/// The receiver's next frame; its error frame becomes [`ReplicationError::Refused`].
pub(super) async fn answer(recv: &mut quinn::RecvStream) -> Result<Frame, ReplicationError> {
    match frames::read(recv).await? {
        Some(Frame::Error { code, message }) => Err(ReplicationError::Refused { code, message }),
        Some(frame) => Ok(frame),
        None => Err(ReplicationError::Protocol("the receiver ended the stream".into())),
    }
}
