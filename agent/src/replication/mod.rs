//! Replication between regions over QUIC (`docs/PROTOCOL.md`): a receiver that keeps replicas
//! of repositories, a sender that pushes a recovery point and the chunks the receiver lacks, and
//! the cluster CA whose certificates both sides demand of each other.

mod client;
pub mod fetch;
pub mod frames;
pub mod pki;
pub mod receiver;
pub mod sender;
pub mod tls;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use hyperexport_shared::RepoError;
use hyperexport_shared::wire::ErrorCode;

/// Chunk ids offered at once on one stream.
pub const OFFER_BATCH: usize = 64;
/// A peer silent this long (keep-alives included) is taken for gone: a receiver that died
/// mid-transfer costs a replication at most this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams a connection may have open at once.
pub const MAX_STREAMS: u32 = 32;

/// A replication failure.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// TLS material is missing or unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The endpoint could not be opened.
    #[error("cannot open a QUIC endpoint on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The connection failed or was refused (TLS handshake included).
    #[error("connection to {peer}: {reason}")]
    Connection {
        /// The peer.
        peer: String,
        /// Why.
        reason: String,
    },
    /// A frame could not be read or written.
    #[error(transparent)]
    Frame(#[from] frames::FrameError),
    /// The peer broke the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The peer answered with an error frame.
    #[error("the receiver refused ({code:?}): {message}")]
    Refused {
        /// Its code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// The local repository or replica failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl ReplicationError {
    /// The error code to tell the peer.
    fn code(&self) -> ErrorCode {
        match self {
            ReplicationError::Repo(RepoError::MissingChunk(_)) => ErrorCode::MissingChunks,
            ReplicationError::Repo(RepoError::Invalid(_) | RepoError::Corrupt { .. } | RepoError::UnsupportedVersion { .. }) => {
                ErrorCode::Repository
            }
            ReplicationError::Repo(_) => ErrorCode::Storage,
            ReplicationError::Refused { code, .. } => *code,
            _ => ErrorCode::Protocol,
        }
    }
}

/// Runs blocking repository work off the reactor.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, RepoError> + Send + 'static) -> Result<T, ReplicationError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ReplicationError::from),
        Err(e) => Err(ReplicationError::Protocol(format!("blocking task failed: {e}"))),
    }
}

/// QUIC transport settings for both sides: windows large enough for a fast WAN link, a bounded
/// number of streams, keep-alives every 2 s so that an idle but live connection is not dropped
/// while a dead peer is noticed within [`IDLE_TIMEOUT`].
fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(MAX_STREAMS.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window((16u32 << 20).into())
        .receive_window((64u32 << 20).into())
        .send_window(64 << 20)
        .keep_alive_interval(Some(Duration::from_secs(2)))
        .max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("10 s is a valid idle timeout")));
    Arc::new(t)
}
