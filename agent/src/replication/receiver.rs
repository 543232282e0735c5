//! The replica receiver: a QUIC endpoint that accepts senders with a certificate from the
//! cluster CA and keeps one replica per source repository under its root folder.
//!
//! Each stream is one session (`docs/PROTOCOL.md`): a hello, then offers answered by wants,
//! wanted chunks stored and acknowledged once durable, and point parts published as one point
//! once every chunk it names is here.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use hyperexport_shared::ChunkId;
use hyperexport_shared::prune::{Retention, prune};
use hyperexport_shared::replica::ReplicaStore;
use hyperexport_shared::storage::LocalStorage;
use hyperexport_shared::wire::{self, ErrorCode, Frame, MAX_POINT};

use super::tls::NodeTls;
use super::{ReplicationError, blocking, frames, transport};
use crate::metrics;

/// How long a session waits for a prune of its replica to finish.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// A bound receiver.
pub struct Receiver {
    endpoint: quinn::Endpoint,
    root: Arc<PathBuf>,
}

impl Receiver {
    /// Opens the endpoint on `listen`; replicas go under `root`.
    pub fn bind(listen: SocketAddr, root: PathBuf, tls: &NodeTls) -> Result<Self, ReplicationError> {
        let mut server = tls.quic_server()?;
        server.transport_config(transport());
        let endpoint = quinn::Endpoint::server(server, listen).map_err(|source| ReplicationError::Bind { addr: listen, source })?;
        std::fs::create_dir_all(&root).map_err(|e| ReplicationError::Repo(hyperexport_shared::RepoError::io("create folder", &root)(e)))?;
        Ok(Receiver { endpoint, root: Arc::new(root) })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr().expect("a bound endpoint has an address")
    }

    /// Accepts connections until the endpoint is closed.
    pub async fn run(self) {
        tracing::info!(addr = %self.local_addr(), root = %self.root.display(), "replica receiver listening");
        while let Some(incoming) = self.endpoint.accept().await {
            let root = Arc::clone(&self.root);
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                match incoming.await {
                    Ok(conn) => connection(conn, root).await,
                    Err(e) => {
                        // A peer without a certificate from our CA ends here, as does random
                        // traffic that got as far as a handshake.
                        tracing::warn!(peer = %remote, error = %e, "replication connection refused");
                        metrics::replication_refused("handshake");
                    }
                }
            });
        }
    }
}

async fn connection(conn: quinn::Connection, root: Arc<PathBuf>) {
    let peer = conn.remote_address();
    tracing::info!(peer = %peer, "replication peer connected");
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let root = Arc::clone(&root);
                tokio::spawn(stream(send, recv, root, peer));
            }
            Err(e) => {
                tracing::info!(peer = %peer, reason = %e, "replication peer disconnected");
                return;
            }
        }
    }
}

async fn stream(mut send: quinn::SendStream, mut recv: quinn::RecvStream, root: Arc<PathBuf>, peer: SocketAddr) {
    let prune_after = match session(&mut send, &mut recv, root).await {
        Ok(prune_after) => prune_after,
        Err(e) => {
            fail(&mut send, peer, e).await;
            None
        }
    };
    let _ = send.finish();
    // Wait until the peer has our last frames (or went away).
    let _ = send.stopped().await;
    // The session's lock is released: retention may take the replica's lock exclusively.
    if let Some((replica, vm, retention)) = prune_after {
        let pruned =
            tokio::task::spawn_blocking(move || prune(&LocalStorage::new(&replica), Some(&vm), &retention, false, LOCK_WAIT)).await;
        match pruned {
            Ok(Ok(report)) => tracing::info!(
                removed = report.removed.values().map(Vec::len).sum::<usize>(),
                chunks = report.chunks_removed,
                "replica pruned"
            ),
            Ok(Err(e)) => tracing::warn!(error = %e, "replica prune failed"),
            Err(e) => tracing::warn!(error = %e, "replica prune task failed"),
        }
    }
}

/// Tells the peer why its stream failed, and logs and counts it.
async fn fail(send: &mut quinn::SendStream, peer: SocketAddr, e: ReplicationError) {
    tracing::warn!(peer = %peer, error = %e, "replication stream failed");
    if matches!(e, ReplicationError::Frame(_) | ReplicationError::Protocol(_)) {
        metrics::replication_refused("protocol");
    }
    let _ = frames::write(send, &Frame::Error { code: e.code(), message: e.to_string() }).await;
}

fn unexpected(frame: &Frame, state: &str) -> ReplicationError {
    ReplicationError::Protocol(format!("unexpected {} frame {state}", frame.name()))
}

/// A prune a published point asked for: the replica folder, the VM and the rules.
type PruneAfter = Option<(PathBuf, String, Retention)>;

/// One session; returns the prune its point, if it published one, asked for.
async fn session(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, root: Arc<PathBuf>) -> Result<PruneAfter, ReplicationError> {
    let Some(first) = frames::read(recv).await? else { return Ok(None) };
    let Frame::Hello { versions, repo } = first else { return Err(unexpected(&first, "before hello")) };
    let Some(version) = wire::negotiate(&versions) else {
        let message = format!("no common protocol version: the sender speaks {versions:?}, this receiver {:?}", wire::VERSIONS);
        return Err(ReplicationError::Refused { code: ErrorCode::Version, message });
    };
    let store = Arc::new(blocking(move || ReplicaStore::open_or_create(&root, &repo)).await?);
    // Held for the whole session: a prune waits until the transfer is over.
    let s = Arc::clone(&store);
    let _lock = blocking(move || s.lock_shared(LOCK_WAIT)).await?;
    frames::write(send, &Frame::Welcome { version }).await?;
    // The wanted chunks of the last offer not received yet, and those received.
    let mut pending: HashSet<ChunkId> = HashSet::new();
    let mut received: Vec<ChunkId> = Vec::new();
    let mut point: Vec<u8> = Vec::new();
    while let Some(frame) = frames::read(recv).await? {
        match frame {
            Frame::Offer(ids) if pending.is_empty() => {
                let (s, count) = (Arc::clone(&store), ids.len() as u16);
                let (bits, wanted) = blocking(move || {
                    let bits = wire::want_bits(&ids, |id| !s.has_chunk(id));
                    let wanted = wire::wanted(&ids, &bits);
                    Ok((bits, wanted))
                })
                .await?;
                pending.extend(wanted);
                frames::write(send, &Frame::Want { count, bits }).await?;
            }
            Frame::Chunk { id, blob } if pending.remove(&id) => {
                if let Some(delay) = crate::faults::receive_delay() {
                    tokio::time::sleep(delay).await;
                }
                metrics::replication_bytes("received", blob.len() as u64);
                let s = Arc::clone(&store);
                blocking(move || s.put_chunk(&id, &blob)).await?;
                received.push(id);
                if pending.is_empty() {
                    let s = Arc::clone(&store);
                    blocking(move || s.sync()).await?;
                    frames::write(send, &Frame::Ack(std::mem::take(&mut received))).await?;
                }
            }
            Frame::PointPart(bytes) if pending.is_empty() => {
                if point.len() + bytes.len() > MAX_POINT {
                    return Err(ReplicationError::Protocol(format!("a point file over {MAX_POINT} bytes")));
                }
                point.extend_from_slice(&bytes);
            }
            Frame::PointEnd(retention) if pending.is_empty() => {
                let (s, bytes) = (Arc::clone(&store), std::mem::take(&mut point));
                let published = blocking(move || s.publish_point(&bytes)).await?;
                tracing::info!(vm = %published.vm, point = %published.id, replica = %store.root().display(), "replica point published");
                metrics::replication_point("received");
                let prune_after = (!retention.is_empty()).then(|| (store.root().to_path_buf(), published.vm.clone(), retention));
                frames::write(send, &Frame::Published { point_id: published.id }).await?;
                // A published point ends the session (the sender closes right after).
                return Ok(prune_after);
            }
            Frame::Fetch(ids) if pending.is_empty() => {
                let s = Arc::clone(&store);
                let mut missing = Vec::new();
                for id in ids {
                    let s = Arc::clone(&s);
                    match blocking(move || s.load_blob(&id)).await? {
                        Some(blob) => {
                            frames::write_chunk(send, &id, &blob).await?;
                            metrics::replication_bytes("fetched", blob.len() as u64);
                        }
                        None => missing.push(id),
                    }
                }
                frames::write(send, &Frame::FetchEnd(missing)).await?;
            }
            Frame::Error { code, message } => {
                tracing::warn!(?code, %message, "the sender gave up the stream");
                return Ok(None);
            }
            other => return Err(unexpected(&other, if pending.is_empty() { "between offers" } else { "while chunks are due" })),
        }
    }
    if !pending.is_empty() {
        return Err(ReplicationError::Protocol(format!("the stream ended with {} wanted chunks not sent", pending.len())));
    }
    Ok(None)
}
