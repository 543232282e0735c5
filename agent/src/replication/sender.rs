//! The sending side: pushes one recovery point of a local repository to a receiver, with only
//! the chunks the receiver lacks, over several streams of one QUIC connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyperexport_shared::lock::LockMode;
use hyperexport_shared::point::RecoveryPoint;
use hyperexport_shared::prune::Retention;
use hyperexport_shared::wire::{self, Frame, RepoFiles};
use hyperexport_shared::{ChunkId, Repository};
use serde::Serialize;

use super::client::{answer, connect, open};
use super::tls::NodeTls;
use super::{OFFER_BATCH, ReplicationError, blocking, frames};
use crate::bandwidth::adaptive::SAMPLE_EVERY;
use crate::bandwidth::{PathWatch, Throttle};
use crate::metrics;

/// Bytes of a point file per frame.
const POINT_PART: usize = 1 << 20;

/// Logical bytes of chunks offered at once on one stream (at least one chunk): what a stream
/// may have to send again when the receiver dies before acknowledging them.
pub const OFFER_BYTES: u64 = 8 << 20;

/// How far a replication has got.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SendProgress {
    /// Chunks the point names.
    pub chunks: usize,
    /// Chunks handed to the connection so far.
    pub chunks_sent: u64,
    /// Their stored bytes.
    pub chunk_bytes_sent: u64,
    /// Chunks the receiver has acknowledged as durable, or already had.
    pub chunks_done: u64,
}

/// Called with the progress each time a batch is handed to the connection or acknowledged.
pub type ProgressFn = Arc<dyn Fn(SendProgress) + Send + Sync>;

/// How to send.
pub struct SendOptions {
    /// Streams that carry chunks at once.
    pub streams: usize,
    /// The name the receiver's certificate must carry (its node name, or the IP address).
    pub server_name: String,
    /// Where progress goes, if anywhere.
    pub progress: Option<ProgressFn>,
    /// Once the point is published, the receiver prunes the VM's points by these rules (default:
    /// keep everything).
    pub retention: Retention,
    /// Bandwidth limits on the chunks sent, and adaptive mode's view of the path (none: as fast
    /// as it goes).
    pub throttle: Option<Throttle>,
}

/// Progress shared by a replication's streams.
struct Counters {
    chunks: usize,
    sent: AtomicU64,
    bytes: AtomicU64,
    done: AtomicU64,
    report: Option<ProgressFn>,
}

impl Counters {
    fn add(&self, sent: u64, bytes: u64, done: u64) {
        let progress = SendProgress {
            chunks: self.chunks,
            chunks_sent: self.sent.fetch_add(sent, Ordering::Relaxed) + sent,
            chunk_bytes_sent: self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes,
            chunks_done: self.done.fetch_add(done, Ordering::Relaxed) + done,
        };
        if let Some(report) = &self.report {
            report(progress);
        }
    }
}

/// What a replication moved.
#[derive(Debug, Clone, Serialize)]
pub struct SendReport {
    /// The point sent.
    pub point: String,
    /// The VM.
    pub vm: String,
    /// Chunks the point names.
    pub chunks: usize,
    /// Chunks the receiver lacked and was sent.
    pub chunks_sent: usize,
    /// Stored (compressed, encrypted) bytes of those chunks.
    pub chunk_bytes_sent: u64,
    /// Logical bytes of the point's disks.
    pub logical_bytes: u64,
    /// UDP payload bytes this side put on the wire, QUIC and TLS overhead included.
    pub wire_bytes: u64,
    /// Wall time.
    pub seconds: f64,
}

/// Sends `point` of `repo` to the receiver at `to`.
pub async fn send_point(
    repo: Arc<Repository>,
    point: RecoveryPoint,
    to: SocketAddr,
    tls: &NodeTls,
    options: &SendOptions,
) -> Result<SendReport, ReplicationError> {
    let started = Instant::now();
    let (endpoint, conn) = connect(to, &options.server_name, tls).await?;
    let r = Arc::clone(&repo);
    // Shared for the whole transfer: a prune of this repository waits until it is over.
    let (files, _lock) = blocking(move || Ok((r.repo_files()?, r.lock(LockMode::Shared, Duration::from_secs(60), "replication")?))).await?;
    let files = Arc::new(files);
    let ids = point.chunk_ids();
    let largest_chunk = point.disks.iter().map(|d| d.chunk_size as u64).max().unwrap_or(1).max(1);
    let batch = ((OFFER_BYTES / largest_chunk) as usize).clamp(1, OFFER_BATCH);
    let counters = Arc::new(Counters {
        chunks: ids.len(),
        sent: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        done: AtomicU64::new(0),
        report: options.progress.clone(),
    });
    // Contiguous shares, one per stream: each stream's chunks stay in disk order.
    let share = ids.len().div_ceil(options.streams.max(1)).max(1);
    let mut streams = tokio::task::JoinSet::new();
    for part in ids.chunks(share) {
        let (conn, repo, files, counters) = (conn.clone(), Arc::clone(&repo), Arc::clone(&files), Arc::clone(&counters));
        let part = part.to_vec();
        let throttle = options.throttle.clone();
        streams.spawn(async move { send_chunks(&conn, repo, &files, &part, batch, &counters, throttle.as_ref()).await });
    }
    let _watch = options.throttle.as_ref().map(|t| watch_path(conn.clone(), t.limiter.path()));
    while let Some(done) = streams.join_next().await {
        done.map_err(|e| ReplicationError::Protocol(format!("a sending task failed: {e}")))??;
    }
    let (chunks_sent, chunk_bytes_sent) = (counters.sent.load(Ordering::Relaxed) as usize, counters.bytes.load(Ordering::Relaxed));
    // Every chunk is durable at the receiver: the point may go.
    let bytes = point.encode(repo.keys());
    send_point_file(&conn, &files, &point.id, &bytes, options.retention).await?;
    metrics::replication_point("sent");
    let wire_bytes = conn.stats().udp_tx.bytes;
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    Ok(SendReport {
        point: point.id.clone(),
        vm: point.vm.clone(),
        chunks: ids.len(),
        chunks_sent,
        chunk_bytes_sent,
        logical_bytes: point.disks.iter().map(|d| d.size).sum(),
        wire_bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// A task that is stopped when this is dropped.
struct StopOnDrop(tokio::task::JoinHandle<()>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Feeds adaptive mode with the connection's round trip and losses until the returned guard is
/// dropped (the watch goes with the task).
fn watch_path(conn: quinn::Connection, mut watch: PathWatch) -> StopOnDrop {
    StopOnDrop(tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tick.tick().await;
            let stats = conn.stats();
            watch.observe(stats.path.rtt, stats.path.lost_packets);
        }
    }))
}

/// Offers `ids` in batches of `batch` on one stream and sends what the receiver wants; one
/// batch at a time is unacknowledged.
async fn send_chunks(
    conn: &quinn::Connection,
    repo: Arc<Repository>,
    files: &RepoFiles,
    ids: &[ChunkId],
    batch: usize,
    counters: &Counters,
    throttle: Option<&Throttle>,
) -> Result<(), ReplicationError> {
    let (mut send, mut recv) = open(conn, files).await?;
    for offer in ids.chunks(batch) {
        frames::write(&mut send, &Frame::Offer(offer.to_vec())).await?;
        let wanted = match answer(&mut recv).await? {
            Frame::Want { count, bits } if count as usize == offer.len() => wire::wanted(offer, &bits),
            other => return Err(ReplicationError::Protocol(format!("expected want for {} ids, got {other:?}", offer.len()))),
        };
        let (r, load) = (Arc::clone(&repo), wanted.clone());
        let blobs = blocking(move || load.iter().map(|id| r.load_blob(id)).collect::<Result<Vec<_>, _>>()).await?;
        // Counted before they go: a failure from here on may have sent any part of them.
        counters.add(wanted.len() as u64, blobs.iter().map(|b| b.len() as u64).sum(), 0);
        for (id, blob) in wanted.iter().zip(&blobs) {
            if let Some(throttle) = throttle {
                throttle.upload(blob.len() as u64).await;
            }
            frames::write_chunk(&mut send, id, blob).await?;
            metrics::replication_bytes("sent", blob.len() as u64);
        }
        if !wanted.is_empty() {
            match answer(&mut recv).await? {
                Frame::Ack(acked) if acked.len() == wanted.len() && acked.iter().all(|id| wanted.contains(id)) => {}
                other => {
                    return Err(ReplicationError::Protocol(format!("expected an ack of {} chunks, got {}", wanted.len(), other.name())));
                }
            }
        }
        counters.add(0, 0, offer.len() as u64);
    }
    let _ = send.finish();
    Ok(())
}

/// Sends the point file and waits until the receiver has published it.
async fn send_point_file(
    conn: &quinn::Connection,
    files: &RepoFiles,
    point_id: &str,
    bytes: &[u8],
    retention: Retention,
) -> Result<(), ReplicationError> {
    let (mut send, mut recv) = open(conn, files).await?;
    for part in bytes.chunks(POINT_PART) {
        frames::write(&mut send, &Frame::PointPart(part.to_vec())).await?;
    }
    frames::write(&mut send, &Frame::PointEnd(retention)).await?;
    match answer(&mut recv).await? {
        Frame::Published { point_id: id } if id == point_id => {}
        other => return Err(ReplicationError::Protocol(format!("expected point {point_id} published, got {other:?}"))),
    }
    let _ = send.finish();
    Ok(())
}
