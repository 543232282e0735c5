//! Fetching chunks back from a replica: the copies that repair a damaged repository.

use std::collections::HashMap;
use std::net::SocketAddr;

use hyperexport_shared::ChunkId;
use hyperexport_shared::wire::{Frame, MAX_OFFER, RepoFiles};

use super::client::{answer, connect, open};
use super::tls::NodeTls;
use super::{ReplicationError, frames};

/// Asks the receiver at `to` for the stored blobs of `ids` of the repository `files` describe.
/// Returns those it has; ids it lacks are left out.
pub async fn fetch(
    to: SocketAddr,
    server_name: &str,
    tls: &NodeTls,
    files: &RepoFiles,
    ids: &[ChunkId],
) -> Result<HashMap<ChunkId, Vec<u8>>, ReplicationError> {
    let (endpoint, conn) = connect(to, server_name, tls).await?;
    let (mut send, mut recv) = open(&conn, files).await?;
    let mut found = HashMap::new();
    for batch in ids.chunks(MAX_OFFER) {
        frames::write(&mut send, &Frame::Fetch(batch.to_vec())).await?;
        loop {
            match answer(&mut recv).await? {
                Frame::Chunk { id, blob } if batch.contains(&id) => {
                    found.insert(id, blob);
                }
                Frame::FetchEnd(_) => break,
                other => return Err(ReplicationError::Protocol(format!("unexpected {} frame while fetching", other.name()))),
            }
        }
    }
    let _ = send.finish();
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    Ok(found)
}
