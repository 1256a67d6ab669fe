//! The bodies of the `/raft/*` RPCs, bincode-encoded.
//!
//! Every request is an envelope naming the cluster, the sender and the
//! receiver, so a node can reject traffic from another cluster (or from a
//! peer that was configured with a different address for it) before the
//! core ever sees a message. Replies to Raft messages do not travel in the
//! HTTP response: they come back later as messages of their own, which is
//! what lets a sender pipeline requests.

use serde::{Deserialize, Serialize};

use crate::raft::{Message, NodeId};
use crate::storage::image::ImageTrailer;

/// Wire format version; bumped when an envelope changes incompatibly.
pub const WIRE_VERSION: u32 = 3;

/// Header every envelope starts with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpcHeader {
    /// [`WIRE_VERSION`] of the sender.
    pub version: u32,
    /// The cluster the sender belongs to.
    pub cluster_id: String,
    /// Sender's id.
    pub from: NodeId,
    /// Receiver's id as the sender knows it.
    pub to: NodeId,
    /// Sender's name (`--node-id`), for display.
    pub from_name: String,
    /// Sender's advertised `host:port`.
    pub from_addr: String,
}

/// A batch of Raft messages for one peer (`/raft/vote`, `/raft/append`,
/// `/raft/message`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageBatch {
    /// Who, from which cluster, to whom.
    pub header: RpcHeader,
    /// The messages, in the order the core produced them.
    pub messages: Vec<Message>,
}

/// One chunk of a streamed snapshot image (`/raft/snapshot`). A transfer
/// is a sequence of these, posted one after the other: `seq` 0 at offset 0
/// starts it, each next chunk continues at the byte where the previous one
/// ended, and the last carries the [`ImageTrailer`]. The receiver answers
/// each chunk only once it is staged, which bounds the memory on both
/// sides to about one chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// Who, from which cluster, to whom.
    pub header: RpcHeader,
    /// The leader's InstallSnapshot message: its term, and the snapshot
    /// the image holds (the receiver steps it into its core once the whole
    /// image is staged).
    pub message: Message,
    /// Random id of this transfer; chunks of another transfer do not mix.
    pub transfer_id: u64,
    /// Position of the chunk in the transfer, from 0.
    pub seq: u32,
    /// Byte offset of `data` in the image.
    pub offset: u64,
    /// crc32 of `data`.
    pub crc32: u32,
    /// On the last chunk: length and crc32 of the whole image.
    pub trailer: Option<ImageTrailer>,
    /// The bytes of the image (whole frames), encoded as one byte string
    /// (same layout as a byte sequence, far cheaper for a 1 MiB chunk).
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// Encodes an RPC body.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .expect("encoding into a Vec cannot fail")
}

/// Why an RPC body did not decode.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Not a valid encoding of the expected body.
    #[error(transparent)]
    Undecodable(#[from] bincode::error::DecodeError),
    /// A valid body followed by more bytes.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
}

/// Decodes an RPC body; trailing bytes are an error.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, WireError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())?;
    if used != bytes.len() {
        return Err(WireError::TrailingBytes(bytes.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Entry, EntryPayload, MessageBody};

    #[test]
    fn batch_roundtrip_and_trailing_garbage() {
        let batch = MessageBatch {
            header: RpcHeader {
                version: WIRE_VERSION,
                cluster_id: "c".into(),
                from: 1,
                to: 2,
                from_name: "n1".into(),
                from_addr: "127.0.0.1:1".into(),
            },
            messages: vec![Message {
                from: 1,
                to: 2,
                term: 3,
                body: MessageBody::AppendEntries {
                    prev_log_index: 1,
                    prev_log_term: 1,
                    entries: vec![Entry {
                        index: 2,
                        term: 3,
                        payload: EntryPayload::Command(vec![1, 2, 3]),
                    }],
                    leader_commit: 1,
                    read_ctx: 0,
                },
            }],
        };
        let mut bytes = encode(&batch);
        assert_eq!(decode::<MessageBatch>(&bytes).unwrap(), batch);
        bytes.push(0);
        assert!(decode::<MessageBatch>(&bytes).is_err());
        assert!(decode::<MessageBatch>(&[0xff, 0xff]).is_err());
    }
}
