//! The replication wire protocol's frames (`docs/PROTOCOL.md`): how they are laid out, their
//! limits, and a decoder that accepts any bytes without panicking.
//!
//! ```text
//! frame := length u32 LE (of kind and body, 1..=MAX_FRAME) | kind u8 | body
//! ```
//! Every count and length inside a body is checked against the limits below before anything is
//! allocated, so a peer cannot make the other side reserve more than one frame's worth of memory.

use crate::chunk::{ChunkId, MAX_CHUNK_SIZE};
use crate::prune::Retention;

/// Protocol versions this build speaks, oldest first.
pub const VERSIONS: &[u16] = &[1];
/// The largest frame (kind and body): a chunk frame of the largest chunk, stored uncompressed,
/// with room for its header, tag and id.
pub const MAX_FRAME: u32 = MAX_CHUNK_SIZE + 64 * 1024;
/// Chunk ids in one offer (and one want or ack) at most.
pub const MAX_OFFER: usize = 1024;
/// Bytes of a repository's config file or of one key slot file at most.
pub const MAX_REPO_FILE: usize = 64 * 1024;
/// Key slot files in a hello at most.
pub const MAX_KEY_SLOTS: usize = 64;
/// Bytes of an error message at most.
pub const MAX_MESSAGE: usize = 4096;
/// Bytes of one recovery point file at most (sent in parts of at most [`MAX_FRAME`] bytes).
pub const MAX_POINT: usize = 256 * 1024 * 1024;

const HELLO: u8 = 1;
const WELCOME: u8 = 2;
const OFFER: u8 = 3;
const WANT: u8 = 4;
const CHUNK: u8 = 5;
const ACK: u8 = 6;
const POINT_PART: u8 = 7;
const POINT_END: u8 = 8;
const PUBLISHED: u8 = 9;
const ERROR: u8 = 10;
const FETCH: u8 = 11;
const FETCH_END: u8 = 12;

/// A repository's identity as the sender shows it: the receiver creates its replica from these
/// files, or checks that the replica it has is of the same repository.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoFiles {
    /// The `config` file, verbatim.
    pub config: Vec<u8>,
    /// The key slot files (`keys/<name>`), verbatim: the replica opens with the same passwords.
    pub key_slots: Vec<(String, Vec<u8>)>,
}

/// Error codes of an [`Frame::Error`] frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// No common protocol version.
    Version = 1,
    /// A frame broke the protocol (unexpected, malformed, over a limit).
    Protocol = 2,
    /// The receiver holds another repository under that id, or its files are invalid.
    Repository = 3,
    /// A point names chunks the receiver does not have.
    MissingChunks = 4,
    /// The receiver failed to store something (disk full, I/O error).
    Storage = 5,
}

impl ErrorCode {
    fn from_u16(code: u16) -> Option<Self> {
        [Self::Version, Self::Protocol, Self::Repository, Self::MissingChunks, Self::Storage].into_iter().find(|c| *c as u16 == code)
    }
}

/// One protocol frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Sender → receiver, first on every stream: the versions it speaks and the repository.
    Hello {
        /// Protocol versions, any order.
        versions: Vec<u16>,
        /// The repository's files.
        repo: RepoFiles,
    },
    /// Receiver → sender: the version chosen; the stream is ready.
    Welcome {
        /// The highest version both speak.
        version: u16,
    },
    /// Sender → receiver: chunks the sender is about to send.
    Offer(Vec<ChunkId>),
    /// Receiver → sender: which of the last offer's chunks it lacks, one bit per offered id (bit
    /// `i % 8` of byte `i / 8`).
    Want {
        /// How many ids the offer had.
        count: u16,
        /// The bits.
        bits: Vec<u8>,
    },
    /// Sender → receiver: one wanted chunk's stored blob, sent as it is in the repository.
    Chunk {
        /// Its id.
        id: ChunkId,
        /// The blob.
        blob: Vec<u8>,
    },
    /// Receiver → sender: these chunks are on stable storage.
    Ack(Vec<ChunkId>),
    /// Sender → receiver: the next bytes of a recovery point file.
    PointPart(Vec<u8>),
    /// Sender → receiver: the point file is complete; publish it, then prune the VM's points by
    /// these rules (all zero: keep everything).
    PointEnd(Retention),
    /// Receiver → sender: the point is visible.
    Published {
        /// Its id.
        point_id: String,
    },
    /// Fetcher → receiver: send these chunks of the replica (to repair or restore elsewhere).
    Fetch(Vec<ChunkId>),
    /// Receiver → fetcher, after a chunk frame for each fetched chunk it has: those it lacks.
    FetchEnd(Vec<ChunkId>),
    /// Either way: the stream ends because of this.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// What went wrong, for the logs of the other side.
        message: String,
    },
}

/// A frame that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The length prefix is zero or over the limit.
    #[error("frame length {0} is outside 1..={MAX_FRAME}")]
    Length(u32),
    /// The kind byte is not one this version knows.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The body ended before a field.
    #[error("{0} frame ends early")]
    Truncated(&'static str),
    /// A field breaks a rule.
    #[error("{frame} frame: {reason}")]
    Invalid {
        /// Which frame.
        frame: &'static str,
        /// Which rule.
        reason: String,
    },
}

fn invalid(frame: &'static str, reason: impl Into<String>) -> WireError {
    WireError::Invalid { frame, reason: reason.into() }
}

/// Checks a frame's length prefix before its body is read.
pub fn check_length(len: u32) -> Result<usize, WireError> {
    if len == 0 || len > MAX_FRAME {
        return Err(WireError::Length(len));
    }
    Ok(len as usize)
}

/// The 4-byte length prefix and kind byte of a chunk frame carrying a blob of `blob_len` bytes
/// and its id: the blob can then be written without copying it into a frame.
pub fn chunk_header(id: &ChunkId, blob_len: usize) -> [u8; 37] {
    let mut out = [0u8; 37];
    out[..4].copy_from_slice(&((1 + 32 + blob_len) as u32).to_le_bytes());
    out[4] = CHUNK;
    out[5..].copy_from_slice(&id.0);
    out
}

impl Frame {
    /// The frame's name in errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "hello",
            Frame::Welcome { .. } => "welcome",
            Frame::Offer(_) => "offer",
            Frame::Want { .. } => "want",
            Frame::Chunk { .. } => "chunk",
            Frame::Ack(_) => "ack",
            Frame::PointPart(_) => "point part",
            Frame::PointEnd(_) => "point end",
            Frame::Published { .. } => "published",
            Frame::Error { .. } => "error",
            Frame::Fetch(_) => "fetch",
            Frame::FetchEnd(_) => "fetch end",
        }
    }

    /// The frame with its length prefix, ready to write.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0, 0, 0, 0];
        match self {
            Frame::Hello { versions, repo } => {
                b.push(HELLO);
                b.push(versions.len() as u8);
                versions.iter().for_each(|v| b.extend_from_slice(&v.to_le_bytes()));
                put_bytes(&mut b, &repo.config);
                b.push(repo.key_slots.len() as u8);
                for (name, bytes) in &repo.key_slots {
                    b.push(name.len() as u8);
                    b.extend_from_slice(name.as_bytes());
                    put_bytes(&mut b, bytes);
                }
            }
            Frame::Welcome { version } => {
                b.push(WELCOME);
                b.extend_from_slice(&version.to_le_bytes());
            }
            Frame::Offer(ids) | Frame::Ack(ids) | Frame::Fetch(ids) | Frame::FetchEnd(ids) => {
                b.push(match self {
                    Frame::Offer(_) => OFFER,
                    Frame::Ack(_) => ACK,
                    Frame::Fetch(_) => FETCH,
                    _ => FETCH_END,
                });
                b.extend_from_slice(&(ids.len() as u16).to_le_bytes());
                ids.iter().for_each(|id| b.extend_from_slice(&id.0));
            }
            Frame::Want { count, bits } => {
                b.push(WANT);
                b.extend_from_slice(&count.to_le_bytes());
                b.extend_from_slice(bits);
            }
            Frame::Chunk { id, blob } => {
                b.clear();
                b.extend_from_slice(&chunk_header(id, blob.len()));
                b.extend_from_slice(blob);
                return b;
            }
            Frame::PointPart(bytes) => {
                b.push(POINT_PART);
                b.extend_from_slice(bytes);
            }
            Frame::PointEnd(r) => {
                b.push(POINT_END);
                for n in [r.keep_last, r.keep_daily, r.keep_weekly, r.keep_monthly] {
                    b.extend_from_slice(&n.to_le_bytes());
                }
            }
            Frame::Published { point_id } => {
                b.push(PUBLISHED);
                b.extend_from_slice(point_id.as_bytes());
            }
            Frame::Error { code, message } => {
                b.push(ERROR);
                b.extend_from_slice(&(*code as u16).to_le_bytes());
                let mut end = message.len().min(MAX_MESSAGE);
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                b.extend_from_slice(&message.as_bytes()[..end]);
            }
        }
        let len = (b.len() - 4) as u32;
        b[..4].copy_from_slice(&len.to_le_bytes());
        b
    }

    /// Decodes a frame from what follows its length prefix (the kind byte and the body).
    pub fn decode(frame: &[u8]) -> Result<Frame, WireError> {
        check_length(frame.len().try_into().map_err(|_| WireError::Length(u32::MAX))?)?;
        let (kind, body) = (frame[0], &frame[1..]);
        let mut r = Reader { body, frame: "" };
        let out = match kind {
            HELLO => {
                r.frame = "hello";
                let n = r.u8()? as usize;
                if n == 0 {
                    return Err(invalid("hello", "lists no protocol version"));
                }
                let versions = (0..n).map(|_| r.u16()).collect::<Result<_, _>>()?;
                let config = r.bytes(MAX_REPO_FILE, "config")?;
                let slots = r.u8()? as usize;
                if slots > MAX_KEY_SLOTS {
                    return Err(invalid("hello", format!("{slots} key slots, at most {MAX_KEY_SLOTS}")));
                }
                let mut key_slots = Vec::with_capacity(slots);
                for _ in 0..slots {
                    let len = r.u8()? as usize;
                    let name = String::from_utf8(r.take(len)?.to_vec()).map_err(|_| invalid("hello", "a key slot name is not UTF-8"))?;
                    key_slots.push((name, r.bytes(MAX_REPO_FILE, "key slot")?));
                }
                Frame::Hello { versions, repo: RepoFiles { config, key_slots } }
            }
            WELCOME => {
                r.frame = "welcome";
                Frame::Welcome { version: r.u16()? }
            }
            OFFER | ACK | FETCH => {
                r.frame = match kind {
                    OFFER => "offer",
                    ACK => "ack",
                    _ => "fetch",
                };
                let ids = r.ids(1)?;
                match kind {
                    OFFER => Frame::Offer(ids),
                    ACK => Frame::Ack(ids),
                    _ => Frame::Fetch(ids),
                }
            }
            FETCH_END => {
                r.frame = "fetch end";
                Frame::FetchEnd(r.ids(0)?)
            }
            WANT => {
                r.frame = "want";
                let count = r.u16()?;
                if count as usize > MAX_OFFER {
                    return Err(invalid("want", format!("{count} ids, at most {MAX_OFFER}")));
                }
                let bits = r.take((count as usize).div_ceil(8))?.to_vec();
                Frame::Want { count, bits }
            }
            CHUNK => {
                r.frame = "chunk";
                let id = ChunkId(r.take(32)?.try_into().expect("32 bytes"));
                Frame::Chunk { id, blob: r.rest().to_vec() }
            }
            POINT_PART => Frame::PointPart(r.rest().to_vec()),
            POINT_END => {
                r.frame = "point end";
                let mut n = [0u32; 4];
                for v in &mut n {
                    *v = u32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes"));
                }
                Frame::PointEnd(Retention { keep_last: n[0], keep_daily: n[1], keep_weekly: n[2], keep_monthly: n[3] })
            }
            PUBLISHED => {
                let id = std::str::from_utf8(r.rest()).map_err(|_| invalid("published", "the point id is not UTF-8"))?;
                if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(invalid("published", "the point id is not 32 hex digits"));
                }
                Frame::Published { point_id: id.to_string() }
            }
            ERROR => {
                r.frame = "error";
                let code = r.u16()?;
                let code = ErrorCode::from_u16(code).ok_or_else(|| invalid("error", format!("unknown error code {code}")))?;
                let rest = r.rest();
                let message = String::from_utf8_lossy(&rest[..rest.len().min(MAX_MESSAGE)]).into_owned();
                Frame::Error { code, message }
            }
            other => return Err(WireError::UnknownKind(other)),
        };
        if !r.body.is_empty() {
            return Err(invalid(out.name(), format!("{} bytes after the last field", r.body.len())));
        }
        Ok(out)
    }
}

/// The highest version both sides speak.
pub fn negotiate(theirs: &[u16]) -> Option<u16> {
    VERSIONS.iter().rev().copied().find(|v| theirs.contains(v))
}

/// The wanted ids of `offer` according to `bits`.
pub fn wanted(offer: &[ChunkId], bits: &[u8]) -> Vec<ChunkId> {
    offer.iter().enumerate().filter(|(i, _)| bits.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)).map(|(_, id)| *id).collect()
}

/// The want bits for `offer`, set where `missing` says so.
pub fn want_bits(offer: &[ChunkId], missing: impl Fn(&ChunkId) -> bool) -> Vec<u8> {
    let mut bits = vec![0u8; offer.len().div_ceil(8)];
    for (i, id) in offer.iter().enumerate() {
        if missing(id) {
            bits[i / 8] |= 1 << (i % 8);
        }
    }
    bits
}

fn put_bytes(b: &mut Vec<u8>, bytes: &[u8]) {
    b.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    b.extend_from_slice(bytes);
}

struct Reader<'a> {
    body: &'a [u8],
    frame: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.body.len() < n {
            return Err(WireError::Truncated(self.frame));
        }
        let (head, tail) = self.body.split_at(n);
        self.body = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }

    fn bytes(&mut self, max: usize, what: &str) -> Result<Vec<u8>, WireError> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize;
        if len > max {
            return Err(invalid(self.frame, format!("{what} of {len} bytes, at most {max}")));
        }
        Ok(self.take(len)?.to_vec())
    }

    /// A count of at least `min` ids, then the ids.
    fn ids(&mut self, min: usize) -> Result<Vec<ChunkId>, WireError> {
        let n = self.u16()? as usize;
        if n < min || n > MAX_OFFER {
            return Err(invalid(self.frame, format!("{n} ids, must be {min}..={MAX_OFFER}")));
        }
        let raw = self.take(n * 32)?;
        Ok(raw.chunks_exact(32).map(|c| ChunkId(c.try_into().expect("32 bytes"))).collect())
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(b: u8) -> ChunkId {
        ChunkId([b; 32])
    }

    fn frames() -> impl Strategy<Value = Frame> {
        let ids = proptest::collection::vec(any::<[u8; 32]>().prop_map(ChunkId), 1..40);
        let bytes = proptest::collection::vec(any::<u8>(), 0..300);
        prop_oneof![
            (
                proptest::collection::vec(any::<u16>(), 1..5),
                bytes.clone(),
                proptest::collection::vec(("[a-z0-9]{1,20}\\.json", bytes.clone()), 0..4)
            )
                .prop_map(|(versions, config, key_slots)| Frame::Hello { versions, repo: RepoFiles { config, key_slots } }),
            any::<u16>().prop_map(|version| Frame::Welcome { version }),
            ids.clone().prop_map(Frame::Offer),
            ids.clone().prop_map(Frame::Ack),
            ids.clone().prop_map(Frame::Fetch),
            proptest::collection::vec(any::<[u8; 32]>().prop_map(ChunkId), 0..5).prop_map(Frame::FetchEnd),
            ids.prop_map(|offer| {
                let bits = want_bits(&offer, |i| i.0[0] % 2 == 0);
                Frame::Want { count: offer.len() as u16, bits }
            }),
            (any::<[u8; 32]>(), bytes.clone()).prop_map(|(i, blob)| Frame::Chunk { id: ChunkId(i), blob }),
            bytes.prop_map(Frame::PointPart),
            any::<[u32; 4]>().prop_map(|n| Frame::PointEnd(Retention {
                keep_last: n[0],
                keep_daily: n[1],
                keep_weekly: n[2],
                keep_monthly: n[3]
            })),
            "[0-9a-f]{32}".prop_map(|point_id| Frame::Published { point_id }),
            (prop_oneof![Just(ErrorCode::Version), Just(ErrorCode::Storage)], ".{0,50}")
                .prop_map(|(code, message)| Frame::Error { code, message }),
        ]
    }

    proptest! {
        #[test]
        fn every_frame_decodes_to_itself(frame in frames()) {
            let bytes = frame.encode();
            let len = u32::from_le_bytes(bytes[..4].try_into().unwrap());
            prop_assert_eq!(check_length(len).unwrap(), bytes.len() - 4);
            prop_assert_eq!(Frame::decode(&bytes[4..]).unwrap(), frame);
        }

        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = Frame::decode(&bytes);
        }

        #[test]
        fn a_cut_frame_is_an_error(frame in frames(), cut in 1usize..40) {
            let bytes = frame.encode();
            let body = &bytes[4..];
            prop_assume!(cut < body.len() && !matches!(frame, Frame::Chunk { .. } | Frame::PointPart(_) | Frame::Error { .. } | Frame::Published { .. }));
            prop_assert!(Frame::decode(&body[..body.len() - cut]).is_err());
        }
    }

    #[test]
    fn limits_are_enforced_before_allocating() {
        assert_eq!(check_length(0), Err(WireError::Length(0)));
        assert_eq!(check_length(MAX_FRAME + 1), Err(WireError::Length(MAX_FRAME + 1)));
        // An offer that claims more ids than allowed.
        let mut offer = vec![OFFER];
        offer.extend_from_slice(&(MAX_OFFER as u16 + 1).to_le_bytes());
        assert!(matches!(Frame::decode(&offer), Err(WireError::Invalid { frame: "offer", .. })));
        // A hello whose config claims 4 GiB.
        let mut hello = vec![HELLO, 1, 1, 0];
        hello.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(Frame::decode(&hello), Err(WireError::Invalid { frame: "hello", .. })));
        assert_eq!(Frame::decode(&[99]), Err(WireError::UnknownKind(99)));
        // Trailing bytes after a fixed-size frame.
        assert!(Frame::decode(&[WELCOME, 1, 0, 7]).is_err());
    }

    #[test]
    fn want_bits_select_the_missing_ids() {
        let offer: Vec<ChunkId> = (0..11).map(id).collect();
        let bits = want_bits(&offer, |i| i.0[0] % 3 == 0);
        assert_eq!(wanted(&offer, &bits), vec![id(0), id(3), id(6), id(9)]);
        assert_eq!(negotiate(&[7, 1]), Some(1));
        assert_eq!(negotiate(&[2]), None);
    }
}
