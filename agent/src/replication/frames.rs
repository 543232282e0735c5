//! Reading and writing protocol frames (`hyperexport_shared::wire`) on a QUIC stream.

use hyperexport_shared::ChunkId;
use hyperexport_shared::wire::{self, Frame, WireError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A failure to read or write a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed or ended inside a frame.
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a valid frame.
    #[error("malformed frame: {0}")]
    Wire(#[from] WireError),
}

/// Reads the next frame; `None` when the stream ends cleanly between frames.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, FrameError> {
    let mut len = [0u8; 4];
    // A clean end is an end before the first byte of a length.
    match r.read(&mut len[..1]).await? {
        0 => return Ok(None),
        _ => r.read_exact(&mut len[1..]).await?,
    };
    let len = wire::check_length(u32::from_le_bytes(len))?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(Frame::decode(&body)?))
}

/// Writes one frame.
pub async fn write<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> Result<(), FrameError> {
    w.write_all(&frame.encode()).await?;
    Ok(())
}

/// Writes a chunk frame without copying the blob into a frame first.
pub async fn write_chunk<W: AsyncWrite + Unpin>(w: &mut W, id: &ChunkId, blob: &[u8]) -> Result<(), FrameError> {
    w.write_all(&wire::chunk_header(id, blob.len())).await?;
    w.write_all(blob).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_cross_a_pipe_and_a_cut_one_is_an_error() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        write(&mut a, &Frame::Welcome { version: 1 }).await.unwrap();
        write_chunk(&mut a, &ChunkId([3; 32]), b"blob").await.unwrap();
        a.write_all(&[9, 0, 0]).await.unwrap();
        drop(a);
        assert_eq!(read(&mut b).await.unwrap(), Some(Frame::Welcome { version: 1 }));
        assert_eq!(read(&mut b).await.unwrap(), Some(Frame::Chunk { id: ChunkId([3; 32]), blob: b"blob".to_vec() }));
        assert!(matches!(read(&mut b).await, Err(FrameError::Io(_))), "a length cut short");
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
        assert!(matches!(read(&mut b).await, Err(FrameError::Wire(WireError::Length(_)))), "over the limit, nothing allocated");
    }
}
